"""Fully connected (``uvw``) tensor-product kernels with shared weights, and their gradient kernels.

A path couples every channel ``u`` of input 1 with every channel ``v`` of input 2 into every output channel ``w``::

    out[b, w, k] = sum_{ijk in CG} c_ijk sum_{u, v} W[u, v, w] x1[b, u, i] x2[b, v, j]

Per non-zero pair ``(i, j)`` of CG entries this is one matrix product: the per-row outer product of the planes
``x1[:, :, i]`` and ``x2[:, :, j]``, flattened to ``(rows, U V)``, times the weight matrix ``(U V, W)``; the result
is added, times ``c_ijk``, into every output plane ``k`` of the pair.  Large multiplicities are cut into chunks of
``u`` so that the outer product stays a register tile (``rows x G V`` elements); products with a side shorter than 16
(Triton's minimum ``dot`` tile; 8 for float64 outputs) are done by broadcasting and summing instead of ``dot``.
Matrix products follow ``jax_default_matmul_precision`` as XLA does (:func:`matmul_precision`: TF32 on tensor-core
GPUs unless ``highest`` is asked for) and accumulate 16-bit inputs in float32.  Block sizes are the
``fully_connected.*`` knobs of :mod:`e3nn_fast.kernels.tuning`.

The form ``F = sum_b sum c W x1 x2 g`` is symmetric in its three batched operands up to a transposition of ``W``, so
the gradients w.r.t. ``x1`` and ``x2`` are the same kernel with roles permuted (``dx1`` multiplies the outer product
of ``x2`` and the output cotangent by ``W`` transposed to ``(V W, U)``), and the weight gradient is a reduction
over the batch, ``dW[(u, v), w] = sum_b (x1_i (x) x2_j)[b, (u, v)] g_k[b, w]``: one ``pallas_call`` per path on a
grid of (batch splits x chunks of ``u``), each program looping over its row blocks and writing a partial sum that
is added outside the kernel (deterministic, no atomics).  Per-row weights (``uvw`` with a weight per sample) are not
handled by these kernels; the executor sends such paths to the reference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from e3nn_fast.kernels import _pallas_compat as compat
from e3nn_fast.kernels import tuning
from e3nn_fast.kernels._aligned import compute_dtype
from e3nn_fast.kernels.layout import OperandLayout, SegmentLayout, block_rows, build_layout, pad_rows
from e3nn_fast.kernels.multilinear import MultilinearPlan, Slot
from e3nn_fast.path_description import Path, TensorProductDescription

TILE_ELEMENTS = 4096  # elements of the per-row outer-product tile
MIN_BLOCK_ROWS = 16  # Triton's smallest dot tile
MATRIX_ELEMENTS = 16384  # elements of a weight-matrix chunk (64 KiB in fp32: a dot operand staged in shared memory)
ACCUMULATOR_ELEMENTS = 8192  # elements of the weight-gradient accumulator tile
BROADCAST_ELEMENTS = 16384  # elements of the 3-D broadcast used instead of a small dot
MAX_SPLITS = 128  # programs along the batch in the weight gradient
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


def _tile_elements() -> int:
    return tuning.value("fully_connected.tile_elements", TILE_ELEMENTS)


def _min_block_rows() -> int:
    return tuning.value("fully_connected.min_block_rows", MIN_BLOCK_ROWS)


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


def _uses_dot(m: int, k: int, n: int, dtype) -> bool:
    """Whether ``(m, k) @ (k, n)`` is large enough for Triton's ``dot`` (the broadcast-and-sum path otherwise)."""
    return m >= 16 and k >= 16 and n >= (8 if jnp.dtype(dtype) == jnp.float64 else 16)


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


def _chunk(outer: int, inner: int, rows: int, limit: int) -> int:
    """Largest power-of-two chunk ``G`` of ``outer`` (itself a power of two) with ``rows * G * inner <= limit``."""
    chunk = outer
    while chunk > 1 and rows * chunk * inner > limit:
        chunk //= 2
    return chunk


def _outer(a, b):
    """Per-row outer product ``(rows, G) x (rows, V) -> (rows, G V)``, ``u``-major."""
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], a.shape[1] * b.shape[1])


