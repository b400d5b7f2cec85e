"""Test helper: memoise e3nn-jax's ``normalize_function`` (the oracle), which re-evaluates its argument on a million
points at every call.  The function is deterministic, so caching it changes no number; it only keeps the parity
tests fast.  Use as ``pytestmark = pytest.mark.usefixtures("cached_e3nn_jax_normalize_function")`` after importing
the fixture into the test module."""

import jax
import pytest

import e3nn_jax
import e3nn_jax._src.activation as _e3nn_jax_activation

_original = _e3nn_jax_activation.normalize_function
_cache = {}


def _cached_normalize_function(phi):
    key = (phi, bool(jax.config.read("jax_enable_x64")))
    if key not in _cache:
        _cache[key] = _original(phi)
    return _cache[key]


@pytest.fixture(scope="module")
def cached_e3nn_jax_normalize_function():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_e3nn_jax_activation, "normalize_function", _cached_normalize_function)
        patch.setattr(e3nn_jax, "normalize_function", _cached_normalize_function)
        yield
