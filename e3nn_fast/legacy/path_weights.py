"""Normalisation of the legacy tensor product's paths (e3nn's convention).

For a path with irrep factor ``a`` (``component``: ``2 l_out + 1``; ``norm``: ``(2 l1 + 1)(2 l2 + 1)``), input
variances ``v1, v2``, fan-in ``n`` (``Instruction.num_elements``) and output variance ``v_out``, let
``var = v1 v2 n``.  The paths writing into one output segment share its variance according to the *path
normalisation exponent* ``p`` (0 = ``element``: every input product counts equally; 1 = ``path``: every path counts
equally):

    alpha = a * v_out * path_weight / (var**p * sum_{paths into the same output} var**(1 - p))

The total scale ``sqrt(alpha)`` is split between a constant and the learned weights by the *gradient normalisation
exponent* ``g``: the path's constant is ``sqrt(alpha)**g`` and its weights are initialised with standard deviation
``sqrt(alpha)**(1 - g)``, so ``g`` decides how much of the scale the weights' gradients see.  Unweighted paths take
the whole ``sqrt(alpha)`` as their constant.

Arithmetic is done in Python floats in a fixed order so that the constants match e3nn-jax bit for bit.
"""

from __future__ import annotations

import collections
from math import sqrt
from typing import Optional, Sequence, Union

from e3nn_fast.configuration import config
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irreps
from e3nn_fast.legacy.instruction import Instruction
from e3nn_fast.path_description import IRREP_NORMALIZATIONS

_EXPONENTS = {"element": 0.0, "path": 1.0}


def normalization_exponent(value: Union[str, float, None], option: str) -> float:
    """``element``/``path``/a float (``None``: the global ``config(option)``) as an exponent in [0, 1]."""
    if value is None:
        value = config(option)
    if isinstance(value, str):
        if value not in _EXPONENTS:
            raise ValueError(f"{option}={value!r} is not one of {list(_EXPONENTS)} or a float")
        return _EXPONENTS[value]
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{option} must be 'element', 'path' or a float, got {value!r}") from error


def irrep_normalization_name(value: Optional[str]) -> str:
    """``component``/``norm``/``none`` (``None``: the global ``config("irrep_normalization")``)."""
    if value is None:
        value = config("irrep_normalization")
    if value not in IRREP_NORMALIZATIONS:
        raise ValueError(f"Unsupported irrep_normalization={value!r}; expected one of {IRREP_NORMALIZATIONS}")
    return value


def _irrep_factor(normalization: str, d1: int, d2: int, d_out: int):
    # Kept as ints (like e3nn-jax) so that the float arithmetic below rounds identically.
    return {"component": d_out, "norm": d1 * d2, "none": 1}[normalization]


def _check_selection_rules(instruction: Instruction, irreps_in1: Irreps, irreps_in2: Irreps, irreps_out: Irreps):
    ir1 = irreps_in1[instruction.i_in1].ir
    ir2 = irreps_in2[instruction.i_in2].ir
    ir_out = irreps_out[instruction.i_out].ir
    if ir1.p * ir2.p != ir_out.p or not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
        # (an AssertionError too: e3nn-jax asserts on this)
        raise InvalidValueError(
            f"Instruction {instruction.i_in1, instruction.i_in2, instruction.i_out}: {ir_out} is not in {ir1} x {ir2}"
            "; the output segment must be an irrep of the product of the two input segments"
        )


def normalize_path_weights(
    instructions: Sequence[Instruction],
    irreps_in1: Irreps,
    irreps_in2: Irreps,
    irreps_out: Irreps,
    in1_var: Sequence[float],
    in2_var: Sequence[float],
    out_var: Sequence[float],
    irrep_normalization: str,
    path_exponent: float,
    gradient_exponent: float,
) -> list[Instruction]:
    """The instructions with ``path_weight`` and ``weight_std`` replaced by their normalised values."""
    for instruction in instructions:
        _check_selection_rules(instruction, irreps_in1, irreps_in2, irreps_out)

    def variance(ins: Instruction) -> float:
        return in1_var[ins.i_in1] * in2_var[ins.i_in2] * ins.num_elements

    # Share of each output segment: sum over its paths of var**(1 - p).
    shares = collections.defaultdict(lambda: 0.0)
    for ins in instructions:
        shares[ins.i_out] += variance(ins) ** (1.0 - path_exponent)

    def normalized(ins: Instruction) -> Instruction:
        dims = irreps_in1[ins.i_in1].ir.dim, irreps_in2[ins.i_in2].ir.dim, irreps_out[ins.i_out].ir.dim
        alpha = _irrep_factor(irrep_normalization, *dims)
        denominator = variance(ins) ** path_exponent * shares[ins.i_out]
        if denominator > 0.0:  # a segment reached only by empty paths keeps its raw factor
            alpha /= denominator
        alpha *= out_var[ins.i_out]
        alpha *= ins.path_weight
        if ins.has_weight:
            return ins.replace(
                path_weight=sqrt(alpha) ** gradient_exponent, weight_std=sqrt(alpha) ** (1.0 - gradient_exponent)
            )
        return ins.replace(path_weight=sqrt(alpha))

    return [normalized(ins) for ins in instructions]
