"""Haiku module of the fully connected tensor product (drop-in for ``e3nn_jax.haiku.FullyConnectedTensorProduct``)."""

from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array
from e3nn_fast.legacy.fully_connected import FunctionalFullyConnectedTensorProduct

__all__ = ["FullyConnectedTensorProduct"]


def _parameter_name(tp, ins) -> str:
    """e3nn's parameter name, e.g. ``'w[0,1,2] 4x0e,2x1o,8x1o'``: segment indices then the segments themselves."""
    return (
        f"w[{ins.i_in1},{ins.i_in2},{ins.i_out}] "
        f"{tp.irreps_in1[ins.i_in1]},{tp.irreps_in2[ins.i_in2]},{tp.irreps_out[ins.i_out]}"
    )


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
        self.irreps_in1 = Irreps(irreps_in1) if irreps_in1 is not None else None
        self.irreps_in2 = Irreps(irreps_in2) if irreps_in2 is not None else None

    def __call__(self, x1: IrrepsArray, x2: IrrepsArray, **kwargs) -> IrrepsArray:
        unknown = set(kwargs) - {"custom_einsum_jvp", "fused", "sparse"}
        if unknown:
            raise TypeError(f"FullyConnectedTensorProduct got unexpected keyword arguments {sorted(unknown)}")
        x1, x2 = as_irreps_array(x1), as_irreps_array(x2)
        try:
            leading_shape = jnp.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
        except ValueError as error:
            raise ValueError(
                f"FullyConnectedTensorProduct: leading shapes {x1.shape[:-1]} and {x2.shape[:-1]} do not broadcast"
            ) from error
        x1 = x1.broadcast_to(leading_shape + (-1,))
        x2 = x2.broadcast_to(leading_shape + (-1,))
        if self.irreps_in1 is not None:
            x1 = x1.rechunk(self.irreps_in1)
        if self.irreps_in2 is not None:
            x2 = x2.rechunk(self.irreps_in2)
        # Segments known to be zero get no parameters (as in e3nn-jax).
        x1 = x1.remove_zero_chunks().simplify()
        x2 = x2.remove_zero_chunks().simplify()

        tp = FunctionalFullyConnectedTensorProduct(x1.irreps, x2.irreps, self.irreps_out.simplify())
        weights = [
            hk.get_parameter(
                _parameter_name(tp, ins),
                shape=ins.path_shape,
                init=hk.initializers.RandomNormal(stddev=ins.weight_std),
            )
            for ins in tp.instructions
        ]
        # Batched directly (rather than vmapping left_right): same numbers, one executor call for the whole batch.
        output = tp.evaluate(weights, x1, x2)
        return output.rechunk(self.irreps_out)
