"""Path-fused executor of a :class:`~e3nn_fast.path_description.TensorProductDescription`, tuned for XLA on CPU.

Same signature and results as :func:`e3nn_fast.reference.tensor_product.tensor_product`, computed differently.
Every path is ``out[..., c, k] += coefficient * W[..., w] x1[..., a, i] x2[..., b, j] C[i, j, k]``.  Paths between
the same pair of input segments (they differ only in ``l_out``) form a *group*; in each group one input is the
*key* (its ``2l+1`` components are summed last) and the other is contracted with the CG blocks first:

1. **Stage A**, once per group: one matmul of the other input with the constant matrix of the group's stacked,
   coefficient-scaled CG blocks, ``T[..., o, m, K] = other[..., o, j] M[j, m, K]`` (``o`` the other input's channel,
   ``m`` the key's component, ``K`` every path's output components side by side); ``T`` is small (no key channels).
2. **Stage B**, per path: ``z[..., u, v, k] = sum_m key[..., ., m] T[..., ., m, k]`` written as ``2l+1`` broadcast
   products, which XLA fuses into the one loop that writes the path's output (a batched ``dot`` of these tiny
   matrices is slower and writes an intermediate).  Its derivatives are defined by a ``custom_jvp`` as ``dot``
   contractions: the transposes of the broadcast form are reductions that XLA's CPU backend turns into slow
   ``dot`` calls on materialised broadcasts.  The rule is itself made of differentiable JAX ops, so the executor
   stays differentiable to any order, in forward and reverse mode.
3. **Per path**: ``z`` is turned into the path's output by its connection mode (a reshape for ``uvuv``, a sum or
   weighted sum over a channel for ``uvu``/``uvv``/``uuw``, a scaling by the weights, ...).

Paths stay separate in stage B so that XLA can drop those whose output is never used (e.g. only the scalar outputs
feed an energy).  ``uuu``/``uuw`` paths pair channel ``u`` with channel ``u`` (only ``z[..., u, k]`` is formed);
``uvu<v`` paths gather the pairs ``u < v`` of both inputs first and are then computed like ``uuu``.  The modes whose
weights mix channels into new ones (``uvw``, ``u<vw``) run through the reference's per-path einsum, which already
contracts them in a good order.

Which input is the key is decided per group by a flop count (with spherical harmonics as input 2, input 1 is the
key: its many channels never meet the CG matrix).  Chunks that are ``None`` (known zeros) are skipped, and output
segments no path writes stay ``None``, exactly as in the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.path_description import Path, TensorProductDescription
from e3nn_fast.reference.tensor_product import path_output as reference_path_output

Chunk = Optional[jnp.ndarray]

# How the channels of the two inputs meet in z, per connection mode; modes not listed use the reference einsum.
OUTER, DIAGONAL, PAIRS = "outer", "diagonal", "pairs"
_KIND_OF_MODE = {"uvuv": OUTER, "uvu": OUTER, "uvv": OUTER, "uuu": DIAGONAL, "uuw": DIAGONAL, "uvu<v": PAIRS}


@dataclasses.dataclass(frozen=True)
class _Member:
    """A path of a group: its index in ``description.paths`` and its output columns ``K[start:stop]``."""

    index: int
    path: Path
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class _Group:
    """The paths of one kind between segment ``in1`` of input 1 and segment ``in2`` of input 2.

    ``key_is_1`` says whether input 1 is the key; ``matrix`` is the stacked CG ``(other_dim, key_dim, K)`` in float64.
    """

    kind: str
    in1: int
    in2: int
    key_is_1: bool
    members: tuple[_Member, ...]
    matrix: np.ndarray = dataclasses.field(compare=False, hash=False)


def _is_active(path: Path, present1: Sequence[bool], present2: Sequence[bool]) -> bool:
    """Whether the reference evaluates this path (both inputs non-zero, no empty multiplicity)."""
    return present1[path.in1] and present2[path.in2] and path.mul1 * path.mul2 * path.mul_out > 0


def _key_is_input_1(kind: str, paths: Sequence[Path]) -> bool:
    """Whether stages A + B cost fewer multiply-adds per sample with input 1 as the key."""
    first = paths[0]
    width = sum(p.ir_out.dim for p in paths)
    mul1, mul2, d1, d2 = first.mul1, first.mul2, first.ir1.dim, first.ir2.dim
    if kind != OUTER:  # both inputs have the same channels, z has one channel axis
        return d1 >= d2  # stage A costs mul * d_other * d_key * K, stage B mul * d_key * K
    key1 = mul2 * d2 * d1 * width + mul1 * mul2 * d1 * width
    key2 = mul1 * d1 * d2 * width + mul1 * mul2 * d2 * width
    return key1 <= key2


def _stacked_matrix(members: Sequence[_Member], key_is_1: bool) -> np.ndarray:
    """The members' CG blocks times their coefficients, side by side in one ``(other_dim, key_dim, K)`` matrix."""
    blocks = [member.path.cg() * member.path.coefficient for member in members]  # each (i, j, k)
    matrix = np.concatenate(blocks, axis=2)
    return np.transpose(matrix, (1, 0, 2)) if key_is_1 else matrix


