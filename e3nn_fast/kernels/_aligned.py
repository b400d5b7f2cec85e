"""The channel-aligned kernel engine shared by the channelwise and elementwise families.

A path is *channel-aligned* when, after dropping multiplicities equal to 1, at most one channel index remains and
every operand (input 1, input 2, output, weights) either carries it or has a single channel: channelwise paths
(``uvu``/``uvuv`` with ``mul2 = 1``, ``uvv``/``uvuv`` with ``mul1 = 1``), elementwise paths (``uuu``, and ``uuw``
into one output channel), and the degenerate ``uvw`` with ``mul1 = mul2 = 1``.  Every such path is a sum, over the
non-zero Clebsch-Gordan entries ``(i, j, k)``, of *lane-wise* products of component planes (see
:mod:`e3nn_fast.kernels.layout`)::

    out[:, plane k] += c_ijk * x1[:, plane i] * x2[:, plane j] * w[:, channels]

where a mul-1 operand is a single column broadcast over the lanes.  These products are the *terms* of a
:class:`~e3nn_fast.kernels.multilinear.MultilinearPlan`; the sparse CG blocks are unrolled into terms at trace time
(no dense CG contraction anywhere), and all paths of a call become one ``pallas_call`` over row blocks.

The same kernel builder evaluates any slot as the output, which is what the derivatives need:

* output slot batched, same width as the product: an ordinary product (forward; ``dx1`` of a channelwise path);
* output slot with one column while the product has lanes: a lane reduction (``dx2`` of a channelwise path, the
  ``uuw`` forward, ``dw`` of the degenerate ``uvw``);
* output slot shared (weights without a batch axis): each program writes the sum over its row block, and the
  blocks' partial sums are added outside (no atomics: they are wrong in interpret mode for repeated indices, and a
  deterministic sum is better anyway).

Products are accumulated in float32 for 16-bit inputs (float64 for float64 inputs) and stored in the input dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from e3nn_fast.kernels import _pallas_compat as compat
from e3nn_fast.kernels.layout import OperandLayout, block_rows, build_layout, pad_rows
from e3nn_fast.kernels.multilinear import MultilinearPlan, Slot
from e3nn_fast.path_description import CONNECTION_MODES, TRIANGULAR_MODES, Path, TensorProductDescription


@dataclasses.dataclass(frozen=True)
class Factor:
    """One plane of one slot: columns ``[column, column + width)``; ``width`` is 1 for a mul-1 operand."""

    slot: int
    column: int
    width: int


@dataclasses.dataclass(frozen=True)
class Term:
    coefficient: float
    factors: tuple[Factor, ...]  # at most one per slot


def channel_roles(path: Path) -> Optional[tuple[bool, bool, bool, bool]]:
    """Which of (input 1, input 2, output, weights) carry the path's one channel index, or ``None`` when the path
    is not channel-aligned (two independent channel indices, or a triangular ``u<v`` mode)."""
    if path.mode in TRIANGULAR_MODES:
        return None
    a, b, c, w = CONNECTION_MODES[path.mode]
    sizes = {"u": path.mul1, "v": path.mul2, "w": path.mul_out}
    if path.mode == "uuw" and not path.has_weight:
        c = ""  # no weights: the channels are summed into the single output channel
    letters = [{x for x in s if sizes[x] > 1} for s in (a, b, c, w if path.has_weight else "")]
    if len(set().union(*letters)) > 1:
        return None
    return tuple(bool(s) for s in letters)  # type: ignore[return-value]


def compute_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype: float32 for 16-bit floats, the dtype itself otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


class AlignedPlan(MultilinearPlan):
    """Terms over the slots ``x1``, ``x2``, optional ``weights_batched`` / ``weights_shared``, and ``out``."""

    family = "aligned"

    def __init__(self, slots: tuple[Slot, ...], terms: tuple[Term, ...], layouts: dict[str, OperandLayout]):
        self.slots = slots
        self.terms = terms
        self.layouts = layouts
        self._slot_sets = tuple(frozenset(f.slot for f in term.factors) for term in terms)

    def has_terms(self, out_slot: int, require: frozenset) -> bool:
        needed = require | {out_slot}
        return any(needed <= slots for slots in self._slot_sets)

    def evaluate(self, out_slot, require, operands, interpret):
        groups = _product_groups(self, out_slot, frozenset(require))
        return run_aligned_kernel(self, out_slot, groups, operands, interpret)


# --- building plans from a description ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def aligned_plan(description: TensorProductDescription, path_indices: tuple[int, ...], weight_kinds: tuple) -> AlignedPlan:
    """The plan of the channel-aligned paths ``path_indices`` of ``description``.

    ``weight_kinds[n]`` is ``None`` (unweighted), ``"shared"`` or ``"batched"`` for path ``path_indices[n]``; the
    packed weight slots hold one segment per weighted path, keyed by its index in ``description.paths``.
    """
    paths = [description.paths[p] for p in path_indices]
    roles = [channel_roles(path) for path in paths]
    layouts = {
        "x1": build_layout([(p.in1, p.mul1, p.ir1.dim) for p in paths]),
        "x2": build_layout([(p.in2, p.mul2, p.ir2.dim) for p in paths]),
        "out": build_layout([(p.out, p.mul_out, p.ir_out.dim) for p in paths]),
    }
    for kind in ("batched", "shared"):
        entries = [(index, path.num_weights, 1) for index, path, k in zip(path_indices, paths, weight_kinds) if k == kind]
        if entries:
            layouts[f"weights_{kind}"] = build_layout(entries)
    names = [name for name in ("x1", "x2", "weights_batched", "weights_shared", "out") if name in layouts]
    slots = tuple(Slot(name, name != "weights_shared", layouts[name].columns) for name in names)
    slot_of = {name: index for index, name in enumerate(names)}

    terms = []
    for index, path, role, kind in zip(path_indices, paths, roles, weight_kinds):
        assert role is not None, f"path {path} is not channel-aligned"
        seg1 = layouts["x1"].segment(path.in1)
        seg2 = layouts["x2"].segment(path.in2)
        seg_out = layouts["out"].segment(path.out)
        weight = None
        if kind is not None:
            seg_w = layouts[f"weights_{kind}"].segment(index)
            weight = Factor(slot_of[f"weights_{kind}"], seg_w.column(0), seg_w.width)
        for i, j, k, value in zip(*path.sparse_cg()):
            factors = [
                Factor(slot_of["x1"], seg1.column(int(i)), seg1.width),
                Factor(slot_of["x2"], seg2.column(int(j)), seg2.width),
                Factor(slot_of["out"], seg_out.column(int(k)), seg_out.width),
            ]
            if weight is not None:
                factors.append(weight)
            terms.append(Term(float(value), tuple(factors)))
    return AlignedPlan(slots, tuple(terms), layouts)


# --- the kernel --------------------------------------------------------------------------------------------------

# A group: every product written into one output plane.  Input factors are (input position, column, width).
Group = tuple[int, int, tuple[Factor, ...], tuple[tuple[float, tuple[tuple[int, int, int], ...]], ...]]


@functools.lru_cache(maxsize=2048)
def _product_groups(plan: AlignedPlan, out_slot: int, require: frozenset):
    """The terms involving ``out_slot`` and ``require``, grouped by output plane, with like products merged and
    the factors common to a whole group pulled out (e.g. a path's weight)."""
    position = {slot: pos for pos, slot in enumerate(i for i in range(len(plan.slots)) if i != out_slot)}
    needed = require | {out_slot}
    grouped: dict[tuple[int, int], dict[tuple, float]] = {}
    for term, slots in zip(plan.terms, plan._slot_sets):
        if not needed <= slots:
            continue
        out = next(f for f in term.factors if f.slot == out_slot)
        others = tuple(sorted((position[f.slot], f.column, f.width) for f in term.factors if f.slot != out_slot))
        products = grouped.setdefault((out.column, out.width), {})
        products[others] = products.get(others, 0.0) + term.coefficient
    groups = []
    for (column, width), products in sorted(grouped.items()):
        items = [(c, others) for others, c in products.items() if c != 0.0]
        common = set(items[0][1]) if items else set()
        for _, others in items[1:]:
            common &= set(others)
        common = tuple(sorted(common)) if len(items) > 1 else ()
        items = tuple((c, tuple(f for f in others if f not in common)) for c, others in items)
        groups.append((column, width, common, items))
    return tuple(groups)


def _zero_runs(columns: int, covered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Column runs ``(start, size)`` of ``[0, columns)`` not covered, split into power-of-two sizes (Triton)."""
    mask = [False] * columns
    for start, size in covered:
        mask[start : start + size] = [True] * size
    runs, column = [], 0
    while column < columns:
        if mask[column]:
            column += 1
            continue
        end = column
        while end < columns and not mask[end]:
            end += 1
        size = end - column
        while size:
            piece = 1 << (size.bit_length() - 1)
            runs.append((column, piece))
            column += piece
            size -= piece
    return runs


def _make_kernel(groups, out_columns: int, out_rows: int, out_batched: bool, dtype):
    """The kernel body: every group's products, reduced to the output plane's shape and stored."""
    runs = _zero_runs(out_columns, [(column, width) for column, width, _, _ in groups])

    def load(refs, cache, factor):
        if factor not in cache:
            position, column, width = factor
            cache[factor] = refs[position][:, compat.ds(column, width)].astype(dtype)
        return cache[factor]

    def kernel(*refs):
        *inputs, out_ref = refs
        for column, width, common, products in groups:
            cache: dict = {}  # loads are shared within a group only: fewer live registers on the GPU
            partial: dict = {}  # products of different lane counts are reduced separately
            for coefficient, factors in products:
                value = None
                for factor in factors:
                    plane = load(inputs, cache, factor)
                    value = plane if value is None else value * plane
                value = jnp.full((1, 1), coefficient, dtype) if value is None else value * coefficient
                key = value.shape
                partial[key] = value if key not in partial else partial[key] + value
            total = None
            for acc in partial.values():
                for factor in common:
                    acc = acc * load(inputs, cache, factor)
                if not out_batched and acc.shape[0] != 1:
                    acc = jnp.sum(acc, axis=0, keepdims=True)  # this block's share of a sum over rows
                if width == 1 and acc.shape[1] != 1:
                    acc = jnp.sum(acc, axis=1, keepdims=True)  # single output channel: sum over the lanes
                acc = jnp.broadcast_to(acc, (out_rows, width))
                total = acc if total is None else total + acc
            out_ref[:, compat.ds(column, width)] = total.astype(out_ref.dtype)
        for start, size in runs:
            out_ref[:, compat.ds(start, size)] = jnp.zeros((out_rows, size), out_ref.dtype)

    return kernel


def run_aligned_kernel(plan: AlignedPlan, out_slot: int, groups, operands, interpret: bool) -> jnp.ndarray:
    """One ``pallas_call`` over row blocks evaluating ``groups`` into ``plan.slots[out_slot]``."""
    in_slots = [s for i, s in enumerate(plan.slots) if i != out_slot]
    inputs = [op for i, op in enumerate(operands) if i != out_slot]
    out = plan.slots[out_slot]
    dtype = jnp.result_type(*inputs)
    accumulate = compute_dtype(dtype)
    batch = next(x.shape[0] for x, s in zip(inputs, in_slots) if s.batched)
    if batch == 0:
        return jnp.zeros((0, out.columns) if out.batched else (out.columns,), dtype)
    widths = [f[2] for _, _, common, products in groups for f in common + tuple(x for _, fs in products for x in fs)]
    rows = block_rows(batch, max(widths + [g[1] for g in groups] + [1]))
    blocks = -(-batch // rows)

    args, specs = [], []
    for x, slot in zip(inputs, in_slots):
        if slot.batched:
            args.append(pad_rows(x, blocks * rows))
            specs.append(compat.BlockSpec((rows, slot.columns), lambda i: (i, 0)))
        else:
            args.append(x.reshape(1, slot.columns))
            specs.append(compat.BlockSpec((1, slot.columns), lambda i: (0, 0)))
    if out.batched:
        out_shape = jax.ShapeDtypeStruct((blocks * rows, out.columns), dtype)
        out_spec = compat.BlockSpec((rows, out.columns), lambda i: (i, 0))
    else:
        out_shape = jax.ShapeDtypeStruct((blocks, out.columns), accumulate)
        out_spec = compat.BlockSpec((1, out.columns), lambda i: (i, 0))
    kernel = _make_kernel(groups, out.columns, rows if out.batched else 1, out.batched, accumulate)
    result = compat.pallas_call(
        kernel,
        family="aligned",
        interpret=interpret,
        grid=(blocks,),
        in_specs=specs,
        out_specs=out_spec,
        out_shape=out_shape,
        name=f"e3nn_aligned_{out.name}",
    )(*args)
    if out.batched:
        return result[:batch]
    return jnp.sum(result, axis=0).astype(dtype)
