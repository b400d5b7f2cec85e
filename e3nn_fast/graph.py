"""Graph utilities: segment reductions (scatter) and a dense radius graph.

Public names (same signatures and numbers as e3nn-jax 0.21):

- :func:`scatter_sum`, :func:`scatter_mean`, :func:`scatter_max`: reduce the leading axes of
  ``data`` into ``output_size`` rows, grouped either by an index array ``dst`` (edges -> nodes) or
  by consecutive segment lengths ``nel`` (nodes -> graphs, jraph style);
- :func:`index_add`: deprecated alias of :func:`scatter_sum` with the old argument names;
- :func:`radius_graph`: all pairs of points closer than ``r_max`` (O(n^2), for small systems).

All of them accept plain arrays or :class:`e3nn_fast.irreps_array.IrrepsArray`; a reduction acts
on every component independently (it is linear, hence equivariant), so an ``IrrepsArray`` comes
back with the same irreps.

Index checks: shapes are always checked. Index *values* can only be checked when they are
concrete (outside ``jit``); under ``jit`` the JAX scatter ``mode`` decides what happens (see
:func:`scatter_sum`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast._static_int import static_int
from e3nn_fast.errors import InvalidValueError

__all__ = [
    "scatter_sum",
    "scatter_mean",
    "scatter_max",
    "index_add",
    "radius_graph",
]

#: Values of ``mode`` accepted by the scatter functions (those of ``jax.numpy`` ``.at[]``).
SCATTER_MODES = ("promise_in_bounds", "clip", "drop", "fill")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _irreps_array_class():
    """``e3nn_fast.irreps_array.IrrepsArray``, imported lazily so that neither module needs the other at import."""
    from e3nn_fast.irreps_array import IrrepsArray

    return IrrepsArray


def _looks_like_irreps_array(x: Any) -> bool:
    return hasattr(x, "irreps") and hasattr(x, "array")


def _unwrap(data: Any) -> Tuple[jax.Array, Callable[[jax.Array], Any]]:
    """Split ``data`` into its raw array and a function that re-wraps a result like ``data``.

    The reductions act on the leading (batch) axes only, never on the irreps axis, so the output
    of an ``IrrepsArray`` is an ``IrrepsArray`` with the same irreps.
    """
    if _looks_like_irreps_array(data):
        irreps = data.irreps
        irreps_array_cls = _irreps_array_class()
        return jnp.asarray(data.array), lambda array: irreps_array_cls(irreps, array)
    return jnp.asarray(data), lambda array: array


_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)


def _concrete_values(x: Any) -> Optional[np.ndarray]:
    """The values of ``x`` as numpy when they are known now, ``None`` for a tracer under jit."""
    try:
        return np.asarray(x)
    except _TRACER_ERRORS:
        return None


def clamp_indices_to_int32(indices: Any, lo: int, hi: int):
    """Integer ``indices`` clamped into ``[lo, hi]`` *in their own dtype*, then converted to int32.

    Converting first would wrap: ``uint32(2**32 - 1)`` becomes ``-1`` and an ``int64`` index ``2**32`` becomes ``0``
    (also when a NumPy ``int64`` array meets JAX without x64).  Clamping first keeps every value in range on its own
    side of the bounds, so callers can still tell "below ``lo``" from "above ``hi``".  NumPy (and list) input is
    clamped in NumPy, exactly for any width; JAX arrays (tracers included) in ``jnp``.  Both bounds must fit int32.
    """
    xp = jnp if isinstance(indices, jax.Array) else np
    indices = xp.asarray(indices)
    info = np.iinfo(indices.dtype)
    # Bounds outside the dtype's range cannot be written in it, and no value crosses them anyway.
    low = xp.asarray(max(lo, int(info.min)), indices.dtype)
    high = xp.asarray(min(hi, int(info.max)), indices.dtype)
    clamped = xp.clip(indices, low, high).astype(np.int32)
    return jnp.asarray(clamped)


def check_indices_in_range(indices: Any, size: int, what: str, fix: str) -> None:
    """Raise a ``ValueError`` naming ``what`` when concrete ``indices`` leave ``[-size, size)``; ``fix`` says what to
    do instead.  Tracers (under ``jit``) cannot be checked and pass."""
    values = _concrete_values(indices)
    if values is None or values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())  # Python ints: exact for every integer dtype
    if lo < -size or hi >= size:
        raise ValueError(
            f"{what} must lie in [-{size}, {size}) (negative values count from the end), got min={lo}, max={hi}; "
            f"{fix}"
        )


def _index_array(x: Any, name: str) -> jax.Array:
    """``jnp.asarray(x)`` after checking that it holds integers (a bool array would be a mask)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    return x


