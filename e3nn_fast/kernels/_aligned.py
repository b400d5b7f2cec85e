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
(no dense CG contraction anywhere), and all paths of a call become one ``pallas_call`` over row blocks (and lane
blocks of the channels, a second grid axis, when the planes are too wide for a program's registers; see
:func:`_launch_shape`).

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
from e3nn_fast.kernels import layout, tuning
from e3nn_fast.kernels.layout import OperandLayout, build_layout, pad_rows
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
        self._per_row: dict[frozenset, AlignedPlan] = {}

    def per_row_variant(self, slots: frozenset) -> "AlignedPlan":
        """The same form with the shared slots ``slots`` given one value per row (``vmap`` over a shared weight:
        see :func:`e3nn_fast.kernels.multilinear._fold_shared`).  The terms are the same, their factors read from
        the row's own copy; cached, so that the variant is one plan (plans compare by identity)."""
        if slots not in self._per_row:
            converted = tuple(Slot(f"{slot.name}_per_row", True, slot.columns) if index in slots else slot
                              for index, slot in enumerate(self.slots))
            self._per_row[slots] = AlignedPlan(converted, self.terms, self.layouts)
        return self._per_row[slots]

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


# --- product groups ---------------------------------------------------------------------------------------------

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


# --- launch shape: row blocks x lane blocks -------------------------------------------------------------------------
#
# A program holds every plane a group loads, ``(rows, lanes)`` each, in registers: ``rows x lanes x planes`` must stay
# well under the 255-register cap (x 128 threads at 4 warps), or the kernel spills (issue 14: the elementwise
# gradients at 16 x 128 with ~27 planes a group spilled 2 KB).  So the plane size follows the largest group's plane
# count, and when even ``MIN_BLOCK_ROWS`` full-width rows are too many, the lanes of the channel-carrying groups are
# split over a second grid axis: channels are independent in these paths, so a lane block is computed on its own
# and no input is read twice.  Groups that reduce over the lanes (one-channel outputs) keep all their lanes.

