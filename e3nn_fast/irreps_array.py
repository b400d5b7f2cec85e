"""``IrrepsArray``: an array whose last axis carries a representation of O(3); functions that build and combine it.

Layout (the e3nn-jax convention): the data is one array of shape ``(..., irreps.dim)``; the block of ``mul`` copies of
an irrep of dimension ``2l+1`` is stored multiplicity-major, so viewed as a *chunk* it has shape ``(..., mul, 2l+1)``.

Two pieces of bookkeeping ride along with the array:

* ``zero_flags``: one bool per entry of ``irreps``, ``True`` when that block is known to be zero.  Such chunks show up
  as ``None`` in ``.chunks`` so that downstream code can skip work.  The flags are *not* part of the pytree structure
  (see ``_flatten``): after ``jit``/``grad``/``tree_map`` they are reset, exactly as in e3nn-jax.
* ``_chunks``: the list of chunk views, computed lazily from the array and cached.

The arrays may be numpy or JAX arrays; operations keep numpy arrays numpy (as e3nn-jax does).
"""

from __future__ import annotations

import builtins
import functools
import math
import operator
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast._static_int import static_int
from e3nn_fast.configuration import config
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irrep, Irreps, MulIrrep

Chunk = Optional[jax.Array]
IrrepsFilter = Union[Irreps, Sequence[Irrep], str, Callable[[MulIrrep], bool], None]

__all__ = [
    "IrrepsArray",
    "from_chunks",
    "as_irreps_array",
    "zeros",
    "zeros_like",
    "ones",
    "ones_like",
    "concatenate",
    "stack",
    "mean",
    "sum",
    "norm",
    "dot",
    "cross",
    "where",
    "normal",
]


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _infer_backend(pytree) -> Any:
    """The array module of an operation on the leaves of ``pytree``: ``np`` when every array among them is a numpy
    array (an IrrepsArray built from numpy data stays numpy, as in e3nn-jax), ``jnp`` as soon as one is a JAX array
    or tracer (``jnp`` accepts numpy operands, whereas numpy would fail on a tracer), and ``jnp`` for Python numbers.

    Mixed inputs are common and valid: ``gate`` on a numpy IrrepsArray multiplies its numpy vectors by gates that a
    ``jax.nn`` activation returned as JAX arrays.
    """
    has_numpy = False
    for leaf in jax.tree_util.tree_leaves(pytree):
        if isinstance(leaf, jax.Array):
            return jnp
        has_numpy = has_numpy or isinstance(leaf, np.ndarray)
    return np if has_numpy else jnp


def _is_ellipsis(x) -> bool:
    return x is Ellipsis


def _is_full_slice(x) -> bool:
    return isinstance(x, slice) and x == slice(None)


def _is_irreps_index(x) -> bool:
    return isinstance(x, (Irrep, MulIrrep, Irreps, str))


def _lmax(irreps: Irreps) -> int:
    """``irreps.lmax`` that treats the empty irreps as scalar (e3nn-jax's raises there)."""
    return max((ir.l for _, ir in irreps), default=0)


def _all_even_scalars(irreps: Irreps) -> bool:
    return all(ir.l == 0 and ir.p == 1 for _, ir in irreps)


def _axis_list(axis) -> List[int]:
    """``axis`` as a list of Python ints: a single integer-like value, or an iterable of them."""
    try:
        return [operator.index(axis)]
    except TypeError:  # not integer-like: a sequence of axes
        return [operator.index(a) for a in axis]


