"""Fully connected (``uvw``) tensor-product kernels with shared weights, and their gradient kernels.

A path couples every channel ``u`` of input 1 with every channel ``v`` of input 2 into every output channel ``w``::

    out[b, w, k] = sum_{ijk in CG} c_ijk sum_{u, v} W[u, v, w] x1[b, u, i] x2[b, v, j]

The form ``F = sum_b sum c W x1 x2 g`` is symmetric in its three batched operands up to a transposition of ``W``, so
the output and the gradients w.r.t. ``x1`` and ``x2`` are one *product kernel* with the roles permuted: operands
``A`` and ``B`` and a matrix ``M`` (``W`` permuted to ``(A B, C)``) give the planes of ``C``.  The weight gradient,
a reduction over the batch, is a second kernel.  Each is **one launch for all paths**.

Product kernel: grid (row blocks x output planes)
    A program computes one *component plane* ``(rows, width)`` of one output segment (or a few, the
    ``fully_connected.planes_per_program`` knob), so a single ``(rows, width)`` accumulator is live at a time and the
    grid has as many programs per row block as the output has planes (9 for ``0e+1o+2e``).  The planes' code differs
    (their paths and CG entries), so the program picks its plane with a ``lax.switch`` on ``program_id(1)``; all
    programs of a row block write disjoint columns of the same output block.  For plane ``k`` of a path, the CG
    entries ``(i, j, k)`` are summed *before* the matrix product::

        plane_k += (sum_{ij} c_ijk  A_i (x) B_j) @ M          (rows, A B) @ (A B, C)

    one ``dot`` per path, plane and chunk instead of one per pair ``(i, j)``.  The inner axis ``(a, b)`` is cut into
    chunks (several channels of A with all of B, or part of B with one channel of A) so that the outer product and
    the matrix chunk stay small register tiles, and the operand with fewer channels per chunk is summed first
    (``sum_j c_ijk B_j`` once per ``i``, or ``sum_i c_ijk A_i`` once per ``j``).  Products with a side shorter than
    16 (Triton's minimum ``dot`` tile; 8 for float64) are done by broadcasting and summing, in column tiles of the
    plane when need be.

    One-channel output segments (the gradient w.r.t. a multiplicity-1 input, e.g. spherical harmonics) are one unit
    of work each, all their planes at once (``(rows, 1)`` accumulators): ``acc_c += sum_y Y_y (X_x @ M)``, lane
    reductions after one ``dot`` per plane ``x`` of the operand X with fewer planes, shared by every plane ``c``.

    Rows per block: a ``(rows, widest output plane)`` accumulator of ``fully_connected.accumulator_elements``,
    halved until the launch has ``fully_connected.target_programs`` programs (about 4 per SM of an H100).

Weight-gradient kernel: grid (batch splits x weight tiles of every path)
    ``dW[(u, v), w] = sum_b sum_e c_e x1_i[b, u] x2_j[b, v] g_k[b, w]``: each program owns a ``(G V, Wb)`` tile of
    one path's weight matrix (the path picked by a ``lax.switch``), loops over its split's rows in steps small enough
    for every plane a step loads, and writes a partial sum that is added outside the kernel (deterministic, no
    atomics).  The CG entries are grouped by output plane ``k`` (``(sum_ij c x1_i (x) x2_j)^T @ g_k``) or, for a
    multiplicity-1 input 2 with fewer planes of x1 than of the output, by plane ``i`` of x1
    (``x1_i^T @ sum_jk c x2_j g_k``).

Unrolled loops let Triton merge identical loads of different steps and keep them live across the steps, so loops
whose steps reload the same planes (the one-channel units) stay loops.  With IEEE float32 (``highest``) or float64
products, Triton's ``dot`` is an FMA loop holding more registers per output, so the tiles are smaller then.

Matrix products follow ``jax_default_matmul_precision`` as XLA does (:func:`matmul_precision`: TF32 on tensor-core
GPUs unless ``highest`` is asked for) and accumulate 16-bit inputs in float32.  Block and tile sizes are the
``fully_connected.*`` knobs of :mod:`e3nn_fast.kernels.tuning`.  Per-row weights (``uvw`` with a weight per sample)
are not handled by these kernels; the executor sends such paths to the reference.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from e3nn_fast.kernels import _pallas_compat as compat
from e3nn_fast.kernels import tuning
from e3nn_fast.kernels._aligned import compute_dtype
from e3nn_fast.kernels.layout import OperandLayout, SegmentLayout, build_layout, pad_rows
from e3nn_fast.kernels.multilinear import MultilinearPlan, Slot
from e3nn_fast.path_description import Path, TensorProductDescription

TILE_ELEMENTS = 2048  # elements of a register tile of operands: the per-row outer-product chunk
ACCUMULATOR_ELEMENTS = 4096  # elements of one program's accumulator: (rows, widest plane), or a weight-gradient tile
MATRIX_ELEMENTS = 4096  # elements of a weight-matrix chunk (it passes through registers on its way to shared memory)
BROADCAST_ELEMENTS = 4096  # elements of the 3-D broadcast used instead of a small dot
BLOCK_ROWS = None  # rows of a block: None chooses them per launch (see _block_rows)
MIN_BLOCK_ROWS = 16  # Triton's smallest dot tile
MAX_BLOCK_ROWS = 128  # rows of a block at most (narrow planes)
PLANES_PER_PROGRAM = 1  # output planes one product-kernel program computes (one after the other)
TARGET_PROGRAMS = tuning.TARGET_PROGRAMS  # programs a launch aims at: 4 per SM of a 132-SM H100 / H200
MAX_SPLITS = 128  # batch splits of the weight gradient at most
MAX_PARTIAL_ELEMENTS = 1 << 26  # memory cap of the weight gradient's partial sums
UNROLL_CHUNKS = 4  # chunk loops at most this long are unrolled at trace time


def qualifies(path: Path, weight) -> bool:
    """Whether the fully connected kernels run ``path``: mode ``uvw`` with one weight tensor for all rows."""
    return path.mode == "uvw" and path.has_weight and weight is not None and jnp.ndim(weight) == 3


@dataclasses.dataclass(frozen=True)
class FullyConnectedPath:
    segments: tuple[SegmentLayout, SegmentLayout, SegmentLayout]  # x1, x2, out
    weight_offset: int
    entries: tuple[tuple[int, int, int, float], ...]  # non-zero CG entries (i, j, k, coefficient * C_ijk)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(segment.width for segment in self.segments)  # type: ignore[return-value]

    @property
    def weight_size(self) -> int:
        p1, p2, po = self.padded_shape
        return p1 * p2 * po


class FullyConnectedPlan(MultilinearPlan):
    """Slots ``x1``, ``x2`` (batched), ``weights`` (shared, every path's padded ``(U, V, W)`` flattened), ``out``."""

    family = "fully_connected"

    def __init__(self, paths: tuple[FullyConnectedPath, ...], layouts: dict[str, OperandLayout], weight_columns: int):
        self.paths = paths
        self.layouts = layouts
        self.slots = (
            Slot("x1", True, layouts["x1"].columns),
            Slot("x2", True, layouts["x2"].columns),
            Slot("weights", False, weight_columns),
            Slot("out", True, layouts["out"].columns),
        )

    def has_terms(self, out_slot: int, require: frozenset) -> bool:
        return bool(self.paths)  # every term involves all four slots

    def evaluate(self, out_slot, require, operands, interpret):
        if self.slots[out_slot].name == "weights":
            return _weight_gradient(self, operands, interpret)
        return _product(self, out_slot, operands, interpret)


@functools.lru_cache(maxsize=512)
def fully_connected_plan(description: TensorProductDescription, path_indices: tuple[int, ...]) -> FullyConnectedPlan:
    """The plan of the ``uvw`` paths ``path_indices`` of ``description`` (weights shared by all rows)."""
    paths = [description.paths[p] for p in path_indices]
    layouts = {
        "x1": build_layout([(p.in1, p.mul1, p.ir1.dim) for p in paths]),
        "x2": build_layout([(p.in2, p.mul2, p.ir2.dim) for p in paths]),
        "out": build_layout([(p.out, p.mul_out, p.ir_out.dim) for p in paths]),
    }
    planned, offset = [], 0
    for path in paths:
        segments = (layouts["x1"].segment(path.in1), layouts["x2"].segment(path.in2), layouts["out"].segment(path.out))
        entries = tuple((int(i), int(j), int(k), float(v)) for i, j, k, v in zip(*path.sparse_cg()))
        planned.append(FullyConnectedPath(segments, offset, entries))
        offset += planned[-1].weight_size
    return FullyConnectedPlan(tuple(planned), layouts, offset)


def pack_weights(plan: FullyConnectedPlan, weights) -> jnp.ndarray:
    """The ``weights`` slot from one ``(mul1, mul2, mul_out)`` array per path (zero-padded, flattened, joined)."""
    pieces = []
    for path, weight in zip(plan.paths, weights):
        (p1, p2, po), (s1, s2, so) = path.padded_shape, path.segments
        weight = jnp.pad(weight, [(0, p1 - s1.mul), (0, p2 - s2.mul), (0, po - so.mul)])
        pieces.append(weight.reshape(-1))
    return jnp.concatenate(pieces)


# --- shared helpers ----------------------------------------------------------------------------------------------


def _fma_dots(dtype) -> bool:
    """Whether the kernels' matrix products run as FMA loops rather than on tensor cores: IEEE float32 (the
    ``highest`` precision) and float64.  Triton's FMA ``dot`` holds more registers per output than the tensor-core
    one, so the tiles are smaller then (:func:`_tile_elements`, :func:`_accumulator_elements`)."""
    return jnp.dtype(dtype) == jnp.float64 or matmul_precision() == jax.lax.Precision.HIGHEST


def _tile_elements(dtype) -> int:
    """The ``tile_elements`` knob; a quarter of it with FMA dots."""
    tile = tuning.value("fully_connected.tile_elements", TILE_ELEMENTS)
    return max(1, tile // 4) if _fma_dots(dtype) else tile


def _min_block_rows() -> int:
    return tuning.value("fully_connected.min_block_rows", MIN_BLOCK_ROWS)


def _accumulator_elements(dtype) -> int:
    """The ``accumulator_elements`` knob; half of it with FMA dots."""
    limit = tuning.value("fully_connected.accumulator_elements", ACCUMULATOR_ELEMENTS)
    return max(1, limit // 2) if _fma_dots(dtype) else limit


def _target_programs() -> int:
    return tuning.value("fully_connected.target_programs", TARGET_PROGRAMS)


def _most_rows(batch: int) -> int:
    return min(MAX_BLOCK_ROWS, compat.next_power_of_2(max(batch, 1)))


def _block_rows(batch: int, widest: int, units: int, dtype) -> int:
    """Rows per block of a product launch (a power of two): a ``(rows, widest output plane)`` accumulator of
    ``accumulator_elements``, no more than the batch needs, halved while the grid (row blocks x ``units``) has
    fewer than ``target_programs`` programs, and at least ``min_block_rows`` (Triton's ``dot`` needs 16).  The
    ``block_rows`` knob, when set, decides alone."""
    least = _min_block_rows()
    rows = tuning.value("fully_connected.block_rows", BLOCK_ROWS)
    if rows is not None:
        return max(least, rows)
    rows = min(max(1, _accumulator_elements(dtype) // widest), _most_rows(batch))
    while rows > least and -(-batch // rows) * units < _target_programs():
        rows //= 2
    return max(least, rows)


# ``jax_default_matmul_precision`` values asking for full float32 products (IEEE FMA, no tensor cores).
_FULL_PRECISION = ("highest", "float32", "fp32")


def matmul_precision() -> jax.lax.Precision:
    """Precision of the kernels' float32 matrix products: the same as XLA's for ``jnp`` code under the current
    ``jax_default_matmul_precision`` (read at trace time, so ``with jax.default_matmul_precision("highest"):``
    applies).  Unset, that is TF32 on tensor-core GPUs, as XLA (and so e3nn-jax and the jnp executor) does by
    default; ``highest``/``float32`` give IEEE float32 products, slower by choice.  float64 products are exact
    either way."""
    setting = jax.config.jax_default_matmul_precision
    if setting is not None and str(setting).lower() in _FULL_PRECISION:
        return jax.lax.Precision.HIGHEST
    return jax.lax.Precision.DEFAULT


def _min_dot_n(dtype) -> int:
    return 8 if jnp.dtype(dtype) == jnp.float64 else 16


def _uses_dot(m: int, k: int, n: int, dtype) -> bool:
    """Whether ``(m, k) @ (k, n)`` is large enough for Triton's ``dot`` (the broadcast-and-sum path otherwise)."""
    return m >= 16 and k >= 16 and n >= _min_dot_n(dtype)


def _matmul(a, b, dtype, *, transpose_a: bool = False):
    """``a @ b`` (or ``a.T @ b``) with full-precision accumulation in ``dtype``."""
    m, k = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    if _uses_dot(m, k, b.shape[1], dtype):
        contracting = ((0,), (0,)) if transpose_a else ((1,), (0,))
        return jax.lax.dot_general(
            a, b, (contracting, ((), ())), precision=matmul_precision(), preferred_element_type=dtype
        )
    if transpose_a:
        return jnp.sum(a[:, :, None] * b[:, None, :], axis=0)
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def _largest(limit: int, fits: Callable[[int], bool], floor: int = 1) -> int:
    """Largest power of two ``<= limit`` (itself a power of two) for which ``fits``, but not below ``floor``."""
    value = limit
    while value > floor and not fits(value):
        value //= 2
    return max(value, 1)


def _outer(a, b):
    """Per-row outer product ``(rows, G) x (rows, V) -> (rows, G V)``, ``u``-major."""
    if a.shape[1] == 1 or b.shape[1] == 1:
        return a * b
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], a.shape[1] * b.shape[1])


def _loop(count: int, body, init):
    """``body`` over ``range(count)``: unrolled when short, a ``fori_loop`` otherwise."""
    if count <= UNROLL_CHUNKS:
        value = init
        for step in range(count):
            value = body(step, value)
        return value
    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(count), body, init)  # int32 indices, also under x64


def _linear_sum(terms):
    """``sum(value * x for value, x in terms)`` without multiplying by 1."""
    total = None
    for value, x in terms:
        term = x if value == 1.0 else x * value
        total = term if total is None else total + term
    return total


def _group(entries, key: int):
    """``entries`` ``(a, b, value)`` grouped by position ``key`` (0 or 1): ``[(key value, [(other, value)])]``."""
    groups: dict[int, list] = {}
    for entry in entries:
        groups.setdefault(entry[key], []).append((entry[1 - key], entry[2]))
    return list(groups.items())


def _switch(index, branches) -> None:
    """Run ``branches[index]`` (side effects only); no branch at all when there is one."""
    if len(branches) == 1:
        branches[0]()
    else:
        jax.lax.switch(index, list(branches))


# --- product kernel: the output, or the gradient of x1 / x2 ------------------------------------------------------

# Which entry index (0: i of x1, 1: j of x2, 2: k of out) plays A, B and the result C, for each output slot, and how
# the (U, V, W) weight is permuted into the (A B, C) matrix.
_ROLES = {"out": ((0, 1, 2), (0, 1, 2)), "x1": ((1, 2, 0), (1, 2, 0)), "x2": ((0, 2, 1), (0, 2, 1))}
_SLOT_OF_ROLE = ("x1", "x2", "out")


@dataclasses.dataclass(frozen=True)
class _Reduction:
    """A path into one-channel planes as lane reductions: ``sum_y Y[:, y] (X @ M_xy)[:, y]``, where ``X`` is the
    operand with fewer distinct planes in the path's entries (one matrix product per plane of X and chunk)."""

    x_is_a: bool
    chunk_x: int
    chunk_y: int


@dataclasses.dataclass(frozen=True)
class _PathProduct:
    """How one path adds into the planes of one output segment: its operand segments and its form."""

    number: int
    seg_a: SegmentLayout
    seg_b: SegmentLayout
    reduction: Optional[_Reduction]  # None: (sum of outer products A (x) B) @ M


def _split_inner(inner: int, pb: int) -> tuple[int, int]:
    """An inner size ``inner`` of the flattened ``(a, b)`` axis as ``(channels of A, channels of B)`` per chunk:
    whole rows of B with several channels of A, or part of B with one channel of A (chunks stay contiguous)."""
    return (inner // pb, pb) if inner >= pb else (1, inner)


def _reduction(rows: int, pa: int, pb: int, pc: int, entries, dtype) -> Optional[_Reduction]:
    """The lane-reduction form of a path into one-channel planes, when the two operands are wide enough for a
    ``dot`` ``(rows, X) @ (X, Y)``; None otherwise."""
    if pc != 1 or rows < 16 or min(pa, pb) < 16:
        return None
    x_is_a = len({e[0] for e in entries}) < len({e[1] for e in entries})
    px, py = (pa, pb) if x_is_a else (pb, pa)
    planes_y = len({e[1] if x_is_a else e[0] for e in entries})
    tile = _tile_elements(dtype)
    chunk_x = _largest(px, lambda h: rows * h <= tile, 16)
    # A step keeps every plane of Y it multiplies live (one (rows, chunk_y) tile each), and (rows, chunk_y) of X @ M.
    fits = lambda g: rows * g * (planes_y + 1) <= 2 * tile and chunk_x * g <= MATRIX_ELEMENTS
    return _Reduction(x_is_a, chunk_x, _largest(py, fits, _min_dot_n(dtype)))


def _outer_shapes(rows: int, pa: int, pb: int, pc: int, dtype) -> tuple[int, int, int]:
    """``(channels of A, channels of B, columns of C)`` of one step ``(sum A (x) B)[:, chunk] @ M[chunk, columns]``:
    a ``dot`` when the sizes allow (an outer-product tile of ``tile_elements``, a matrix chunk of
    ``MATRIX_ELEMENTS``), else a broadcast-and-sum over a ``(rows, chunk, columns)`` tile of ``BROADCAST_ELEMENTS``."""
    if _uses_dot(rows, pa * pb, pc, dtype):
        tile = _tile_elements(dtype)
        inner = _largest(pa * pb, lambda k: rows * k <= tile and k * pc <= MATRIX_ELEMENTS, 16)
        if _uses_dot(rows, inner, pc, dtype):
            return _split_inner(inner, pb) + (pc,)
    columns = _largest(pc, lambda n: rows * n <= BROADCAST_ELEMENTS)
    inner = _largest(pa * pb, lambda k: rows * k * columns <= BROADCAST_ELEMENTS)
    return _split_inner(inner, pb) + (columns,)


def _plane_shapes(rows: int, width: int, products, dtype) -> tuple[int, dict]:
    """Columns per tile of a plane ``width`` wide (the same for all its outer-product paths: they add into one
    accumulator), and the ``(chunk of A, chunk of B)`` of each of those paths at that many columns."""
    columns = width
    while True:
        shapes = {p.number: _outer_shapes(rows, p.seg_a.width, p.seg_b.width, columns, dtype)
                  for p in products if p.reduction is None}
        narrowest = min([columns] + [shape[2] for shape in shapes.values()])
        if narrowest == columns:
            return columns, {number: shape[:2] for number, shape in shapes.items()}
        columns = narrowest


def _product(plan: FullyConnectedPlan, out_slot: int, operands, interpret: bool) -> jnp.ndarray:
    name = plan.slots[out_slot].name
    (role_a, role_b, role_c), permutation = _ROLES[name]
    slot_a, slot_b = plan.slot_index(_SLOT_OF_ROLE[role_a]), plan.slot_index(_SLOT_OF_ROLE[role_b])
    a, b = operands[slot_a], operands[slot_b]
    weights = operands[plan.slot_index("weights")]
    dtype = jnp.result_type(a, b, weights)
    accumulate = compute_dtype(dtype)
    batch, out_columns = a.shape[0], plan.slots[out_slot].columns
    if batch == 0:
        return jnp.zeros((0, out_columns), dtype)

    out_layout = plan.layouts[_SLOT_OF_ROLE[role_c]]
    per_program = max(1, tuning.value("fully_connected.planes_per_program", PLANES_PER_PROGRAM))
    unit_count = sum(1 if segment.width == 1 else segment.dim for segment in out_layout.segments)
    rows = _block_rows(batch, out_layout.max_width, -(-unit_count // per_program), accumulate)
    products, matrices = [], []
    for number, path in enumerate(plan.paths):
        shape = path.padded_shape
        pa, pb, pc = shape[role_a], shape[role_b], shape[role_c]
        entries = [(e[role_a], e[role_b]) for e in path.entries]
        reduction = _reduction(rows, pa, pb, pc, entries, accumulate)
        w = weights[path.weight_offset : path.weight_offset + path.weight_size].reshape(shape)
        w = jnp.transpose(w, permutation)
        if reduction is None:
            matrices.append(w.reshape(pa * pb, pc))
        else:  # (X, Y)
            matrices.append(w.reshape(pa, pb) if reduction.x_is_a else w.reshape(pa, pb).T)
        products.append(_PathProduct(number, path.segments[role_a], path.segments[role_b], reduction))

    # Units of work, in column order: one component plane of a segment, or every plane of a one-channel segment
    # (its accumulators are (rows, 1), and its planes share the matrix products).  Each unit lists
    # [(component, [(path product, [(a, b, value)])])].
    units = []
    for segment in out_layout.segments:
        planes = []
        for component in range(segment.dim):
            terms = []
            for product, path in zip(products, plan.paths):
                if path.segments[role_c].offset != segment.offset:
                    continue
                entries = [(e[role_a], e[role_b], e[3]) for e in path.entries if e[role_c] == component]
                if entries:
                    terms.append((product, entries))
            planes.append((component, terms))
        if segment.width == 1:
            units.append((segment, planes))
        else:
            units.extend((segment, [plane]) for plane in planes)
    groups = [units[start : start + per_program] for start in range(0, len(units), per_program)]

    blocks = -(-batch // rows)
    kernel = _product_kernel(groups, rows, accumulate)
    specs = [compat.BlockSpec((rows, x.shape[1]), lambda i, q: (i, 0)) for x in (a, b)]
    specs += [compat.BlockSpec(m.shape, lambda i, q: (0, 0)) for m in matrices]
    result = compat.pallas_call(
        kernel,
        family="fully_connected",
        interpret=interpret,
        grid=(blocks, len(groups)),
        in_specs=specs,
        # Every program of a row block writes its own planes (disjoint columns) of the same output block.
        out_specs=compat.BlockSpec((rows, out_columns), lambda i, q: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((blocks * rows, out_columns), dtype),
        name=f"e3nn_fully_connected_{name}",
    )(pad_rows(a, blocks * rows), pad_rows(b, blocks * rows), *matrices)
    return result[:batch]


def _product_kernel(groups, rows: int, dtype):
    def load(ref, column, width):
        return ref[:, compat.ds(column, width)].astype(dtype)

    def outer_product(a_ref, b_ref, product: _PathProduct, entries, ca, cb, chunk_a: int, chunk_b: int):
        """``sum_e value_e A_a[:, chunk ca] (x) B_b[:, chunk cb]``, ``(rows, chunk_a chunk_b)``, summing the
        narrower operand first: ``sum_b value B_b`` once per plane a of A, or ``sum_a value A_a`` once per b."""
        seg_a, seg_b = product.seg_a, product.seg_b
        a_at = lambda i: seg_a.column(i) + ca * chunk_a
        b_at = lambda j: seg_b.column(j) + cb * chunk_b
        by_a = len(entries) * chunk_b + len({e[0] for e in entries}) * chunk_a * chunk_b
        by_b = len(entries) * chunk_a + len({e[1] for e in entries}) * chunk_a * chunk_b
        tile = None
        if by_a <= by_b:
            for i, others in _group(entries, 0):
                b_sum = _linear_sum([(v, load(b_ref, b_at(j), chunk_b)) for j, v in others])
                term = _outer(load(a_ref, a_at(i), chunk_a), b_sum)
                tile = term if tile is None else tile + term
        else:
            for j, others in _group(entries, 1):
                a_sum = _linear_sum([(v, load(a_ref, a_at(i), chunk_a)) for i, v in others])
                term = _outer(a_sum, load(b_ref, b_at(j), chunk_b))
                tile = term if tile is None else tile + term
        return tile

    def add_outer(acc, a_ref, b_ref, m_ref, product: _PathProduct, entries, chunks, n0, columns: int):
        """``acc += (sum_e value_e A_a (x) B_b) @ M[:, n0:n0 + columns]``, chunk by chunk of the inner axis (A outer,
        B inner)."""
        (chunk_a, chunk_b), pb = chunks, product.seg_b.width

        def step(ca, cb, acc):
            tile = outer_product(a_ref, b_ref, product, entries, ca, cb, chunk_a, chunk_b)
            first = ca * chunk_a * pb + cb * chunk_b  # contiguous: chunk_a == 1 or chunk_b == pb
            m = m_ref[compat.ds(first, chunk_a * chunk_b), compat.ds(n0, columns)].astype(dtype)
            return acc + _matmul(tile, m, dtype)

        inner = lambda ca, acc: _loop(pb // chunk_b, lambda cb, acc: step(ca, cb, acc), acc)
        return _loop(product.seg_a.width // chunk_a, inner, acc)

    def add_reduction(accs, a_ref, b_ref, m_ref, product: _PathProduct, planes):
        """One-channel planes: ``acc_c += sum_y Y_y[:, y] (X_x @ M_xy)[:, y]`` over the path's entries
        ``(x, y, c)``, one matrix product per plane x of X and chunk; ``accs`` is a tuple in ``planes`` order."""
        form = product.reduction
        (seg_x, x_ref), (seg_y, y_ref) = ((product.seg_a, a_ref), (product.seg_b, b_ref))[:: 1 if form.x_is_a else -1]
        by_x: dict[int, list] = {}
        for position, (_, entries) in enumerate(planes):
            for a_comp, b_comp, value in entries:
                x, y = (a_comp, b_comp) if form.x_is_a else (b_comp, a_comp)
                by_x.setdefault(x, []).append((y, position, value))

        def per_y(cy, accs):
            accs = list(accs)
            for x, uses in by_x.items():
                def per_x(cx, h, x=x):
                    m = m_ref[compat.ds(cx * form.chunk_x, form.chunk_x), compat.ds(cy * form.chunk_y, form.chunk_y)]
                    return h + _matmul(load(x_ref, seg_x.column(x) + cx * form.chunk_x, form.chunk_x),
                                       m.astype(dtype), dtype)

                h = _loop(seg_x.width // form.chunk_x, per_x, jnp.zeros((rows, form.chunk_y), dtype))
                for y, position, value in uses:
                    y_part = load(y_ref, seg_y.column(y) + cy * form.chunk_y, form.chunk_y)
                    accs[position] = accs[position] + value * jnp.sum(y_part * h, axis=1, keepdims=True)
            return tuple(accs)

        # A loop, not unrolled: identical loads of unrolled steps would be merged and stay live across them.
        count = seg_y.width // form.chunk_y
        return per_y(0, accs) if count == 1 else jax.lax.fori_loop(jnp.int32(0), jnp.int32(count), per_y, accs)

    def one_channel_unit(a_ref, b_ref, m_refs, out_ref, segment: SegmentLayout, planes):
        """Every plane of a one-channel segment at once (accumulators ``(rows, 1)``)."""
        accs = tuple(jnp.zeros((rows, 1), dtype) for _ in planes)
        by_path: dict[int, tuple] = {}
        for position, (component, terms) in enumerate(planes):
            for product, entries in terms:
                by_path.setdefault(product.number, (product, {}))[1][position] = entries
        for product, per_plane in by_path.values():
            m_ref = m_refs[product.number]
            if product.reduction is not None:
                listed = [(planes[position][0], per_plane.get(position, [])) for position in range(len(planes))]
                accs = add_reduction(accs, a_ref, b_ref, m_ref, product, listed)
                continue
            chunks = _outer_shapes(rows, product.seg_a.width, product.seg_b.width, 1, dtype)[:2]
            accs = list(accs)
            for position, entries in per_plane.items():
                accs[position] = add_outer(accs[position], a_ref, b_ref, m_ref, product, entries, chunks, 0, 1)
            accs = tuple(accs)
        for (component, _), acc in zip(planes, accs):
            out_ref[:, compat.ds(segment.column(component), 1)] = acc.astype(out_ref.dtype)

    def plane_unit(a_ref, b_ref, m_refs, out_ref, segment: SegmentLayout, component: int, terms):
        """One component plane ``(rows, width)``, in column tiles when broadcast products need them."""
        columns, chunks = _plane_shapes(rows, segment.width, [product for product, _ in terms], dtype)

        def tile(n0):
            acc = jnp.zeros((rows, columns), dtype)
            for product, entries in terms:
                acc = add_outer(acc, a_ref, b_ref, m_refs[product.number], product, entries, chunks[product.number],
                                n0, columns)
            out_ref[:, compat.ds(segment.column(component) + n0, columns)] = acc.astype(out_ref.dtype)

        count = segment.width // columns
        if count <= UNROLL_CHUNKS:
            for n in range(count):
                tile(n * columns)
        else:
            def body(n, carry):
                tile(n * columns)
                return carry

            jax.lax.fori_loop(jnp.int32(0), jnp.int32(count), body, jnp.int32(0))

    def kernel(a_ref, b_ref, *refs):
        *m_refs, out_ref = refs

        def branch(group):
            def run():
                for segment, planes in group:
                    if segment.width == 1:
                        one_channel_unit(a_ref, b_ref, m_refs, out_ref, segment, planes)
                    else:
                        (component, terms), = planes
                        plane_unit(a_ref, b_ref, m_refs, out_ref, segment, component, terms)

            return run

        _switch(compat.program_id(1), [branch(group) for group in groups])

    return kernel


# --- weight-gradient kernel --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _WeightTiles:
    """One path's share of the weight-gradient grid: ``u_tiles x w_tiles`` tiles of ``(chunk V, columns)``."""

    path: FullyConnectedPath
    start: int  # first tile number of the path on the grid's second axis
    row: int  # first row of the path's (U V, W) matrix in the partial-sum array
    chunk: int  # channels u per tile
    columns: int  # channels w per tile
    grouping: str  # "k": by output plane; "i": by plane of x1 (input 2 one channel wide)

    @property
    def u_tiles(self) -> int:
        return self.path.padded_shape[0] // self.chunk

    @property
    def w_tiles(self) -> int:
        return self.path.padded_shape[2] // self.columns

    @property
    def count(self) -> int:
        return self.u_tiles * self.w_tiles


def _weight_grouping(path: FullyConnectedPath) -> str:
    """``"i"`` (input 2 one channel wide, and fewer planes of x1 than of the output) or ``"k"``: the grouping of
    the CG entries with the fewer matrix products.  (Grouping by pairs ``(i, j)`` never needs fewer: a CG block
    has at least as many non-zero pairs as output components.)"""
    entries = path.entries
    if path.padded_shape[1] == 1 and len({e[0] for e in entries}) < len({e[2] for e in entries}):
        return "i"
    return "k"


def _weight_tiles(path: FullyConnectedPath, rows: int, dtype) -> tuple[int, int]:
    """``(chunk of u, columns of w)`` of a weight-gradient tile: an accumulator of ``accumulator_elements`` (with
    sides of 16 or more where the weights have them, for the ``dot``), or, when the product is no ``dot``, a
    ``(rows, chunk V, columns)`` broadcast of ``BROADCAST_ELEMENTS``."""
    p1, p2, po = path.padded_shape
    limit = _accumulator_elements(dtype)
    columns = _largest(po, lambda n: p2 * n <= limit, _min_dot_n(dtype))
    chunk = _largest(p1, lambda g: g * p2 * columns <= limit, max(1, 16 // p2))
    if not _uses_dot(chunk * p2, rows, columns, dtype):
        columns = _largest(columns, lambda n: rows * p2 * n <= BROADCAST_ELEMENTS)
        chunk = _largest(chunk, lambda g: rows * g * p2 * columns <= BROADCAST_ELEMENTS)
    return chunk, columns


def _weight_rows(path: FullyConnectedPath, chunk: int, columns: int, most: int, dtype) -> int:
    """Rows per step of a weight tile's loop over the batch: every plane one step loads (all planes of x1, x2 and
    the cotangent that the path touches, at the tile's channels) within ``2 tile_elements`` elements."""
    (s1, s2, so), p2 = path.segments, path.padded_shape[1]
    per_row = s1.dim * chunk + s2.dim * p2 + so.dim * columns + chunk * p2  # + the outer product
    return max(_min_block_rows(), _largest(most, lambda r: r * per_row <= 2 * _tile_elements(dtype)))


def _weight_gradient(plan: FullyConnectedPlan, operands, interpret: bool) -> jnp.ndarray:
    x1, x2, g = (operands[plan.slot_index(name)] for name in ("x1", "x2", "out"))
    dtype = jnp.result_type(x1, x2, g)
    accumulate = compute_dtype(dtype)
    batch = x1.shape[0]
    if batch == 0:
        return jnp.zeros((plan.slots[plan.slot_index("weights")].columns,), dtype)

    most = _most_rows(batch)
    shapes = [_weight_tiles(path, _min_block_rows(), accumulate) for path in plan.paths]
    rows = min(_weight_rows(path, *shape, most, accumulate) for path, shape in zip(plan.paths, shapes))
    tiles, start, row = [], 0, 0
    for path, (chunk, columns) in zip(plan.paths, shapes):
        tiles.append(_WeightTiles(path, start, row, chunk, columns, _weight_grouping(path)))
        start += tiles[-1].count
        row += path.padded_shape[0] * path.padded_shape[1]
    total_tiles, total_rows = start, row
    widest = max(path.padded_shape[2] for path in plan.paths)

    rows, splits, per_split = _weight_grid(batch, rows, total_tiles,
                                           max(1, MAX_PARTIAL_ELEMENTS // (total_rows * widest)))
    padded = splits * per_split * rows

    kernel = _weight_kernel(tiles, rows, per_split, accumulate)
    full = [compat.BlockSpec((padded, x.shape[1]), lambda s, t: (0, 0)) for x in (x1, x2, g)]
    # Each path's (U V, W) matrix at its rows of one (rows, widest) array per split, on a leading axis: the block's
    # last two dimensions are the whole array's, which Mosaic TPU accepts for any sizes.  Columns past a path's W
    # are never written, and dropped below.
    partial = compat.pallas_call(
        kernel,
        family="fully_connected",
        interpret=interpret,
        grid=(splits, total_tiles),
        in_specs=full,
        out_specs=compat.BlockSpec((1, total_rows, widest), lambda s, t: (s, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((splits, total_rows, widest), accumulate),
        name="e3nn_fully_connected_weights",
    )(pad_rows(x1, padded), pad_rows(x2, padded), pad_rows(g, padded))
    pieces = []
    for share in tiles:
        p1, p2, po = share.path.padded_shape
        piece = partial[:, share.row : share.row + p1 * p2, :po]
        pieces.append(jnp.sum(piece, axis=0).reshape(-1))
    return jnp.concatenate(pieces).astype(dtype)


def _weight_grid(batch: int, rows: int, tiles: int, memory_cap: int) -> tuple[int, int, int]:
    """``(rows per step, splits, steps per split)`` of the weight gradient's grid ``(splits, tiles)``.

    The launch aims at ``target_programs`` programs, with at most ``max_splits`` splits and ``memory_cap`` (the
    partial sums), and every split has rows:

    * a batch of fewer ``rows``-row blocks than the splits wanted gets smaller steps, down to ``min_block_rows``
      (MACE-large ``Linear``: 40 blocks of 128 rows x 12 tiles, 3.6 programs per SM);
    * the blocks are dealt out evenly, so a split count that does not divide them is rounded up where the caps allow:
      rounding down (fewer, fuller splits) fell short of the target (MACE-large FCTP: 45 splits x 11 tiles, 3.75
      programs per SM, for 48 wanted).
    """
    wanted = max(1, -(-_target_programs() // tiles))
    cap = max(1, min(tuning.value("fully_connected.max_splits", MAX_SPLITS), memory_cap))
    while rows // 2 >= _min_block_rows() and -(-batch // rows) < min(wanted, cap):
        rows //= 2
    blocks = -(-batch // rows)
    cap = min(cap, blocks)
    wanted = min(wanted, cap)
    per_split = max(1, blocks // wanted)  # the most steps per split that still gives ``wanted`` splits or more
    if -(-blocks // per_split) > cap:
        per_split = -(-blocks // wanted)
    return rows, -(-blocks // per_split), per_split


def _weight_kernel(tiles, rows: int, per_split: int, dtype):
    def branch(share: _WeightTiles, x1_ref, x2_ref, g_ref, out_ref, split, tile_number):
        seg1, seg2, seg_out = share.path.segments
        p2 = seg2.width
        chunk, columns = share.chunk, share.columns
        local = tile_number - share.start
        if share.w_tiles > 1:
            u_tile, w_tile = jax.lax.div(local, jnp.int32(share.w_tiles)), jax.lax.rem(local, jnp.int32(share.w_tiles))
        else:
            u_tile, w_tile = local, 0
        u0, w0 = u_tile * chunk, w_tile * columns

        def run():
            def block(step, acc):
                at = compat.ds((split * per_split + step) * rows, rows)

                def x1(i):
                    return x1_ref[at, compat.ds(seg1.column(i) + u0, chunk)].astype(dtype)

                def x2(j):
                    return x2_ref[at, compat.ds(seg2.column(j), p2)].astype(dtype)

                def g(k):
                    return g_ref[at, compat.ds(seg_out.column(k) + w0, columns)].astype(dtype)

                entries = share.path.entries
                if share.grouping == "k":
                    for k in sorted({e[2] for e in entries}):
                        left = _linear_sum([(v, _outer(x1(i), x2(j))) for i, j, kk, v in entries if kk == k])
                        acc = acc + _matmul(left, g(k), dtype, transpose_a=True)
                else:  # "i": x2 is one channel wide, x1_i (x) x2_j = x1_i * x2_j
                    for i in sorted({e[0] for e in entries}):
                        right = _linear_sum([(v, x2(j) * g(k)) for ii, j, k, v in entries if ii == i])
                        acc = acc + _matmul(x1(i), right, dtype, transpose_a=True)
                return acc

            init = jnp.zeros((chunk * p2, columns), dtype)
            acc = jax.lax.fori_loop(jnp.int32(0), jnp.int32(per_split), block, init)
            out_ref[0, compat.ds(share.row + u0 * p2, chunk * p2), compat.ds(w0, columns)] = acc.astype(out_ref.dtype)

        return run

    def kernel(x1_ref, x2_ref, g_ref, out_ref):
        split, tile_number = compat.program_id(0), compat.program_id(1)
        # The path of tile ``tile_number``: how many paths start at or before it, minus one.
        which = sum((tile_number >= share.start).astype(jnp.int32) for share in tiles[1:]) if len(tiles) > 1 else 0
        _switch(which, [branch(share, x1_ref, x2_ref, g_ref, out_ref, split, tile_number) for share in tiles])

    return kernel
