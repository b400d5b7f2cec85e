"""e3nn-jax's ``_src.config`` path (compatibility only, see :mod:`e3nn_fast._src`).

e3nn-jax's test configuration resets every option by iterating ``__default_conf``; here it is e3nn_fast's table of
defaults, which has e3nn-jax's options with their defaults plus ``backend``.
"""

from e3nn_fast.configuration import _DEFAULTS, config

# Module level, so the double underscore is not mangled: ``from ..._src.config import __default_conf`` finds it.
__default_conf = _DEFAULTS

__all__ = ["config", "__default_conf"]