def _standardize_axis(axis: Union[None, int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    """Sorted, deduplicated, non-negative axes; ``None`` means all of them."""
    if axis is None:
        return tuple(range(ndim))
    normalized = set()
    for a in _axis_list(axis):
        if a < -ndim or a >= ndim:
            raise ValueError(
                f"axis {a} is out of range for an IrrepsArray with {ndim} dimensions; "
                f"use an axis between {-ndim} and {ndim - 1}."
            )
        normalized.add(a % ndim)
    return tuple(sorted(normalized))


def _or_zero(chunk: Chunk):
    """A chunk, or the scalar ``0.0`` standing for a block flagged zero (broadcasts in arithmetic)."""
    return 0.0 if chunk is None else chunk


def _broadcast_leading(chunk, leading_shape: Tuple[int, ...], backend):
    """Broadcast the leading axes of a chunk ``(..., mul, d)`` to ``leading_shape``."""
    return backend.broadcast_to(chunk, tuple(leading_shape) + tuple(chunk.shape[-2:]))


def _scalar_irreps(irreps: Irreps) -> Irreps:
    """One ``0e`` per irrep copy: the irreps of a per-copy invariant (norm, dot, equality) of ``irreps``."""
    return Irreps([(mul, "0e") for mul, _ in irreps])


def _inner(x, y, backend, axis, keepdims: bool = False):
    """``sum(conj(x) * y)`` over ``axis``: the invariant inner product of irrep components."""
    return backend.sum(backend.conj(x) * y, axis=axis, keepdims=keepdims)


def _warn_deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and kept only for e3nn-jax compatibility; call {new} instead.", DeprecationWarning
    )


def _format_index(entry) -> str:
    """An index entry as it is written inside brackets (``1:3``, ``::2``), for error messages."""
    if not isinstance(entry, slice):
        return repr(entry)
    text = ":".join("" if v is None else str(v) for v in (entry.start, entry.stop))
    return text if entry.step is None else f"{text}:{entry.step}"


def _describe(x: "IrrepsArray") -> str:
    """Short description of an operand for error messages."""
    return f"IrrepsArray[{x.irreps}] of shape {x.shape}"


def _equivariance_error(expression: str, requirement: str) -> ValueError:
    """The error raised when an arithmetic expression would not commute with rotations and parity."""
    return ValueError(f"{expression} is not equivariant: {requirement}.")


def _consumed_axes(index: tuple) -> int:
    """Number of array axes an index tuple (without Ellipsis) walks over; ``None`` adds an axis, consumes none."""
    count = 0
    for i in index:
        if i is None or _is_ellipsis(i):
            continue
        if hasattr(i, "dtype") and hasattr(i, "ndim") and np.dtype(i.dtype) == np.bool_:
            count += max(i.ndim, 1)  # a boolean mask consumes as many axes as it has
        else:
            count += 1
    return count


def _last_entry_hits_irreps_axis(index: tuple, ndim: int) -> bool:
    """Whether ``index[-1]`` addresses the last (irreps) axis of an array of ``ndim`` dimensions."""
    if len(index) == 0 or _is_ellipsis(index[-1]):
        return False
    if any(map(_is_ellipsis, index[:-1])):
        return True
    # all axes addressed explicitly: the last entry is at (or, for ``None``, just after) the irreps axis
    return _consumed_axes(index) == ndim


def _is_dim_slice(x) -> bool:
    """A slice like ``3:8`` of the irreps axis (ints or None, no step, not the full slice)."""
    return (
        isinstance(x, slice)
        and isinstance(x.start, (int, type(None)))
        and isinstance(x.stop, (int, type(None)))
        and x.step is None
        and (x.start is not None or x.stop is not None)
    )


def _default_float_dtype():
    """float64 when x64 is enabled, float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


# ----------------------------------------------------------------------------------------------------------------
# Rechunking: re-cut the same sequence of irreps copies into different blocks
# ----------------------------------------------------------------------------------------------------------------


# Up to this many pieces an array is cut with slices, beyond it with one ``split`` (see :func:`split_by_sizes`).
SLICE_MAX_PIECES = 3


def split_by_sizes(array, sizes: Sequence[int], axis: int, backend) -> List[Any]:
    """``array`` cut along ``axis`` into consecutive pieces of ``sizes``.

    The choice shapes the backward pass.  The transposes of ``n`` slices are ``n`` zero-padded cotangents summed
    together, which XLA's CPU backend fuses into one loop writing the gradient directly -- with ``n`` selects per
    element, slow for many pieces (a backward pass through ``x * w`` with per-irrep weights, 40 pieces, got 2x
    slower).  The transpose of one ``split`` is one ``concatenate``, which costs a copy of its materialised operands
    but nothing per piece.  So: slices for at most :data:`SLICE_MAX_PIECES` pieces, one split beyond (measured with
    jax 0.10.2 on CPU: a haiku ``Linear`` on three chunks, forces pass, 0.70x of e3nn-jax with a split, 1.09x with
    slices).
    """
    if len(sizes) == 1:
        return [array]
    if len(sizes) <= SLICE_MAX_PIECES:
        axis = axis % array.ndim
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        return [
            array[(slice(None),) * axis + (slice(start, stop),)] for start, stop in zip(offsets[:-1], offsets[1:])
        ]
    offsets = np.cumsum(sizes)[:-1].tolist()
    return list(backend.split(array, offsets, axis=axis))


def _rechunk_pieces(
    old_irreps: Irreps,
    old_zero_flags: Sequence[bool],
    old_chunks: Optional[Sequence[Chunk]],
    new_irreps: Irreps,
    leading_shape: Tuple[int, ...],
    dtype,
    backend,
) -> Tuple[Tuple[bool, ...], Optional[List[Chunk]]]:
    """New zero flags (and chunks, when ``old_chunks`` is given) for ``new_irreps``.

    The old blocks are consumed as a queue of ``(mul, ir, zero)`` pieces; each new block takes ``mul`` copies from the
    front of the queue, cutting a piece along the multiplicity axis when it is too long.  The cuts of each old block
    are planned first, so that it is split once (see :func:`split_by_sizes`).  A new block is zero only if every copy
    it takes is zero; zero pieces inside a non-zero block are materialised as zeros.
    """
    old = [(i, mul, zero) for i, ((mul, _), zero) in enumerate(zip(old_irreps, old_zero_flags)) if mul > 0]
    cuts: dict = {i: [] for i, _, _ in old}  # old block -> sizes of its consecutive pieces
    plan: List[List[Tuple[int, int]]] = []  # new block -> its (old block, piece number) in order
    position, used = 0, 0  # the old block at the front of the queue, and the copies already taken from it
    for mul, _ in new_irreps:
        taken, needed = [], mul
        while needed > 0:
            i, old_mul, _ = old[position]
            m = min(needed, old_mul - used)
            taken.append((i, len(cuts[i])))
            cuts[i].append(m)
            used += m
            needed -= m
            if used == old_mul:
                position, used = position + 1, 0
        plan.append(taken)

    zero_of = {i: zero for i, _, zero in old}
    new_flags = tuple(all(zero_of[i] for i, _ in taken) for taken in plan)  # an empty block counts as zero
    if old_chunks is None:
        return new_flags, None
    pieces = {
        i: [None] * len(sizes) if old_chunks[i] is None else split_by_sizes(old_chunks[i], sizes, -2, backend)
        for i, sizes in cuts.items()
    }
    new_chunks: List[Chunk] = []
    for (_, ir), taken, zero in zip(new_irreps, plan, new_flags):
        if zero:
            new_chunks.append(None)
            continue
        parts = [
            backend.zeros(leading_shape + (cuts[i][n], ir.dim), dtype) if pieces[i][n] is None else pieces[i][n]
            for i, n in taken
        ]
        new_chunks.append(parts[0] if len(parts) == 1 else backend.concatenate(parts, axis=-2))
    return new_flags, new_chunks


def _split_points(irreps: Irreps, offsets: Sequence[int]) -> Optional[Irreps]:
    """Split the blocks of ``irreps`` so that every offset of ``offsets`` falls on a block boundary.

    Returns ``None`` when an offset falls inside a single irrep (not on a multiple of its dimension).
    """
    out = []
    position = 0
    for mul, ir in irreps:
        end = position + mul * ir.dim
        cuts = sorted({o for o in offsets if position < o < end})
        previous = position
        for cut in cuts:
            if (cut - position) % ir.dim != 0:
                return None
            out.append(((cut - previous) // ir.dim, ir))
            previous = cut
        out.append(((end - previous) // ir.dim, ir))
        position = end
    return Irreps(out)


def _block_index_at(irreps: Irreps, offset: int, first: int = 0) -> Optional[int]:
    """First block index ``i >= first`` such that the blocks before ``i`` span exactly ``offset`` components."""
    position = builtins.sum(mul_ir.dim for mul_ir in irreps[:first])
    for i in range(first, len(irreps) + 1):
        if position == offset:
            return i
        if i < len(irreps):
            position += irreps[i].dim
    return None


# ----------------------------------------------------------------------------------------------------------------
# Elementwise product where each pair of aligned blocks has a scalar on one side
# ----------------------------------------------------------------------------------------------------------------


def _align_two_irreps(irreps1: Irreps, irreps2: Irreps) -> Tuple[Irreps, Irreps]:
    """Cut the blocks of two irreps with equal ``num_irreps`` so that their multiplicities match pairwise.

    Both lists are walked in step like a merge: each step emits one piece on each side, as long as the shorter of the
    two current remainders, and moves past whichever block(s) it used up.  Zero-multiplicity blocks yield a
    ``0x`` piece on the other side, so both results keep every block of their input.
    """
    left = [[mul, ir] for mul, ir in irreps1]
    right = [[mul, ir] for mul, ir in irreps2]
    out_left: List[Tuple[int, Irrep]] = []
    out_right: List[Tuple[int, Irrep]] = []
    i = j = 0
    while i < len(left) and j < len(right):
        step = min(left[i][0], right[j][0])
        out_left.append((step, left[i][1]))
        out_right.append((step, right[j][1]))
        left[i][0] -= step
        right[j][0] -= step
        if left[i][0] == 0:
            i += 1
        if right[j][0] == 0:
            j += 1
    # only zero-multiplicity blocks can remain on one side; they are kept as they are
    out_left += [(mul, ir) for mul, ir in left[i:]]
    out_right += [(mul, ir) for mul, ir in right[j:]]
    return Irreps(out_left), Irreps(out_right)


def _align_two_irreps_arrays(x1: "IrrepsArray", x2: "IrrepsArray") -> Tuple["IrrepsArray", "IrrepsArray"]:
    irreps1, irreps2 = _align_two_irreps(x1.irreps, x2.irreps)
    return x1.rechunk(irreps1), x2.rechunk(irreps2)


def _product_irreps_count(irreps1: Irreps, irreps2: Irreps) -> int:
    """``num_irreps`` of the elementwise tensor product of two aligned irreps (all output irreps kept)."""
    a, b = _align_two_irreps(irreps1, irreps2)
    return builtins.sum(mul * len(list(ir1 * ir2)) for (mul, ir1), (_, ir2) in zip(a, b))


def _scalar_pair_factor(ir_out: Irrep, normalization: str) -> float:
    """Normalisation of the CG coefficient ``(0, l) -> l`` under the given ``irrep_normalization``.

    e3nn's CG for a scalar times an irrep is ``identity / sqrt(2l+1)``; "component" scales it by ``sqrt(2l+1)`` and
    "norm" by ``sqrt(1 * (2l+1))``, both giving the plain product; "none" leaves the ``1/sqrt(2l+1)``.
    """
    if normalization in ("component", "norm"):
        return 1.0
    if normalization == "none":
        return 1.0 / math.sqrt(ir_out.dim)
    raise ValueError(f"irrep_normalization={normalization!r} not supported, use 'component', 'norm' or 'none'")


def times_scalar_block(c1, c2):
    """``c1 * c2`` for two aligned chunks ``(..., mul, d)`` where one side is a scalar per copy (``d = 1``).

    The scalar side is repeated along the component axis with ``concatenate`` instead of being broadcast.  Both give
    the same forward loop, but reverse mode transposes a broadcast into a reduction over the short component axis,
    which XLA's CPU backend hands to a library fusion that is about 5x slower than the slice additions that the
    transpose of a concatenation becomes (per-copy weights of a ``(1024, 384, 5)`` chunk, jax 0.10.2, 2 cores:
    gradient 1.66 ms -> 0.32 ms; forward 0.28 -> 0.33 ms).  This is the ``* w`` of every convolution's backward pass.
    """
    d1, d2 = c1.shape[-1], c2.shape[-1]
    if d1 == 1 and d2 > 1:
        c1 = jnp.concatenate([c1] * d2, axis=-1)
    elif d2 == 1 and d1 > 1:
        c2 = jnp.concatenate([c2] * d1, axis=-1)
    return c1 * c2


def _broadcast_leading_shapes(*shapes) -> Tuple[Any, ...]:
    """The broadcast of leading shapes, by JAX's rule: it also takes symbolic sizes (``jax.export``), which NumPy's
    ``broadcast_shapes`` refuses."""
    return tuple(jnp.broadcast_shapes(*(tuple(shape) for shape in shapes)))


def _elementwise_scalar_product(x1: "IrrepsArray", x2: "IrrepsArray") -> "IrrepsArray":
    """Elementwise tensor product of two IrrepsArrays whose aligned blocks each have a scalar on one side.

    This is e3nn-jax's ``elementwise_tensor_product`` restricted to the cases ``IrrepsArray * IrrepsArray`` accepts;
    there the Clebsch-Gordan contraction reduces to a broadcast product (``x1 * x2`` over the irrep axis).
    Integer (and bool) inputs are promoted to the default float dtype, as in e3nn-jax.
    """
    backend = _infer_backend([x1.array, x2.array])
    dtype = jnp.result_type(x1.dtype, x2.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = _default_float_dtype()
    x1, x2 = x1.astype(dtype), x2.astype(dtype)
    leading_shape = _broadcast_leading_shapes(x1.shape[:-1], x2.shape[:-1])
    x1 = x1.broadcast_to(leading_shape + (-1,))
    x2 = x2.broadcast_to(leading_shape + (-1,))
    x1, x2 = _align_two_irreps_arrays(x1, x2)
    normalization = config("irrep_normalization")

    irreps_out = []
    chunks = []
    for (mul, ir1), c1, (_, ir2), c2 in zip(x1.irreps, x1.chunks, x2.irreps, x2.chunks):
        (ir_out,) = list(ir1 * ir2)
        irreps_out.append((mul, ir_out))
        if c1 is None or c2 is None:
            chunks.append(None)
            continue
        factor = _scalar_pair_factor(ir_out, normalization)
        chunk = times_scalar_block(c1, c2) if backend is jnp else c1 * c2
        chunks.append(chunk if factor == 1.0 else chunk * backend.asarray(factor, dtype))
    return from_chunks(irreps_out, chunks, leading_shape, dtype, backend=backend)


def _check_scalar_pairs(x1: "IrrepsArray", x2: "IrrepsArray", op: str) -> None:
    """``IrrepsArray * IrrepsArray`` is only defined when each aligned pair of blocks involves a scalar."""
    n1, n2 = x1.irreps.num_irreps, x2.irreps.num_irreps
    if n1 != n2:
        raise ValueError(
            f"{_describe(x1)} {op} {_describe(x2)}: the product pairs the irreps copy by copy, so both sides need "
            f"the same number of irreps, got {n1} and {n2}."
        )
    if _product_irreps_count(x1.irreps, x2.irreps) != n1:
        raise ValueError(
            f"{_describe(x1)} {op} {_describe(x2)}: the operator only handles pairs where one of the two copies is "
            "a scalar (l=0), which these irreps violate. For a product of two non-scalar irreps call "
            "e3nn.elementwise_tensor_product or e3nn.tensor_product."
        )


# ----------------------------------------------------------------------------------------------------------------
# IrrepsArray
# ----------------------------------------------------------------------------------------------------------------


class IrrepsArray:
    r"""An array of shape ``(..., irreps.dim)`` together with the representation ``irreps`` of its last axis.

    Args:
        irreps: representation of the last axis (anything ``Irreps`` accepts).
        array: the data, of shape ``(..., irreps.dim)``.
        zero_flags: optional tuple with one bool per block of ``irreps``, ``True`` for blocks known to be zero.
        chunks: optional precomputed list of chunk views (``None`` for zero blocks).

    Examples:
        >>> x = IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0]))
        >>> x
        1x1o [1. 2. 3.]
        >>> x + x
        1x1o [2. 4. 6.]
    """

    __match_args__ = ("irreps", "array")  # ``match x: case IrrepsArray(irreps, array)``, as with e3nn-jax

    def __init__(
        self,
        irreps,
        array,
        *,
        zero_flags: Optional[Sequence[bool]] = None,
        chunks: Optional[List[Chunk]] = None,
    ):
        self._set_fields(irreps, _numbers_as_array(array), zero_flags, chunks)

    def _set_fields(self, irreps, array, zero_flags, chunks) -> None:
        """The constructor's work once the data is final (also how a pytree is rebuilt, see ``_unflatten``)."""
        irreps = Irreps(irreps)
        zero_flags = None if zero_flags is None else tuple(bool(z) for z in zero_flags)
        _validate(irreps, array, zero_flags, chunks)
        object.__setattr__(self, "irreps", irreps)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "_zero_flags", zero_flags)
        object.__setattr__(self, "_chunks", None if chunks is None else list(chunks))

    def __setattr__(self, name, value):
        raise AttributeError(f"IrrepsArray is immutable: cannot assign to {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"IrrepsArray is immutable: cannot delete {name!r}")

    # -- deprecated constructors kept for e3nn-jax compatibility ----------------------------------------------

    @staticmethod
    def from_list(irreps, chunks: List[Chunk], leading_shape: Tuple[int, ...], dtype=None, *, backend=None):
        """Deprecated alias of :func:`from_chunks`."""
        _warn_deprecated("IrrepsArray.from_list", "e3nn.from_chunks")
        return from_chunks(irreps, chunks, leading_shape, dtype, backend=backend)

    @staticmethod
    def as_irreps_array(array, *, backend=None):
        """Deprecated alias of :func:`as_irreps_array`."""
        _warn_deprecated("IrrepsArray.as_irreps_array", "e3nn.as_irreps_array")
        return as_irreps_array(array, backend=backend)

    @staticmethod
    def zeros(irreps, leading_shape, dtype=None) -> "IrrepsArray":
        """Deprecated alias of :func:`zeros`."""
        _warn_deprecated("IrrepsArray.zeros", "e3nn.zeros")
        return zeros(irreps, leading_shape, dtype)

    @staticmethod
    def zeros_like(irreps_array: "IrrepsArray") -> "IrrepsArray":
        """Deprecated alias of :func:`zeros_like`."""
        _warn_deprecated("IrrepsArray.zeros_like", "e3nn.zeros_like")
        return zeros_like(irreps_array)

    # -- basic properties ------------------------------------------------------------------------------------

    @property
    def chunks(self) -> List[Chunk]:
        """One array of shape ``(..., mul, ir.dim)`` per block of ``irreps``; ``None`` for blocks flagged zero."""
        if self._chunks is not None:
            return self._chunks
        chunks = self._compute_chunks()
        # A concrete array sliced while some transformation traces (an IrrepsArray captured by a jitted closure)
        # yields tracers: caching them would leak them out of the trace, so such chunks are recomputed each time.
        leaked = not isinstance(self.array, jax.core.Tracer) and any(isinstance(c, jax.core.Tracer) for c in chunks)
        if not leaked:
            object.__setattr__(self, "_chunks", chunks)
        return chunks

    def _compute_chunks(self) -> List[Chunk]:
        backend = _infer_backend(self.array)
        leading_shape = self.array.shape[:-1]
        if len(self.irreps) == 1:  # a single block is a pure reshape, no slicing needed
            (mul, ir), zero = self.irreps[0], self.zero_flags[0]
            return [None if zero else backend.reshape(self.array, leading_shape + (mul, ir.dim))]
        pieces = split_by_sizes(self.array, [mul_ir.dim for mul_ir in self.irreps], -1, backend)
        return [
            None if zero else backend.reshape(piece, leading_shape + (mul, ir.dim))
            for zero, piece, (mul, ir) in zip(self.zero_flags, pieces, self.irreps)
        ]

    @property
    def list(self) -> List[Chunk]:
        """Deprecated alias of :attr:`chunks`."""
        _warn_deprecated("IrrepsArray.list", "IrrepsArray.chunks")
        return self.chunks

    @property
    def zero_flags(self) -> Tuple[bool, ...]:
        """One bool per block of ``irreps``: ``True`` when the block is known to be zero."""
        if self._zero_flags is None:
            return (False,) * len(self.irreps)
        return self._zero_flags

    @property
    def shape(self) -> Tuple[int, ...]:
        """Shape of ``array``."""
        return self.array.shape

    @property
    def dtype(self):
        """dtype of ``array``."""
        return self.array.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions of ``array``."""
        return len(self.shape)

    def __repr__(self) -> str:
        text = str(self.array)
        if "\n" in text:
            return f"{self.irreps}\n{text}"
        return f"{self.irreps} {text}"

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self):
        if self.ndim <= 1:
            # iteration walks the first axis, and the irreps axis cannot be taken apart
            raise ValueError(
                f"cannot iterate over an IrrepsArray of shape {self.shape}: it has no leading axis besides the "
                "irreps axis; add one (x[None]) or iterate over x.chunks instead."
            )
        for i in range(len(self)):
            yield self[i]

    # -- arithmetic ------------------------------------------------------------------------------------------

    def __eq__(self, other) -> "IrrepsArray":  # type: ignore[override]
        """Elementwise equality, reduced over each irrep: the result has irreps ``mul x 0e`` per block (bool)."""
        backend = _infer_backend(self.array)
        if not isinstance(other, IrrepsArray):
            return self._equals_plain(backend.asarray(other))
        if self.irreps != other.irreps:
            raise _equivariance_error(
                f"{_describe(self)} == {_describe(other)}", "only arrays with identical irreps can be compared"
            )
        leading_shape = _broadcast_leading_shapes(self.shape[:-1], other.shape[:-1])
        verdicts = [
            _copies_equal(a, b, mul, leading_shape, backend)
            for (mul, _), a, b in zip(self.irreps, self.chunks, other.chunks)
        ]
        return from_chunks(_scalar_irreps(self.irreps), verdicts, leading_shape, bool, backend=backend)

    def _equals_plain(self, value) -> "IrrepsArray":
        """``x == value`` for a plain array: componentwise, which is invariant only for scalar irreps."""
        if _lmax(self.irreps) > 0 or (value.ndim > 0 and value.shape[-1] != 1):
            raise _equivariance_error(
                f"{_describe(self)} == a plain array of shape {value.shape}",
                "a plain value can only be compared with scalar irreps (l=0), and its last axis (if any) must have "
                "size 1",
            )
        return IrrepsArray(self.irreps, self.array == value)

    __hash__ = None  # type: ignore[assignment]  # ``==`` returns an array, so instances are unhashable

    def _map_leading(self, fn: Callable[[Any, Tuple[int, ...]], Any], *, compute_chunks: bool = False):
        """Apply ``fn(t, tail)`` to the array and to every chunk; ``fn`` must only act on the leading axes.

        ``tail`` is the shape that follows the leading axes: ``(irreps.dim,)`` for the array, ``(mul, ir.dim)`` for
        a chunk.  The irreps and zero flags carry over.  Chunks are transformed only when already cached, unless
        ``compute_chunks`` asks to slice them first (worth it when the result is about to be taken apart again).
        """
        source = self.chunks if compute_chunks else self._chunks
        chunks = None if source is None else [None if c is None else fn(c, tuple(c.shape[-2:])) for c in source]
        return IrrepsArray(self.irreps, fn(self.array, (self.irreps.dim,)), zero_flags=self.zero_flags, chunks=chunks)

    def __neg__(self) -> "IrrepsArray":
        return self._map_leading(lambda t, _: -t)

    def _add_or_sub(self, other, sign: int, op: str) -> "IrrepsArray":
        if isinstance(other, (float, int)) and other == 0:
            return self  # adding the literal 0 keeps everything, zero flags included
        backend = _infer_backend(self.array)
        if not isinstance(other, IrrepsArray):
            if not _all_even_scalars(self.irreps):
                raise _equivariance_error(
                    f"{_describe(self)} {op} a plain value",
                    "plain numbers and arrays can only be combined with irreps that are all 0e; wrap the value in an "
                    "IrrepsArray with the same irreps instead",
                )
            other = backend.asarray(other)
            return IrrepsArray(self.irreps, self.array + other if sign > 0 else self.array - other)
        if self.irreps != other.irreps:
            raise _equivariance_error(
                f"{_describe(self)} {op} {_describe(other)}",
                "both sides need identical irreps; align them with .rechunk(), .filter() or .extend_with_zeros()",
            )
        zero_flags = tuple(a and b for a, b in zip(self.zero_flags, other.zero_flags))
        chunks = None
        if self._chunks is not None and other._chunks is not None:
            chunks = [_combine_chunks(a, b, sign) for a, b in zip(self._chunks, other._chunks)]
        array = self.array + other.array if sign > 0 else self.array - other.array
        return IrrepsArray(self.irreps, array, zero_flags=zero_flags, chunks=chunks)

    def __add__(self, other) -> "IrrepsArray":
        return self._add_or_sub(other, +1, "+")

    def __radd__(self, other) -> "IrrepsArray":
        return self + other

    def __sub__(self, other) -> "IrrepsArray":
        return self._add_or_sub(other, -1, "-")

    def __rsub__(self, other) -> "IrrepsArray":
        return -self + other

    def _scale(self, other, divide: bool) -> "IrrepsArray":
        """Multiply (or divide) by a plain array: one factor for everything, or one per irrep copy."""
        factor = _infer_backend((self.array, other)).asarray(other)  # jnp for a traced factor of a numpy array
        n = self.irreps.num_irreps
        if factor.ndim > 0 and factor.shape[-1] == n:
            # one factor per irrep copy: an elementwise product with ``n x 0e``
            per_copy = IrrepsArray(f"{n}x0e", 1.0 / factor if divide else factor)
            return _elementwise_scalar_product(self, per_copy)
        if _lmax(self.irreps) > 0 and factor.ndim > 0 and factor.shape[-1] != 1:
            raise _equivariance_error(
                f"{_describe(self)} {'/' if divide else '*'} a plain array of shape {factor.shape}",
                f"a plain factor needs a last axis of size 1 (same factor for every copy) or {n} (one per irrep copy)",
            )
        combine = operator.truediv if divide else operator.mul

        def apply(t, tail):
            # the factor covers the leading axes; a chunk has one more trailing axis to broadcast over
            return combine(t, factor if len(tail) == 1 else factor[..., None])

        return self._map_leading(apply)

    def __mul__(self, other) -> "IrrepsArray":
        if isinstance(other, IrrepsArray):
            _check_scalar_pairs(self, other, "*")
            return _elementwise_scalar_product(self, other)
        return self._scale(other, divide=False)

    def __rmul__(self, other) -> "IrrepsArray":
        return self * other

    def __truediv__(self, other) -> "IrrepsArray":
        if not isinstance(other, IrrepsArray):
            return self._scale(other, divide=True)
        divisor_is_scalar = len(other.irreps) > 0 and _lmax(other.irreps) == 0
        if not divisor_is_scalar or other.irreps.num_irreps != self.irreps.num_irreps:
            raise _equivariance_error(
                f"{_describe(self)} / {_describe(other)}",
                f"the divisor needs scalar irreps (l=0) with one copy per irrep copy of the dividend "
                f"({self.irreps.num_irreps})",
            )
        _reject_zero_divisor(other)
        return _elementwise_scalar_product(self, 1.0 / other)

    def __rtruediv__(self, other) -> "IrrepsArray":
        numerator = _infer_backend((self.array, other)).asarray(other)
        if _lmax(self.irreps) > 0:
            raise _equivariance_error(
                f"a plain array of shape {numerator.shape} / {_describe(self)}",
                "only scalar irreps (l=0) can be inverted",
            )
        _reject_zero_divisor(self)
        return IrrepsArray(self.irreps, numerator / self.array)

    def __pow__(self, exponent) -> "IrrepsArray":
        """Power of scalar irreps: any exponent for ``0e``; integer exponents for ``0o`` (even powers give ``0e``)."""
        # 0 ** e == 0 only for e > 0: only then can zero blocks stay flagged
        keeps_zeros = isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and exponent > 0
        if _all_even_scalars(self.irreps):
            irreps = self.irreps
        elif exponent % 1.0 == 0.0 and _lmax(self.irreps) == 0:
            # an odd scalar changes sign under parity: its even powers are invariant, its odd powers stay odd
            irreps = Irreps([(mul, "0e") for mul, _ in self.irreps]) if exponent % 2.0 == 0.0 else self.irreps
        else:
            raise _equivariance_error(
                f"{_describe(self)} ** {exponent!r}",
                "powers are defined for 0e irreps with any exponent and for other scalar irreps with integer "
                "exponents only",
            )
        return IrrepsArray(irreps, self.array**exponent, zero_flags=self.zero_flags if keeps_zeros else None)

    # -- indexing --------------------------------------------------------------------------------------------

    def __getitem__(self, index) -> "IrrepsArray":
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) == 0:
            return self
        last = index[-1]
        hits_irreps_axis = _last_entry_hits_irreps_axis(index, self.ndim)

        if _is_irreps_index(last):
            if not hits_irreps_axis:
                raise IndexError(
                    f"IrrepsArray indexing: the irreps selector {last!r} must address the last (irreps) axis; "
                    f"write x[..., {str(last)!r}] instead."
                )
            return self._select_irreps(Irreps(last))[index[:-1] + (slice(None),)]

        if hits_irreps_axis and _is_dim_slice(last):
            return self._slice_irreps_axis(last)[index[:-1] + (slice(None),)]

        if hits_irreps_axis and not _is_full_slice(last):
            raise IndexError(_irreps_axis_index_problem(last))

        # only leading axes are indexed: the irreps (and zero flags) are unchanged; a chunk has one more trailing
        # axis than the array, which the index must leave alone too
        return self._map_leading(lambda t, tail: t[index + (slice(None),) * (len(tail) - 1)])

    def _select_irreps(self, irreps: Irreps) -> "IrrepsArray":
        """The contiguous run of blocks equal to ``irreps`` (which must occur exactly once)."""
        n = len(irreps)
        matches = [i for i in range(len(self.irreps) - n + 1) if Irreps(self.irreps[i : i + n]) == irreps]
        if len(matches) != 1:
            found = "not found" if not matches else f"found {len(matches)} times"
            raise IndexError(
                f"IrrepsArray indexing with {str(irreps)!r}: this run of blocks is {found} in {self.irreps}; the "
                "selector must match exactly one contiguous run of blocks (rechunk or regroup x first)."
            )
        return self._take_blocks(matches[0], matches[0] + n)

    def _take_blocks(self, start: int, stop: int) -> "IrrepsArray":
        """Blocks ``start:stop`` of ``irreps``, slicing the array directly (flags and cached chunks follow)."""
        offset = self.irreps[:start].dim
        return IrrepsArray(
            self.irreps[start:stop],
            self.array[..., offset : offset + self.irreps[start:stop].dim],
            zero_flags=self.zero_flags[start:stop],
            chunks=None if self._chunks is None else self._chunks[start:stop],
        )

    def _slice_irreps_axis(self, index: slice) -> "IrrepsArray":
        """``x[..., start:stop]`` where ``start`` and ``stop`` fall on irrep boundaries."""
        start, stop, _ = index.indices(self.irreps.dim)
        split = _split_points(self.irreps, [start, stop])
        i_start = None if split is None else _block_index_at(split, start)
        i_stop = None if i_start is None else _block_index_at(split, max(start, stop), i_start)
        if i_stop is None:
            raise IndexError(
                f"IrrepsArray indexing with [..., {start}:{stop}]: both bounds must fall between two irrep copies of "
                f"{self.irreps} (a block mul x ir can only be cut every ir.dim components); move them to such a "
                "boundary."
            )
        return self.rechunk(split)._take_blocks(i_start, i_stop)

    @property
    def at(self) -> "_IndexUpdateHelper":
        """Functional updates of leading axes: ``x.at[i].set(v)``, ``x.at[i].add(v)`` (as ``jax.Array.at``)."""
        return _IndexUpdateHelper(self)

    @property
    def slice_by_mul(self) -> "_MulIndexSliceHelper":
        """``x.slice_by_mul[a:b]``: irrep copies ``a`` to ``b`` counted across all blocks."""
        return _MulIndexSliceHelper(self)

    @property
    def slice_by_dim(self) -> "_DimIndexSliceHelper":
        """``x.slice_by_dim[a:b]``: same as ``x[..., a:b]``."""
        return _DimIndexSliceHelper(self)

    @property
    def slice_by_chunk(self) -> "_ChunkIndexSliceHelper":
        """``x.slice_by_chunk[a:b]``: blocks ``a`` to ``b`` of ``irreps``."""
        return _ChunkIndexSliceHelper(self)

    # -- shape and dtype -------------------------------------------------------------------------------------

    def _check_last_dim(self, shape: Tuple[int, ...], what: str) -> None:
        if len(shape) == 0 or shape[-1] not in (self.irreps.dim, -1):
            # e3nn-jax asserts here: the class is also an AssertionError
            raise InvalidValueError(
                f"IrrepsArray.{what}: the last entry of shape {shape} must be irreps.dim={self.irreps.dim} "
                f"(or -1) for irreps {self.irreps}"
            )

    def reshape(self, shape) -> "IrrepsArray":
        """Reshape the leading axes; the last entry of ``shape`` must be ``irreps.dim`` or ``-1``."""
        shape = tuple(shape)
        self._check_last_dim(shape, "reshape")
        return self._map_leading(lambda t, tail: t.reshape(shape[:-1] + tail))

    def broadcast_to(self, shape) -> "IrrepsArray":
        """Broadcast the leading axes; the last entry of ``shape`` must be ``irreps.dim`` or ``-1``."""
        shape = tuple(shape)
        self._check_last_dim(shape, "broadcast_to")
        leading, target = self.shape[:-1], shape[:-1]
        if len(target) < len(leading) or any(n not in (1, t) for n, t in zip(leading[::-1], target[::-1])):
            raise ValueError(
                f"IrrepsArray.broadcast_to: cannot broadcast an IrrepsArray of shape {self.shape} to {shape}: its "
                f"leading shape {leading} must match the end of {target}, axis by axis, or have size 1 there"
            )
        backend = _infer_backend(self.array)
        return self._map_leading(lambda t, tail: backend.broadcast_to(t, shape[:-1] + tail), compute_chunks=True)

    def astype(self, dtype) -> "IrrepsArray":
        """Cast the data to ``dtype``."""
        return self._map_leading(lambda t, _: t.astype(dtype))

    # -- irreps manipulation ---------------------------------------------------------------------------------

    def _from_chunks(self, irreps, chunks: List[Chunk], leading_shape=None) -> "IrrepsArray":
        leading_shape = self.shape[:-1] if leading_shape is None else leading_shape
        return from_chunks(irreps, chunks, leading_shape, self.dtype, backend=_infer_backend(self.array))

    def rechunk(self, irreps) -> "IrrepsArray":
        """Re-cut the blocks into ``irreps``, which must describe the same sequence of irreps (equal ``simplify()``)."""
        irreps = Irreps(irreps)
        if self.irreps.simplify() != irreps.simplify():
            # e3nn-jax asserts here: the class is also an AssertionError
            raise InvalidValueError(
                f"IrrepsArray.rechunk: {irreps} is not a re-cut of {self.irreps} (simplified irreps differ)"
            )
        if self.irreps == irreps:
            return self
        zero_flags, chunks = _rechunk_pieces(
            self.irreps,
            self.zero_flags,
            self._chunks,
            irreps,
            self.shape[:-1],
            self.dtype,
            _infer_backend(self.array),
        )
        return IrrepsArray(irreps, self.array, zero_flags=zero_flags, chunks=chunks)

    def simplify(self) -> "IrrepsArray":
        """Merge consecutive equal irreps and drop zero multiplicities (data unchanged)."""
        return self.rechunk(self.irreps.simplify())

    def unify(self) -> "IrrepsArray":
        """Merge consecutive equal irreps, keeping zero multiplicities (data unchanged)."""
        return self.rechunk(self.irreps.unify())

    def sort(self) -> "IrrepsArray":
        """Sort the blocks by irrep (the data is permuted along)."""
        irreps, _, inv = self.irreps.sort()
        return self._from_chunks(irreps, [self.chunks[i] for i in inv])

    def sorted(self) -> "IrrepsArray":
        """Deprecated alias of :meth:`sort`."""
        _warn_deprecated("IrrepsArray.sorted", "IrrepsArray.sort")
        return self.sort()

    def regroup(self) -> "IrrepsArray":
        """Sort then simplify: one block per distinct irrep."""
        return self.sort().simplify()

    def filter(
        self, keep: IrrepsFilter = None, *, drop: IrrepsFilter = None, lmax: Optional[int] = None
    ) -> "IrrepsArray":
        """Keep only some blocks (see ``Irreps.filter`` for the meaning of ``keep``, ``drop`` and ``lmax``)."""
        if keep is None and drop is None and lmax is None:
            return self
        new_irreps = self.irreps.filter(keep=keep, drop=drop, lmax=lmax)
        # the kept blocks form a subsequence of the current ones; equal blocks are kept or dropped together, so
        # greedy matching finds the right ones
        chunks = []
        for mul_ir, c in zip(self.irreps, self.chunks):
            if len(chunks) < len(new_irreps) and mul_ir == new_irreps[len(chunks)]:
                chunks.append(c)
        return self._from_chunks(new_irreps, chunks)

    def filtered(self, *args, **kwargs) -> "IrrepsArray":
        """Deprecated alias of :meth:`filter`."""
        _warn_deprecated("IrrepsArray.filtered", "IrrepsArray.filter")
        return self.filter(*args, **kwargs)

    def remove_zero_chunks(self) -> "IrrepsArray":
        """Drop the blocks flagged zero."""
        kept = [i for i, zero in enumerate(self.zero_flags) if not zero]
        return self._from_chunks(Irreps([self.irreps[i] for i in kept]), [self.chunks[i] for i in kept])

    def remove_nones(self) -> "IrrepsArray":
        """Deprecated alias of :meth:`remove_zero_chunks`."""
        _warn_deprecated("IrrepsArray.remove_nones", "IrrepsArray.remove_zero_chunks")
        return self.remove_zero_chunks()

    def extend_with_zeros(self, new_irreps) -> "IrrepsArray":
        """Insert zero blocks so that the irreps become ``new_irreps`` (a superset, in order, of the current ones)."""
        new_irreps = Irreps(new_irreps)
        chunks: List[Chunk] = []
        current = 0
        for mul_ir in new_irreps:
            if current < len(self.irreps) and self.irreps[current] == mul_ir:
                chunks.append(self.chunks[current])
                current += 1
            else:
                chunks.append(None)
        if current < len(self.irreps):
            raise ValueError(
                f"IrrepsArray.extend_with_zeros: the new irreps {new_irreps} must be a superset of {self.irreps}, "
                "holding every current block in the same order with the zero blocks inserted between them."
            )
        return self._from_chunks(new_irreps, chunks)

    # -- moving multiplicities to and from array axes --------------------------------------------------------

    def _leading_axis(self, axis: int, caller: str) -> int:
        """``axis`` made non-negative, checked to be a leading axis (not the irreps axis) of a >= 2-d array."""
        if self.ndim < 2:  # (e3nn-jax asserts on this)
            raise InvalidValueError(
                f"IrrepsArray.{caller}: needs a leading axis besides the irreps axis, got shape {self.shape}; "
                "add one with x[None] or x.reshape(...)."
            )
        (position,) = _standardize_axis(axis, self.ndim)
        if position == self.ndim - 1:
            raise ValueError(
                f"IrrepsArray.{caller}: axis={axis} is the irreps dimension (the last axis); choose a leading "
                "axis instead, e.g. the default -2."
            )
        return position

    def axis_to_irreps(self, axis: int = -2) -> "IrrepsArray":
        """Fold a leading axis of size ``n`` into the irreps axis: the irreps become ``irreps`` repeated ``n`` times."""
        axis = self._leading_axis(axis, "axis_to_irreps")
        irreps = self.irreps.repeat(self.shape[axis]).simplify()
        # entry ``a`` along the folded axis becomes the ``a``-th repetition: move that axis next to the irreps one
        data = _infer_backend(self.array).moveaxis(self.array, axis, -2)
        return IrrepsArray(irreps, data.reshape(data.shape[:-2] + (irreps.dim,)))

    repeat_irreps_by_last_axis = axis_to_irreps

    def irreps_to_axis(self) -> "IrrepsArray":
        """Not implemented (as in e3nn-jax)."""
        raise NotImplementedError

    def mul_to_axis(self, factor: Optional[int] = None, axis: int = -2) -> "IrrepsArray":
        """Factor every multiplicity by ``factor`` (default: their gcd) into a new axis placed at position ``axis``.

        Block ``mul x ir`` becomes ``(mul / factor) x ir``; copy ``f * (mul / factor) + u`` goes to index ``f`` of the
        new axis.
        """
        (position,) = _standardize_axis(axis, self.ndim + 1)
        if position == self.ndim:
            raise ValueError(
                f"IrrepsArray.mul_to_axis: axis={axis} would make the new axis the last axis, which must remain "
                "the irreps dimension; pick a position before it, e.g. the default -2."
            )
        multiplicities = [mul for mul, _ in self.irreps]
        gcd = math.gcd(*multiplicities)
        factor = gcd if factor is None else factor
        if factor <= 0 or any(mul % factor for mul in multiplicities):
            raise ValueError(
                f"IrrepsArray.mul_to_axis: factor {factor} must be a positive divisor of every multiplicity of "
                f"{self.irreps}; use a divisor of their gcd ({gcd})."
            )
        backend = _infer_backend(self.array)
        leading_shape = self.shape[:-1]
        irreps = Irreps([(mul // factor, ir) for mul, ir in self.irreps])

        def split_copies(chunk, mul: int, dim: int):
            # (..., factor * mul, d) -> (..., factor, mul, d), then the factor axis goes to its place
            return backend.moveaxis(chunk.reshape(leading_shape + (factor, mul, dim)), -3, position)

        chunks = [None if c is None else split_copies(c, mul, ir.dim) for (mul, ir), c in zip(irreps, self.chunks)]
        new_leading = leading_shape[:position] + (factor,) + leading_shape[position:]
        return self._from_chunks(irreps, chunks, new_leading)

    def factor_mul_to_last_axis(self, axis: int = -2) -> "IrrepsArray":
        """Deprecated alias of :meth:`mul_to_axis`."""
        _warn_deprecated("IrrepsArray.factor_mul_to_last_axis", "IrrepsArray.mul_to_axis")
        return self.mul_to_axis(axis=axis)

    def axis_to_mul(self, axis: int = -2) -> "IrrepsArray":
        """Fold a leading axis of size ``n`` into the multiplicities: ``mul x ir`` becomes ``(n * mul) x ir``.

        Copy ``u`` of entry ``a`` along the axis becomes copy ``a * mul + u``.
        """
        axis = self._leading_axis(axis, "axis_to_mul")
        backend = _infer_backend(self.array)
        n = self.shape[axis]
        remaining = self.shape[:axis] + self.shape[axis + 1 : -1]
        irreps = Irreps([(n * mul, ir) for mul, ir in self.irreps])

        def merge_copies(chunk, mul: int, dim: int):
            # the folded axis goes right before the multiplicity axis, then the two merge (folded index major)
            return backend.moveaxis(chunk, axis, -3).reshape(remaining + (mul, dim))

        chunks = [None if c is None else merge_copies(c, mul, ir.dim) for (mul, ir), c in zip(irreps, self.chunks)]
        return self._from_chunks(irreps, chunks, remaining)

    def repeat_mul_by_last_axis(self, axis: int = -2) -> "IrrepsArray":
        """Deprecated alias of :meth:`axis_to_mul`."""
        _warn_deprecated("IrrepsArray.repeat_mul_by_last_axis", "IrrepsArray.axis_to_mul")
        return self.axis_to_mul(axis=axis)

    # -- O(3) actions ----------------------------------------------------------------------------------------

    def _as_float(self) -> "IrrepsArray":
        """Rotations need floating point data: integers are promoted to the default float dtype."""
        if jnp.issubdtype(self.dtype, jnp.inexact):
            return self
        return self.astype(_default_float_dtype())

    def _apply_blockwise(self, D: dict) -> "IrrepsArray":
        """Apply the matrix ``D[ir]`` (shape ``(..., d, d)``) to every irrep copy: ``x'_ui = D_ij x_uj``."""
        chunks = [
            None if c is None else jnp.einsum("...ij,...uj->...ui", D[ir], c)
            for (_, ir), c in zip(self.irreps, self.chunks)
        ]
        shapes = [D[ir].shape[:-2] for _, ir in self.irreps] + [self.shape[:-1]]
        leading_shape = _broadcast_leading_shapes(*shapes)
        chunks = [None if c is None else _broadcast_leading(c, leading_shape, jnp) for c in chunks]
        return from_chunks(self.irreps, chunks, leading_shape, self.dtype)

    def transform_by_log_coordinates(self, log_coordinates: jax.Array, k: int = 0) -> "IrrepsArray":
        """Rotate (and, for odd ``k``, invert) by the rotation of the given log coordinates (axis times angle)."""
        x = self._as_float()
        log_coordinates = jnp.asarray(log_coordinates).astype(x.dtype)
        D = {ir: ir.D_from_log_coordinates(log_coordinates, k) for ir in {ir for _, ir in x.irreps}}
        return x._apply_blockwise(D)

    def transform_by_angles(self, alpha, beta, gamma, k: int = 0, inverse: bool = False) -> "IrrepsArray":
        """Rotate by the Euler angles ``(alpha, beta, gamma)`` (Y-X-Y convention), apply parity ``k`` times."""
        x = self._as_float()

        def as_angle(a):
            # Python numbers stay Python numbers so that exact zeros are recognised by D_from_angles
            return a if isinstance(a, (int, float)) else jnp.asarray(a, dtype=x.dtype)

        alpha, beta, gamma = as_angle(alpha), as_angle(beta), as_angle(gamma)
        D = {ir: ir.D_from_angles(alpha, beta, gamma, k) for ir in {ir for _, ir in x.irreps}}
        if inverse:
            D = {ir: jnp.swapaxes(m, -2, -1) for ir, m in D.items()}
        return x._apply_blockwise(D)

    def transform_by_quaternion(self, q: jax.Array, k: int = 0) -> "IrrepsArray":
        """Rotate by the rotation of the unit quaternion ``q``, apply parity ``k`` times."""
        from e3nn_fast.rotation import quaternion_to_log_coordinates

        return self.transform_by_log_coordinates(quaternion_to_log_coordinates(q), k)

    def transform_by_axis_angle(self, axis: jax.Array, angle, k: int = 0) -> "IrrepsArray":
        """Rotate by ``angle`` around ``axis``, apply parity ``k`` times."""
        from e3nn_fast.rotation import axis_angle_to_log_coordinates

        return self.transform_by_log_coordinates(axis_angle_to_log_coordinates(axis, angle), k)

    def transform_by_matrix(self, R: jax.Array) -> "IrrepsArray":
        """Apply the O(3) matrix ``R``: its rotation part through Euler angles, and parity when ``det R < 0``."""
        from e3nn_fast.rotation import matrix_to_angles

        R = jnp.asarray(R)
        d = jnp.sign(jnp.linalg.det(R))
        k = (1 - d) / 2
        return self.transform_by_angles(*matrix_to_angles(d[..., None, None] * R), k)


def _combine_chunks(a: Chunk, b: Chunk, sign: int) -> Chunk:
    """``a + b`` (or ``a - b``) of two chunks where ``None`` means zero."""
    if b is None:
        return a
    if a is None:
        return b if sign > 0 else -b
    return a + b if sign > 0 else a - b


def _irreps_axis_index_problem(last) -> str:
    """Why ``last`` cannot index the irreps axis, and what to write instead."""
    if last is None:
        return (
            "IrrepsArray indexing: None would insert an axis after the irreps axis, which must stay last; "
            "insert it before, e.g. x[..., None, :]."
        )
    if isinstance(last, int):
        return (
            f"IrrepsArray indexing: the integer {last} would remove the irreps axis, which must stay; "
            f"keep it with a slice such as x[..., {last}:{last + 1}]."
        )
    return (
        f"IrrepsArray indexing: {_format_index(last)} cannot index the irreps axis; use a slice between irrep "
        "copies (x[..., a:b]) or an irreps selector (x[..., '1o'])."
    )


def _copies_equal(a: Chunk, b: Chunk, mul: int, leading_shape: Tuple[int, ...], backend):
    """For each irrep copy, whether all components of ``a`` and ``b`` agree: bool of shape ``leading + (mul, 1)``."""
    if a is None and b is None:  # two blocks flagged zero are equal without looking at data
        return backend.ones(leading_shape + (mul, 1), bool)
    agree = backend.all(_or_zero(a) == _or_zero(b), axis=-1, keepdims=True)
    return backend.broadcast_to(agree, leading_shape + (mul, 1))


def _reject_zero_divisor(divisor: IrrepsArray) -> None:
    """Refuse to divide by blocks known to be exactly zero (the result would be inf or nan everywhere there)."""
    zero_blocks = [str(mul_ir) for mul_ir, c in zip(divisor.irreps, divisor.chunks) if c is None]
    if zero_blocks:
        raise ValueError(
            f"division by zero: the divisor's blocks {zero_blocks} of {divisor.irreps} are flagged as exactly zero; "
            "drop them (.remove_zero_chunks()) or give them nonzero values before dividing."
        )


def _numbers_as_array(data):
    """A plain list or tuple of numbers (``IrrepsArray("1o", [1.0, 2.0, 3.0])``) as a JAX array; anything else as is.

    Stored as a list, such data had no shape to check against the irreps, and arithmetic silently did list
    arithmetic (``x + x`` concatenated the two lists into a 6-component "1o").  Only exact lists and tuples of
    numbers are converted: tuple subclasses (``PartitionSpec``) and sequences of placeholders (strings, ``None``)
    are pytree prefixes that JAX and the sharding helpers pass through unchanged.
    """
    if type(data) not in (list, tuple):
        return data
    try:
        array = jnp.asarray(data)
    except (TypeError, ValueError):
        return data
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_):
        return data
    return array


