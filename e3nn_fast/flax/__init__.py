"""Flax (linen) modules of e3nn_fast (drop-in for ``e3nn_jax.flax``)."""

from e3nn_fast.flax.linear import Linear

__all__ = ["Linear"]
