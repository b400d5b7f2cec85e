"""Haiku modules of e3nn_fast (drop-in for ``e3nn_jax.haiku``)."""

from e3nn_fast.haiku.fully_connected_tensor_product import FullyConnectedTensorProduct
from e3nn_fast.haiku.linear import Linear

__all__ = ["Linear", "FullyConnectedTensorProduct"]