def _validate(irreps: Irreps, array, zero_flags, chunks) -> None:
    """Check that the array, zero flags and chunks agree with ``irreps``.

    Leaves that are not arrays (JAX sometimes rebuilds pytrees with placeholders) and 0-d arrays are not checked,
    as in e3nn-jax.
    """
    for name, entries in (("zero_flags", zero_flags), ("chunks", chunks)):
        if entries is not None and len(entries) != len(irreps):
            raise ValueError(
                f"IrrepsArray: {name} has {len(entries)} entries but irreps {irreps} consist of {len(irreps)} "
                "block(s); give exactly one entry per block."
            )
    shape = getattr(array, "shape", None)
    if not isinstance(shape, tuple) or len(shape) == 0:
        return
    if shape[-1] != irreps.dim:
        raise ValueError(
            f"IrrepsArray: array of shape {shape} does not fit irreps {irreps}: its last axis has size {shape[-1]} "
            f"but the irreps have dimension {irreps.dim}; the array must have shape (..., {irreps.dim})."
        )
    for (mul, ir), chunk in zip(irreps, chunks or ()):
        if chunk is not None and tuple(chunk.shape[-2:]) != (mul, ir.dim):
            raise ValueError(
                f"IrrepsArray: chunk shape {chunk.shape} does not end with (mul, ir.dim) = ({mul}, {ir.dim}), "
                f"as block {mul}x{ir} requires."
            )


