"""Optimised pure-jnp executor of a :class:`~e3nn_fast.path_description.TensorProductDescription`, tuned for XLA.

Same signature and results as :func:`e3nn_fast.reference.tensor_product.tensor_product`; registered with the
dispatcher as the ``jnp`` executor of ``tensor_product``.  Every path is
``out[..., c, k] += coefficient * W[..., w] x1[..., a, i] x2[..., b, j] C[i, j, k]``.  For each path one input is
the *key* (its ``2l+1`` components are summed last) and the other is contracted with the CG block first:

1. **Stage A**: one matmul of the other input with the path's constant, coefficient-scaled CG block,
   ``T[..., o, m, k] = other[..., o, j] C[j, m, k]`` (``o`` the other input's channel, ``m`` the key's component).
   ``T`` is small: it has no key channel.  The constant is kept opaque to XLA's simplifier (:func:`_unfoldable`) so
   that ``T`` stays a materialised ``dot`` rather than being recomputed inside the output loop.
2. **Stage B**: ``z[..., u, v, k] = sum_m key[..., ., m] T[..., ., m, k]``, bound to the multilinear primitive
   (:mod:`e3nn_fast.xla.stage_b`): forward it is ``2l+1`` broadcast products that XLA fuses into the loop writing the
   output (and the ``* w`` or concatenation after it), where e3nn-jax's per-path ``einsum`` runs a batched ``dot`` of
   tiny matrices and writes an intermediate.  Its derivatives are stage B's other two contractions, written by hand
   in the forms XLA runs fastest instead of autodiff's reductions over short axes.
3. **Mode**: ``z`` becomes the path's output according to its connection mode (a reshape for ``uvuv``, a plain or
   weighted sum over one channel for ``uvu``/``uvv``/``uuw``, a scaling by the weights for ``uuu``/``uvu<v``, the
   channel mix of :mod:`e3nn_fast.xla.channel_mix` for ``uvw``: every pair ``(u, v)`` into every output channel).

Stage A and the other modes' reductions are plain differentiable JAX, so the executor is differentiable to any
order, forward and reverse mode.

Measured on CPU (``bench/tp_vs_e3nn_jax.py``) and kept that way on purpose:

* Everything is per path by default.  Stacking the CG blocks of several paths into one stage-A matrix, or one
  stage-B product per group of paths, was no faster forward (XLA splits the fused product per output anyway) and
  defeats dead-code elimination: when only some outputs are used (e.g. the scalars feeding an energy), XLA must
  still compute the whole group, and its derivatives (a forces step got 2-20x slower; one shared stage-A matmul
  made ``tp-16``'s forces pass 1.4x slower).  Measured again with the hand-written stage B (2 cores, 2026-12-07,
  medians of 7-11 alternated rounds): one stage A and B per pair of input segments, split along ``k`` into the
  paths (``group_input_pairs``), ran the convolutions' backward faster (``nequip-benzene`` forces 8.5 -> 7.1 ms,
  ``sevennet-l3i5`` 6.2 -> 5.2 ms, ``mace-large`` 14.1 -> 11.5 ms; compile 10-27 % shorter) but the NequIP training
  step's energy + forces 2.65 -> 3.96 ms and forces 6.2 -> 9.2 ms (its readout uses a few of the last layer's
  outputs), ``tp-16`` fwd+bwd 20 -> 33 ms and ``sh-tp``'s 143 -> 182 ms (a wider ``k`` sends the key gradient to
  its ``dot``); groups cut before their ``k`` reaches ``DOT_MIN_COMPONENTS`` still took the training step's forces
  from 4.95 to 5.83 ms (``nequip-benzene`` forces 7.9 -> 7.1 ms).  So only callers that use every output group:
  the fused message passing, whose messages all go into its sum (:mod:`e3nn_fast.xla.message_passing`).
* ``uuu``/``uuw`` pair channel ``u`` with channel ``u`` (only ``z[..., u, k]`` is formed); ``uvu<v`` gathers the
  pairs ``u < v`` of both inputs first and is then computed like ``uuu``.  ``uvw`` with weights broadcast over
  only some leading axes, and ``u<vw``, use the reference's per-path einsum (see :func:`_stages_apply`).
* Which input is the key is decided per path by a flop count (with spherical harmonics as input 2, input 1 is the
  key: its many channels never meet the CG block).

Chunks that are ``None`` (known zeros) are skipped, and output segments that no path writes stay ``None``, exactly
as in the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from e3nn_fast.irreps_array import times_scalar_block
from e3nn_fast.path_description import Path, TensorProductDescription
from e3nn_fast.reference.tensor_product import path_output as reference_path_output
from e3nn_fast.xla.channel_mix import channel_mix
from e3nn_fast.xla.fusion_barrier import backend_separates, cotangent_apart
from e3nn_fast.xla.stage_b import DIAGONAL, KEY1, KEY2, stage_b

Chunk = Optional[jnp.ndarray]


# Modes evaluated by stages A and B, and whether they pair equal channels; the others use the reference einsum.
_PAIRS_EQUAL_CHANNELS = {
    "uvuv": False, "uvu": False, "uvv": False, "uvw": False, "uuu": True, "uuw": True, "uvu<v": True,
}


@dataclasses.dataclass(frozen=True)
class _Step:
    """How one path is evaluated: its index, which input is the key, the stage-B layout and the stage-A matrix
    ``(other_dim, key_dim, k)``."""

    index: int
    path: Path
    key_is_1: bool
    layout: str
    matrix: np.ndarray = dataclasses.field(compare=False, hash=False)


def _is_active(path: Path, present1: Sequence[bool], present2: Sequence[bool]) -> bool:
    """Whether the reference evaluates this path (both inputs non-zero, no empty multiplicity)."""
    return present1[path.in1] and present2[path.in2] and path.mul1 * path.mul2 * path.mul_out > 0


def _key_is_input_1(path: Path) -> bool:
    """Whether stages A + B cost fewer multiply-adds per sample with input 1 as the key.

    Stage A costs ``mul_other * d_other * d_key * k``; stage B ``mul1 * mul2 * d_key * k`` (``mul * d_key * k`` when
    the channels are paired, where only the component dimensions decide).
    """
    mul1, mul2, d1, d2 = path.mul1, path.mul2, path.ir1.dim, path.ir2.dim
    if _PAIRS_EQUAL_CHANNELS[path.mode]:
        return d1 >= d2
    return mul2 * d2 * d1 + mul1 * mul2 * d1 <= mul1 * d1 * d2 + mul1 * mul2 * d2


def _step(index: int, path: Path) -> _Step:
    key_is_1 = _key_is_input_1(path)
    block = path.cg() * path.coefficient  # (i, j, k)
    matrix = np.transpose(block, (1, 0, 2)) if key_is_1 else block  # (other component, key component, k)
    layout = DIAGONAL if _PAIRS_EQUAL_CHANNELS[path.mode] else (KEY1 if key_is_1 else KEY2)
    return _Step(index, path, key_is_1, layout, matrix)


@functools.lru_cache(maxsize=512)
def _plan(description: TensorProductDescription, present1: tuple[bool, ...], present2: tuple[bool, ...]):
    """For each active path in order: its :class:`_Step`, or its index when the reference einsum evaluates it.

    Cached per description and pattern of zero chunks: building the CG matrices costs Python time at every trace.
    """
    return tuple(
        _step(n, path) if path.mode in _PAIRS_EQUAL_CHANNELS else n
        for n, path in enumerate(description.paths)
        if _is_active(path, present1, present2)
    )


def _stage_a(other: jnp.ndarray, matrix: np.ndarray) -> jnp.ndarray:
    """``T[..., o, m, k] = other[..., o, j] C[j, m, k]``: one matmul with a constant (see :func:`_unfoldable`)."""
    j, m, k = matrix.shape
    flat = jnp.matmul(other, _unfoldable(matrix.reshape(j, m * k), other.dtype))
    return flat.reshape(flat.shape[:-1] + (m, k))


def _unfoldable(matrix: np.ndarray, dtype) -> jnp.ndarray:
    """The constant ``matrix`` written as ``identity @ matrix``, so that XLA keeps stage A a ``dot``.

    XLA's algebraic simplifier splits ``dot(concatenate(pieces), constant)`` into one product per piece.  A chunk of
    spherical harmonics computed in the same jit is such a concatenation of single components, so each product
    becomes a broadcast multiply that is fused into -- and recomputed by -- the loop writing the wide output, once per
    key channel (the ``sh-tp`` forward was 2x slower).  The identity product is folded only after that rewrite, so
    the ``dot`` survives and ``T`` is computed once (measured with jax 0.10.2 on CPU; at worst it costs a ``j x j``
    matmul of constants).
    """
    return jnp.matmul(jnp.eye(matrix.shape[0], dtype=dtype), jnp.asarray(matrix, dtype=dtype))


# Modes whose paths :func:`_grouped_plan` may join (``uvu<v`` gathers its channel pairs per path, ``uvw`` chooses its
# weight contraction per call).
_GROUPABLE = frozenset({"uvuv", "uvu", "uvv", "uuu", "uuw"})


@dataclasses.dataclass(frozen=True)
class _PairGroup:
    """Paths that share both input segments, the mode, the key and the layout, evaluated by one stage A and one
    stage B whose output components are the paths' side by side (``matrix``: their stage-A matrices joined along
    ``k``), then split along ``k`` at ``splits`` into the paths."""

    steps: tuple
    splits: tuple
    matrix: np.ndarray = dataclasses.field(compare=False, hash=False)


@functools.lru_cache(maxsize=512)
def _grouped_plan(description: TensorProductDescription, present1: tuple[bool, ...], present2: tuple[bool, ...]):
    """:func:`_plan` with the steps of each input pair joined into a :class:`_PairGroup` (in the order of their
    first path; single steps and reference paths as they are)."""
    members: dict = {}
    order = []
    for step in _plan(description, present1, present2):
        if isinstance(step, _Step) and step.path.mode in _GROUPABLE:
            path = step.path
            key = (path.in1, path.in2, path.mode, step.key_is_1, step.layout)
            if key not in members:
                members[key] = []
                order.append(members[key])
            members[key].append(step)
        else:
            order.append(step)
    plan = []
    for item in order:
        if not isinstance(item, list):
            plan.append(item)
        elif len(item) == 1:
            plan.append(item[0])
        else:
            splits = tuple(int(n) for n in np.cumsum([s.matrix.shape[-1] for s in item])[:-1])
            plan.append(_PairGroup(tuple(item), splits, np.concatenate([s.matrix for s in item], axis=-1)))
    return tuple(plan)


def _pairs(mul: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``u < v`` in ``itertools.combinations`` order (the ``q`` index of the triangular modes)."""
    pairs = list(itertools.combinations(range(mul), 2))
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def _finish(path: Path, weight: Chunk, z: jnp.ndarray) -> jnp.ndarray:
    """A path's contribution ``(..., mul_out, 2 l_out + 1)`` from its ``z`` (``(..., u, v, k)`` for independent
    channels, ``(..., u, k)`` for paired ones).

    A weight that scales whole irreps (one number per output channel) multiplies through
    :func:`~e3nn_fast.irreps_array.times_scalar_block`, whose gradient XLA runs as slice additions rather than a
    reduction over the short ``k`` axis; with one channel on the summed side (spherical harmonics), ``uvu``/``uvv`` are
    such scalings too.
    """
    mode, w = path.mode, weight
    if mode == "uvuv":
        out = z if w is None else times_scalar_block(z, w[..., None])
        return out.reshape(out.shape[:-3] + (path.mul_out, path.ir_out.dim))
    if mode == "uvu":
        if w is None:
            return z.sum(-2)
        if path.mul2 == 1:
            return times_scalar_block(z[..., 0, :], w[..., 0, None])
        return jnp.einsum("...uvk,...uv->...uk", z, w)
    if mode == "uvv":
        if w is None:
            return z.sum(-3)
        if path.mul1 == 1:
            return times_scalar_block(z[..., 0, :, :], w[..., 0, :, None])
        return jnp.einsum("...uvk,...uv->...vk", z, w)
    if mode in ("uuu", "uvu<v"):
        return z if w is None else times_scalar_block(z, w[..., None])
    if mode == "uuw":  # without weights the channels are summed into the single output channel
        return z.sum(-2, keepdims=True) if w is None else jnp.einsum("...uk,...uw->...wk", z, w)
    if mode == "uvw":  # (..., u, v, k) and (..., u, v, w), flattened to the channel pairs q = (u, v)
        pairs = path.mul1 * path.mul2
        return channel_mix(z.reshape(z.shape[:-3] + (pairs, z.shape[-1])), w.reshape(w.shape[:-3] + (pairs, -1)))
    raise ValueError(f"Connection mode {mode!r} is not evaluated by stage B")