def _loop(count: int, body, init):
    """``body`` over ``range(count)``: unrolled when short, a ``fori_loop`` otherwise."""
    if count <= UNROLL_CHUNKS:
        value = init
        for step in range(count):
            value = body(step, value)
        return value
    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(count), body, init)  # int32 indices, also under x64


# --- product kernel: the output, or the gradient of x1 / x2 ------------------------------------------------------

# Which entry index (0: i of x1, 1: j of x2, 2: k of out) plays A, B and the result C, for each output slot, and how
# the (U, V, W) weight is permuted into the (A B, C) matrix.
_ROLES = {"out": ((0, 1, 2), (0, 1, 2)), "x1": ((1, 2, 0), (1, 2, 0)), "x2": ((0, 2, 1), (0, 2, 1))}
_SLOT_OF_ROLE = ("x1", "x2", "out")


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

    matrices = []
    for path in plan.paths:
        shape = path.padded_shape
        w = weights[path.weight_offset : path.weight_offset + path.weight_size].reshape(shape)
        w = jnp.transpose(w, permutation)
        matrices.append(w.reshape(shape[role_a] * shape[role_b], shape[role_c]))

    widths = [max(s.width for s in path.segments) for path in plan.paths]
    rows = block_rows(batch, max(widths), min_rows=_min_block_rows())
    blocks = -(-batch // rows)
    kernel = _product_kernel(plan, (role_a, role_b, role_c), rows, accumulate)
    specs = [compat.BlockSpec((rows, x.shape[1]), lambda i: (i, 0)) for x in (a, b)]
    specs += [compat.BlockSpec(m.shape, lambda i: (0, 0)) for m in matrices]
    result = compat.pallas_call(
        kernel,
        family="fully_connected",
        interpret=interpret,
        grid=(blocks,),
        in_specs=specs,
        out_specs=compat.BlockSpec((rows, out_columns), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((blocks * rows, out_columns), dtype),
        name=f"e3nn_fully_connected_{name}",
    )(pad_rows(a, blocks * rows), pad_rows(b, blocks * rows), *matrices)
    return result[:batch]


def _product_kernel(plan: FullyConnectedPlan, roles: tuple[int, int, int], rows: int, dtype):
    role_a, role_b, role_c = roles
    # Output segment -> [(path number, {(a, b): [(c, value), ...]})]
    by_output: dict[int, list] = {}
    for number, path in enumerate(plan.paths):
        pairs: dict[tuple[int, int], list] = {}
        for entry in path.entries:
            pairs.setdefault((entry[role_a], entry[role_b]), []).append((entry[role_c], entry[3]))
        by_output.setdefault(path.segments[role_c].offset, []).append((number, pairs))
    out_layout = plan.layouts[_SLOT_OF_ROLE[role_c]]

    def pair_product(a_ref, b_ref, m_ref, seg_a: SegmentLayout, seg_b: SegmentLayout, seg_c, a_comp, b_comp):
        pa, pb, pc = seg_a.width, seg_b.width, seg_c.width
        limit = _tile_elements() if _uses_dot(rows, pb, pc, dtype) else BROADCAST_ELEMENTS // pc
        chunk = _chunk(pa, pb, rows, limit)
        while chunk > 1 and chunk * pb * pc > MATRIX_ELEMENTS:
            chunk //= 2
        b = b_ref[:, compat.ds(seg_b.column(b_comp), pb)].astype(dtype)

        def step(c, acc):
            a = a_ref[:, compat.ds(seg_a.column(a_comp) + c * chunk, chunk)].astype(dtype)
            m = m_ref[compat.ds(c * chunk * pb, chunk * pb), :].astype(dtype)
            return acc + _matmul(_outer(a, b), m, dtype)

        return _loop(pa // chunk, step, jnp.zeros((rows, pc), dtype))

    def kernel(a_ref, b_ref, *refs):
        *m_refs, out_ref = refs
        for segment in out_layout.segments:
            planes: dict[int, jnp.ndarray] = {}
            for number, pairs in by_output.get(segment.offset, []):
                path = plan.paths[number]
                seg_a, seg_b = path.segments[role_a], path.segments[role_b]
                for (a_comp, b_comp), outputs in pairs.items():
                    s = pair_product(a_ref, b_ref, m_refs[number], seg_a, seg_b, segment, a_comp, b_comp)
                    for c_comp, value in outputs:
                        term = s * value
                        planes[c_comp] = term if c_comp not in planes else planes[c_comp] + term
            for component in range(segment.dim):
                plane = planes.get(component, jnp.zeros((rows, segment.width), dtype))
                out_ref[:, compat.ds(segment.column(component), segment.width)] = plane.astype(out_ref.dtype)

    return kernel


# --- weight-gradient kernel --------------------------------------------------------------------------------------


def _weight_gradient(plan: FullyConnectedPlan, operands, interpret: bool) -> jnp.ndarray:
    x1, x2, g = (operands[plan.slot_index(name)] for name in ("x1", "x2", "out"))
    dtype = jnp.result_type(x1, x2, g)
    accumulate = compute_dtype(dtype)
    batch = x1.shape[0]
    pieces = []
    for path in plan.paths:
        if batch == 0:
            pieces.append(jnp.zeros((path.weight_size,), dtype))
            continue
        pieces.append(_path_weight_gradient(path, x1, x2, g, accumulate, interpret).astype(dtype))
    return jnp.concatenate(pieces)


def _path_weight_gradient(path: FullyConnectedPath, x1, x2, g, dtype, interpret: bool) -> jnp.ndarray:
    seg1, seg2, seg_out = path.segments
    p1, p2, po = path.padded_shape
    batch = x1.shape[0]
    rows = block_rows(batch, max(p1, p2, po), min_rows=_min_block_rows())
    chunk = _chunk(p1, p2, rows, _tile_elements())
    while chunk > 1 and chunk * p2 * po > ACCUMULATOR_ELEMENTS:
        chunk //= 2
    tiles = p1 // chunk
    blocks = -(-batch // rows)
    max_splits = tuning.value("fully_connected.max_splits", MAX_SPLITS)
    splits = max(1, min(blocks, max(1, max_splits // tiles), MAX_PARTIAL_ELEMENTS // path.weight_size))
    per_split = -(-blocks // splits)
    padded = splits * per_split * rows
    tile_rows = chunk * p2

    pairs: dict[tuple[int, int], list] = {}
    for i, j, k, value in path.entries:
        pairs.setdefault((i, j), []).append((k, value))

    def kernel(x1_ref, x2_ref, g_ref, out_ref):
        split, tile = compat.program_id(0), compat.program_id(1)

        def block(step, acc):
            rows_at = compat.ds((split * per_split + step) * rows, rows)
            for (i, j), outputs in pairs.items():
                a = x1_ref[rows_at, compat.ds(seg1.column(i) + tile * chunk, chunk)].astype(dtype)
                b = x2_ref[rows_at, compat.ds(seg2.column(j), p2)].astype(dtype)
                gk = None
                for k, value in outputs:
                    term = g_ref[rows_at, compat.ds(seg_out.column(k), po)].astype(dtype) * value
                    gk = term if gk is None else gk + term
                acc = acc + _matmul(_outer(a, b), gk, dtype, transpose_a=True)
            return acc

        acc = jax.lax.fori_loop(jnp.int32(0), jnp.int32(per_split), block, jnp.zeros((tile_rows, po), dtype))
        out_ref[...] = acc.astype(out_ref.dtype)[None]

    full = [compat.BlockSpec((padded, x.shape[1]), lambda s, t: (0, 0)) for x in (x1, x2, g)]
    # One (tile_rows, po) partial per program, on a leading axis: the block's last two dimensions are then the whole
    # array's, which Mosaic TPU accepts for any tile_rows (it otherwise wants multiples of 8).
    partial = compat.pallas_call(
        kernel,
        family="fully_connected",
        interpret=interpret,
        grid=(splits, tiles),
        in_specs=full,
        out_specs=compat.BlockSpec((1, tile_rows, po), lambda s, t: (s * tiles + t, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((splits * tiles, tile_rows, po), dtype),
        name="e3nn_fully_connected_weights",
    )(pad_rows(x1, padded), pad_rows(x2, padded), pad_rows(g, padded))
    return jnp.sum(partial.reshape(splits, p1 * p2 * po), axis=0)
