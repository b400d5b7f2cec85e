"""e3nn-jax's ``_src.scatter`` path (compatibility only, see :mod:`e3nn_fast._src`).

Some jax-md derived code imports this module to replace a private helper of e3nn-jax's scatter; e3nn_fast has no such
helper, so the replacement is simply unused.
"""

from e3nn_fast.graph import index_add, scatter_max, scatter_mean, scatter_sum

__all__ = ["scatter_sum", "scatter_mean", "scatter_max", "index_add"]