# The pytree has one leaf (the array) and the irreps as static data.  The zero flags are deliberately left out, as in
# e3nn-jax: gradients, scan carries, tree_map results... need not be zero where the input was, and two arrays that
# differ only in their flags must share a tree structure.
def _flatten(x: IrrepsArray):
    return (x.array,), x.irreps


def _unflatten(irreps: Irreps, leaves) -> IrrepsArray:
    # The leaf is kept exactly as JAX gives it: ``tree_map(lambda *xs: list(xs), ...)`` legitimately puts a list
    # there, which the public constructor would turn into one stacked array.
    x = object.__new__(IrrepsArray)
    x._set_fields(irreps, leaves[0], None, None)
    return x


jax.tree_util.register_pytree_node(IrrepsArray, _flatten, _unflatten)


# ----------------------------------------------------------------------------------------------------------------
# Index helpers (``x.at[...]``, ``x.slice_by_*[...]``)
# ----------------------------------------------------------------------------------------------------------------


class _IndexUpdateHelper:
    """``x.at``: indexing it gives an :class:`_IndexUpdateRef`."""

    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index) -> "_IndexUpdateRef":
        return _IndexUpdateRef(self.irreps_array, index)


class _IndexUpdateRef:
    """``x.at[index]``: ``.set(v)`` and ``.add(v)`` on leading axes, with ``v`` an IrrepsArray (or ``0`` for set)."""

    def __init__(self, irreps_array: IrrepsArray, index) -> None:
        self.irreps_array = irreps_array
        self.index = index if isinstance(index, tuple) else (index,)

    def _check_index(self) -> None:
        x, index, last = self.irreps_array, self.index, self.index[-1]
        if _is_irreps_index(last):
            raise NotImplementedError(
                f"IrrepsArray.at: selecting blocks by irreps ({str(last)!r}) is not supported; update whole rows "
                "with x.at[i] and values carrying all the irreps of x."
            )
        hits = _last_entry_hits_irreps_axis(index, x.ndim)
        if hits and _is_dim_slice(last):
            raise NotImplementedError(
                f"IrrepsArray.at: slicing the irreps axis ({_format_index(last)}) is not supported; update whole "
                "rows with x.at[i]."
            )
        if hits and not _is_full_slice(last):
            raise IndexError(
                f"IrrepsArray.at: {_format_index(last)} cannot index the irreps dimension; index the leading axes "
                "only, e.g. x.at[i] or x.at[i, ..., :]."
            )

    def _update(self, values, method: str) -> IrrepsArray:
        x = self.irreps_array
        if x.irreps.simplify() != values.irreps.simplify():
            raise ValueError(
                f"IrrepsArray.at[...].{method}: the values have irreps {values.irreps} and the array {x.irreps}; "
                "they must be the same up to rechunking (equal after simplify())."
            )
        values = values.rechunk(x.irreps)
        zero_flags = tuple(a and b for a, b in zip(x.zero_flags, values.zero_flags))
        array = getattr(x.array.at[self.index], method)(values.array)
        return IrrepsArray(x.irreps, array, zero_flags=zero_flags)

    def set(self, values: Any) -> IrrepsArray:
        """Return a copy with ``x[index]`` replaced by ``values``."""
        self._check_index()
        x = self.irreps_array
        if isinstance(values, (int, float)) and values == 0:
            return IrrepsArray(x.irreps, x.array.at[self.index].set(0), zero_flags=x.zero_flags)
        if isinstance(values, IrrepsArray):
            return self._update(values, "set")
        raise NotImplementedError(
            f"IrrepsArray.at[...].set: values of type {type(values).__name__} are not supported; pass an "
            "IrrepsArray, or the number 0 to clear the entries."
        )

    def add(self, values: Any) -> IrrepsArray:
        """Return a copy with ``values`` added to ``x[index]``."""
        self._check_index()
        if isinstance(values, IrrepsArray):
            return self._update(values, "add")
        raise NotImplementedError(
            f"IrrepsArray.at[...].add: values of type {type(values).__name__} are not supported; pass an IrrepsArray."
        )