def _stages_apply(step: _Step, weight: Chunk, x1: jnp.ndarray, x2: jnp.ndarray) -> bool:
    """Whether stages A and B (for ``uvw`` then :func:`~e3nn_fast.xla.channel_mix.channel_mix`) evaluate the path,
    rather than the reference ``einsum``.  True for every other mode of a step, and for ``uvw`` when its weights are
    one matrix shared by every row or one matrix per row (the same leading axes as the inputs).  Weights broadcast
    over only some of the leading axes stay with the ``einsum``, which contracts them without repeating them per
    row."""
    if step.path.mode != "uvw":
        return True
    lead = jnp.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    return tuple(weight.shape[:-3]) in ((), tuple(lead))


def _path_output(step: _Step, weight: Chunk, x1: jnp.ndarray, x2: jnp.ndarray, alone: bool = False) -> jnp.ndarray:
    """Stages A and B and the mode's reduction for one path (``alone``: the product's only path, see
    :func:`tensor_product`)."""
    if step.path.mode == "uvu<v":  # the pairs u < v of the channels, then pair q of one input with pair q of the other
        u, v = _pairs(step.path.mul1)
        x1, x2 = x1[..., u, :], x2[..., v, :]
    key, other = (x1, x2) if step.key_is_1 else (x2, x1)
    return _finish(step.path, weight, stage_b(step.layout, key, _stage_a(other, step.matrix), whole_product=alone))


