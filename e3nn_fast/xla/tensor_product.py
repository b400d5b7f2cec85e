"""Path-fused executor of a :class:`~e3nn_fast.path_description.TensorProductDescription` for XLA.

Same signature and results as :func:`e3nn_fast.reference.tensor_product.tensor_product`, computed differently.

Every path is ``out[..., c, k] += coefficient * W[..., w] x1[..., a, i] x2[..., b, j] C[i, j, k]``.  Paths that share
a segment of one input (the *key* input) are fused into a *group*:

1. **Stage A** (one matmul with a constant): the other input's segments of the group are concatenated along their
   components ``J`` and contracted with the stacked, coefficient-scaled CG blocks of all the group's paths,
   ``T[..., o, m, K] = other[..., o, J] M[J, m, K]`` (``o`` the other input's channel, ``m`` the key segment's
   component, ``K`` every path's output components side by side).
2. **Stage B** (elementwise): ``z[..., u, v, K] = sum_m key[..., ., m] T[..., ., m, K]``, an explicit sum over the
   ``2l+1`` components of the key segment.  It is written as broadcast products rather than a batched ``dot`` so
   that XLA fuses it, and the slicing / reshaping / summing that follows, into a few loops, and so that its
   derivatives are fusible too.
3. **Per path**: the path's slice of ``K`` is read out of ``z`` and reduced according to its connection mode (a
   reshape for ``uvuv``, a weighted contraction for ``uvw``, pair selection for ``u<v`` modes, ...).

*Outer* groups hold the modes whose input channels are independent (``uvw``, ``uvu``, ``uvv``, ``uvuv``, ``uvu<v``,
``u<vw``); *diagonal* groups the modes that pair channel ``u`` with channel ``u`` (``uuu``, ``uuw``), for which only
``z[..., u, K]`` is formed.  Which input plays the key is chosen once per description by a flop count of both
stages (with spherical harmonics as input 2, input 1 is the key: its many channels never meet the CG matrix).

Chunks that are ``None`` (known zeros) are skipped, and output segments no path writes stay ``None``, exactly as in
the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from e3nn_fast.path_description import Path, TensorProductDescription

Chunk = Optional[jnp.ndarray]

OUTER_MODES = ("uvw", "uvu", "uvv", "uvuv", "uvu<v", "u<vw")
DIAGONAL_MODES = ("uuu", "uuw")


@dataclasses.dataclass(frozen=True)
class _Member:
    """A path inside a group: its index in ``description.paths`` and its output columns ``K[start:stop]``."""

    index: int
    path: Path
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class _Group:
    """Paths fused together: they share the key segment ``key`` and the other input's multiplicity.

    ``key_is_1`` says whether the key is input 1.  ``others`` are the other input's segments whose components are
    concatenated (in this order) for stage A; ``matrix`` is the stacked CG ``(J, key_dim, K)`` in float64.
    """

    diagonal: bool
    key_is_1: bool
    key: int
    others: tuple[int, ...]
    members: tuple[_Member, ...]
    matrix: np.ndarray = dataclasses.field(compare=False, hash=False)


def _is_active(path: Path, present1: Sequence[bool], present2: Sequence[bool]) -> bool:
    """Whether the reference would evaluate this path (both inputs non-zero, no empty multiplicity)."""
    return present1[path.in1] and present2[path.in2] and path.mul1 * path.mul2 * path.mul_out > 0


def _flops(paths: Sequence[tuple[int, Path]], key_is_1: bool) -> int:
    """Multiply-adds per sample of stages A and B when the key is input 1 (``key_is_1``) or input 2."""
    total = 0
    groups: dict[tuple, list[Path]] = {}
    for _, path in paths:
        key = path.in1 if key_is_1 else path.in2
        other_mul = path.mul2 if key_is_1 else path.mul1
        groups.setdefault((path.mode in DIAGONAL_MODES, key, other_mul), []).append(path)
    for (diagonal, _, other_mul), members in groups.items():
        key_dim = (members[0].ir1 if key_is_1 else members[0].ir2).dim
        key_mul = members[0].mul1 if key_is_1 else members[0].mul2
        others = {(p.in2, p.ir2.dim) if key_is_1 else (p.in1, p.ir1.dim) for p in members}
        other_dim = sum(dim for _, dim in others)
        width = sum(p.ir_out.dim for p in members)
        total += other_mul * other_dim * key_dim * width  # stage A
        total += (key_mul if diagonal else key_mul * other_mul) * key_dim * width  # stage B
    return total


def _stacked_matrix(members: Sequence[_Member], others: Sequence[int], key_is_1: bool) -> np.ndarray:
    """The CG blocks of the members, scaled by their coefficients, in one ``(J, key_dim, K)`` matrix."""
    first = members[0].path
    dims = {(m.path.in2 if key_is_1 else m.path.in1): (m.path.ir2 if key_is_1 else m.path.ir1).dim for m in members}
    offsets = dict(zip(others, np.cumsum([0] + [dims[s] for s in others])[:-1].tolist()))
    key_dim = (first.ir1 if key_is_1 else first.ir2).dim
    matrix = np.zeros((sum(dims.values()), key_dim, members[-1].stop), dtype=np.float64)
    for member in members:
        path = member.path
        block = path.cg() * path.coefficient  # (i, j, k)
        block = np.transpose(block, (1, 0, 2)) if key_is_1 else block  # -> (other component, key component, k)
        start = offsets[path.in2 if key_is_1 else path.in1]
        matrix[start : start + block.shape[0], :, member.start : member.stop] += block
    return matrix


@functools.lru_cache(maxsize=512)
def _plan(description: TensorProductDescription, present1: tuple[bool, ...], present2: tuple[bool, ...]):
    """The groups evaluating the active paths of ``description`` (cached per description and zero pattern)."""
    paths = [(n, p) for n, p in enumerate(description.paths) if _is_active(p, present1, present2)]
    key_is_1 = _flops(paths, True) <= _flops(paths, False)
    grouped: dict[tuple, list[tuple[int, Path]]] = {}
    for n, path in paths:
        key = path.in1 if key_is_1 else path.in2
        other_mul = path.mul2 if key_is_1 else path.mul1
        grouped.setdefault((path.mode in DIAGONAL_MODES, key, other_mul), []).append((n, path))
    groups = []
    for (diagonal, key, _), group_paths in grouped.items():
        members, width = [], 0
        for n, path in group_paths:
            members.append(_Member(n, path, width, width + path.ir_out.dim))
            width += path.ir_out.dim
        others = tuple(dict.fromkeys(p.in2 if key_is_1 else p.in1 for _, p in group_paths))
        matrix = _stacked_matrix(members, others, key_is_1)
        groups.append(_Group(diagonal, key_is_1, key, others, tuple(members), matrix))
    return tuple(groups)


def _concatenate_segments(chunks: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """Chunks ``(..., mul, d_s)`` of equal multiplicity side by side on the last axis (leading axes broadcast)."""
    if len(chunks) == 1:
        return chunks[0]
    leading = jnp.broadcast_shapes(*(c.shape[:-2] for c in chunks))
    return jnp.concatenate([jnp.broadcast_to(c, leading + c.shape[-2:]) for c in chunks], axis=-1)


def _stage_a(other: jnp.ndarray, matrix: np.ndarray) -> jnp.ndarray:
    """``T[..., o, m, K] = other[..., o, J] M[J, m, K]``: one matmul with a constant."""
    j, m, k = matrix.shape
    flat = jnp.matmul(other, jnp.asarray(matrix.reshape(j, m * k), dtype=other.dtype))
    return flat.reshape(flat.shape[:-1] + (m, k))


def _product_dot(diagonal, key_is_1, key, t):
    if diagonal:
        return jnp.einsum("...um,...umK->...uK", key, t)
    if key_is_1:
        return jnp.einsum("...um,...vmK->...uvK", key, t)
    return jnp.einsum("...umK,...vm->...uvK", t, key)


def _product_unroll(diagonal, key_is_1, key, t):
    total = None
    for m in range(key.shape[-1]):
        if diagonal:
            term = key[..., :, m, None] * t[..., :, m, :]
        elif key_is_1:
            term = key[..., :, None, m, None] * t[..., None, :, m, :]  # key channel u, other channel v
        else:
            term = t[..., :, None, m, :] * key[..., None, :, m, None]  # other channel u, key channel v
        total = term if total is None else total + term
    return total


import jax
from functools import partial


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _product_jvp(diagonal, key_is_1, key, t):
    return _product_unroll(diagonal, key_is_1, key, t)


@_product_jvp.defjvp
def _product_jvp_rule(diagonal, key_is_1, primals, tangents):
    key, t = primals
    dkey, dt = tangents
    out = _product_jvp(diagonal, key_is_1, key, t)
    return out, _product_dot(diagonal, key_is_1, dkey, t) + _product_dot(diagonal, key_is_1, key, dt)


def _stage_b(group: _Group, key: jnp.ndarray, t: jnp.ndarray) -> list:
    """``z[..., u, v, K]`` (outer groups) or ``z[..., u, K]`` (diagonal groups), summing the key's components."""
    import os
    variant = os.environ.get("STAGE_B", "perpath")
    splits = [member.start for member in group.members[1:]]
    if variant in ("dot", "unroll", "jvp_group"):
        f = {"dot": _product_dot, "unroll": _product_unroll, "jvp_group": _product_jvp}[variant]
        return jnp.split(f(group.diagonal, group.key_is_1, key, t), splits, axis=-1)
    f = {"perpath": _product_dot, "perpath_unroll": _product_unroll, "jvp": _product_jvp}[variant]
    return [f(group.diagonal, group.key_is_1, key, piece) for piece in jnp.split(t, splits, axis=-1)]