def _require_slice(index, helper: str) -> None:
    if not isinstance(index, slice):
        raise IndexError(f"IrrepsArray.{helper} accepts only slices, e.g. x.{helper}[1:3]; got {index!r}.")


class _MulIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        x = self.irreps_array
        _require_slice(index, "slice_by_mul")
        start, stop, step = index.indices(x.irreps.num_irreps)
        if step != 1:
            raise NotImplementedError(
                f"IrrepsArray.slice_by_mul: step {step} is not supported, only contiguous ranges of irrep copies."
            )
        irreps, chunks = [], []
        first = 0  # position, among all irrep copies, of the first copy of the current block
        for (mul, ir), chunk in zip(x.irreps, x.chunks):
            lo, hi = max(start, first), min(stop, first + mul)  # the copies of this block inside the range
            whole = start <= first and first + mul <= stop  # also keeps 0x blocks lying inside the range
            if whole:
                irreps.append((mul, ir))
                chunks.append(chunk)
            elif lo < hi:
                irreps.append((hi - lo, ir))
                chunks.append(None if chunk is None else chunk[..., lo - first : hi - first, :])
            first += mul
        return x._from_chunks(irreps, chunks)


class _DimIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        _require_slice(index, "slice_by_dim")
        return self.irreps_array[..., index]


