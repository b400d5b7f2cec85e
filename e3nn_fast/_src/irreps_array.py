"""e3nn-jax's ``_src.irreps_array`` path (compatibility only, see :mod:`e3nn_fast._src`)."""

from e3nn_fast.irreps_array import IrrepsArray

__all__ = ["IrrepsArray"]
