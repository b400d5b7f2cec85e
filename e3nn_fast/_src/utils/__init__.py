"""e3nn-jax's ``_src.utils`` package path (compatibility only, see :mod:`e3nn_fast._src`)."""
