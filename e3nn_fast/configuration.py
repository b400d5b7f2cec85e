"""Global defaults, read and written through :func:`config`.

The first eight keys are e3nn-jax's, with its defaults, so code that sets them keeps its meaning.  ``backend`` is
e3nn_fast's own: the executor the dispatcher uses (see :mod:`e3nn_fast.dispatch`); its default comes from the
``E3NN_FAST_BACKEND`` environment variable, read once when this module is imported.  A backend name is checked when
it is set (here, by ``config("backend", name)``, or at import for the environment variable), so a typo fails at
once instead of at the first traced operation.
"""

from __future__ import annotations

import os
from typing import Any

#: Backend names the dispatcher accepts (see :mod:`e3nn_fast.dispatch`).
BACKENDS = ("auto", "reference", "jnp", "pallas", "pallas-interpret")

_BACKEND_VARIABLE = "E3NN_FAST_BACKEND"


def check_backend(name: Any, source: str) -> str:
    """``name`` if it is one of :data:`BACKENDS`, else a ``ValueError`` that says where the bad name came from."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(
            f"{source} is {name!r}, which is not an e3nn_fast backend; use one of {', '.join(BACKENDS)} "
            "(or leave it unset for 'auto')"
        )
    return name


def _backend_from_environment() -> str:
    """The default backend: ``E3NN_FAST_BACKEND`` when set (an empty value is a mistake too), else ``auto``."""
    value = os.environ.get(_BACKEND_VARIABLE)
    if value is None:
        return "auto"
    return check_backend(value, f"the environment variable {_BACKEND_VARIABLE}")


_DEFAULTS: dict[str, Any] = {
    "irrep_normalization": "component",  # "component" or "norm"
    "path_normalization": "element",  # "element" or "path"
    "gradient_normalization": "path",  # "element", "path" or a float in [0, 1]
    "spherical_harmonics_algorithm": "automatic",
    "spherical_harmonics_normalization": "component",
    "custom_einsum_jvp": False,
    "fused": False,
    "sparse_tp": False,
    "backend": _backend_from_environment(),
}

_current: dict[str, Any] = dict(_DEFAULTS)

# Tells ``config(name)`` (read) from ``config(name, None)`` (for ``backend``: restore the default).
_READ = object()


def config(name: str, value: Any = _READ) -> Any:
    """Read (``config(name)``) or set (``config(name, value)``) a global default.

    ``config(name, None)`` reads, as in e3nn-jax, except for ``backend``, where it restores the default (the
    ``E3NN_FAST_BACKEND`` value read at import, else ``auto``).

    Raises:
        ValueError: ``name`` is not a known option, or ``value`` is not a backend name (for ``backend``).
    """
    if name not in _current:
        raise ValueError(f"Unknown configuration option {name!r}; known options: {sorted(_current)}")
    if name == "backend" and value is None:
        _current[name] = _DEFAULTS[name]
        return None
    if value is _READ or value is None:
        return _current[name]
    if name == "backend":
        value = check_backend(value, 'config("backend", ...)')
    _current[name] = value
    return None


def snapshot() -> tuple:
    """Every option with its value, as a hashable tuple: the key part of a cached trace (a changed option retraces)."""
    return tuple(sorted(_current.items()))