def _group_outputs(group: _PairGroup, weights: Sequence[Chunk], x1: jnp.ndarray, x2: jnp.ndarray) -> list:
    """Stages A and B once for the group, then each path's share of ``k`` through its mode's reduction.

    Split with one ``split`` (its transpose is one ``concatenate`` of the paths' cotangents; slices would each
    transpose into a zero-padded copy to be summed)."""
    first = group.steps[0]
    key, other = (x1, x2) if first.key_is_1 else (x2, x1)
    z = stage_b(first.layout, key, _stage_a(other, group.matrix))
    pieces = jnp.split(z, group.splits, axis=-1)
    return [(step.index, step.path, _finish(step.path, weights[step.index], piece))
            for step, piece in zip(group.steps, pieces)]


def _keys_with_cotangent_apart(plan, chunks1: Sequence[Chunk], chunks2: Sequence[Chunk]):
    """The chunks that are the key of some path wrapped in :func:`~e3nn_fast.xla.fusion_barrier.cotangent_apart`.

    A key's gradient is the sum over its paths of stage B's ``dF/dkey``; XLA otherwise fuses that sum into the
    reshape to the flat layout of the input's gradient and runs it over the flat index (see that function).  On 2
    cores (jax 0.10.2, 2026-12-07, medians of 7 alternated rounds, A/B in one process), fwd+bwd / forces:
    ``mace-large`` 10.9 / 8.9 -> 9.1 / 6.9 ms, ``mace-medium`` 10.3 / 7.2 -> 9.2 / 6.4 ms, ``nequip-water`` 4.3 / 3.8
    -> 3.7 / 3.0 ms, ``nequip-benzene`` 8.4 / 7.1 -> 7.8 / 6.7 ms, ``sevennet-l3i5`` 6.6 / 5.3 -> 6.0 / 5.0 ms, and at
    32 edges ``mace-large`` 0.80 / 0.76 -> 0.58 / 0.54 ms; the NequIP training step within noise.  A product of one
    path already computes its key's gradient apart (:func:`tensor_product`), so it is not wrapped: another boundary
    there cost high-l5 8-10 %.  Nor are the keys of ``uvw`` paths, whose ``z`` gradient is the channel mix's
    batched ``dot``: ``diffdock``'s fwd+bwd took 2.7 -> 3.0 ms with them.
    """
    if not backend_separates():
        return chunks1, chunks2
    keys1, keys2 = set(), set()
    for item in plan:
        step = item.steps[0] if isinstance(item, _PairGroup) else item
        if isinstance(step, _Step) and step.path.mode != "uvw":
            (keys1 if step.key_is_1 else keys2).add(step.path.in1 if step.key_is_1 else step.path.in2)

    def wrapped(chunks, keys):
        # a scalar chunk's gradient, (rows, mul, 1), is already laid out flat: nothing to gain
        return [cotangent_apart(c) if n in keys and c is not None and c.shape[-1] > 1 else c
                for n, c in enumerate(chunks)]

    return wrapped(chunks1, keys1), wrapped(chunks2, keys2)


