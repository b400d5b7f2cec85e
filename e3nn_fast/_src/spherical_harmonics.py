"""e3nn-jax's ``_src.spherical_harmonics`` path (compatibility only, see :mod:`e3nn_fast._src`)."""

from e3nn_fast.harmonics import sh, spherical_harmonics

__all__ = ["spherical_harmonics", "sh"]
