"""``FunctionalFullyConnectedTensorProduct``: every allowed ``ir1 x ir2 -> ir_out`` coupling, fully weighted."""

from __future__ import annotations

from typing import List, Optional, Union

from e3nn_fast.irreps import Irreps
from e3nn_fast.legacy.functional_tensor_product import FunctionalTensorProduct


def fully_connected_instructions(irreps_in1: Irreps, irreps_in2: Irreps, irreps_out: Irreps) -> list:
    """``(i1, i2, i_out, "uvw", True)`` for every triple of segments allowed by the selection rules, in loop order."""
    return [
        (i1, i2, i_out, "uvw", True)
        for i1, (_, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for i_out, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * ir2
    ]


def FunctionalFullyConnectedTensorProduct(
    irreps_in1: Irreps,
    irreps_in2: Irreps,
    irreps_out: Irreps,
    in1_var: Optional[List[float]] = None,
    in2_var: Optional[List[float]] = None,
    out_var: Optional[List[float]] = None,
    irrep_normalization: str = None,
    path_normalization: Union[str, float] = None,
    gradient_normalization: Union[str, float] = None,
) -> FunctionalTensorProduct:
    """A :class:`FunctionalTensorProduct` with a weighted ``uvw`` path for every allowed coupling of segments.

    Every output channel is a learned combination of all products of input channels whose irreps couple to it.
    The other arguments are those of :class:`FunctionalTensorProduct`.
    """
    irreps_in1, irreps_in2, irreps_out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
    return FunctionalTensorProduct(
        irreps_in1,
        irreps_in2,
        irreps_out,
        fully_connected_instructions(irreps_in1, irreps_in2, irreps_out),
        in1_var,
        in2_var,
        out_var,
        irrep_normalization,
        path_normalization,
        gradient_normalization,
    )
