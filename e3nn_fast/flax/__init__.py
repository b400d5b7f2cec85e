"""Flax (linen) modules of e3nn_fast (drop-in for ``e3nn_jax.flax``)."""

from e3nn_fast.flax.batchnorm import BatchNorm
from e3nn_fast.flax.linear import Linear
from e3nn_fast.flax.message_passing import MessagePassing
from e3nn_fast.flax.mlp import MultiLayerPerceptron

__all__ = ["BatchNorm", "Linear", "MessagePassing", "MultiLayerPerceptron"]
