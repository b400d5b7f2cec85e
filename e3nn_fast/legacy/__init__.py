"""The legacy instruction-based tensor product (drop-in for ``e3nn_jax.legacy``).

``FunctionalTensorProduct`` takes explicit instructions ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``
and external weights; ``FunctionalFullyConnectedTensorProduct`` builds the fully connected (``uvw``) instance.
"""

from e3nn_fast.legacy.fully_connected import FunctionalFullyConnectedTensorProduct
from e3nn_fast.legacy.functional_tensor_product import FunctionalTensorProduct
from e3nn_fast.legacy.instruction import Instruction

__all__ = [
    "Instruction",
    "FunctionalTensorProduct",
    "FunctionalFullyConnectedTensorProduct",
]