def _pairs(mul: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``u < v`` in ``itertools.combinations`` order (the ``q`` index of the triangular modes)."""
    pairs = list(itertools.combinations(range(mul), 2))
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def _path_output(path: Path, weight: Chunk, z: jnp.ndarray) -> jnp.ndarray:
    """A path's contribution ``(..., mul_out, 2 l_out + 1)`` from its slice of ``z`` (``(..., u, v, k)`` for outer
    modes, ``(..., u, k)`` for diagonal ones)."""
    mode, w = path.mode, weight
    if mode == "uvuv":
        out = z if w is None else z * w[..., None]
        return out.reshape(out.shape[:-3] + (path.mul_out, path.ir_out.dim))
    if mode == "uvu":
        return z.sum(-2) if w is None else jnp.einsum("...uvk,...uv->...uk", z, w)
    if mode == "uvv":
        return z.sum(-3) if w is None else jnp.einsum("...uvk,...uv->...vk", z, w)
    if mode == "uvw":
        return jnp.einsum("...uvk,...uvw->...wk", z, w)
    if mode in ("uvu<v", "u<vw"):
        u, v = _pairs(path.mul1)
        pairs = z[..., u, v, :]
        if mode == "u<vw":
            return jnp.einsum("...qk,...qw->...wk", pairs, w)
        return pairs if w is None else pairs * w[..., None]
    if mode == "uuu":
        return z if w is None else z * w[..., None]
    if mode == "uuw":
        return z.sum(-2, keepdims=True) if w is None else jnp.einsum("...uk,...uw->...wk", z, w)
    raise ValueError(f"Unknown connection mode {mode!r}")


def tensor_product(
    description: TensorProductDescription,
    weights: Sequence[Chunk],
    chunks1: Sequence[Chunk],
    chunks2: Sequence[Chunk],
) -> list[Chunk]:
    """Evaluate every path of ``description`` with fused stages and sum them per output segment.

    Args:
        description: the paths.
        weights: one entry per path: ``(..., *path.weight_shape)`` for a weighted path, ``None`` otherwise.
        chunks1, chunks2: the inputs' chunks ``(..., mul, 2l+1)``, one per segment, ``None`` for known zeros.

    Returns:
        One chunk per output segment; ``None`` where no path with non-zero inputs writes.
    """
    if len(weights) != len(description.paths):
        raise ValueError(f"Expected {len(description.paths)} weight entries (one per path), got {len(weights)}")
    if len(chunks1) != len(description.irreps_in1) or len(chunks2) != len(description.irreps_in2):
        raise ValueError(
            f"Expected {len(description.irreps_in1)} and {len(description.irreps_in2)} chunks for "
            f"{description.irreps_in1} and {description.irreps_in2}, got {len(chunks1)} and {len(chunks2)}"
        )
    present1 = tuple(c is not None for c in chunks1)
    present2 = tuple(c is not None for c in chunks2)
    dtype = jnp.result_type(*(c for c in list(chunks1) + list(chunks2) if c is not None)) if any(
        present1 + present2
    ) else None
    outputs: list[Chunk] = [None] * len(description.irreps_out)
    for group in _plan(description, present1, present2):
        keys, others = (chunks1, chunks2) if group.key_is_1 else (chunks2, chunks1)
        key = keys[group.key].astype(dtype)
        other = _concatenate_segments([others[s].astype(dtype) for s in group.others])
        pieces = _stage_b(group, key, _stage_a(other, group.matrix))
        for member, piece in zip(group.members, pieces):
            contribution = _path_output(member.path, weights[member.index], piece)
            previous = outputs[member.path.out]
            outputs[member.path.out] = contribution if previous is None else previous + contribution
    return outputs
