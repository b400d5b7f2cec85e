"""Pallas kernels of MACE's symmetric contraction (per-species weights), with gradient kernels of any order.

The contraction is evaluated as the multilinear form of :mod:`e3nn_fast.kernels.symmetric_contraction_plan`
(``x`` filling one slot per order, the per-node weights, the output), bound to the primitive of
:mod:`e3nn_fast.kernels.multilinear`: the forward is ``dF/d(out)``, ``d/dx`` is the sum of ``dF/dx_a`` over the
``x`` slots, ``d/dw`` is ``dF/dw``, and every derivative of those again is a kernel of this family (forces-style
reverse over reverse, ``jax.hessian``, ``jax.jvp``, ``vmap``).

Why the primitive and not ``jax.custom_vjp``: forces need ``d out / d x`` and then the gradient of a loss on the
forces w.r.t. the weights (reverse over reverse), ``jax.hessian`` is forward over reverse, and ``custom_vjp``
refuses forward mode.  The primitive covers every order and mode, and each gradient kernel is the same kernel code
with another output slot.  The price: ``d/dx`` is one kernel call per ``x`` slot (``max(orders)`` calls) instead
of one fused pass over the symmetric terms.

Kernel layout: every slot is ``(nodes, planes, channels)`` with planes (input components, weight rows, output
components) and channels padded to powers of two (Triton), passed to the primitive flattened as ``(nodes, planes *
channels)``.  The grid runs over node blocks x channel blocks; each program loads ``(node block, channel block)``
planes and evaluates the factorised sum of every output plane, unrolled at trace time from the sparse basis (no
dense basis is ever contracted).  Per-species weights are gathered per node (``w[species]``, packed) by XLA before
the kernel; the gather's transpose (a scatter-add over species) sums the per-node weight gradients.  Products
accumulate in float32 for 16-bit inputs.

GPU lowering family: ``"symmetric_contraction"`` once it is in ``_pallas_compat.LOWERING`` (Triton); until then
the kernels use the ``"aligned"`` family's parameters (:data:`FAMILY`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from e3nn_fast.kernels import _pallas_compat as compat
from e3nn_fast.kernels import tuning
from e3nn_fast.kernels._aligned import compute_dtype
from e3nn_fast.kernels.layout import pad_rows
from e3nn_fast.kernels.multilinear import contract
from e3nn_fast.kernels.symmetric_contraction_plan import SymmetricContractionForm, emit, programs
from e3nn_fast.reference.symmetric_contraction import gather_species
from e3nn_fast.symmetric_tensor_product import SymmetricContractionDescription

# The family's own GPU lowering entry once _pallas_compat has it (LOWERING and TRITON_WARPS), else "aligned"'s.
_OWN_FAMILY = "symmetric_contraction" in compat.LOWERING and "symmetric_contraction" in compat.TRITON_WARPS
FAMILY = "symmetric_contraction" if _OWN_FAMILY else "aligned"

# Elements per (node block, channel block) plane: few enough that the unrolled polynomial stays in registers.  At
# MACE-large size (128 channels of 0e+1o+2e+3o, orders 1-3, 5,000 nodes; 4 warps), with every factor loaded once per
# program (LOAD_GROUP_PLANES), 128 (one node x 128 channels: one element per thread) needs 72-248 registers and no
# spill; 256 spilled in the forward kernel (bench/results/sm90/2026-12-06-symmetric-contraction.txt).
TILE_ELEMENTS = 128
MAX_CHANNEL_BLOCK = 128
# Consecutive output planes evaluated from one set of loads (None: all of a program's planes).  Loading each factor
# once per program, rather than once per output plane that uses it (knob value 1, the kernel before 2026-12-06),
# keeps more planes live (registers, hence 1-node planes) but issues 97 loads instead of 552 in the MACE-large
# forward, and Triton's coalescing pass, which walks the whole kernel once per load, compiled each kernel of the
# family in 3-8 s instead of 24-30 s (offline, 2 CPU cores): on the first GPU session the family's timing part
# did not finish compiling within its 55 s.
LOAD_GROUP_PLANES = None


class SymmetricContractionPlan(SymmetricContractionForm):
    """The form with power-of-two plane counts, evaluated by the Pallas kernel of :func:`run_kernel`."""

    family = FAMILY

    def __init__(self, description: SymmetricContractionDescription, channels: int):
        super().__init__(description, channels, padded=True)

    def evaluate(self, out_slot, require, operands, interpret):
        return run_kernel(self, out_slot, programs(self, out_slot, frozenset(require)), operands, interpret)


@functools.lru_cache(maxsize=256)
def symmetric_contraction_plan(description: SymmetricContractionDescription, channels: int) -> SymmetricContractionPlan:
    return SymmetricContractionPlan(description, channels)


# --- the kernel --------------------------------------------------------------------------------------------------


def _make_kernel(programs, out_planes: int, tile, dtype, load_group: int):
    """The kernel evaluating ``programs``; each run of ``load_group`` output planes loads every factor it uses once."""

    def kernel(*refs):
        *inputs, out_ref = refs

        written = set()
        for index, (plane, items) in enumerate(programs):
            if index % load_group == 0:
                cache: dict = {}

            def load(factor, cache=cache):
                if factor not in cache:
                    position, input_plane = factor
                    cache[factor] = inputs[position][:, input_plane, :].astype(dtype)
                return cache[factor]

            value = jnp.broadcast_to(jnp.asarray(emit(items, load), dtype), tile)
            out_ref[:, plane, :] = value.astype(out_ref.dtype)
            written.add(plane)
        for plane in range(out_planes):
            if plane not in written:
                out_ref[:, plane, :] = jnp.zeros(tile, out_ref.dtype)

    return kernel


def blocks_for(rows: int, channels: int) -> tuple[int, int]:
    """(node block, channel block): powers of two, ~``TILE_ELEMENTS`` per plane."""
    channel_block = min(channels, tuning.value("symmetric_contraction.max_channel_block", MAX_CHANNEL_BLOCK))
    node_block = max(1, tuning.value("symmetric_contraction.tile_elements", TILE_ELEMENTS) // channel_block)
    node_block = min(node_block, compat.next_power_of_2(max(rows, 1)))
    return node_block, channel_block


def run_kernel(plan: SymmetricContractionPlan, out_slot: int, programs, operands, interpret: bool) -> jnp.ndarray:
    """One ``pallas_call`` over node blocks x channel blocks evaluating ``programs`` into ``out_slot``."""
    in_slots = [s for s in range(len(plan.slots)) if s != out_slot]
    inputs = [operands[s] for s in in_slots]
    dtype = jnp.result_type(*inputs)
    accumulate = compute_dtype(dtype)
    rows = inputs[0].shape[0]
    channels = plan.channels
    out_planes = plan.planes[out_slot]
    if rows == 0:
        return jnp.zeros((0, out_planes * channels), dtype)
    node_block, channel_block = blocks_for(rows, channels)
    node_blocks = -(-rows // node_block)
    padded = node_blocks * node_block
    args, specs = [], []
    for s, x in zip(in_slots, inputs):
        args.append(pad_rows(x, padded).reshape(padded, plan.planes[s], channels))
        specs.append(compat.BlockSpec((node_block, plan.planes[s], channel_block), lambda i, j: (i, 0, j)))
    load_group = tuning.value("symmetric_contraction.load_group_planes", LOAD_GROUP_PLANES) or max(1, len(programs))
    out = compat.pallas_call(
        _make_kernel(programs, out_planes, (node_block, channel_block), accumulate, load_group),
        family=FAMILY,
        interpret=interpret,
        grid=(node_blocks, channels // channel_block),
        in_specs=specs,
        out_specs=compat.BlockSpec((node_block, out_planes, channel_block), lambda i, j: (i, 0, j)),
        out_shape=jax.ShapeDtypeStruct((padded, out_planes, channels), dtype),
        name=f"e3nn_symmetric_contraction_{plan.slots[out_slot].name}",
    )(*args)
    return out[:rows].reshape(rows, out_planes * channels)


# --- the executor ------------------------------------------------------------------------------------------------


def _pack(x: jnp.ndarray, planes: int, channels: int) -> jnp.ndarray:
    """``(rows, channels_true, planes_true)`` -> ``(rows, planes * channels)`` (plane-major, zero padded)."""
    x = jnp.swapaxes(x, -1, -2)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, planes - x.shape[-2]), (0, channels - x.shape[-1])])
    return x.reshape(x.shape[:-2] + (planes * channels,))


def symmetric_contraction(
    description: SymmetricContractionDescription,
    x: jnp.ndarray,
    species: jnp.ndarray,
    weights: Sequence[jnp.ndarray],
    *,
    interpret: bool = False,
) -> jnp.ndarray:
    """Same signature and result as the reference executor; ``interpret`` runs the kernels in interpret mode."""
    nodes, num_channel, _ = x.shape
    channels = compat.next_power_of_2(num_channel)
    plan = symmetric_contraction_plan(description, channels)
    order = max(description.orders)
    packed_x = _pack(x, plan.planes[0], channels)
    # (num_species, channels, sum of mul) -> packed rows, then each node's row: the kernel sees per-node weights
    w = jnp.swapaxes(jnp.concatenate(weights, axis=1), 1, 2).astype(x.dtype)
    packed_w = gather_species(_pack(w, plan.planes[order], channels), species)
    operands = [packed_x] * order + [packed_w, None]
    out = contract(plan, order + 1, operands, interpret=interpret)
    out = out.reshape(nodes, plan.planes[order + 1], channels)[:, : description.irreps_out.dim, :num_channel]
    return jnp.swapaxes(out, -1, -2)
