"""Tensor products of IrrepsArrays: ``tensor_product``, ``elementwise_tensor_product``, ``tensor_square`` and
``tensor_product_with_spherical_harmonics``, with e3nn-jax's signatures and numbers.

Each function turns its inputs' irreps into a cached :class:`~e3nn_fast.path_description.TensorProductDescription`
and hands the chunks to the executor the dispatcher picks (reference, optimised jnp or Pallas).  Chunks that are
known to be zero (``None``) are skipped by every executor, and their outputs stay ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import jax.numpy as jnp

from e3nn_fast import dispatch
from e3nn_fast._eager import compiled_when_eager
from e3nn_fast.configuration import config
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array, from_chunks
from e3nn_fast.irreps_only import accepts_bare_irreps
from e3nn_fast.path_description import (
    IRREP_NORMALIZATIONS,
    TensorProductDescription,
    describe_elementwise_tensor_product,
    describe_full_tensor_product,
    describe_tensor_square,
)
from e3nn_fast.reference import tensor_product as reference_tp

dispatch.register("tensor_product", "reference", reference_tp.tensor_product)


def run_paths(description: TensorProductDescription, weights, chunks1, chunks2, leading_shape) -> list:
    """Evaluate ``description`` with the executor the dispatcher picks for this size."""
    run = dispatch.executor("tensor_product", size=dispatch.problem_size(*leading_shape, description.irreps_out.dim))
    return run(description, weights, chunks1, chunks2)


def _prepare_inputs(input1, input2) -> tuple[IrrepsArray, IrrepsArray, tuple[int, ...]]:
    """As IrrepsArrays of one float dtype, broadcast to common leading axes."""
    input1, input2 = as_irreps_array(input1), as_irreps_array(input2)
    dtype = jnp.result_type(input1.dtype, input2.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.ones(()).dtype  # integers are promoted to the default float, as in e3nn-jax
    input1, input2 = input1.astype(dtype), input2.astype(dtype)
    try:
        leading_shape = jnp.broadcast_shapes(input1.shape[:-1], input2.shape[:-1])
    except ValueError as error:
        raise ValueError(
            f"Tensor product inputs have leading shapes {input1.shape[:-1]} and {input2.shape[:-1]} "
            "that do not broadcast"
        ) from error
    input1 = input1.broadcast_to(leading_shape + (-1,))
    input2 = input2.broadcast_to(leading_shape + (-1,))
    return input1, input2, leading_shape


def _as_filter(filter_ir_out) -> Optional[tuple[Irrep, ...]]:
    """``filter_ir_out`` as a hashable tuple of irreps (or None); malformed irreps raise ValueError."""
    if filter_ir_out is None:
        return None
    if isinstance(filter_ir_out, str):
        filter_ir_out = Irreps(filter_ir_out)
    if isinstance(filter_ir_out, Irrep):
        filter_ir_out = [filter_ir_out]
    if isinstance(filter_ir_out, Irreps):
        return tuple(ir for _, ir in filter_ir_out)
    if not isinstance(filter_ir_out, Iterable):
        raise TypeError(
            f"filter_ir_out must be None, irreps (e.g. \"0e + 1o\") or a list of irreps, got "
            f"{type(filter_ir_out).__name__} {filter_ir_out!r}"
        )
    return tuple(Irrep(ir) for ir in filter_ir_out)


def _irrep_normalization(value: Optional[str]) -> str:
    value = config("irrep_normalization") if value is None else value
    if value not in IRREP_NORMALIZATIONS:
        # (tensor_square in e3nn-jax asserts on it: the class is also an AssertionError)
        raise InvalidValueError(f"irrep_normalization={value!r} is not one of {IRREP_NORMALIZATIONS}")
    return value


def _no_weights(description: TensorProductDescription) -> list:
    return [None] * len(description.paths)


@accepts_bare_irreps((0, 1))
@compiled_when_eager
def tensor_product(
    input1: IrrepsArray,
    input2: IrrepsArray,
    *,
    filter_ir_out=None,
    irrep_normalization: Optional[str] = None,
    regroup_output: bool = True,
) -> IrrepsArray:
    """Tensor product of two IrrepsArrays reduced into irreps, keeping every pair of channels apart.

    Every segment ``mul1 x ir1`` of ``input1`` is coupled with every segment ``mul2 x ir2`` of ``input2`` into each
    allowed ``ir_out`` in ``ir1 * ir2``, giving ``mul1 * mul2`` output channels.

    Args:
        input1, input2: the inputs (leading axes broadcast); bare irreps return the output irreps instead.
        filter_ir_out: keep only these output irreps.
        irrep_normalization: ``"component"`` (default from ``config``), ``"norm"`` or ``"none"``.
        regroup_output: regroup the inputs first and the output at the end (sorted, equal irreps merged).

    Returns:
        IrrepsArray with sorted output irreps.
    """
    input1, input2, leading_shape = _prepare_inputs(input1, input2)
    filter_ir_out = _as_filter(filter_ir_out)
    irrep_normalization = _irrep_normalization(irrep_normalization)
    if regroup_output:
        input1, input2 = input1.regroup(), input2.regroup()
    description = describe_full_tensor_product(input1.irreps, input2.irreps, filter_ir_out, irrep_normalization)
    chunks = run_paths(description, _no_weights(description), input1.chunks, input2.chunks, leading_shape)
    output = from_chunks(description.irreps_out, chunks, leading_shape, input1.dtype).sort()
    return output.regroup() if regroup_output else output


def _aligned_irreps(irreps1: Irreps, irreps2: Irreps) -> tuple[Irreps, Irreps]:
    """Split segments so that both irreps have segments of equal multiplicities, in the same order."""
    if irreps1.num_irreps != irreps2.num_irreps:
        raise ValueError(
            "elementwise_tensor_product pairs the irreps of its two inputs one by one, so their number of irreps "
            f"must agree; got {irreps1.num_irreps} ({irreps1}) and {irreps2.num_irreps} ({irreps2}). "
            "Filter or pad one input (e.g. with IrrepsArray.filter) so that both have as many irreps"
        )
    out1, out2 = [], []
    rest1 = [(mul, ir) for mul, ir in irreps1 if mul > 0]
    rest2 = [(mul, ir) for mul, ir in irreps2 if mul > 0]
    while rest1 and rest2:
        (mul1, ir1), (mul2, ir2) = rest1[0], rest2[0]
        mul = min(mul1, mul2)
        out1.append((mul, ir1))
        out2.append((mul, ir2))
        rest1[0], rest2[0] = (mul1 - mul, ir1), (mul2 - mul, ir2)
        if rest1[0][0] == 0:
            rest1.pop(0)
        if rest2[0][0] == 0:
            rest2.pop(0)
    return Irreps(out1), Irreps(out2)


@accepts_bare_irreps((0, 1))
@compiled_when_eager
def elementwise_tensor_product(
    input1: IrrepsArray,
    input2: IrrepsArray,
    *,
    filter_ir_out=None,
    irrep_normalization: Optional[str] = None,
) -> IrrepsArray:
    """Channel-by-channel tensor product: the ``n``-th irrep of ``input1`` with the ``n``-th irrep of ``input2``.

    The irreps of the two inputs are paired in order, so both need the same ``irreps.num_irreps``.  The output
    irreps are neither sorted nor simplified (as in e3nn-jax).  This is ``input1 * input2`` for IrrepsArrays.
    """
    input1, input2, leading_shape = _prepare_inputs(input1, input2)
    filter_ir_out = _as_filter(filter_ir_out)
    irrep_normalization = _irrep_normalization(irrep_normalization)
    irreps1, irreps2 = _aligned_irreps(input1.irreps, input2.irreps)
    input1, input2 = input1.rechunk(irreps1), input2.rechunk(irreps2)
    description = describe_elementwise_tensor_product(irreps1, irreps2, filter_ir_out, irrep_normalization)
    chunks = run_paths(description, _no_weights(description), input1.chunks, input2.chunks, leading_shape)
    return from_chunks(description.irreps_out, chunks, leading_shape, input1.dtype)


@accepts_bare_irreps((0,))
@compiled_when_eager
def tensor_square(
    input: IrrepsArray,
    *,
    irrep_normalization: Optional[str] = None,
    normalized_input: bool = False,
    regroup_output: bool = True,
) -> IrrepsArray:
    """The tensor product of an IrrepsArray with itself, keeping only the independent products.

    Products of two different channels appear once (``u < v``); a channel with itself only feeds the symmetric
    (even ``l``) outputs.  ``normalized_input=True`` assumes every irrep of the input has norm exactly 1.
    """
    input = as_irreps_array(input)
    if not jnp.issubdtype(input.dtype, jnp.inexact):
        input = input.astype(jnp.ones(()).dtype)
    irrep_normalization = _irrep_normalization(irrep_normalization)
    if regroup_output:
        input = input.regroup()
    description = describe_tensor_square(input.irreps, irrep_normalization, bool(normalized_input))
    leading_shape = input.shape[:-1]
    chunks = run_paths(description, _no_weights(description), input.chunks, input.chunks, leading_shape)
    output = from_chunks(description.irreps_out, chunks, leading_shape, input.dtype).sort()
    return output.regroup() if regroup_output else output


@compiled_when_eager
def tensor_product_with_spherical_harmonics(input: IrrepsArray, vector: IrrepsArray, degree: int) -> IrrepsArray:
    """``tensor_product(input, spherical_harmonics(range(degree + 1), vector, True))`` with the output regrouped.

    The spherical harmonics have multiplicity 1, so every path is channelwise in ``input``'s channels: the
    dispatcher can run it through the channelwise kernels.
    """
    from e3nn_fast.harmonics import spherical_harmonics

    input = as_irreps_array(input)
    vector = as_irreps_array(vector)
    if vector.irreps not in (Irreps("1o"), Irreps("1e")):
        raise ValueError(
            f"tensor_product_with_spherical_harmonics: vector must have irreps 1o or 1e, got {vector.irreps}"
        )
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"tensor_product_with_spherical_harmonics: degree must be an int >= 0, got {degree!r}")
    sh = spherical_harmonics(list(range(degree + 1)), vector, True)
    return tensor_product(input, sh, regroup_output=False).regroup()


__all__ = [
    "tensor_product",
    "elementwise_tensor_product",
    "tensor_square",
    "tensor_product_with_spherical_harmonics",
    "run_paths",
]

# Pallas kernels (e3nn_fast.kernels imports Pallas only when an executor is first called).
from e3nn_fast import kernels as _kernels  # noqa: E402

dispatch.register("tensor_product", "pallas", _kernels.tensor_product_pallas)
dispatch.register("tensor_product", "pallas-interpret", _kernels.tensor_product_pallas_interpret)

# Optimised pure-jnp executor (CG contraction first, fused broadcast products): the default on CPU.
from e3nn_fast.xla.tensor_product import tensor_product as _xla_tensor_product  # noqa: E402

dispatch.register("tensor_product", "jnp", _xla_tensor_product)