@functools.lru_cache(maxsize=512)
def _plan(description: TensorProductDescription, present1: tuple[bool, ...], present2: tuple[bool, ...]):
    """The groups and the paths left to the reference, for the active paths of ``description``.

    Cached per description and pattern of zero chunks: building it costs Python time at every trace otherwise.
    """
    grouped: dict[tuple, list[tuple[int, Path]]] = {}
    fallback = []
    for n, path in enumerate(description.paths):
        if not _is_active(path, present1, present2):
            continue
        kind = _KIND_OF_MODE.get(path.mode)
        if kind is None:
            fallback.append(n)
        else:
            grouped.setdefault((kind, path.in1, path.in2), []).append((n, path))
    groups = []
    for (kind, in1, in2), group_paths in grouped.items():
        key_is_1 = _key_is_input_1(kind, [p for _, p in group_paths])
        members, width = [], 0
        for n, path in group_paths:
            members.append(_Member(n, path, width, width + path.ir_out.dim))
            width += path.ir_out.dim
        groups.append(_Group(kind, in1, in2, key_is_1, tuple(members), _stacked_matrix(members, key_is_1)))
    return tuple(groups), tuple(fallback)


def _stage_a(other: jnp.ndarray, matrix: np.ndarray) -> jnp.ndarray:
    """``T[..., o, m, K] = other[..., o, j] M[j, m, K]``: one matmul with a constant."""
    j, m, k = matrix.shape
    flat = jnp.matmul(other, jnp.asarray(matrix.reshape(j, m * k), dtype=other.dtype))
    return flat.reshape(flat.shape[:-1] + (m, k))


# ---------------------------------------------------------------------------------------------------------- stage B
# layout: "key1" (key = input 1: z[u, v] = key[u] T[v]), "key2" (key = input 2: z[u, v] = T[u] key[v]) or "diagonal"
# (z[u] = key[u] T[u]).  key is (..., channels, m), t is (..., channels, m, k).


