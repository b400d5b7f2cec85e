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

from e3nn_fast.configuration import config
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
    """``np`` if the leaves are numpy arrays, ``jnp`` if they are JAX arrays (or plain Python numbers)."""
    leaves = jax.tree_util.tree_leaves(pytree)
    any_numpy = any(isinstance(x, np.ndarray) for x in leaves)
    any_jax = any(isinstance(x, jax.Array) for x in leaves)
    if any_numpy and any_jax:
        raise ValueError("Cannot mix numpy and jax arrays in the same IrrepsArray operation.")
    return np if any_numpy else jnp


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


def _standardize_axis(axis: Union[None, int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    """Sorted, deduplicated, non-negative axes; ``None`` means all of them."""
    if axis is None:
        return tuple(range(ndim))
    try:
        axes = (operator.index(axis),)
    except TypeError:
        axes = tuple(operator.index(a) for a in axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} out of range for an IrrepsArray of ndim {ndim}")
    return tuple(sorted({a % ndim for a in axes}))


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
    """Split blocks of two irreps with equal ``num_irreps`` until their multiplicities match pairwise."""
    a = [(mul, ir) for mul, ir in irreps1]
    b = [(mul, ir) for mul, ir in irreps2]
    i = 0
    while i < min(len(a), len(b)):
        (mul1, ir1), (mul2, ir2) = a[i], b[i]
        if mul1 < mul2:
            b[i] = (mul1, ir2)
            b.insert(i + 1, (mul2 - mul1, ir2))
        elif mul2 < mul1:
            a[i] = (mul2, ir1)
            a.insert(i + 1, (mul1 - mul2, ir1))
        i += 1
    return Irreps(a), Irreps(b)


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
    leading_shape = tuple(np.broadcast_shapes(x1.shape[:-1], x2.shape[:-1]))
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
        chunk = c1 * c2
        chunks.append(chunk if factor == 1.0 else chunk * backend.asarray(factor, dtype))
    return from_chunks(irreps_out, chunks, leading_shape, dtype, backend=backend)


def _check_scalar_pairs(x1: "IrrepsArray", x2: "IrrepsArray", op: str) -> None:
    """``IrrepsArray * IrrepsArray`` is only defined when each aligned pair of blocks involves a scalar."""
    if x1.irreps.num_irreps != x2.irreps.num_irreps:
        raise ValueError(
            f"IrrepsArray({x1.irreps}, shape={x1.shape}) {op} IrrepsArray({x2.irreps}) "
            "only works if the number of irreps is the same."
        )
    if _product_irreps_count(x1.irreps, x2.irreps) != x1.irreps.num_irreps:
        raise ValueError(
            f"IrrepsArray({x1.irreps}, shape={x1.shape}) {op} IrrepsArray({x2.irreps}) "
            "is only supported for scalar * irreps and irreps * scalar. "
            "To perform irreps * irreps use e3nn.elementwise_tensor_product or e3nn.tensor_product."
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
        warnings.warn("IrrepsArray.from_list is deprecated, use e3nn.from_chunks instead.", DeprecationWarning)
        return from_chunks(irreps, chunks, leading_shape, dtype, backend=backend)

    @staticmethod
    def as_irreps_array(array, *, backend=None):
        """Deprecated alias of :func:`as_irreps_array`."""
        warnings.warn(
            "IrrepsArray.as_irreps_array is deprecated, use e3nn.as_irreps_array instead.", DeprecationWarning
        )
        return as_irreps_array(array, backend=backend)

    @staticmethod
    def zeros(irreps, leading_shape, dtype=None) -> "IrrepsArray":
        """Deprecated alias of :func:`zeros`."""
        warnings.warn("IrrepsArray.zeros is deprecated, use e3nn.zeros instead.", DeprecationWarning)
        return zeros(irreps, leading_shape, dtype)

    @staticmethod
    def zeros_like(irreps_array: "IrrepsArray") -> "IrrepsArray":
        """Deprecated alias of :func:`zeros_like`."""
        warnings.warn("IrrepsArray.zeros_like is deprecated, use e3nn.zeros_like instead.", DeprecationWarning)
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
        warnings.warn("IrrepsArray.list is deprecated, use IrrepsArray.chunks instead.", DeprecationWarning)
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
            raise ValueError("Can't iterate over IrrepsArray with ndim <= 1")
        for i in range(len(self)):
            yield self[i]

    # -- arithmetic ------------------------------------------------------------------------------------------

    def __eq__(self, other) -> "IrrepsArray":  # type: ignore[override]
        """Elementwise equality, reduced over each irrep: the result has irreps ``mul x 0e`` per block (bool)."""
        backend = _infer_backend(self.array)
        if isinstance(other, IrrepsArray):
            if self.irreps != other.irreps:
                raise ValueError(
                    f"IrrepsArray({self.irreps}, shape={self.shape}) == IrrepsArray({other.irreps}) is not equivariant."
                )
            leading_shape = tuple(np.broadcast_shapes(self.shape[:-1], other.shape[:-1]))

            def block_equal(mul: int, a: Chunk, b: Chunk):
                if a is None and b is None:
                    return backend.ones(leading_shape + (mul, 1), bool)
                a = 0.0 if a is None else a
                b = 0.0 if b is None else b
                return backend.broadcast_to(backend.all(a == b, axis=-1), leading_shape + (mul,))[..., None]

            chunks = [block_equal(mul, a, b) for (mul, _), a, b in zip(self.irreps, self.chunks, other.chunks)]
            return from_chunks([(mul, "0e") for mul, _ in self.irreps], chunks, leading_shape, bool, backend=backend)

        other = backend.asarray(other)
        if _lmax(self.irreps) > 0 or (other.ndim > 0 and other.shape[-1] != 1):
            raise ValueError(
                f"IrrepsArray({self.irreps}, shape={self.shape}) == scalar(shape={other.shape}) is not equivariant."
            )
        return IrrepsArray(self.irreps, self.array == other)

    __hash__ = None  # type: ignore[assignment]  # ``==`` returns an array, so instances are unhashable

    def __neg__(self) -> "IrrepsArray":
        return IrrepsArray(
            self.irreps,
            -self.array,
            zero_flags=self.zero_flags,
            chunks=None if self._chunks is None else [None if c is None else -c for c in self._chunks],
        )

    def _add_or_sub(self, other, sign: int, op: str) -> "IrrepsArray":
        if isinstance(other, (float, int)) and other == 0:
            return self
        backend = _infer_backend(self.array)
        if not isinstance(other, IrrepsArray):
            if _all_even_scalars(self.irreps):
                other = backend.asarray(other)
                return IrrepsArray(self.irreps, self.array + other if sign > 0 else self.array - other)
            raise ValueError(f"IrrepsArray({self.irreps}, shape={self.shape}) {op} scalar is not equivariant.")
        if self.irreps != other.irreps:
            raise ValueError(
                f"IrrepsArray({self.irreps}, shape={self.shape}) {op} IrrepsArray({other.irreps}) is not equivariant."
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
        """Multiply (or divide) by a plain array broadcast over the irreps axis."""
        op = "/" if divide else "*"
        backend = _infer_backend(self.array)
        other = backend.asarray(other)
        if other.ndim > 0 and other.shape[-1] == self.irreps.num_irreps:
            # one scalar per irrep copy: an elementwise product with ``n x 0e``
            scalars = IrrepsArray(f"{other.shape[-1]}x0e", 1.0 / other if divide else other)
            return _elementwise_scalar_product(self, scalars)
        if _lmax(self.irreps) > 0 and other.ndim > 0 and other.shape[-1] != 1:
            raise ValueError(
                f"IrrepsArray({self.irreps}, shape={self.shape}) {op} scalar(shape={other.shape}) is not equivariant."
            )
        array = self.array / other if divide else self.array * other
        chunks = None
        if self._chunks is not None:
            factor = other[..., None]
            chunks = [None if c is None else (c / factor if divide else c * factor) for c in self._chunks]
        return IrrepsArray(self.irreps, array, zero_flags=self.zero_flags, chunks=chunks)

    def __mul__(self, other) -> "IrrepsArray":
        if isinstance(other, IrrepsArray):
            _check_scalar_pairs(self, other, "*")
            return _elementwise_scalar_product(self, other)
        return self._scale(other, divide=False)

    def __rmul__(self, other) -> "IrrepsArray":
        return self * other

    def __truediv__(self, other) -> "IrrepsArray":
        if isinstance(other, IrrepsArray):
            if len(other.irreps) == 0 or _lmax(other.irreps) > 0 or self.irreps.num_irreps != other.irreps.num_irreps:
                raise ValueError(
                    f"IrrepsArray({self.irreps}, shape={self.shape}) / IrrepsArray({other.irreps}) is not equivariant."
                )
            if any(c is None for c in other.chunks):
                raise ValueError("There are deterministic Zeros in the array of the lhs. Cannot divide by Zero.")
            return _elementwise_scalar_product(self, 1.0 / other)
        return self._scale(other, divide=True)

    def __rtruediv__(self, other) -> "IrrepsArray":
        backend = _infer_backend((self.array, other))
        other = backend.asarray(other)
        if _lmax(self.irreps) > 0:
            raise ValueError(
                f"scalar(shape={other.shape}) / IrrepsArray({self.irreps}, shape={self.shape}) is not equivariant."
            )
        if any(c is None for c in self.chunks):
            raise ValueError("There are deterministic Zeros in the array of the lhs. Cannot divide by Zero.")
        return IrrepsArray(self.irreps, other / self.array)

    def __pow__(self, exponent) -> "IrrepsArray":
        """Power of scalar irreps: any exponent for ``0e``; integer exponents for ``0o`` (even powers give ``0e``)."""
        # 0 ** e == 0 only for e > 0: only then can zero blocks stay flagged
        keeps_zeros = isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and exponent > 0
        if _all_even_scalars(self.irreps):
            irreps = self.irreps
        elif exponent % 1.0 == 0.0 and _lmax(self.irreps) == 0:
            irreps = Irreps([(mul, "0e") for mul, _ in self.irreps]) if exponent % 2.0 == 0.0 else self.irreps
        else:
            raise ValueError(f"IrrepsArray({self.irreps}, shape={self.shape}) ** scalar is not equivariant.")
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
                    "Error in IrrepsArray.__getitem__, Irreps index must be the last index, "
                    f"try x[..., {last}]."
                )
            return self._select_irreps(Irreps(last))[index[:-1] + (slice(None),)]

        if hits_irreps_axis and _is_dim_slice(last):
            return self._slice_irreps_axis(last)[index[:-1] + (slice(None),)]

        if hits_irreps_axis and last is None:
            raise IndexError("Error in IrrepsArray.__getitem__, cannot add a new dimension at the end.")

        if hits_irreps_axis and not _is_full_slice(last):
            if isinstance(last, int):
                raise IndexError(
                    "Error in IrrepsArray.__getitem__, integer index in the irreps dimension is not supported, "
                    f"try x[..., {last}:{last + 1}] instead."
                )
            raise IndexError(
                f"Error in IrrepsArray.__getitem__, indexing the irreps dimension with [..., {last}] is not supported."
            )

        # only leading axes are indexed: the irreps (and zero flags) are unchanged
        chunks = None
        if self._chunks is not None:
            chunk_index = index + (slice(None),)
            chunks = [None if c is None else c[chunk_index] for c in self._chunks]
        return IrrepsArray(self.irreps, self.array[index], zero_flags=self.zero_flags, chunks=chunks)

    def _select_irreps(self, irreps: Irreps) -> "IrrepsArray":
        """The contiguous run of blocks equal to ``irreps`` (which must occur exactly once)."""
        n = len(irreps)
        matches = [i for i in range(len(self.irreps) - n + 1) if Irreps(self.irreps[i : i + n]) == irreps]
        if len(matches) != 1:
            problem = "does not appear" if not matches else f"appears {len(matches)} times"
            raise IndexError(
                f"Error in IrrepsArray.__getitem__, can't slice with {irreps} because it {problem} in {self.irreps} "
                "(it must appear exactly once as a contiguous run of blocks)."
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
                f"Error in IrrepsArray.__getitem__, unable to slice {self.irreps} with {start}:{stop} "
                "(the bounds must fall between irreps)."
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
            raise ValueError(
                f"IrrepsArray.{what}: the last entry of shape {shape} must be irreps.dim={self.irreps.dim} "
                f"(or -1) for irreps {self.irreps}"
            )

    def reshape(self, shape) -> "IrrepsArray":
        """Reshape the leading axes; the last entry of ``shape`` must be ``irreps.dim`` or ``-1``."""
        shape = tuple(shape)
        self._check_last_dim(shape, "reshape")
        array = self.array.reshape(shape[:-1] + (self.irreps.dim,))
        chunks = None
        if self._chunks is not None:
            chunks = [None if c is None else c.reshape(shape[:-1] + c.shape[-2:]) for c in self._chunks]
        return IrrepsArray(self.irreps, array, zero_flags=self.zero_flags, chunks=chunks)

    def broadcast_to(self, shape) -> "IrrepsArray":
        """Broadcast the leading axes; the last entry of ``shape`` must be ``irreps.dim`` or ``-1``."""
        shape = tuple(shape)
        self._check_last_dim(shape, "broadcast_to")
        backend = _infer_backend(self.array)
        leading_shape = shape[:-1]
        array = backend.broadcast_to(self.array, leading_shape + (self.irreps.dim,))
        chunks = [None if c is None else backend.broadcast_to(c, leading_shape + c.shape[-2:]) for c in self.chunks]
        return IrrepsArray(self.irreps, array, zero_flags=self.zero_flags, chunks=chunks)

    def astype(self, dtype) -> "IrrepsArray":
        """Cast the data to ``dtype``."""
        chunks = None
        if self._chunks is not None:
            chunks = [None if c is None else c.astype(dtype) for c in self._chunks]
        return IrrepsArray(self.irreps, self.array.astype(dtype), zero_flags=self.zero_flags, chunks=chunks)

    # -- irreps manipulation ---------------------------------------------------------------------------------

    def _from_chunks(self, irreps, chunks: List[Chunk], leading_shape=None) -> "IrrepsArray":
        leading_shape = self.shape[:-1] if leading_shape is None else leading_shape
        return from_chunks(irreps, chunks, leading_shape, self.dtype, backend=_infer_backend(self.array))

    def rechunk(self, irreps) -> "IrrepsArray":
        """Re-cut the blocks into ``irreps``, which must describe the same sequence of irreps (equal ``simplify()``)."""
        irreps = Irreps(irreps)
        if self.irreps.simplify() != irreps.simplify():
            raise ValueError(
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
        warnings.warn("IrrepsArray.sorted is deprecated, use IrrepsArray.sort instead.", DeprecationWarning)
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
        warnings.warn("IrrepsArray.filtered is deprecated, use IrrepsArray.filter instead.", DeprecationWarning)
        return self.filter(*args, **kwargs)

    def remove_zero_chunks(self) -> "IrrepsArray":
        """Drop the blocks flagged zero."""
        kept = [i for i, zero in enumerate(self.zero_flags) if not zero]
        return self._from_chunks(Irreps([self.irreps[i] for i in kept]), [self.chunks[i] for i in kept])

    def remove_nones(self) -> "IrrepsArray":
        """Deprecated alias of :meth:`remove_zero_chunks`."""
        warnings.warn(
            "IrrepsArray.remove_nones is deprecated. Use IrrepsArray.remove_zero_chunks instead.", DeprecationWarning
        )
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
                f"Error in IrrepsArray.extend_with_zeros, new_irreps {new_irreps} is not a superset of {self.irreps}."
            )
        return self._from_chunks(new_irreps, chunks)

    # -- moving multiplicities to and from array axes --------------------------------------------------------

    def axis_to_irreps(self, axis: int = -2) -> "IrrepsArray":
        """Fold a leading axis of size ``n`` into the irreps axis: the irreps become ``irreps`` repeated ``n`` times."""
        if self.ndim < 2:
            raise ValueError("IrrepsArray.axis_to_irreps needs an array with at least 2 dimensions")
        (axis,) = _standardize_axis(axis, self.ndim)
        if axis == self.ndim - 1:
            raise ValueError("IrrepsArray.axis_to_irreps: the last axis is the irreps axis")
        backend = _infer_backend(self.array)
        new_irreps = self.irreps.repeat(self.shape[axis]).simplify()
        moved = backend.moveaxis(self.array, axis, -2)
        return IrrepsArray(new_irreps, backend.reshape(moved, moved.shape[:-2] + (new_irreps.dim,)))

    repeat_irreps_by_last_axis = axis_to_irreps

    def irreps_to_axis(self) -> "IrrepsArray":
        """Not implemented (as in e3nn-jax)."""
        raise NotImplementedError

    def mul_to_axis(self, factor: Optional[int] = None, axis: int = -2) -> "IrrepsArray":
        """Factor every multiplicity by ``factor`` (default: their gcd) into a new axis placed at position ``axis``.

        Block ``mul x ir`` becomes ``(mul / factor) x ir``; copy ``f * (mul / factor) + u`` goes to index ``f`` of the
        new axis.
        """
        (axis,) = _standardize_axis(axis, self.ndim + 1)
        if axis == self.ndim:
            raise ValueError("axis cannot be the last axis. The last axis is reserved for the irreps dimension.")
        if factor is None:
            factor = functools.reduce(math.gcd, (mul for mul, _ in self.irreps), 0)
        if factor <= 0 or not all(mul % factor == 0 for mul, _ in self.irreps):
            raise ValueError(f"factor {factor} does not divide all multiplicities: {self.irreps}")
        backend = _infer_backend(self.array)
        irreps = Irreps([(mul // factor, ir) for mul, ir in self.irreps])
        chunks = [
            None if c is None else backend.moveaxis(c.reshape(self.shape[:-1] + (factor, mul, ir.dim)), -3, axis)
            for (mul, ir), c in zip(irreps, self.chunks)
        ]
        leading_shape = list(self.shape[:-1])
        leading_shape.insert(axis, factor)
        return self._from_chunks(irreps, chunks, tuple(leading_shape))

    def factor_mul_to_last_axis(self, axis: int = -2) -> "IrrepsArray":
        """Deprecated alias of :meth:`mul_to_axis`."""
        warnings.warn(
            "IrrepsArray.factor_mul_to_last_axis is deprecated. Use IrrepsArray.mul_to_axis instead.",
            DeprecationWarning,
        )
        return self.mul_to_axis(axis=axis)

    def axis_to_mul(self, axis: int = -2) -> "IrrepsArray":
        """Fold a leading axis of size ``n`` into the multiplicities: ``mul x ir`` becomes ``(n * mul) x ir``.

        Copy ``u`` of entry ``a`` along the axis becomes copy ``a * mul + u``.
        """
        if self.ndim < 2:
            raise ValueError("IrrepsArray.axis_to_mul needs an array with at least 2 dimensions")
        (axis,) = _standardize_axis(axis, self.ndim)
        if axis == self.ndim - 1:
            raise ValueError(
                "The last axis is the irreps dimension and therefore cannot be converted to multiplicity."
            )
        backend = _infer_backend(self.array)
        n = self.shape[axis]
        leading_shape = self.shape[:axis] + self.shape[axis + 1 : -1]
        new_irreps = Irreps([(n * mul, ir) for mul, ir in self.irreps])
        chunks = [
            None if c is None else backend.moveaxis(c, axis, -3).reshape(leading_shape + (new_mul, ir.dim))
            for (new_mul, ir), c in zip(new_irreps, self.chunks)
        ]
        return self._from_chunks(new_irreps, chunks, leading_shape)

    def repeat_mul_by_last_axis(self, axis: int = -2) -> "IrrepsArray":
        """Deprecated alias of :meth:`axis_to_mul`."""
        warnings.warn(
            "IrrepsArray.repeat_mul_by_last_axis is deprecated. Use IrrepsArray.axis_to_mul instead.",
            DeprecationWarning,
        )
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
        leading_shape = tuple(np.broadcast_shapes(*shapes))
        chunks = [None if c is None else jnp.broadcast_to(c, leading_shape + c.shape[-2:]) for c in chunks]
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


def _validate(irreps: Irreps, array, zero_flags, chunks) -> None:
    """Check that the array, zero flags and chunks agree with ``irreps``.

    Leaves that are not arrays (JAX sometimes rebuilds pytrees with placeholders) and 0-d arrays are not checked,
    as in e3nn-jax.
    """
    shape = getattr(array, "shape", None)
    if isinstance(shape, tuple) and len(shape) > 0:
        if shape[-1] != irreps.dim:
            raise ValueError(
                f"IrrepsArray: Array shape {shape} incompatible with irreps {irreps}. {shape[-1]} != {irreps.dim}"
            )
        if chunks is not None:
            for (mul, ir), chunk in zip(irreps, chunks):
                if chunk is not None and tuple(chunk.shape[-2:]) != (mul, ir.dim):
                    raise ValueError(
                        f"IrrepsArray: chunk shape {chunk.shape} incompatible with mul={mul} and ir.dim={ir.dim}"
                    )
    if zero_flags is not None and len(zero_flags) != len(irreps):
        raise ValueError(f"IrrepsArray: len(zero_flags) != len(irreps), {len(zero_flags)} != {len(irreps)}")
    if chunks is not None and len(chunks) != len(irreps):
        raise ValueError(f"IrrepsArray: len(chunks) != len(irreps), {len(chunks)} != {len(irreps)}")


# The pytree has one leaf (the array) and the irreps as static data.  The zero flags are deliberately left out, as in
# e3nn-jax: gradients, scan carries, tree_map results... need not be zero where the input was, and two arrays that
# differ only in their flags must share a tree structure.
def _flatten(x: IrrepsArray):
    return (x.array,), x.irreps


def _unflatten(irreps: Irreps, leaves) -> IrrepsArray:
    return IrrepsArray(irreps, leaves[0])


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
            raise NotImplementedError('x.at[..., "1e + 2e"] is not implemented')
        hits = _last_entry_hits_irreps_axis(index, x.ndim)
        if hits and _is_dim_slice(last):
            raise NotImplementedError("x.at[..., 3:32] is not implemented")
        if hits and not _is_full_slice(last):
            raise IndexError(f"Indexing with {last} in the irreps dimension is not supported.")

    def _update(self, values, method: str) -> IrrepsArray:
        x = self.irreps_array
        if x.irreps.simplify() != values.irreps.simplify():
            raise ValueError(
                f"The irreps of the array ({x.irreps}) and the values to {method} ({values.irreps}) must be the same."
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
        raise NotImplementedError(f"x.at[i].set(v) with v={type(values)} is not implemented.")

    def add(self, values: Any) -> IrrepsArray:
        """Return a copy with ``values`` added to ``x[index]``."""
        self._check_index()
        if isinstance(values, IrrepsArray):
            return self._update(values, "add")
        raise NotImplementedError(f"x.at[i].add(v) with v={type(values)} is not implemented.")


class _MulIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        x = self.irreps_array
        if not isinstance(index, slice):
            raise IndexError("IrrepsArray.slice_by_mul only supports one slices (like IrrepsArray.slice_by_mul[2:4]).")
        start, stop, stride = index.indices(x.irreps.num_irreps)
        if stride != 1:
            raise NotImplementedError("IrrepsArray.slice_by_mul does not support strides.")
        irreps, chunks = [], []
        i = 0  # index of the first copy of the current block
        for (mul, ir), c in zip(x.irreps, x.chunks):
            if start <= i and i + mul <= stop:
                irreps.append((mul, ir))
                chunks.append(c)
            elif start < i + mul and i < stop:
                lo, hi = max(start, i) - i, min(stop, i + mul) - i
                irreps.append((hi - lo, ir))
                chunks.append(None if c is None else c[..., lo:hi, :])
            i += mul
        return x._from_chunks(irreps, chunks)


class _DimIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        if not isinstance(index, slice):
            raise IndexError("IrrepsArray.slice_by_dim only supports slices (like IrrepsArray.slice_by_dim[2:4]).")
        return self.irreps_array[..., index]


class _ChunkIndexSliceHelper:
    def __init__(self, irreps_array: IrrepsArray) -> None:
        self.irreps_array = irreps_array

    def __getitem__(self, index: slice) -> IrrepsArray:
        x = self.irreps_array
        if not isinstance(index, slice):
            raise IndexError(
                "IrrepsArray.slice_by_chunk only supports slices (like IrrepsArray.slice_by_chunk[2:4])."
            )
        start, stop, stride = index.indices(len(x.irreps))
        return x._from_chunks(x.irreps[start:stop:stride], x.chunks[start:stop:stride])


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
    backend = _infer_backend(chunks) if backend is None else backend
    irreps = Irreps(irreps)
    leading_shape = tuple(leading_shape)
    if len(irreps) != len(chunks):
        raise ValueError(f"e3nn.from_chunks: len(irreps) != len(chunks), {len(irreps)} != {len(chunks)}")
    if not all(c is None or hasattr(c, "shape") for c in chunks):
        raise ValueError(f"e3nn.from_chunks: chunks contains non-array elements type={[type(c) for c in chunks]}")
    if not all(c is None or tuple(c.shape) == leading_shape + (mul, ir.dim) for c, (mul, ir) in zip(chunks, irreps)):
        raise ValueError(
            f"e3nn.from_chunks: chunks shapes {[None if c is None else c.shape for c in chunks]} "
            f"incompatible with leading shape {leading_shape} and irreps {irreps}. "
            f"Expecting {[leading_shape + (mul, ir.dim) for (mul, ir) in irreps]}."
        )
    dtype = next((c.dtype for c in chunks if c is not None), dtype)
    if dtype is None:
        raise ValueError("e3nn.from_chunks: Need to specify dtype if chunks is empty or contains only None.")

    if irreps.dim > 0:
        array = backend.concatenate(
            [
                backend.zeros(leading_shape + (mul_ir.dim,), dtype)
                if c is None
                else c.reshape(leading_shape + (mul_ir.dim,))
                for mul_ir, c in zip(irreps, chunks)
            ],
            axis=-1,
        )
    else:
        array = backend.zeros(leading_shape + (0,), dtype)
    zero_flags = tuple(c is None for c in chunks)
    return IrrepsArray(irreps, array, zero_flags=zero_flags, chunks=list(chunks))


def as_irreps_array(array, *, backend=None) -> IrrepsArray:
    """Return an IrrepsArray unchanged; wrap a plain array of shape ``(..., n)`` as ``n x 0e``."""
    if isinstance(array, IrrepsArray):
        return array
    backend = _infer_backend(array) if backend is None else backend
    array = backend.asarray(array)
    if array.ndim == 0:
        raise ValueError("e3nn.as_irreps_array: Cannot convert an array of rank 0 to an IrrepsArray.")
    return IrrepsArray(f"{array.shape[-1]}x0e", array)


def zeros(irreps, leading_shape: Tuple[int, ...] = (), dtype=None) -> IrrepsArray:
    """Zeros of shape ``leading_shape + (irreps.dim,)``, every block flagged zero."""
    irreps = Irreps(irreps)
    array = jnp.zeros(tuple(leading_shape) + (irreps.dim,), dtype=dtype)
    return IrrepsArray(irreps, array, zero_flags=(True,) * len(irreps))


def zeros_like(irreps_array: IrrepsArray) -> IrrepsArray:
    """Zeros with the irreps, leading shape and dtype of ``irreps_array``."""
    return zeros(irreps_array.irreps, irreps_array.shape[:-1], irreps_array.dtype)


def ones(irreps, leading_shape: Tuple[int, ...] = (), dtype=None) -> IrrepsArray:
    """Ones of shape ``leading_shape + (irreps.dim,)``."""
    irreps = Irreps(irreps)
    array = jnp.ones(tuple(leading_shape) + (irreps.dim,), dtype=dtype)
    return IrrepsArray(irreps, array, zero_flags=(False,) * len(irreps))


def ones_like(irreps_array: IrrepsArray) -> IrrepsArray:
    """Ones with the irreps, leading shape and dtype of ``irreps_array``."""
    return ones(irreps_array.irreps, irreps_array.shape[:-1], irreps_array.dtype)


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
    leading_shape = tuple(leading_shape)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"e3nn.normal: dtype must be a floating point (or complex) dtype, got {np.dtype(dtype)}")
    if normalization is None:
        normalization = config("irrep_normalization")
    if key is None:
        warnings.warn("e3nn.normal: the key (random seed) is not provided, use the hash of the irreps as key!")
        key = jax.random.PRNGKey(hash(irreps))

    if normalize:
        chunks = []
        for mul, ir in irreps:
            key, sub = jax.random.split(key)
            r = jax.random.normal(sub, leading_shape + (mul, ir.dim), dtype=dtype)
            chunks.append(r / jnp.linalg.norm(r, axis=-1, keepdims=True))
        return from_chunks(irreps, chunks, leading_shape, dtype)
    if normalization == "component":
        return IrrepsArray(irreps, jax.random.normal(key, leading_shape + (irreps.dim,), dtype=dtype))
    if normalization == "norm":
        chunks = []
        for mul, ir in irreps:
            key, sub = jax.random.split(key)
            r = jax.random.normal(sub, leading_shape + (mul, ir.dim), dtype=dtype)
            chunks.append(r / jnp.sqrt(ir.dim))
        return from_chunks(irreps, chunks, leading_shape, dtype)
    raise ValueError(f"Normalization needs to be 'norm' or 'component', got {normalization!r}")


# ----------------------------------------------------------------------------------------------------------------
# Reductions and joins
# ----------------------------------------------------------------------------------------------------------------


def _reduce(op, array: IrrepsArray, axis, keepdims: bool) -> IrrepsArray:
    """Apply a reduction ``op`` (``sum``/``mean``) over leading axes and, if asked, over the copies of each block.

    Reducing the irreps axis reduces over the multiplicity only (never across irreps or components), leaving one
    copy per block; ``keepdims`` does not apply to that axis.
    """
    axes = _standardize_axis(axis, array.ndim)
    leading_axes = tuple(a for a in axes if a < array.ndim - 1)
    reduces_irreps_axis = array.ndim - 1 in axes
    if leading_axes:
        array = IrrepsArray(
            array.irreps,
            op(array.array, axis=leading_axes, keepdims=keepdims),
            zero_flags=array.zero_flags,
            chunks=[None if c is None else op(c, axis=leading_axes, keepdims=keepdims) for c in array.chunks],
        )
    if not reduces_irreps_axis:
        return array
    return array._from_chunks(
        Irreps([(1, ir) for _, ir in array.irreps]),
        [None if c is None else op(c, axis=-2, keepdims=True) for c in array.chunks],
    )


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
        raise ValueError("Cannot concatenate empty list of IrrepsArray")
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
        raise ValueError("Cannot stack empty list of IrrepsArray")
    (axis,) = _standardize_axis(axis, arrays[0].ndim + 1)
    if axis == arrays[0].ndim:
        raise ValueError(
            "IrrepsArray cannot be stacked on the last axis because the last axis is reserved for the irreps dimension"
        )
    backend = _infer_backend([x.array for x in arrays])
    return _join_leading(arrays, axis, backend.stack, backend)


def _join_leading(arrays: List[IrrepsArray], axis: int, join, backend) -> IrrepsArray:
    """Concatenate or stack IrrepsArrays of identical irreps along a leading axis, keeping common zero blocks."""
    irreps = arrays[0].irreps
    if any(x.irreps != irreps for x in arrays):
        raise ValueError(f"Irreps must be the same for all arrays, got {[str(x.irreps) for x in arrays]}")
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


def norm(array: IrrepsArray, *, squared: bool = False, per_irrep: bool = True) -> IrrepsArray:
    """Norm of every irrep copy (irreps ``mul x 0e`` per block), or of the whole vector with ``per_irrep=False``.

    The square root has a zero-safe gradient (0 at 0) so that norms of zero vectors can be differentiated.
    """
    backend = _infer_backend(array.array)

    def block_norm(x: Chunk) -> Chunk:
        if x is None:
            return None
        x = backend.sum(backend.conj(x) * x, axis=-1, keepdims=True)
        if squared:
            return x
        safe = backend.sqrt(backend.where(x == 0.0, 1.0, x))
        return backend.where(x == 0.0, 0.0, safe)

    if per_irrep:
        return from_chunks(
            [(mul, "0e") for mul, _ in array.irreps],
            [block_norm(c) for c in array.chunks],
            array.shape[:-1],
            array.dtype,
            backend=backend,
        )
    return IrrepsArray("0e", block_norm(array.array))


def dot(a: IrrepsArray, b: IrrepsArray, per_irrep: bool = False) -> IrrepsArray:
    """Invariant inner product ``sum conj(a) * b``, per irrep copy (``per_irrep=True``) or in total (``1x0e``)."""
    backend = _infer_backend([a.array, b.array])
    a, b = a.simplify(), b.simplify()
    if a.irreps != b.irreps:
        raise ValueError(
            f"Dot product is only defined for IrrepsArray with the same irreps, got {a.irreps} and {b.irreps}."
        )
    if per_irrep:
        chunks = []
        dtype = a.dtype
        for x, y in zip(a.chunks, b.chunks):
            if x is None or y is None:
                chunks.append(None)
                continue
            chunks.append(backend.sum(backend.conj(x) * y, axis=-1, keepdims=True))
            dtype = chunks[-1].dtype
        shape = tuple(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]))
        if any(c is not None and c.shape[:-2] != shape for c in chunks):
            chunks = [None if c is None else backend.broadcast_to(c, shape + c.shape[-2:]) for c in chunks]
        return from_chunks([(mul, "0e") for mul, _ in a.irreps], chunks, shape, dtype, backend=backend)

    total = None
    for x, y in zip(a.chunks, b.chunks):
        if x is None or y is None:
            continue
        term = backend.sum(backend.conj(x) * y, axis=(-2, -1))
        total = term if total is None else total + term
    if total is None:
        shape = tuple(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]))
        return zeros("0e", shape, dtype=a.dtype)
    return IrrepsArray("0e", total[..., None])


def cross(a: IrrepsArray, b: IrrepsArray) -> IrrepsArray:
    """Cross product of vectors, copy by copy: ``1xp1`` times ``1xp2`` gives ``1x(p1 p2)`` (``1o x 1o = 1e``).

    In e3nn's l=1 basis this is the ordinary ``numpy.cross`` of the components (as in e3nn-jax).
    """
    backend = _infer_backend([a.array, b.array])
    for x in (a, b):
        if any(ir.l != 1 for _, ir in x.irreps):
            raise ValueError(f"Cross product is only defined for vectors. Got {x.irreps}.")
    if a.irreps.num_irreps != b.irreps.num_irreps:
        raise ValueError("Cross product is only defined for inputs with the same number of vectors.")
    a, b = _align_two_irreps_arrays(a, b)
    shape = tuple(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]))
    irreps_out, chunks = [], []
    dtype = a.dtype
    for (mul, ir_a), x, (_, ir_b), y in zip(a.irreps, a.chunks, b.irreps, b.chunks):
        irreps_out.append((mul, (1, ir_a.p * ir_b.p)))
        if x is None or y is None:
            chunks.append(None)
            continue
        c = backend.cross(x, y, axis=-1)
        chunks.append(backend.broadcast_to(c, shape + c.shape[-2:]))
        dtype = c.dtype
    return from_chunks(irreps_out, chunks, shape, dtype, backend=backend)


def where(mask: jax.Array, x: IrrepsArray, y: IrrepsArray) -> IrrepsArray:
    """``x`` where ``mask`` else ``y``; ``mask`` has shape ``(..., 1)`` (one decision per leading index)."""
    x, y = as_irreps_array(x), as_irreps_array(y)
    backend = _infer_backend([mask, x.array, y.array])
    mask = backend.asarray(mask)
    if x.irreps != y.irreps:
        raise ValueError(f"e3nn.where: x.irreps ({x.irreps}) != y.irreps ({y.irreps})")
    if mask.ndim == 0 or mask.shape[-1] not in (1, x.irreps.num_irreps):
        raise ValueError(
            f"e3nn.where: mask.shape[-1] ({mask.shape[-1] if mask.ndim else None}) should be 1 or {x.irreps.num_irreps}"
        )
    if mask.shape[-1] != 1:
        raise NotImplementedError("e3nn.where: mask.shape[-1] != 1 is not implemented yet")

    def pick(a: Chunk, b: Chunk) -> Chunk:
        if a is None and b is None:
            return None
        return backend.where(mask[..., :, None], 0.0 if a is None else a, 0.0 if b is None else b)

    return IrrepsArray(
        x.irreps,
        backend.where(mask, x.array, y.array),
        zero_flags=[a and b for a, b in zip(x.zero_flags, y.zero_flags)],
        chunks=[pick(a, b) for a, b in zip(x.chunks, y.chunks)],
    )