def static_size(x: Any, name: str) -> int:
    """A Python int >= 0 for an output length (it becomes an array shape, so it must be static); ``name``
    prefixes the error (e.g. ``"scatter_sum: output_size"``)."""
    size = static_int(x)
    if size is None:
        if isinstance(x, bool):
            raise TypeError(f"{name} must be an int, got {x!r}")
        raise TypeError(f"{name} must be a static Python int, got {type(x).__name__} {x!r}")
    if size < 0:
        raise ValueError(f"{name} must be >= 0, got {size}")
    return size


def _check_mode(mode: Any) -> None:
    if isinstance(mode, jax.lax.GatherScatterMode):
        return
    if mode not in SCATTER_MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {', '.join(map(repr, SCATTER_MODES))}")


def _promises_in_bounds(mode: Any) -> bool:
    return jax.lax.GatherScatterMode.from_any(mode) == jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS


# --------------------------------------------------------------------------------------------
# Resolving (dst | nel, output_size, map_back) into one scatter "plan"
# --------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """How to scatter: rows ``dst`` of an ``output_size`` output, then optionally gather back.

    ``gather`` is ``None``, or the per-element row index used to map the reduced rows back onto
    the input positions (``map_back=True``).
    """

    dst: jax.Array
    output_size: int
    indices_are_sorted: bool
    gather: Optional[jax.Array]


def _segment_ids(nel: jax.Array, num_elements: int) -> jax.Array:
    """Row index of every element for consecutive segments of lengths ``nel``.

    If ``sum(nel) < num_elements`` the leftover trailing elements are assigned to the last row
    (``jnp.repeat`` pads with its last value), exactly like e3nn-jax.
    """
    return jnp.repeat(jnp.arange(nel.shape[0]), nel, total_repeat_length=num_elements)


def _group_ids(dst: jax.Array) -> jax.Array:
    """Relabel the values of ``dst`` as ``0..k-1`` (k distinct values), keeping ``dst``'s shape.

    ``size=dst.size`` keeps the output shape static (there are at most ``dst.size`` distinct
    values), so this works under ``jit``.
    """
    flat = jnp.ravel(dst)
    _, inverse = jnp.unique(flat, return_inverse=True, size=flat.shape[0])
    return jnp.reshape(inverse, dst.shape)


def _check_nel_values(nel: jax.Array, num_elements: int, op: str) -> None:
    nel_np = _concrete_values(nel)
    if nel_np is None:
        return
    if np.any(nel_np < 0):
        raise ValueError(f"scatter_{op}: nel must be >= 0, got nel={nel_np.tolist()}")
    total = int(nel_np.sum())
    if total > num_elements:
        raise ValueError(
            f"scatter_{op}: sum(nel)={total} exceeds the number of elements data.shape[0]={num_elements}"
        )


def _check_dst_values(dst: jax.Array, output_size: int, op: str) -> None:
    """Under ``mode="promise_in_bounds"`` an out-of-range index would silently give garbage."""
    check_indices_in_range(
        dst, output_size, f"scatter_{op}: dst values (for output_size={output_size})",
        "pass mode='drop' to discard out-of-range indices on purpose (padding), or mode='clip' to clamp them",
    )


def _plan_from_nel(op, nel, num_elements, output_size, map_back) -> _Plan:
    nel = _index_array(nel, f"scatter_{op}: nel")
    if nel.ndim != 1:
        raise ValueError(f"scatter_{op}: nel must be 1-dimensional, got shape {nel.shape}")
    if output_size is not None:
        # e3nn-jax asserts here, hence the AssertionError-compatible class.
        raise InvalidValueError(
            f"scatter_{op}: got output_size={output_size!r} together with nel; with nel the output has one row per "
            "segment (len(nel)), so drop output_size"
        )
    if nel.shape[0] == 0 and num_elements > 0:
        raise ValueError(f"scatter_{op}: nel is empty but data has {num_elements} elements to reduce")
    _check_nel_values(nel, num_elements, op)
    ids = _segment_ids(nel, num_elements)
    # map_back: reduce into one row per segment, then read each element's segment row back.
    return _Plan(ids, nel.shape[0], True, ids if map_back else None)


def _plan_from_dst(op, dst, data_shape, output_size, map_back, mode) -> _Plan:
    dst = _index_array(dst, f"scatter_{op}: dst")
    if dst.shape != tuple(data_shape[: dst.ndim]):
        raise ValueError(
            f"scatter_{op}: dst.shape={dst.shape} and data.shape={tuple(data_shape)} are incompatible; "
            "dst.shape must be equal to data.shape[: dst.ndim]"
        )
    if map_back:
        if output_size is not None:
            raise ValueError(
                f"scatter_{op}: got output_size={output_size!r} with map_back=True, whose output has data's shape; "
                "drop output_size, or set map_back=False"
            )
        # Only which elements share a destination matters, so any integer labels are fine.
        ids = _group_ids(dst)
        return _Plan(ids, dst.size, False, ids)
    if output_size is None:
        raise ValueError(
            f"scatter_{op}: scattering by dst needs the number of output rows: pass output_size=... "
            "(or map_back=True to get one result per input element)"
        )
    output_size = static_size(output_size, f"scatter_{op}: output_size")
    if _promises_in_bounds(mode):
        _check_dst_values(dst, output_size, op)
    return _Plan(dst, output_size, False, None)


def _make_plan(op, data, data_shape, dst, nel, output_size, map_back, mode) -> _Plan:
    _check_mode(mode)
    if dst is None and nel is None:
        raise ValueError(
            f"scatter_{op}: got neither dst nor nel; pass dst=... (a destination index per element) or "
            "nel=... (lengths of consecutive segments)"
        )
    if dst is not None and nel is not None:
        # e3nn-jax asserts here, hence the AssertionError-compatible class.
        raise InvalidValueError(
            f"scatter_{op}: got both dst and nel; they are two ways to say the same thing, pass only one of them"
        )
    # Axes that may be reduced: all of them for a plain array, all but the irreps axis otherwise.
    is_irreps = _looks_like_irreps_array(data)
    batch_ndim = len(data_shape) - int(is_irreps)
    what = "IrrepsArray" if is_irreps else "data"
    if nel is not None:
        if batch_ndim < 1:
            raise ValueError(f"scatter_{op}: {what} of shape {tuple(data_shape)} has no leading axis to reduce")
        return _plan_from_nel(op, nel, data_shape[0], output_size, map_back)
    if jnp.ndim(dst) > batch_ndim:
        raise ValueError(
            f"scatter_{op}: dst.shape={jnp.shape(dst)} has more axes than the leading axes of the "
            f"{what} of shape {tuple(data_shape)}" + (" (the irreps axis cannot be reduced)" if is_irreps else "")
        )
    return _plan_from_dst(op, dst, data_shape, output_size, map_back, mode)


def _reduce(op: str, initial, x: jax.Array, plan: _Plan, mode) -> jax.Array:
    """Reduce ``x`` into ``plan.output_size`` rows starting from ``initial``; map back if asked."""
    # The dtype mirrors ``initial * ones(x.dtype)``: integer data summed from 0.0 becomes float.
    out_dtype = jnp.result_type(x.dtype, initial)
    out = jnp.full((plan.output_size,) + x.shape[plan.dst.ndim :], initial, dtype=out_dtype)
    at = out.at[(plan.dst,)]
    kwargs = dict(indices_are_sorted=plan.indices_are_sorted, mode=mode)
    out = at.add(x, **kwargs) if op == "sum" else at.max(x, **kwargs)
    if plan.gather is not None:
        out = out[(plan.gather,)]
    return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def scatter_sum(
    data,
    *,
    dst: Optional[jax.Array] = None,
    nel: Optional[jax.Array] = None,
    output_size: Optional[int] = None,
    map_back: bool = False,
    mode: str = "promise_in_bounds",
):
    r"""Sum the entries of ``data`` that share a destination.

    Either by index (``dst``)::

        output[dst[i]] += data[i]

    or by consecutive segments of lengths ``nel``::

        output[i] = sum(data[sum(nel[:i]) : sum(nel[:i + 1])])

    Args:
        data: array or ``IrrepsArray`` of shape ``(n1, ..., nd, ...)``.
        dst: integer array of shape ``(n1, ..., nd)``; exactly one of ``dst`` and ``nel`` is given.
        nel: integer array of shape ``(num_segments,)`` with ``sum(nel) <= data.shape[0]``;
            trailing elements beyond ``sum(nel)`` are added to the last segment.
        output_size: static number of output rows; required with ``dst`` unless ``map_back``,
            forbidden with ``nel`` (it is ``len(nel)``).
        map_back: if ``True``, return for every input element the reduction of its group, with
            the shape of ``data`` (then ``dst`` values are only used as group labels).
        mode: JAX scatter mode for out-of-range ``dst`` values: ``"promise_in_bounds"`` (default;
            concrete indices are checked and must lie in ``[-output_size, output_size)``, negative
            ones counting from the end; under ``jit`` out-of-range indices give unspecified
            results), ``"drop"``/``"fill"`` (ignored) or ``"clip"`` (clamped).

    Returns:
        Array or ``IrrepsArray`` (same irreps) of shape ``(output_size, ...)``, or ``data.shape``
        with ``map_back``. Integer data comes back as float.

    Raises:
        ValueError: both or neither of ``dst``/``nel``; ``dst.shape != data.shape[:dst.ndim]``;
            ``output_size`` missing or superfluous; negative ``nel``; ``sum(nel) > n``;
            out-of-range concrete ``dst`` under ``"promise_in_bounds"``; unknown ``mode``.
        TypeError: non-integer ``dst``/``nel`` or a non-int ``output_size``.
    """
    array, wrap = _unwrap(data)
    plan = _make_plan("sum", data, array.shape, dst, nel, output_size, map_back, mode)
    return wrap(_reduce("sum", 0.0, array, plan, mode))


def _broadcast_counts(counts: jax.Array, ndim: int) -> jax.Array:
    """Append trailing unit axes so per-row counts broadcast against the reduced data."""
    return jnp.reshape(counts, counts.shape + (1,) * (ndim - counts.ndim))


def scatter_mean(
    data,
    *,
    dst: Optional[jax.Array] = None,
    nel: Optional[jax.Array] = None,
    output_size: Optional[int] = None,
    map_back: bool = False,
    mode: str = "promise_in_bounds",
):
    r"""Average the entries of ``data`` that share a destination.

    Same arguments as :func:`scatter_sum`. The sum of each group is divided by its number of
    elements (``nel[i]`` in segment mode); empty groups give 0 (the count is clamped to 1).

    Returns:
        Array or ``IrrepsArray`` (same irreps) of shape ``(output_size, ...)``, or ``data.shape``
        with ``map_back``.
    """
    array, wrap = _unwrap(data)
    plan = _make_plan("mean", data, array.shape, dst, nel, output_size, map_back, mode)
    if nel is not None:
        # Segment mode: the counts are nel itself (trailing padding elements are summed into the
        # last segment but not counted, as in e3nn-jax).
        counts = jnp.asarray(nel)
        reduce_plan = plan._replace(gather=None)
        total = _reduce("sum", 0.0, array, reduce_plan, mode)
        mean = total / _broadcast_counts(jnp.maximum(1, counts), total.ndim).astype(total.dtype)
        if plan.gather is not None:
            mean = mean[(plan.gather,)]
        return wrap(mean)

    total = _reduce("sum", 0.0, array, plan, mode)
    ones = jnp.ones(array.shape[: plan.dst.ndim], jnp.int32)
    counts = _reduce("sum", 0.0, ones, plan, mode)
    counts = jnp.maximum(1, counts)
    return wrap(total / _broadcast_counts(counts, total.ndim).astype(total.dtype))


def _is_scalar_irreps(irreps) -> bool:
    """Only even scalars (0e) are invariant under max; an empty irreps is not scalar (e3nn-jax)."""
    irs = [ir for _, ir in irreps]
    return len(irs) > 0 and all(ir.l == 0 and ir.p == 1 for ir in irs)


def scatter_max(
    data,
    *,
    dst: Optional[jax.Array] = None,
    nel: Optional[jax.Array] = None,
    initial: float = -jnp.inf,
    output_size: Optional[int] = None,
    map_back: bool = False,
    mode: str = "promise_in_bounds",
):
    r"""Maximum of the entries of ``data`` that share a destination.

    ``output[i] = max(initial, *(data[j] for j with dst[j] == i))``, or the same over the
    segments given by ``nel``. Same arguments as :func:`scatter_sum`, plus ``initial``, the value
    of empty groups and a lower bound for all outputs.

    An ``IrrepsArray`` must contain only ``0e`` scalars: a componentwise max of non-scalar irreps
    (or of odd scalars) is not equivariant.

    Returns:
        Array or ``IrrepsArray`` (same irreps) of shape ``(output_size, ...)``, or ``data.shape``
        with ``map_back``.
    """
    if _looks_like_irreps_array(data) and not _is_scalar_irreps(data.irreps):
        raise ValueError(
            f"scatter_max only works with scalar (0e) IrrepsArray, got irreps {data.irreps}"
        )
    array, wrap = _unwrap(data)
    plan = _make_plan("max", data, array.shape, dst, nel, output_size, map_back, mode)
    return wrap(_reduce("max", initial, array, plan, mode))


def index_add(
    indices: jax.Array = None,
    input=None,
    *,
    n_elements: jax.Array = None,
    out_dim: int = None,
    map_back: bool = False,
):
    """Deprecated alias: ``scatter_sum(input, dst=indices, nel=n_elements, output_size=out_dim,
    map_back=map_back)``. Emits a ``DeprecationWarning``."""
    warnings.warn(
        "index_add is deprecated, use scatter_sum(data, dst=..., nel=..., output_size=...) instead",
        DeprecationWarning,
        stacklevel=2,
    )
    if input is None:
        raise TypeError("index_add: input must be given")
    return scatter_sum(input, dst=indices, nel=n_elements, output_size=out_dim, map_back=map_back)


def _check_radius_graph_sizes(pos: jax.Array, batch: Optional[jax.Array], size: Optional[int]) -> None:
    """The number of pairs depends on the positions: under ``jit`` (traced input) it must be fixed by ``size``, and
    ``batch`` (which removes a data-dependent number of pairs) cannot be used at all."""
    traced = [name for name, x in (("pos", pos), ("batch", batch)) if x is not None and _concrete_values(x) is None]
    if traced and size is None:
        raise ValueError(
            f"radius_graph: {' and '.join(traced)} is traced (inside jax.jit, vmap, grad, ...), so the number of "
            "pairs is unknown; pass size=... (a static upper bound: the output is padded with fill_src/fill_dst), "
            "or call radius_graph outside jit"
        )
    if batch is not None and traced:
        raise ValueError(
            f"radius_graph: batch cannot be used when {' and '.join(traced)} is traced (inside jax.jit, ...): "
            "removing the pairs across graphs leaves a data-dependent number of pairs; call radius_graph outside "
            "jit, or offset each graph's positions far apart instead of passing batch"
        )


def _check_finite_positions(pos: jax.Array) -> None:
    """A NaN or infinite coordinate has no finite distance to anything, so that point would silently get no edge."""
    values = _concrete_values(pos)
    if values is None:
        return
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise ValueError(
            f"radius_graph: pos has non-finite (NaN or inf) coordinates in rows {bad[:10].tolist()}"
            f"{' ...' if bad.size > 10 else ''}; those points would silently get no edge. Fix or remove them "
            "(under jax.jit positions are not checked)"
        )


def radius_graph(
    pos,
    r_max: float,
    *,
    batch: jax.Array = None,
    size: int = None,
    loop: bool = False,
    fill_src: int = -1,
    fill_dst: int = -1,
):
    r"""All ordered pairs ``(src, dst)`` of points at distance ``0 < r < r_max``.

    Dense O(n^2) in memory and time: meant for small systems (a neighbour list such as
    ``matscipy.neighbours.neighbour_list`` scales better). Pairs come in row-major order of
    ``(src, dst)``. Note that distinct points at exactly the same position are not connected
    unless ``loop=True`` (the test is on the distance, as in e3nn-jax).

    Args:
        pos: array or ``IrrepsArray`` of shape ``(n, 3)``.
        r_max: cutoff radius (strict: pairs at exactly ``r_max`` are excluded).
        batch: optional array of shape ``(n,)`` of graph labels; pairs across graphs are removed.
            Filtering by ``batch`` yields a data-dependent size, so it cannot run under ``jit``.
        size: static number of pairs to return (pads with the fill values or truncates). Needed
            under ``jit``; with ``None`` the output size is data dependent.
        loop: whether to include self-loops ``(i, i)``.
        fill_src: padding value for ``src`` when ``size`` exceeds the number of pairs.
        fill_dst: padding value for ``dst``.

    Raises:
        ValueError: ``pos`` not of shape ``(n, 3)``; traced input without ``size``; ``batch`` with traced input;
            NaN or infinite positions (checked outside ``jit`` only; under ``jit`` such a point gets no edge).

    Returns:
        ``(src, dst)``: two integer arrays of the same length.

    Note:
        With ``batch``, padding entries (``-1`` by default) are looked up as ``batch[-1]``, i.e.
        the last point's label, as in e3nn-jax.
    """
    if _looks_like_irreps_array(pos):
        pos = pos.array
    pos = jnp.asarray(pos)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"radius_graph: pos must have shape (n, 3), got {pos.shape}")
    if size is not None:
        size = static_size(size, "radius_graph: size")
    if batch is not None:
        batch = jnp.asarray(batch)
        if batch.shape != pos.shape[:1]:
            raise ValueError(
                f"radius_graph: batch must have shape {pos.shape[:1]} (one label per point), got {batch.shape}"
            )
    _check_radius_graph_sizes(pos, batch, size)
    _check_finite_positions(pos)

    # Same arithmetic as e3nn-jax (norm of the difference), so boundary pairs agree bitwise.
    distance = jnp.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    mask = distance < r_max
    if not loop:
        mask = mask & (distance > 0)

    src, dst = jnp.nonzero(mask, size=size, fill_value=-1)
    if fill_src != -1:
        src = jnp.where(src == -1, fill_src, src)
    if fill_dst != -1:
        dst = jnp.where(dst == -1, fill_dst, dst)

    if batch is None:
        return src, dst
    same_graph = batch[src] == batch[dst]
    return src[same_graph], dst[same_graph]