def _contract_dot(layout: str, key: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Stage B as one ``dot_general``; used for the derivatives, whose transposes are then ``dot``s too."""
    if layout == DIAGONAL:
        return jnp.einsum("...um,...umk->...uk", key, t)
    if layout == "key1":
        return jnp.einsum("...um,...vmk->...uvk", key, t)
    return jnp.einsum("...umk,...vm->...uvk", t, key)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _contract(layout: str, key: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Stage B as ``2l+1`` broadcast products that XLA fuses with whatever consumes ``z``."""
    total = None
    for m in range(key.shape[-1]):
        if layout == DIAGONAL:
            term = key[..., :, m, None] * t[..., :, m, :]
        elif layout == "key1":
            term = key[..., :, None, m, None] * t[..., None, :, m, :]
        else:
            term = t[..., :, None, m, :] * key[..., None, :, m, None]
        total = term if total is None else total + term
    return total


def _contract_jvp(layout: str, primals, tangents):
    """Bilinear: ``d z = B(d key, t) + B(key, d t)``, with ``dot``s; symbolic zero tangents are skipped."""
    key, t = primals
    dkey, dt = tangents
    out = _contract(layout, key, t)
    tangent = None
    if not isinstance(dkey, jax.custom_derivatives.SymbolicZero):
        tangent = _contract_dot(layout, dkey, t)
    if not isinstance(dt, jax.custom_derivatives.SymbolicZero):
        term = _contract_dot(layout, key, dt)
        tangent = term if tangent is None else tangent + term
    if tangent is None:
        tangent = jnp.zeros_like(out)
    return out, jnp.broadcast_to(tangent, out.shape).astype(out.dtype)


_contract.defjvp(_contract_jvp, symbolic_zeros=True)


# ------------------------------------------------------------------------------------------------------------ paths


def _pairs(mul: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``u < v`` in ``itertools.combinations`` order (the ``q`` index of the triangular modes)."""
    pairs = list(itertools.combinations(range(mul), 2))
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def _finish(path: Path, weight: Chunk, z: jnp.ndarray) -> jnp.ndarray:
    """A path's contribution ``(..., mul_out, 2 l_out + 1)`` from its ``z`` (``(..., u, v, k)`` for outer modes,
    ``(..., u, k)`` for diagonal and pair modes)."""
    mode, w = path.mode, weight
    if mode == "uvuv":
        out = z if w is None else z * w[..., None]
        return out.reshape(out.shape[:-3] + (path.mul_out, path.ir_out.dim))
    if mode == "uvu":
        return z.sum(-2) if w is None else jnp.einsum("...uvk,...uv->...uk", z, w)
    if mode == "uvv":
        return z.sum(-3) if w is None else jnp.einsum("...uvk,...uv->...vk", z, w)
    if mode in ("uuu", "uvu<v"):
        return z if w is None else z * w[..., None]
    if mode == "uuw":  # without weights the channels are summed into the single output channel
        return z.sum(-2, keepdims=True) if w is None else jnp.einsum("...uk,...uw->...wk", z, w)
    raise ValueError(f"Connection mode {mode!r} is not evaluated by stage B")


def _group_outputs(group: _Group, weights: Sequence[Chunk], x1: jnp.ndarray, x2: jnp.ndarray):
    """``(path index, contribution)`` for every member of ``group``."""
    if group.kind == PAIRS:  # the pairs u < v of the channels, then channel q of one with channel q of the other
        u, v = _pairs(group.members[0].path.mul1)
        x1, x2 = x1[..., u, :], x2[..., v, :]
    key, other = (x1, x2) if group.key_is_1 else (x2, x1)
    layout = DIAGONAL if group.kind != OUTER else ("key1" if group.key_is_1 else "key2")
    t = _stage_a(other, group.matrix)
    pieces = jnp.split(t, [member.start for member in group.members[1:]], axis=-1)
    for member, piece in zip(group.members, pieces):
        z = _contract(layout, key, piece)
        yield member.index, _finish(member.path, weights[member.index], z)


def _common_dtype(chunks: Sequence[Chunk]):
    arrays = [c for c in chunks if c is not None]
    return jnp.result_type(*arrays) if arrays else None


def tensor_product(
    description: TensorProductDescription,
    weights: Sequence[Chunk],
    chunks1: Sequence[Chunk],
    chunks2: Sequence[Chunk],
) -> list[Chunk]:
    """Evaluate every path of ``description`` and sum them per output segment (same contract as the reference).

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
    groups, fallback = _plan(description, present1, present2)
    dtype = _common_dtype(list(chunks1) + list(chunks2))

    contributions = []
    for group in groups:
        x1, x2 = chunks1[group.in1].astype(dtype), chunks2[group.in2].astype(dtype)
        contributions.extend(_group_outputs(group, weights, x1, x2))
    for n in fallback:
        path = description.paths[n]
        contributions.append((n, reference_path_output(path, weights[n], chunks1[path.in1], chunks2[path.in2])))

    # Sum in path order, as the reference does, so that rounding matches it as closely as possible.
    outputs: list[Chunk] = [None] * len(description.irreps_out)
    for n, contribution in sorted(contributions, key=lambda item: item[0]):
        out = description.paths[n].out
        outputs[out] = contribution if outputs[out] is None else outputs[out] + contribution
    return outputs
