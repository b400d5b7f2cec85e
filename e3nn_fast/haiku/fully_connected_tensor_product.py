"""Haiku module of the fully connected tensor product (drop-in for ``e3nn_jax.haiku.FullyConnectedTensorProduct``)."""

from __future__ import annotations

from typing import Optional

import haiku as hk

from e3nn_fast._parameters import fully_connected_module_call
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray

__all__ = ["FullyConnectedTensorProduct"]


def _optional_irreps(irreps) -> Optional[Irreps]:
    """``Irreps(irreps)``, or None (meaning: take the input's irreps as they come)."""
    return None if irreps is None else Irreps(irreps)


class FullyConnectedTensorProduct(hk.Module):
    r"""Fully connected tensor product with learned weights (haiku).

    Every allowed coupling ``ir1 x ir2 -> ir_out`` between the (simplified, non-zero) segments of the two inputs and
    of ``irreps_out`` gets a weight tensor of shape ``(mul1, mul2, mul_out)``, initialised from a normal distribution
    with the path's ``weight_std``.  Parameters are named ``'w[i1,i2,iout] <seg1>,<seg2>,<seg_out>'`` as in
    e3nn-jax, so the same key gives the same parameters.

    Args:
        irreps_out: output irreps.
        irreps_in1, irreps_in2: if given, the inputs are re-cut into these irreps (and must match them).
        name: haiku module name.

    Call as ``module(x1, x2)``; the leading axes of ``x1`` and ``x2`` broadcast.  The keyword arguments of
    ``FunctionalTensorProduct.left_right`` (``custom_einsum_jvp``, ``fused``, ``sparse``) are accepted.
    """

    def __init__(
        self,
        irreps_out: Irreps,
        *,
        irreps_in1: Optional[Irreps] = None,
        irreps_in2: Optional[Irreps] = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self.irreps_out = Irreps(irreps_out)
        self.irreps_in1, self.irreps_in2 = _optional_irreps(irreps_in1), _optional_irreps(irreps_in2)

    def _get_parameter(self, name: str, shape, std, dtype):
        # Created in float32 whatever the input dtype, as e3nn-jax's haiku module does (hk.get_parameter's default).
        return hk.get_parameter(name, shape=shape, init=hk.initializers.RandomNormal(stddev=std))

    def __call__(self, x1: IrrepsArray, x2: IrrepsArray, **kwargs) -> IrrepsArray:
        """Weighted tensor product of ``x1`` and ``x2`` (leading axes broadcast), with irreps ``irreps_out``."""
        return fully_connected_module_call(
            self.irreps_out, self.irreps_in1, self.irreps_in2, self._get_parameter, x1, x2, **kwargs
        )
