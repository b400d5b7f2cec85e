"""The Pallas executor of a :class:`~e3nn_fast.path_description.TensorProductDescription`.

Same signature and results as :func:`e3nn_fast.reference.tensor_product.tensor_product`.  The paths are split by
kernel family:

1. channel-aligned paths (:mod:`~e3nn_fast.kernels.channelwise` and :mod:`~e3nn_fast.kernels.elementwise`), with
   no weights, weights shared by all rows, or one weight vector per row: all of them in one ``pallas_call``;
2. fully connected ``uvw`` paths with shared weights (:mod:`~e3nn_fast.kernels.fully_connected`): one
   ``pallas_call``;
3. every other path (two channel indices outside ``uvw``, triangular ``u<v`` modes of ``tensor_square``, ``uvw``
   with a weight per row) runs through the reference's per-path einsum, so a description with mixed modes is still
   evaluated completely; the kernels take what they can.

Leading axes are broadcast and flattened into one row axis; the kernels grid over row blocks (the last block is
padded with zero rows).  Inputs are packed into the kernels' layout (:mod:`e3nn_fast.kernels.layout`) and the
output unpacked into chunks; paths whose inputs are ``None`` are skipped and output segments that nothing writes stay
``None``, as in the reference.  Derivatives of every order, ``jax.jvp`` and ``jax.vmap`` go through the kernels
(:mod:`e3nn_fast.kernels.multilinear`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from e3nn_fast.kernels import channelwise, elementwise, fully_connected
from e3nn_fast.kernels._aligned import aligned_plan
from e3nn_fast.kernels.layout import pack, unpack
from e3nn_fast.kernels.multilinear import contract
from e3nn_fast.path_description import Path, TensorProductDescription
from e3nn_fast.reference.tensor_product import path_output

Chunk = Optional[jnp.ndarray]


def kernel_family(path: Path, weight) -> Optional[str]:
    """``"aligned"``, ``"fully_connected"`` or ``None`` (reference) for one path with its weight."""
    if channelwise.qualifies(path) or elementwise.qualifies(path):
        return "aligned"
    if fully_connected.qualifies(path, weight):
        return "fully_connected"
    return None


def qualifies(description: TensorProductDescription, weights: Sequence[Chunk] = ()) -> bool:
    """Whether every path of ``description`` runs in a kernel (otherwise some run through the reference)."""
    weights = list(weights) or [None] * len(description.paths)
    return all(
        kernel_family(path, weight if weight is not None else _placeholder(path)) is not None
        for path, weight in zip(description.paths, weights)
    )


def _placeholder(path: Path):
    # Without the weights at hand, assume shared weights (the common case for uvw).
    return np.zeros(path.weight_shape) if path.has_weight else None


def tensor_product(
    description: TensorProductDescription,
    weights: Sequence[Chunk],
    chunks1: Sequence[Chunk],
    chunks2: Sequence[Chunk],
    *,
    interpret: bool = False,
) -> list[Chunk]:
    """Evaluate every path of ``description`` (kernels where they apply) and sum them per output segment.

    Args:
        description: the paths.
        weights: one entry per path: ``(..., *path.weight_shape)`` for a weighted path, ``None`` otherwise.
        chunks1, chunks2: the inputs' chunks ``(..., mul, 2l+1)`` or ``None``.
        interpret: run the kernels in Pallas interpret mode (CPU testing).

    Returns:
        One chunk per output segment, ``None`` where nothing writes.
    """
    if len(weights) != len(description.paths):
        raise ValueError(f"Expected {len(description.paths)} weight entries (one per path), got {len(weights)}")
    live = [
        index
        for index, path in enumerate(description.paths)
        if chunks1[path.in1] is not None and chunks2[path.in2] is not None and path.mul1 * path.mul2 * path.mul_out
    ]
    outputs: list[Chunk] = [None] * len(description.irreps_out)
    if not live:
        return outputs
    for index in live:
        path = description.paths[index]
        if path.has_weight and weights[index] is None:
            raise ValueError(f"Path {index} ({path.mode}) has weights but weights[{index}] is None")

    arrays = [chunks1[p.in1] for p in map(description.paths.__getitem__, live)]
    arrays += [chunks2[p.in2] for p in map(description.paths.__getitem__, live)]
    arrays += [weights[i] for i in live if weights[i] is not None]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.ones(()).dtype
    leading = jnp.broadcast_shapes(
        *[a.shape[:-2] for a in arrays[: 2 * len(live)]],
        *[weights[i].shape[: jnp.ndim(weights[i]) - len(description.paths[i].weight_shape)] for i in live
          if weights[i] is not None],
    )
    rows = math.prod(leading)

    def add(segment: int, chunk: jnp.ndarray) -> None:
        chunk = jnp.broadcast_to(chunk, leading + chunk.shape[-2:])
        outputs[segment] = chunk if outputs[segment] is None else outputs[segment] + chunk

    def as_rows(chunk: jnp.ndarray) -> jnp.ndarray:
        return jnp.broadcast_to(chunk, leading + chunk.shape[-2:]).reshape((rows,) + chunk.shape[-2:]).astype(dtype)

    families: dict[str, list[int]] = {"aligned": [], "fully_connected": []}
    for index in live:
        path = description.paths[index]
        family = kernel_family(path, weights[index])
        if path.coefficient == 0.0:
            continue  # contributes zeros (written below)
        if family is None:
            x1, x2 = chunks1[path.in1].astype(dtype), chunks2[path.in2].astype(dtype)
            weight = None if weights[index] is None else jnp.asarray(weights[index], dtype)
            add(path.out, path_output(path, weight, x1, x2))
        else:
            families[family].append(index)

    if families["aligned"]:
        indices = tuple(families["aligned"])
        kinds = tuple(_weight_kind(description.paths[i], weights[i]) for i in indices)
        plan = aligned_plan(description, indices, kinds)
        operands = []
        for slot in plan.slots:
            layout = plan.layouts.get(slot.name)
            if slot.name == "x1":
                operands.append(pack(layout, {s.index: as_rows(chunks1[s.index]) for s in layout.segments}, dtype))
            elif slot.name == "x2":
                operands.append(pack(layout, {s.index: as_rows(chunks2[s.index]) for s in layout.segments}, dtype))
            elif slot.name == "weights_batched":
                operands.append(pack(layout, {s.index: _batched_weight(weights[s.index], description.paths[s.index],
                                                                             leading, rows)
                                              for s in layout.segments}, dtype))
            elif slot.name == "weights_shared":
                operands.append(pack(layout, {s.index: jnp.reshape(weights[s.index], (s.mul, 1))
                                              for s in layout.segments}, dtype))
            else:
                operands.append(None)
        out_slot = plan.slot_index("out")
        result = contract(plan, out_slot, operands, interpret=interpret)
        for segment, chunk in unpack(plan.layouts["out"], result).items():
            add(segment, chunk.reshape(leading + chunk.shape[-2:]))

    if families["fully_connected"]:
        indices = tuple(families["fully_connected"])
        plan = fully_connected.fully_connected_plan(description, indices)
        x1 = pack(plan.layouts["x1"], {s.index: as_rows(chunks1[s.index]) for s in plan.layouts["x1"].segments}, dtype)
        x2 = pack(plan.layouts["x2"], {s.index: as_rows(chunks2[s.index]) for s in plan.layouts["x2"].segments}, dtype)
        w = fully_connected.pack_weights(plan, [jnp.asarray(weights[i], dtype) for i in indices])
        result = contract(plan, plan.slot_index("out"), [x1, x2, w, None], interpret=interpret)
        for segment, chunk in unpack(plan.layouts["out"], result).items():
            add(segment, chunk.reshape(leading + chunk.shape[-2:]))

    for index in live:
        path = description.paths[index]
        if outputs[path.out] is None:  # only zero-coefficient paths write here
            outputs[path.out] = jnp.zeros(leading + (path.mul_out, path.ir_out.dim), dtype)
    return outputs


def tensor_product_interpret(description, weights, chunks1, chunks2) -> list[Chunk]:
    """:func:`tensor_product` with the kernels in Pallas interpret mode (CPU testing)."""
    return tensor_product(description, weights, chunks1, chunks2, interpret=True)


def _weight_kind(path: Path, weight) -> Optional[str]:
    if not path.has_weight:
        return None
    return "batched" if jnp.ndim(weight) > len(path.weight_shape) else "shared"


def _batched_weight(weight, path: Path, leading: tuple[int, ...], rows: int) -> jnp.ndarray:
    """A per-row weight ``(..., *weight_shape)`` as ``(rows, size, 1)``: the weights of a channel-aligned path have
    at most one axis longer than 1 (the channel), so flattening them keeps the channel order."""
    weight = jnp.asarray(weight)
    axes = len(path.weight_shape)
    weight = weight.reshape(weight.shape[: weight.ndim - axes] + (path.num_weights,))
    return jnp.broadcast_to(weight, leading + (path.num_weights,)).reshape(rows, path.num_weights, 1)
