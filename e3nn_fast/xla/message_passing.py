"""Edge-chunked jnp executor of message passing: bounded memory on CPU, forward and backward.

Same contract as :func:`e3nn_fast.reference.message_passing.message_passing` (the ``jnp`` executor of op
``"message_passing"``, the default on CPU).  The edges are cut into fixed-size chunks (the last one padded with
dropped edges) and a ``lax.scan`` adds each chunk's messages into a ``(num_nodes, irreps_out.dim)`` carry:

1. gather the chunk's sender rows, ``(chunk, irreps_in.dim)``;
2. run the optimised tensor-product executor (:mod:`e3nn_fast.xla.tensor_product`) on the chunk, one path at a time,
   and scale each output segment by its irrep copies' weights;
3. scatter-add the ``(chunk, irreps_out.dim)`` messages into the carry (``mode="drop"``: receivers equal to
   ``num_nodes`` are padding).

Steps 1-2 are wrapped in ``jax.checkpoint``: reverse mode then saves only the chunk's *inputs* as scan residuals
(slices of arrays the caller already holds) and recomputes the messages chunk by chunk in the backward scan, so no
``(num_edges, irreps_out.dim)`` array exists forward or backward.  The cotangent of the output is gathered per chunk,
the node-feature cotangent is a ``(num_inputs, irreps_in.dim)`` scan carry.  Everything is plain differentiable JAX:
higher derivatives (forces in the loss), ``jax.jvp`` and ``vmap`` work, each derivative itself a chunked scan.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reference.message_passing import MessagePassingSpec
from e3nn_fast.xla.tensor_product import tensor_product as xla_tensor_product

# Elements of one chunk's message array ``(chunk, irreps_out.dim)``: ~1 MiB in float32, which keeps the per-chunk
# temporaries cache-sized on CPU while amortising the loop's per-iteration cost.
TARGET_CHUNK_ELEMENTS = 1 << 18
MIN_CHUNK = 8


def default_chunk_size(num_edges: int, out_dim: int) -> int:
    """Edges per chunk: ``TARGET_CHUNK_ELEMENTS // out_dim``, at least ``MIN_CHUNK``, at most ``num_edges``."""
    chunk = max(MIN_CHUNK, TARGET_CHUNK_ELEMENTS // max(1, out_dim))
    return max(1, min(chunk, num_edges))


def chunk_messages(spec: MessagePassingSpec, x, sh, w, senders) -> jnp.ndarray:
    """The messages ``tensor_product(x[senders], sh) * w`` of a few edges, ``(edges, irreps_out.dim)``."""
    description = spec.description
    gathered = IrrepsArray(spec.irreps_in, x[senders])
    edges = IrrepsArray(spec.irreps_sh, sh)
    outputs = xla_tensor_product(description, [None] * len(description.paths), gathered.chunks, edges.chunks)
    pieces = {}  # first output column -> (edges, mul * (2l+1)) block
    for placement, chunk, (mul, ir) in zip(spec.placements, outputs, description.irreps_out):
        if chunk is None:  # no path writes here (cannot happen with non-zero inputs, kept for safety)
            chunk = jnp.zeros((sh.shape[0], mul, ir.dim), x.dtype)
        if w is not None:
            chunk = chunk * w[:, placement.copy : placement.copy + mul, None]
        pieces[placement.column] = chunk.reshape(chunk.shape[0], mul * ir.dim)
    if not pieces:
        return jnp.zeros((sh.shape[0], 0), x.dtype)
    return jnp.concatenate([pieces[column] for column in sorted(pieces)], axis=-1)


def _pad_edges(array: jnp.ndarray, total: int, value) -> jnp.ndarray:
    pad = total - array.shape[0]
    if pad == 0:
        return array
    return jnp.pad(array, [(0, pad)] + [(0, 0)] * (array.ndim - 1), constant_values=value)


def message_passing(
    spec: MessagePassingSpec,
    x: jnp.ndarray,
    sh: jnp.ndarray,
    w: Optional[jnp.ndarray],
    senders: jnp.ndarray,
    receivers: jnp.ndarray,
    num_nodes: int,
    *,
    chunk_size: Optional[int] = None,
) -> jnp.ndarray:
    """Sum of the messages into their receivers, ``(num_nodes, irreps_out.dim)``, one edge chunk at a time.

    Args:
        spec: the static configuration (irreps, filter, normalisation).
        x, sh, w, senders, receivers, num_nodes: see the executor contract in
            :mod:`e3nn_fast.reference.message_passing`.
        chunk_size: edges per scan step (default :func:`default_chunk_size`); the results do not depend on it
            beyond floating-point summation order.
    """
    out_dim = spec.irreps_out.dim
    num_edges = sh.shape[0]
    if num_edges == 0 or out_dim == 0 or num_nodes == 0:
        return jnp.zeros((num_nodes, out_dim), x.dtype)
    # The scan's initial carry must have the type of the carry each step returns.  Inside `shard_map` that type
    # includes the mesh axes a value varies over (its "vma"), and the step's result varies wherever any input does,
    # while plain zeros vary nowhere.  An empty sum of every input is an exact zero that varies where they do (on
    # every JAX version, with or without `check_vma`; outside `shard_map` it is just a zero).
    inputs = [a for a in (x, sh, w, senders, receivers) if a is not None]
    out = jnp.zeros((num_nodes, out_dim), x.dtype) + sum(a[:0].sum().astype(x.dtype) for a in inputs)
    chunk = default_chunk_size(num_edges, out_dim) if chunk_size is None else max(1, min(int(chunk_size), num_edges))
    steps = -(-num_edges // chunk)
    total = steps * chunk
    # Padding edges: zero harmonics and weights, sender 0, receiver num_nodes (dropped by the scatter).
    xs = {
        "sh": _pad_edges(sh, total, 0).reshape(steps, chunk, -1),
        "senders": _pad_edges(senders, total, 0).reshape(steps, chunk),
        "receivers": _pad_edges(receivers, total, num_nodes).reshape(steps, chunk),
    }
    if w is not None:
        xs["w"] = _pad_edges(w, total, 0).reshape(steps, chunk, -1)

    # Recomputed in the backward pass instead of saving (chunk, out_dim) messages per step.
    messages = jax.checkpoint(lambda x, sh, w, senders: chunk_messages(spec, x, sh, w, senders))

    def step(carry, inputs):
        m = messages(x, inputs["sh"], inputs.get("w"), inputs["senders"])
        return carry.at[inputs["receivers"]].add(m, mode="drop"), None

    out, _ = jax.lax.scan(step, out, xs)
    return out
