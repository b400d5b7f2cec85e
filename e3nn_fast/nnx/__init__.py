"""flax.nnx modules of e3nn_fast: ``Linear``, ``MultiLayerPerceptron``, ``FullyConnectedTensorProduct``,
``SymmetricTensorProduct`` and ``MessagePassing``.

They run the very forward passes of the haiku and linen modules (:mod:`e3nn_fast.linear`, :mod:`e3nn_fast.mlp`,
:mod:`e3nn_fast._parameters`, :mod:`e3nn_fast.symmetric_tensor_product`) and hold parameters with the same names and
shapes.  nnx creates parameters eagerly, so every module takes its input irreps (and sizes) and an ``nnx.Rngs`` at
construction; the parameter list is obtained by tracing the shared forward pass once
(:func:`e3nn_fast._parameters.record_parameters`).
"""

from e3nn_fast.nnx.fully_connected_tensor_product import FullyConnectedTensorProduct
from e3nn_fast.nnx.linear import Linear
from e3nn_fast.nnx.message_passing import MessagePassing
from e3nn_fast.nnx.mlp import MultiLayerPerceptron
from e3nn_fast.nnx.symmetric_tensor_product import SymmetricTensorProduct

__all__ = [
    "FullyConnectedTensorProduct",
    "Linear",
    "MessagePassing",
    "MultiLayerPerceptron",
    "SymmetricTensorProduct",
]
