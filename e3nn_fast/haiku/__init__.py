"""Haiku modules of e3nn_fast (drop-in for ``e3nn_jax.haiku``)."""

from e3nn_fast.haiku.batchnorm import BatchNorm
from e3nn_fast.haiku.dropout import Dropout
from e3nn_fast.haiku.fully_connected_tensor_product import FullyConnectedTensorProduct
from e3nn_fast.haiku.linear import Linear
from e3nn_fast.haiku.message_passing import MessagePassing
from e3nn_fast.haiku.mlp import MultiLayerPerceptron
from e3nn_fast.haiku.symmetric_tensor_product import SymmetricTensorProduct

__all__ = [
    "BatchNorm",
    "Dropout",
    "FullyConnectedTensorProduct",
    "Linear",
    "MessagePassing",
    "MultiLayerPerceptron",
    "SymmetricTensorProduct",
]