class _ChunkIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        x = self.irreps_array
        _require_slice(index, "slice_by_chunk")
        # the bounds are resolved first and then used as a slice, as e3nn-jax does (so a negative step such as
        # [::-1] resolves to the bounds (n-1, -1) and selects nothing)
        bounds = slice(*index.indices(len(x.irreps)))
        return x._from_chunks(x.irreps[bounds], x.chunks[bounds])


# ----------------------------------------------------------------------------------------------------------------
# Constructors
# ----------------------------------------------------------------------------------------------------------------


def from_chunks(
    irreps,
    chunks: List[Chunk],
    leading_shape: Tuple[int, ...],
    dtype=None,
    *,
    backend=None,
) -> IrrepsArray:
    """Build an IrrepsArray from one chunk of shape ``leading_shape + (mul, ir.dim)`` per block (``None`` = zero).

    ``dtype`` is only needed when every chunk is ``None``; otherwise the first chunk's dtype is used.
    """
    if backend is None:
        backend = _infer_backend(chunks)
    irreps = Irreps(irreps)
    leading_shape = _leading_shape_tuple(leading_shape, "e3nn.from_chunks")
    _check_chunks(irreps, chunks, leading_shape)
    dtype = next((c.dtype for c in chunks if c is not None), dtype)
    if dtype is None:
        raise ValueError(
            "e3nn.from_chunks: the dtype cannot be inferred because no chunk is an array (the list is empty or all "
            "None); pass dtype=... explicitly."
        )

    if irreps.dim == 0:  # nothing to concatenate (concatenating no pieces is an error)
        array = backend.zeros(leading_shape + (0,), dtype)
    else:
        array = _flat_array(irreps, chunks, leading_shape, dtype, backend)
    return IrrepsArray(irreps, array, zero_flags=[c is None for c in chunks], chunks=list(chunks))


# Chunks of one run at most (see _flat_array): XLA's CPU backend fuses a concatenation with the computations of its
# operands only up to 8 operands (measured with jax 0.10.2); a longer one is a separate copy after them.
_MAX_RUN = 8


def _flat_array(irreps: Irreps, chunks: Sequence[Chunk], leading_shape, dtype, backend):
    """The ``(..., irreps.dim)`` array of ``chunks`` (``None``: a zero block, materialised here: the array always
    holds every component).

    With JAX arrays the value is built run by run (:func:`_joined_by_runs`) and its derivative block by block
    (:func:`_joined_by_blocks`): both give the same array, the first is the faster forward on XLA's CPU backend
    and the transpose of the second (one slice of the flat cotangent per block) the faster backward (the
    transpose of the run form, slices of a reshaped slice, took 3x the time of a whole ``tp-16`` forward).
    """
    blocks = [
        backend.zeros(leading_shape + (mul, ir.dim), dtype) if chunk is None else chunk
        for (mul, ir), chunk in zip(irreps, chunks)
        if mul > 0
    ]
    if backend is not jnp:
        return _joined_by_blocks(blocks, leading_shape, backend)
    if len({b.dtype for b in blocks}) != 1 or not jnp.issubdtype(blocks[0].dtype, jnp.inexact):
        return _joined_by_runs(blocks, leading_shape)  # nothing to differentiate (or mixed dtypes): plain runs
    return _joined(tuple(leading_shape), blocks)


def _joined_by_blocks(blocks, leading_shape, backend):
    """Each block reshaped to its flat width, then one concatenation.

    XLA's CPU backend runs a concatenation along the minor axis 128 or more wide as a separate copy after its pieces
    (it never fuses it).  Joining ``(..., width, 1)`` pieces along the axis before instead makes it one fused loop that
    writes the result once: measured and not adopted, since the fused loop's per-element branching costs more than
    the copy saves on most shapes (2 cores, jax 0.10.2, 2026-12-06: ``sh-tp`` forward 1.17x faster, but
    ``mace-large`` 0.61x, ``nequip-water`` 0.74x, ``tp-16`` 0.85x).
    """
    pieces = [b.reshape(tuple(leading_shape) + (b.shape[-2] * b.shape[-1],)) for b in blocks]
    return pieces[0] if len(pieces) == 1 else backend.concatenate(pieces, axis=-1)


def _joined_by_runs(blocks, leading_shape):
    """Consecutive blocks of the same ``2l + 1`` (``32x1o`` then ``16x1e``, or the several paths into one irrep of a
    regrouped tensor product) sit in the flat layout exactly as their chunks concatenated along the multiplicity
    axis, so each run of at most ``_MAX_RUN`` of them is joined as ``(..., mul, 2l + 1)`` arrays first and reshaped
    once.  For XLA's CPU backend that matters twice: a computation writing ``(..., mul, 2l + 1)`` is emitted as a
    loop over those axes, while one reshaped to the flat width first is emitted over the flat index (2.5-5x slower);
    and the outer concatenation has one operand per run instead of one per block (a ``16x0e+16x1o+16x2e`` tensor
    product: 5 runs for 19 blocks)."""
    runs: list = []
    for block in blocks:
        if runs and runs[-1][-1].shape[-1] == block.shape[-1] and len(runs[-1]) < _MAX_RUN:
            runs[-1].append(block)
        else:
            runs.append([block])
    joined = [run[0] if len(run) == 1 else jnp.concatenate(run, axis=-2) for run in runs]
    if _joins_in_one_loop(joined, leading_shape):
        return _joined_in_one_loop(joined, leading_shape)
    return _joined_by_blocks(joined, leading_shape, jnp)


