"""Equinox modules of e3nn_fast (drop-in for ``e3nn_jax.equinox``); needs the optional ``equinox`` package."""

try:
    import equinox as _equinox
except ModuleNotFoundError as _error:
    # Only a missing equinox gets the install hint; a broken equinox (say, one that rejects the installed jax)
    # keeps its own error, which names the real problem.
    if _error.name != "equinox":
        raise
    raise ImportError(
        "e3nn_fast.equinox needs the 'equinox' package, which is not installed; install the equinox extra with "
        "pip install 'e3nn_fast[equinox]' (or pip install equinox)"
    ) from _error

del _equinox

from e3nn_fast.equinox.linear import Linear  # noqa: E402  (after the dependency check on purpose)

__all__ = ["Linear"]
