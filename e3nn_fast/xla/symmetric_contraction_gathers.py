"""The symmetric contraction's multilinear form evaluated as a few whole-array gathers (the jnp executor's program).

One evaluation computes ``dF/d(out_slot)`` of a :class:`~e3nn_fast.kernels.symmetric_contraction_plan.
SymmetricContractionForm`: per output plane, the sum over its terms of ``value * prod(input planes)``.  Unrolling
that sum term by term (one jnp op per product, as the Pallas kernels do inside a tile) makes programs of thousands of
ops for MACE's forms (``0e+1o+2e+3o``, orders 1-3: 1301 terms); XLA then needs 10-30 s to compile a training step.
Here the terms become index tables built once per (form, output slot, required slots) with NumPy, and the
evaluation is a fixed handful of gathers along the plane axis, whatever the number of terms:

1. ``a``: every input plane stacked, planes first (one slab of the rows' channels per plane, flat or
   ``(rows, channels)``), plus a plane of ones.
2. Every term's input factors, as indices into ``a`` sorted ascending, padded with the ones plane to one depth
   ``D``.  Shared prefixes are multiplied once, level by level: ``P1 = a`` and
   ``Pj = P(j-1)[parent] * a[leaf]`` over the distinct prefixes of length ``j`` (MACE's cubic monomials
   ``x_i x_j x_l`` are shared by every weight plane and output plane that uses them).
3. The last factor: the terms, grouped by output plane and padded with zero-valued terms to bins of
   :data:`BIN` terms, are summed bin-wise, ``s = sum_b P[parent[:, b]] * a[leaf[:, b]] * value[:, b]``, unrolled
   over the ``BIN`` positions (unrolled sums are fused elementwise loops; XLA's CPU reductions over a middle axis are
   several times slower).
4. ``out[p] = sum_j s[table[p, j]]``, ``table`` listing each output plane's bins, padded with an all-zero bin.

Planes first keeps every gather a copy of whole contiguous slabs, which is why gathers are cheap here; the executor
runs this on chunks of a few rows so that the slabs stay in cache (:mod:`e3nn_fast.xla.symmetric_contraction`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GatherProgram", "gather_program", "run_gather_program", "BIN"]

# Terms summed per bin by one unrolled elementwise loop.  16 balances the loop length against the zero padding of
# output planes with few terms (measured on 2 CPU cores at MACE size: 16 beat 8 and 32).
BIN = 16


@dataclasses.dataclass(frozen=True, eq=False)
class GatherProgram:
    """Index tables of one evaluation (NumPy int32 indices, float64 term values).

    ``input_planes[i]``: plane count of the ``i``-th input (slots in order, the output slot skipped).
    ``levels``: ``(parent, leaf)`` per prefix length ``2 .. D-1``: prefix ``k`` of that length is prefix
    ``parent[k]`` of the previous length times plane ``leaf[k]`` of ``a``.
    ``parent``, ``leaf``, ``value``: ``(bins, bin_size)``, the last factor of every term (zero ``value`` pads).
    ``table``: ``(out_planes, bins_per_plane)``, bin indices per output plane; index ``bins`` is the zero bin.
    """

    input_planes: tuple
    levels: tuple
    parent: np.ndarray
    leaf: np.ndarray
    value: np.ndarray
    table: np.ndarray

    @property
    def out_planes(self) -> int:
        return self.table.shape[0]


def _terms_by_output_plane(form, out_slot: int, require: frozenset):
    """``{(out plane, sorted factor indices into a): value}`` over the terms involving ``require | {out_slot}``."""
    inputs = [s for s in range(len(form.slots)) if s != out_slot]
    offsets = dict(zip(inputs, np.cumsum([0] + [form.planes[s] for s in inputs]).tolist()))
    merged: dict = {}
    for value, plane, others in form.output_terms(out_slot, require):
        key = (plane, tuple(sorted(offsets[s] + p for s, p in others)))
        merged[key] = merged.get(key, 0.0) + value
    return {key: v for key, v in merged.items() if v != 0.0}, sum(form.planes[s] for s in inputs)


def _prefix_levels(factor_lists: Sequence[tuple], depth: int):
    """Deduplicated prefixes: ``levels`` as in :class:`GatherProgram` and each term's prefix id of length
    ``depth - 1`` (length-1 prefixes are the planes of ``a`` themselves)."""
    ids = [f[0] for f in factor_lists]
    levels = []
    for j in range(1, depth - 1):
        keys = sorted(set(zip(ids, (f[j] for f in factor_lists))))
        index = {key: k for k, key in enumerate(keys)}
        levels.append((np.array([p for p, _ in keys], np.int32), np.array([l for _, l in keys], np.int32)))
        ids = [index[(p, f[j])] for p, f in zip(ids, factor_lists)]
    return tuple(levels), ids


@functools.lru_cache(maxsize=1024)
def gather_program(form, out_slot: int, require: frozenset) -> GatherProgram:
    """The tables evaluating ``dF/d(out_slot)`` over the terms that involve every slot of ``require``."""
    terms, ones = _terms_by_output_plane(form, out_slot, require)
    inputs = tuple(form.planes[s] for s in range(len(form.slots)) if s != out_slot)
    out_planes = form.planes[out_slot]
    depth = max([2] + [len(fs) for _, fs in terms])  # at least 2: one prefix level and a last factor
    keys = sorted(terms)  # by output plane, then factors: neighbouring terms share prefixes
    factor_lists = [fs + (ones,) * (depth - len(fs)) for _, fs in keys]
    levels, prefix = _prefix_levels(factor_lists, depth)
    counts = np.bincount([p for p, _ in keys], minlength=out_planes)
    bin_size = int(min(BIN, max(1, counts.max(initial=1))))
    bins_per_plane = -(-counts // bin_size)
    total_bins = int(bins_per_plane.sum())
    parent = np.zeros((total_bins, bin_size), np.int32)
    leaf = np.zeros((total_bins, bin_size), np.int32)
    value = np.zeros((total_bins, bin_size), np.float64)
    table = np.full((out_planes, max(1, int(bins_per_plane.max(initial=1)))), total_bins, np.int32)
    first_bin = np.concatenate([[0], np.cumsum(bins_per_plane)])
    filled = np.zeros(out_planes, np.int64)
    for key, factors, p in zip(keys, factor_lists, prefix):
        plane = key[0]
        position = first_bin[plane] * bin_size + filled[plane]
        filled[plane] += 1
        parent.flat[position], leaf.flat[position], value.flat[position] = p, factors[-1], terms[key]
    for plane in range(out_planes):
        table[plane, : bins_per_plane[plane]] = np.arange(first_bin[plane], first_bin[plane + 1])
    return GatherProgram(inputs, levels, parent, leaf, value, table)


def run_gather_program(program: GatherProgram, inputs: Sequence[jax.Array]) -> jax.Array:
    """Evaluate ``program`` on planes-first inputs ``(planes_i, *slab)`` (a slab: ``(rows, channels)`` or flat
    lanes, the same for every input); returns ``(out_planes, *slab)`` in the inputs' (common) dtype."""
    dtype = jnp.result_type(*inputs)
    # ones and zeros made from an input keep its sharding (a mesh with explicit axes refuses to mix shardings)
    a = jnp.concatenate([x.astype(dtype) for x in inputs] + [jnp.ones_like(inputs[0][:1], dtype)], axis=0)
    prefix = a
    for parent, leaf in program.levels:
        prefix = prefix[parent] * a[leaf]
    binned = None
    for b in range(program.parent.shape[1]):
        weight = jnp.asarray(program.value[:, b].reshape((-1,) + (1,) * (a.ndim - 1)), dtype)
        term = prefix[program.parent[:, b]] * a[program.leaf[:, b]] * weight
        binned = term if binned is None else binned + term
    binned = jnp.concatenate([binned, jnp.zeros_like(binned[:1])], axis=0)  # the zero bin that pads the table
    out = None
    for j in range(program.table.shape[1]):
        part = binned[program.table[:, j]]
        out = part if out is None else out + part
    return out