# From this many bytes of output on, on a CPU, the runs are joined by one loop that also computes them
# (:func:`_joined_in_one_loop`) rather than by a copy after them.  The crossover is where the output stops fitting in
# the last-level cache (32 MiB on the 2-core VM this was measured on), so the copy's read and second write go to
# memory.  CPU seconds per call, medians of 5 alternated rounds in one process, 2 cores, jax 0.10.2, 2026-12-07
# (another process was running tests, hence CPU time rather than wall time), forward before -> after:
# * larger outputs gain: ``sh-tp`` at 2,000 / 4,000 edges (35 / 74 MiB) 55 -> 42 and 113 -> 85 ms, ``tp-16`` at
#   8,192 / 16,384 samples (41 / 84 MiB) 59 -> 46 and 122 -> 99 ms, ``mace-large`` at 2,048 edges (71 MiB) 100 ->
#   79 ms, ``nequip-water`` at 32,768 edges (88 MiB) 150 -> 99 ms (fwd+bwd 2-10 % faster, forces unchanged);
# * cache-sized ones lose: ``tp-16`` at 4,096 samples (21 MiB) 9.1 -> 13.0 ms, ``sh-tp`` at 1,000 edges (18 MiB)
#   9.1 -> 12.3 ms.
ONE_LOOP_JOIN_MIN_BYTES = 32 * 2**20
# ... and only when the runs' widths share a divisor this large: the loop branches between runs once per that many
# contiguous elements (joined as ``(..., width, 1)`` pieces, branching per element, it lost on every shape but one).
ONE_LOOP_JOIN_MIN_DIVISOR = 8


def _joins_in_one_loop(joined, leading_shape) -> bool:
    """Whether :func:`_joined_in_one_loop` applies (see :data:`ONE_LOOP_JOIN_MIN_BYTES`): on a CPU, several runs but
    no more than XLA's CPU fusion takes into one concatenation, a large output, and a common divisor of the widths."""
    if not 1 < len(joined) <= _MAX_RUN or jax.default_backend() != "cpu":
        return False
    widths = [b.shape[-2] * b.shape[-1] for b in joined]
    sizes = [static_int(size) for size in leading_shape]
    if None in sizes:  # a symbolic size (jax.export): its byte count is unknown, so the plain join
        return False
    rows = math.prod(sizes)
    nbytes = rows * int(np.sum(widths)) * np.dtype(joined[0].dtype).itemsize
    return nbytes >= ONE_LOOP_JOIN_MIN_BYTES and int(np.gcd.reduce(widths)) >= ONE_LOOP_JOIN_MIN_DIVISOR