LIVE_ELEMENTS = 16384  # elements of the planes one program keeps live at once (~128 registers per thread at 4 warps)
TARGET_PROGRAMS = tuning.TARGET_PROGRAMS  # programs a launch aims at: 4 per SM of a 132-SM H100 / H200
CHANNEL_BLOCK = None  # lanes of a lane block: None chooses them per launch (see _launch_shape)
MIN_LANES = 32  # lane blocks at least a warp wide (128-byte rows of float32)
MIN_REDUCING_ROWS = 2  # rows of a block at least when a group sums over lanes it cannot split


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a group runs on the second grid axis: ``blocks`` lane blocks of ``lanes`` lanes; program ``c`` of a row
    block computes lane block ``c // stride`` when ``c % stride == phase`` (groups narrower than the widest are
    spread round-robin over the programs)."""

    lanes: int
    blocks: int
    stride: int
    phase: int


@dataclasses.dataclass(frozen=True)
class LaunchShape:
    rows: int  # rows of a row block (grid axis 0)
    lane_blocks: int  # programs per row block (grid axis 1)
    placements: tuple[Placement, ...]  # one per group


def _lane_width(group: Group) -> int:
    """The lanes of a group's products: the width of its output plane, or for a one-channel output (a sum over the
    lanes) the widest of its products (products of several paths, each reduced on its own)."""
    _, width, common, products = group
    widths = {width} | {f[2] for f in common} | {f[2] for _, factors in products for f in factors}
    assert width == 1 or widths <= {1, width}, f"lane widths {sorted(widths)} in an output plane of width {width}"
    return max(widths)


def _splittable(group: Group) -> bool:
    """Whether a group's lanes can be computed in separate programs: its output plane carries them (a one-channel
    output sums over them)."""
    return group[1] > 1


def _live_planes(group: Group) -> int:
    """Planes of full lane width a group keeps live at once, estimated: every distinct plane that is multiplied with
    another full-width plane (it waits for its partners, and the compiler hoists loads), its common factors, an
    accumulator and one plane in flight.  A plane multiplied only with one-lane columns is consumed as it arrives
    (the channelwise ``dx1``: 89 registers at 16 x 128 with 28 such planes a group, against 255 and a spill for the
    elementwise ``dx1`` with 27 planes that pair up)."""
    _, _, common, products = group
    paired = set()
    for _, factors in products:
        wide = [f for f in factors if f[2] > 1]
        if len(wide) > 1:
            paired.update(wide)
    return len(paired) + sum(f[2] > 1 for f in common) + 2


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _launch_shape(groups, batch: int) -> LaunchShape:
    """Rows and lane blocks of a launch (powers of two).

    A plane holds ``min(tile_elements, live_elements / planes of the largest group)`` elements: full lanes and as
    many rows as fit (between ``MIN_BLOCK_ROWS`` and ``max_block_rows``, no more than the batch needs), else
    ``MIN_BLOCK_ROWS`` rows and fewer lanes; a group that sums over its lanes keeps them all, so when its planes
    exceed the budget the rows go below ``MIN_BLOCK_ROWS`` (down to ``MIN_REDUCING_ROWS``).  Then rows, and after
    them lanes (down to ``MIN_LANES``), are halved while the launch has fewer than ``target_programs`` programs.
    The ``channel_block`` knob, when set, fixes the lanes.  The ``aligned.*`` knobs of
    :mod:`e3nn_fast.kernels.tuning` (``live_elements=2**30,target_programs=1`` gives the shape before issue 14:
    one program per row block of ``tile_elements / widest`` rows).
    """
    least = layout.MIN_BLOCK_ROWS
    tile = tuning.value("aligned.tile_elements", layout.TARGET_TILE_ELEMENTS)
    most = tuning.value("aligned.max_block_rows", layout.MAX_BLOCK_ROWS)
    live = tuning.value("aligned.live_elements", LIVE_ELEMENTS)
    target = tuning.value("aligned.target_programs", TARGET_PROGRAMS)
    fixed_lanes = tuning.value("aligned.channel_block", CHANNEL_BLOCK)

    widest = max((_lane_width(g) for g in groups), default=1)
    split = max((_lane_width(g) for g in groups if _splittable(g)), default=1)
    whole = max((_lane_width(g) for g in groups if not _splittable(g)), default=1)
    plane = _floor_power_of_2(min(tile, live // max((_live_planes(g) for g in groups), default=1)))
    rows = max(least, min(most, compat.next_power_of_2(max(1, plane // widest)), compat.next_power_of_2(batch)))
    if whole > 1:  # groups summing over their lanes cannot split them: fewer rows instead
        rows = min(rows, max(MIN_REDUCING_ROWS, _floor_power_of_2(plane // whole)))
    if fixed_lanes is not None:
        lanes = min(fixed_lanes, split)
    else:
        lanes = min(split, max(MIN_LANES, _floor_power_of_2(plane // rows)))

    def programs(rows: int, lanes: int) -> int:
        return -(-batch // rows) * max(1, split // lanes)

    while programs(rows, lanes) < target:
        if rows > least:
            rows //= 2
        elif fixed_lanes is None and lanes > MIN_LANES:
            lanes //= 2
        else:
            break
    return LaunchShape(rows, max(1, split // lanes), _placements(groups, lanes))


def _placements(groups, lanes: int) -> tuple[Placement, ...]:
    """Each group's lane blocks and the programs of a row block computing them (see :class:`Placement`)."""
    blocks = [_lane_width(g) // lanes if _splittable(g) and _lane_width(g) > lanes else 1 for g in groups]
    programs = max(blocks, default=1)
    placed, turn = [], 0
    for group, count in zip(groups, blocks):
        stride = programs // count
        placed.append(Placement(_lane_width(group) // count, count, stride, turn % stride))
        turn += stride > 1
    return tuple(placed)


# --- the kernel --------------------------------------------------------------------------------------------------


def _on_program(block, placement: Placement, body) -> None:
    """``body(lane block)`` on the programs ``placement`` assigns it to (``block``: this program's index on the lane
    axis, a Python 0 when the grid has one program per row block, so that offsets stay static then)."""
    if placement.stride == 1:
        body(block if placement.blocks > 1 else 0)
        return
    lane_block = block // placement.stride if placement.blocks > 1 else 0
    jax.lax.cond(block % placement.stride == placement.phase, lambda: body(lane_block), lambda: None)


def _write_group(inputs, out_ref, group: Group, lanes: int, lane_block, out_rows: int, out_batched: bool, dtype):
    """One group's products over lane block ``lane_block`` (``lanes`` lanes), reduced to the output plane's shape and
    stored.  One-lane factors (a mul-1 operand) are whole columns broadcast over the lanes; a group that sums over the
    lanes is never split (``lane_block`` 0) and loads each plane at its own width."""
    column, width, common, products = group
    offset = lane_block * lanes
    cache: dict = {}  # loads are shared within a group only: fewer live registers on the GPU

    def load(factor):
        if factor not in cache:
            position, start, size = factor
            columns = compat.ds(start + offset, min(size, lanes)) if size > 1 else compat.ds(start, 1)
            cache[factor] = inputs[position][:, columns].astype(dtype)
        return cache[factor]

    partial: dict = {}  # products of different lane counts are reduced separately
    for coefficient, factors in products:
        value = None
        for factor in factors:
            plane = load(factor)
            value = plane if value is None else value * plane
        value = jnp.full((1, 1), coefficient, dtype) if value is None else value * coefficient
        key = value.shape
        partial[key] = value if key not in partial else partial[key] + value
    out_lanes = lanes if width > 1 else 1
    total = None
    for acc in partial.values():
        for factor in common:
            acc = acc * load(factor)
        if not out_batched and acc.shape[0] != 1:
            acc = jnp.sum(acc, axis=0, keepdims=True)  # this block's share of a sum over rows
        if width == 1 and acc.shape[1] != 1:
            acc = jnp.sum(acc, axis=1, keepdims=True)  # single output channel: sum over the lanes
        acc = jnp.broadcast_to(acc, (out_rows, out_lanes))
        total = acc if total is None else total + acc
    out_ref[:, compat.ds(column + offset, out_lanes)] = total.astype(out_ref.dtype)


def _make_kernel(groups, shape: LaunchShape, out_columns: int, out_rows: int, out_batched: bool, dtype):
    """The kernel body: every group placed on this program, then the output columns no group writes (zeros, by the
    first program of a row block)."""
    runs = _zero_runs(out_columns, [(column, width) for column, width, _, _ in groups])
    first = Placement(1, 1, shape.lane_blocks, 0)

    def kernel(*refs):
        *inputs, out_ref = refs
        block = compat.program_id(1) if shape.lane_blocks > 1 else 0
        for group, placement in zip(groups, shape.placements):
            _on_program(block, placement,
                        lambda lane_block, group=group, lanes=placement.lanes: _write_group(
                            inputs, out_ref, group, lanes, lane_block, out_rows, out_batched, dtype))

        def write_zeros(_):
            for start, size in runs:
                out_ref[:, compat.ds(start, size)] = jnp.zeros((out_rows, size), out_ref.dtype)

        if runs:
            _on_program(block, first, write_zeros)

    return kernel


def run_aligned_kernel(plan: AlignedPlan, out_slot: int, groups, operands, interpret: bool) -> jnp.ndarray:
    """One ``pallas_call`` over (row blocks x lane blocks) evaluating ``groups`` into ``plan.slots[out_slot]``."""
    in_slots = [s for i, s in enumerate(plan.slots) if i != out_slot]
    inputs = [op for i, op in enumerate(operands) if i != out_slot]
    out = plan.slots[out_slot]
    dtype = jnp.result_type(*inputs)
    accumulate = compute_dtype(dtype)
    batch = next(x.shape[0] for x, s in zip(inputs, in_slots) if s.batched)
    if batch == 0:
        return jnp.zeros((0, out.columns) if out.batched else (out.columns,), dtype)
    shape = _launch_shape(groups, batch)
    rows = shape.rows
    blocks = -(-batch // rows)

    args, specs = [], []
    for x, slot in zip(inputs, in_slots):
        if slot.batched:
            args.append(pad_rows(x, blocks * rows))
            specs.append(compat.BlockSpec((rows, slot.columns), lambda i, c: (i, 0)))
        else:
            args.append(x.reshape(1, slot.columns))
            specs.append(compat.BlockSpec((1, slot.columns), lambda i, c: (0, 0)))
    if out.batched:
        out_shape = jax.ShapeDtypeStruct((blocks * rows, out.columns), dtype)
        out_spec = compat.BlockSpec((rows, out.columns), lambda i, c: (i, 0))
    else:
        out_shape = jax.ShapeDtypeStruct((blocks, out.columns), accumulate)
        out_spec = compat.BlockSpec((1, out.columns), lambda i, c: (i, 0))
    kernel = _make_kernel(groups, shape, out.columns, rows if out.batched else 1, out.batched, accumulate)
    result = compat.pallas_call(
        kernel,
        family="aligned",
        interpret=interpret,
        grid=(blocks, shape.lane_blocks),
        in_specs=specs,
        out_specs=out_spec,
        out_shape=out_shape,
        name=f"e3nn_aligned_{out.name}",
    )(*args)
    if out.batched:
        return result[:batch]
    return jnp.sum(result, axis=0).astype(dtype)
