"""Reference executor of a :class:`~e3nn_fast.path_description.TensorProductDescription`: one einsum per path.

This is the readable oracle.  Every path is ``out[..., c, k] += coefficient * W[..., w] x1[..., a, i] x2[..., b, j]
C[i, j, k]`` with the multiplicity subscripts ``a, b, c, w`` of the path's connection mode.  Inputs and outputs are
lists of *chunks*, one per segment, each of shape ``(..., mul, 2l+1)`` or ``None`` for a segment known to be zero;
leading axes broadcast, weights may carry leading axes too (per-sample weights).
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from e3nn_fast.path_description import CONNECTION_MODES, Path, TensorProductDescription

Chunk = Optional[jnp.ndarray]


def _pairs_below_diagonal(x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    """``(..., q, i, j)`` products ``x1[u, i] x2[v, j]`` for the pairs ``u < v`` in ``itertools.combinations`` order."""
    mul = x1.shape[-2]
    u, v = (np.array(idx, dtype=np.int32) for idx in zip(*itertools.combinations(range(mul), 2))) if mul > 1 else (
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
    )
    return x1[..., u, :, None] * x2[..., v, None, :]


def path_output(path: Path, weight: Chunk, x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    """The contribution ``(..., mul_out, 2 l_out + 1)`` of one path."""
    cg = jnp.asarray(path.cg() * path.coefficient, dtype=x1.dtype)
    a, b, c, w = CONNECTION_MODES[path.mode]
    w_sub = f"...{w}," if path.has_weight else ""
    operands = [weight] if path.has_weight else []
    if path.mode in ("uvu<v", "u<vw"):
        pairs = _pairs_below_diagonal(x1, x2)
        out = jnp.einsum(f"{w_sub}...qij,ijk->...{c}k", *operands, pairs, cg)
    elif path.mode == "uuw" and not path.has_weight:
        # Without weights "w" is not bound: the channels are summed into the single output channel.
        out = jnp.einsum("...ui,...uj,ijk->...k", x1, x2, cg)[..., None, :]
    else:
        out = jnp.einsum(f"{w_sub}...{a}i,...{b}j,ijk->...{c}k", *operands, x1, x2, cg)
    return out.reshape(out.shape[:-len(c) - 1] + (path.mul_out, path.ir_out.dim))


def tensor_product(
    description: TensorProductDescription,
    weights: Sequence[Chunk],
    chunks1: Sequence[Chunk],
    chunks2: Sequence[Chunk],
) -> list[Chunk]:
    """Evaluate every path and sum them per output segment.

    Args:
        description: the paths.
        weights: one entry per path of ``description.paths``: an array of shape ``(..., *path.weight_shape)`` for a
            weighted path, ``None`` otherwise.
        chunks1, chunks2: the inputs' chunks, one per segment of ``irreps_in1`` / ``irreps_in2``.

    Returns:
        One chunk per output segment; ``None`` where no path with non-zero inputs writes.
    """
    outputs: list[Chunk] = [None] * len(description.irreps_out)
    for path, weight in zip(description.paths, weights):
        x1, x2 = chunks1[path.in1], chunks2[path.in2]
        if x1 is None or x2 is None or path.mul1 * path.mul2 * path.mul_out == 0:
            continue
        contribution = path_output(path, weight, x1, x2)
        previous = outputs[path.out]
        outputs[path.out] = contribution if previous is None else previous + contribution
    return outputs