def _joined_in_one_loop(joined, leading_shape):
    """The runs joined along a major axis: each ``(..., w)`` viewed as ``(..., w / c, c)``, ``c`` the greatest
    common divisor of the widths, concatenated along ``w / c`` and viewed flat again.

    XLA's CPU backend never fuses a concatenation along a minor axis 128 or more wide: it computes the pieces, then
    copies them into the result.  Along a major axis (up to 8 operands) it fuses the pieces' computations into the
    one loop that writes the result, which branches between them once per ``c`` elements."""
    lead = tuple(leading_shape)
    widths = [b.shape[-2] * b.shape[-1] for b in joined]
    divisor = int(np.gcd.reduce(widths))
    pieces = [b.reshape(lead + (w // divisor, divisor)) for b, w in zip(joined, widths)]
    return jnp.concatenate(pieces, axis=-2).reshape(lead + (int(np.sum(widths)),))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _joined(leading_shape, blocks):
    return _joined_by_runs(blocks, leading_shape)


@_joined.defjvp
def _joined_jvp(leading_shape, primals, tangents):
    (blocks,), (tangent_blocks,) = primals, tangents
    return _joined(leading_shape, blocks), _joined_by_blocks(tangent_blocks, leading_shape, jnp)


def _check_chunks(irreps: Irreps, chunks: Sequence[Chunk], leading_shape: Tuple[int, ...]) -> None:
    """One array (or ``None``) per block of ``irreps``, each of shape ``leading_shape + (mul, ir.dim)``."""
    if len(chunks) != len(irreps):
        raise ValueError(
            f"e3nn.from_chunks: got {len(chunks)} chunks for the {len(irreps)} blocks of {irreps}; "
            "pass exactly one chunk (or None) per block."
        )
    if any(c is not None and not hasattr(c, "shape") for c in chunks):
        raise ValueError(
            "e3nn.from_chunks: every chunk must be an array or None, got types "
            f"{[type(c).__name__ for c in chunks]}."
        )
    expected = [leading_shape + (mul, ir.dim) for mul, ir in irreps]
    if any(c is not None and tuple(c.shape) != shape for c, shape in zip(chunks, expected)):
        raise ValueError(
            f"e3nn.from_chunks: chunk shapes {[None if c is None else tuple(c.shape) for c in chunks]} do not match "
            f"leading_shape {leading_shape} with irreps {irreps}; expected {expected} (None for a zero block)."
        )


def as_irreps_array(array, *, backend=None) -> IrrepsArray:
    """Return an IrrepsArray unchanged; wrap a plain array of shape ``(..., n)`` as ``n x 0e``."""
    if isinstance(array, IrrepsArray):
        return array
    data = (_infer_backend(array) if backend is None else backend).asarray(array)
    if data.ndim == 0:
        raise ValueError(
            "e3nn.as_irreps_array: a rank 0 array has no last axis to carry irreps; reshape it to shape (1,) to "
            "get a 1x0e IrrepsArray."
        )
    # every component of a plain array is read as an even scalar
    return IrrepsArray(Irreps([(data.shape[-1], "0e")]), data)


def _leading_shape_tuple(leading_shape, what: str) -> Tuple[int, ...]:
    """``leading_shape`` as a tuple; a bare number (a common slip for ``(n,)``) gets a named TypeError."""
    try:
        return tuple(leading_shape)
    except TypeError:
        raise TypeError(
            f"{what}: leading_shape must be a tuple of ints (the shape of the axes before the irreps axis), got "
            f"{type(leading_shape).__name__} {leading_shape!r}; for one axis write ({leading_shape!r},)"
        ) from None


def _new_leading_shape(leading_shape, what: str) -> Tuple[int, ...]:
    """The leading shape of a newly created array, with negative sizes refused here: JAX would reject them only
    while lowering (``zeros`` with a broadcast_in_dim error, ``normal`` with an MLIR 'invalid tensor dimension')."""
    leading_shape = _leading_shape_tuple(leading_shape, what)
    for size in leading_shape:
        count = static_int(size)  # None for a non-integer: JAX's own error names the shape
        if count is not None and count < 0:
            raise ValueError(
                f"{what}: leading_shape={leading_shape} has a negative size; every axis needs a size >= 0"
            )
    return leading_shape


def _filled(irreps, leading_shape: Tuple[int, ...], dtype, make, known_zero: bool) -> IrrepsArray:
    """An IrrepsArray whose data is ``make(shape, dtype=dtype)`` (``jnp.zeros`` or ``jnp.ones``)."""
    irreps = Irreps(irreps)
    leading_shape = _new_leading_shape(leading_shape, f"e3nn.{make.__name__}")
    data = make(leading_shape + (irreps.dim,), dtype=dtype)
    return IrrepsArray(irreps, data, zero_flags=[known_zero] * len(irreps))


def zeros(irreps, leading_shape: Tuple[int, ...] = (), dtype=None) -> IrrepsArray:
    """Zeros of shape ``leading_shape + (irreps.dim,)``, every block flagged zero."""
    return _filled(irreps, leading_shape, dtype, jnp.zeros, known_zero=True)


def zeros_like(irreps_array: IrrepsArray) -> IrrepsArray:
    """Zeros with the irreps, leading shape and dtype of ``irreps_array``."""
    return zeros(irreps_array.irreps, irreps_array.shape[:-1], irreps_array.dtype)


def ones(irreps, leading_shape: Tuple[int, ...] = (), dtype=None) -> IrrepsArray:
    """Ones of shape ``leading_shape + (irreps.dim,)``."""
    return _filled(irreps, leading_shape, dtype, jnp.ones, known_zero=False)


def ones_like(irreps_array: IrrepsArray) -> IrrepsArray:
    """Ones with the irreps, leading shape and dtype of ``irreps_array``."""
    return ones(irreps_array.irreps, irreps_array.shape[:-1], irreps_array.dtype)


def _unit_norm(draw, _ir):
    """Scale every irrep copy of a chunk to unit norm."""
    return draw / jnp.linalg.norm(draw, axis=-1, keepdims=True)


def _normal_per_block(irreps: Irreps, key, leading_shape: Tuple[int, ...], dtype, rescale) -> IrrepsArray:
    """One standard normal draw per block, each with a fresh subkey split off ``key`` in turn, then ``rescale``d.

    The key sequence (split, use the second half, continue with the first) is e3nn-jax's, so that the same key gives
    the same numbers.
    """
    chunks = []
    for mul, ir in irreps:
        key, block_key = jax.random.split(key)
        draw = jax.random.normal(block_key, leading_shape + (mul, ir.dim), dtype=dtype)
        chunks.append(rescale(draw, ir))
    return from_chunks(irreps, chunks, leading_shape, dtype)


def normal(
    irreps,
    key: Optional[jax.Array] = None,
    leading_shape: Tuple[int, ...] = (),
    *,
    normalize: bool = False,
    normalization: Optional[str] = None,
    dtype=None,
) -> IrrepsArray:
    """Random IrrepsArray with normally distributed entries (same key -> same numbers as e3nn-jax).

    Args:
        irreps: irreps of the result.
        key: PRNG key; if omitted a key is derived from ``hash(irreps)`` (with a warning; for debugging only).
        leading_shape: shape of the leading axes.
        normalize: if True, every irrep copy is scaled to unit norm (``normalization`` is then irrelevant).
        normalization: ``"component"`` (each component has unit variance; one draw for the whole array) or
            ``"norm"`` (each irrep copy has unit expected norm; one key split per block).  Defaults to
            ``config("irrep_normalization")``.
        dtype: a floating point (or complex) dtype.
    """
    irreps = Irreps(irreps)
    leading_shape = _new_leading_shape(leading_shape, "e3nn.normal")
    if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"e3nn.normal: dtype must be a floating point (or complex) dtype, got {np.dtype(dtype)}")
    if normalization is None:
        normalization = config("irrep_normalization")
    if key is None:
        warnings.warn(
            "e3nn.normal called without a key: using jax.random.PRNGKey(hash(irreps)), which repeats the same "
            "numbers on every call with these irreps; pass key=... for independent draws."
        )
        key = jax.random.PRNGKey(hash(irreps))

    if normalize:
        return _normal_per_block(irreps, key, leading_shape, dtype, _unit_norm)
    if normalization == "component":  # one draw for the whole array: unit variance per component
        return IrrepsArray(irreps, jax.random.normal(key, leading_shape + (irreps.dim,), dtype=dtype))
    if normalization == "norm":  # unit expected squared norm per irrep copy
        return _normal_per_block(irreps, key, leading_shape, dtype, lambda r, ir: r / jnp.sqrt(ir.dim))
    raise ValueError(
        f"e3nn.normal: normalization={normalization!r} is not recognised; use 'component' (unit variance per "
        "component) or 'norm' (unit expected norm per irrep copy)."
    )


# ----------------------------------------------------------------------------------------------------------------
# Reductions and joins
# ----------------------------------------------------------------------------------------------------------------


def _reduce(op, array: IrrepsArray, axis, keepdims: bool) -> IrrepsArray:
    """Apply a reduction ``op`` (``sum``/``mean``) over leading axes and, if asked, over the copies of each block.

    Reducing the irreps axis reduces over the multiplicity only (never across irreps or components), leaving one
    copy per block; ``keepdims`` does not apply to that axis.
    """
    axes = _standardize_axis(axis, array.ndim)
    irreps_axis = array.ndim - 1
    leading_axes = tuple(a for a in axes if a != irreps_axis)
    if leading_axes:
        # leading axes have the same positions in the array and in the chunks
        array = array._map_leading(lambda t, _: op(t, axis=leading_axes, keepdims=keepdims), compute_chunks=True)
    if irreps_axis in axes:
        array = _reduce_copies(op, array)
    return array


def _reduce_copies(op, array: IrrepsArray) -> IrrepsArray:
    """``mul x ir`` -> ``1 x ir`` by reducing over the multiplicity axis of every chunk."""
    one_copy_each = Irreps([(1, ir) for _, ir in array.irreps])
    reduced = [None if c is None else op(c, axis=-2, keepdims=True) for c in array.chunks]
    return array._from_chunks(one_copy_each, reduced)


def mean(array: IrrepsArray, axis: Union[None, int, Tuple[int, ...]] = None, keepdims: bool = False) -> IrrepsArray:
    """Mean over ``axis`` (all axes by default); over the irreps axis it averages the copies of each block."""
    return _reduce(_infer_backend(array.array).mean, array, axis, keepdims)


def sum(  # noqa: A001  (e3nn.sum, as in e3nn-jax)
    array: IrrepsArray, axis: Union[None, int, Tuple[int, ...]] = None, keepdims: bool = False
) -> IrrepsArray:
    """Sum over ``axis`` (all axes by default); over the irreps axis it sums the copies of each block."""
    return _reduce(_infer_backend(array.array).sum, array, axis, keepdims)


def concatenate(arrays: List[IrrepsArray], axis: int = -1) -> IrrepsArray:
    """Concatenate along ``axis``; along the irreps axis the irreps are concatenated too (plain arrays become 0e)."""
    if len(arrays) == 0:
        raise ValueError("e3nn.concatenate: the list of arrays is empty; pass at least one IrrepsArray.")
    arrays = [as_irreps_array(x) for x in arrays]
    (axis,) = _standardize_axis(axis, arrays[0].ndim)
    backend = _infer_backend([x.array for x in arrays])

    if axis == arrays[0].ndim - 1:
        return IrrepsArray(
            Irreps(builtins.sum((list(x.irreps) for x in arrays), [])),
            backend.concatenate([x.array for x in arrays], axis=-1),
            zero_flags=builtins.sum((x.zero_flags for x in arrays), ()),
            chunks=builtins.sum((list(x.chunks) for x in arrays), []),
        )
    return _join_leading(arrays, axis, backend.concatenate, backend)


def stack(arrays: List[IrrepsArray], axis: int = 0) -> IrrepsArray:
    """Stack along a new leading axis (the irreps axis stays last)."""
    if len(arrays) == 0:
        raise ValueError("e3nn.stack: the list of arrays is empty; pass at least one IrrepsArray.")
    (position,) = _standardize_axis(axis, arrays[0].ndim + 1)
    if position == arrays[0].ndim:
        raise ValueError(
            f"e3nn.stack: axis={axis} would put the new axis last, but the last axis must remain the irreps "
            "dimension; stack along a leading axis instead (e.g. axis=0)."
        )
    backend = _infer_backend([x.array for x in arrays])
    return _join_leading(arrays, position, backend.stack, backend)


def _join_leading(arrays: List[IrrepsArray], axis: int, join, backend) -> IrrepsArray:
    """Concatenate or stack IrrepsArrays of identical irreps along a leading axis, keeping common zero blocks."""
    irreps = arrays[0].irreps
    if any(x.irreps != irreps for x in arrays):
        raise ValueError(
            f"joining IrrepsArrays along a leading axis needs the same irreps in every array, got "
            f"{[str(x.irreps) for x in arrays]}; rechunk or filter them to common irreps first."
        )
    zero_flags = [all(flags) for flags in zip(*[x.zero_flags for x in arrays])]
    chunks = []
    for i, ((mul, ir), zero) in enumerate(zip(irreps, zero_flags)):
        if zero:
            chunks.append(None)
            continue
        parts = [
            backend.zeros(x.shape[:-1] + (mul, ir.dim), dtype=x.dtype) if x.chunks[i] is None else x.chunks[i]
            for x in arrays
        ]
        chunks.append(join(parts, axis=axis))
    return IrrepsArray(irreps, join([x.array for x in arrays], axis=axis), zero_flags=zero_flags, chunks=chunks)


# ----------------------------------------------------------------------------------------------------------------
# Invariants and products
# ----------------------------------------------------------------------------------------------------------------


def _safe_sqrt(x, backend):
    """``sqrt(x)`` whose gradient at ``x == 0`` is 0 instead of infinite (so norms of zero vectors differentiate)."""
    is_zero = x == 0.0
    # the dummy 1 keeps sqrt's derivative finite on the branch that ``where`` discards
    root = backend.sqrt(backend.where(is_zero, 1.0, x))
    return backend.where(is_zero, 0.0, root)


def norm(array: IrrepsArray, *, squared: bool = False, per_irrep: bool = True) -> IrrepsArray:
    """Norm of every irrep copy (irreps ``mul x 0e`` per block), or of the whole vector with ``per_irrep=False``.

    The square root has a zero-safe gradient (0 at 0) so that norms of zero vectors can be differentiated.
    """
    backend = _infer_backend(array.array)

    def length(x):
        squared_length = _inner(x, x, backend, axis=-1, keepdims=True)
        return squared_length if squared else _safe_sqrt(squared_length, backend)

    if not per_irrep:
        return IrrepsArray("0e", length(array.array))
    lengths = [None if c is None else length(c) for c in array.chunks]
    return from_chunks(_scalar_irreps(array.irreps), lengths, array.shape[:-1], array.dtype, backend=backend)


def dot(a: IrrepsArray, b: IrrepsArray, per_irrep: bool = False) -> IrrepsArray:
    """Invariant inner product ``sum conj(a) * b``, per irrep copy (``per_irrep=True``) or in total (``1x0e``)."""
    backend = _infer_backend([a.array, b.array])
    a, b = a.simplify(), b.simplify()
    if a.irreps != b.irreps:
        raise ValueError(
            f"e3nn.dot: both arguments need the same irreps (compared after simplify()), got {a.irreps} and "
            f"{b.irreps}; bring them to common irreps with .filter() or .extend_with_zeros()."
        )
    leading_shape = _broadcast_leading_shapes(a.shape[:-1], b.shape[:-1])
    # pairs with a zero block on either side contribute nothing
    pairs = [(x, y) for x, y in zip(a.chunks, b.chunks)]
    if per_irrep:
        products = [None if x is None or y is None else _inner(x, y, backend, axis=-1, keepdims=True) for x, y in pairs]
        products = [
            p if p is None or p.shape[:-2] == leading_shape else _broadcast_leading(p, leading_shape, backend)
            for p in products
        ]
        dtype = next((p.dtype for p in products if p is not None), a.dtype)
        return from_chunks(_scalar_irreps(a.irreps), products, leading_shape, dtype, backend=backend)

    terms = [_inner(x, y, backend, axis=(-2, -1)) for x, y in pairs if x is not None and y is not None]
    if not terms:
        return zeros("0e", leading_shape, dtype=a.dtype)
    return IrrepsArray("0e", functools.reduce(operator.add, terms)[..., None])


def _require_vectors(name: str, x: IrrepsArray) -> None:
    if any(ir.l != 1 for _, ir in x.irreps):
        raise ValueError(
            f"e3nn.cross: {name} must contain only vectors (l=1 irreps such as 1o or 1e), got {x.irreps}."
        )


def cross(a: IrrepsArray, b: IrrepsArray) -> IrrepsArray:
    """Cross product of vectors, copy by copy: ``1xp1`` times ``1xp2`` gives ``1x(p1 p2)`` (``1o x 1o = 1e``).

    In e3nn's l=1 basis this is the ordinary ``numpy.cross`` of the components (as in e3nn-jax).
    """
    backend = _infer_backend([a.array, b.array])
    _require_vectors("a", a)
    _require_vectors("b", b)
    if a.irreps.num_irreps != b.irreps.num_irreps:
        raise ValueError(
            f"e3nn.cross: the vectors are paired one to one, so both arguments need the same number of vectors, "
            f"got {a.irreps.num_irreps} ({a.irreps}) and {b.irreps.num_irreps} ({b.irreps})."
        )
    a, b = _align_two_irreps_arrays(a, b)
    leading_shape = _broadcast_leading_shapes(a.shape[:-1], b.shape[:-1])
    # the cross product of two vectors is a vector whose parity is the product of theirs
    irreps_out = [(mul, (1, ir_a.p * ir_b.p)) for (mul, ir_a), (_, ir_b) in zip(a.irreps, b.irreps)]
    chunks = [
        None if x is None or y is None else _broadcast_leading(backend.cross(x, y, axis=-1), leading_shape, backend)
        for x, y in zip(a.chunks, b.chunks)
    ]
    dtype = next((c.dtype for c in chunks if c is not None), a.dtype)
    return from_chunks(irreps_out, chunks, leading_shape, dtype, backend=backend)


def where(mask: jax.Array, x: IrrepsArray, y: IrrepsArray) -> IrrepsArray:
    """``x`` where ``mask`` else ``y``; ``mask`` has shape ``(..., 1)`` (one decision per leading index)."""
    x, y = as_irreps_array(x), as_irreps_array(y)
    backend = _infer_backend([mask, x.array, y.array])
    mask = backend.asarray(mask)
    if x.irreps != y.irreps:
        raise ValueError(f"e3nn.where: x and y need the same irreps, got {x.irreps} and {y.irreps}.")
    n = x.irreps.num_irreps
    last = mask.shape[-1] if mask.ndim > 0 else None
    if last not in (1, n):
        raise ValueError(
            f"e3nn.where: mask of shape {mask.shape} must have a last axis of size 1 (one choice per leading "
            f"index) or {n} (one per irrep copy)."
        )
    if last != 1:
        raise NotImplementedError(
            f"e3nn.where: a mask with one entry per irrep copy (last axis of size {n}) is not supported yet; "
            "use a mask of shape (..., 1)."
        )
    chunk_mask = mask[..., None]  # chunks have one more trailing axis than the array

    def choose(a: Chunk, b: Chunk) -> Chunk:
        if a is None and b is None:
            return None  # zero either way
        return backend.where(chunk_mask, _or_zero(a), _or_zero(b))

    return IrrepsArray(
        x.irreps,
        backend.where(mask, x.array, y.array),
        zero_flags=[a and b for a, b in zip(x.zero_flags, y.zero_flags)],
        chunks=[choose(a, b) for a, b in zip(x.chunks, y.chunks)],
    )