def tensor_product(
    description: TensorProductDescription,
    weights: Sequence[Chunk],
    chunks1: Sequence[Chunk],
    chunks2: Sequence[Chunk],
    *,
    group_input_pairs: bool = False,
) -> list[Chunk]:
    """Evaluate every path of ``description`` and sum them per output segment (same contract as the reference).

    Args:
        description: the paths.
        weights: one entry per path: ``(..., *path.weight_shape)`` for a weighted path, ``None`` otherwise.
        chunks1, chunks2: the inputs' chunks ``(..., mul, 2l+1)``, one per segment, ``None`` for known zeros.
        group_input_pairs: evaluate the paths that share both input segments (and mode) by one stage A and B
            (:class:`_PairGroup`): fewer, larger contractions, which compile faster, but every path of a group is
            computed whenever one of them is used, so XLA can no longer drop unused outputs (see the module
            docstring).  For callers whose every output is used, such as the fused message passing.

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
    arrays = [c for c in list(chunks1) + list(chunks2) if c is not None]
    dtype = jnp.result_type(*arrays) if arrays else None

    plan = (_grouped_plan if group_input_pairs else _plan)(description, present1, present2)
    # A product of one path (a high-l convolution filtered to one output) has no output join for its stage B to fuse
    # into, only the caller's consumers, which XLA's CPU loops would run over the flat layout: its stage B is then
    # computed apart from them (``stage_b(whole_product=True)``; high-l5, ``128x5e x 1x3e -> 128x5e`` at 2,048 edges,
    # 2 cores, 2026-12-07: fwd 5.8 -> 1.5 ms).  Differentiated, its key's gradient is computed apart instead
    # (``StageBMaths.differentiated``): nothing else adds to it.
    alone = len(plan) == 1
    if not alone:
        chunks1, chunks2 = _keys_with_cotangent_apart(plan, chunks1, chunks2)
    contributions = []  # (path index, path, contribution)
    for step in plan:
        if isinstance(step, _PairGroup):
            path = step.steps[0].path
            x1, x2 = chunks1[path.in1].astype(dtype), chunks2[path.in2].astype(dtype)
            contributions.extend(_group_outputs(step, weights, x1, x2))
        elif isinstance(step, _Step):
            path = step.path
            x1, x2 = chunks1[path.in1].astype(dtype), chunks2[path.in2].astype(dtype)
            if _stages_apply(step, weights[step.index], x1, x2):
                contribution = _path_output(step, weights[step.index], x1, x2, alone)
            else:
                contribution = reference_path_output(path, weights[step.index], chunks1[path.in1], chunks2[path.in2])
            contributions.append((step.index, path, contribution))
        else:
            path = description.paths[step]
            contributions.append((step, path, reference_path_output(path, weights[step], chunks1[path.in1],
                                                                    chunks2[path.in2])))
    outputs: list[Chunk] = [None] * len(description.irreps_out)
    for _, path, contribution in sorted(contributions, key=lambda item: item[0]):  # summed as the reference sums
        outputs[path.out] = contribution if outputs[path.out] is None else outputs[path.out] + contribution
    return outputs
