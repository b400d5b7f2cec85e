"""Edge-chunked jnp executor of message passing, and of every derivative of it: bounded memory on CPU, no residuals.

Same contract as :func:`e3nn_fast.reference.message_passing.message_passing` (the ``jnp`` executor of op
``"message_passing"``, the default on CPU).  The op is a multilinear form over the graph (see
:mod:`e3nn_fast.kernels.graph_form`)::

    F(x, sh, w, g) = sum_e  g[receivers[e]] . (tensor_product(x[senders[e]], sh[e]) * w[e])

and this module evaluates ``dF/d(slot)`` for each of its slots with one ``lax.scan`` over fixed-size edge chunks
(:class:`ChunkedForm`).  Bound to the graph-form primitive, the JVP and transpose of each contraction are
contractions of the same form, so the backward pass is three chunked scans (``x``, ``sh``, ``w``), the forces of a
training loss (gradient of a gradient) one or two more, and none of them saves a residual or re-runs the forward:

=============== ===================================================================================================
slot            one chunk of edges, in order
=============== ===================================================================================================
``out``         gather the senders' rows of ``x``; the tensor product (:mod:`e3nn_fast.xla.tensor_product`, one
                path at a time) times the per-copy weights; scatter-add the ``(chunk, irreps_out.dim)`` messages
                into the receivers (a ``(num_nodes, irreps_out.dim)`` carry)
``x``           gather the receivers' rows of ``g``; the chunk's messages transposed w.r.t. the gathered features
                (stage B's hand-written ``dF/dkey``); scatter-add into the senders (a ``(num_inputs, ...)`` carry)
``sh``, ``w``   gather ``g`` as above; the messages transposed w.r.t. ``sh``, or for ``w`` the unweighted
                messages' dot products with ``g``'s rows per irrep copy; the chunk's rows are the result's
                rows (no scatter)
=============== ===================================================================================================

Each transpose is the pullback (``jax.vjp`` at zero) of the chunk's message function, a linear map of the operand concerned
whose pieces (stage A's matmul with the Clebsch-Gordan block, stage B's primitive, the weights' scaling) transpose
into the hand-written forms.  Padding edges (the last chunk is padded) have zero harmonics and weights and the
receiver ``num_nodes``, which reads a zero row of ``g`` and is dropped by the forward scatter.

Before this form the executor was a ``jax.checkpoint``-ed scan differentiated by JAX: its backward re-ran every
chunk's forward, and force training differentiated that recomputation again (``mp-mace-medium`` forces 29 ms; see
the README's table for the numbers since).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from e3nn_fast import _shard_compat as shard_compat
from e3nn_fast.irreps_array import IrrepsArray, times_scalar_block
from e3nn_fast.reference.message_passing import MessagePassingSpec
from e3nn_fast.xla.tensor_product import tensor_product as xla_tensor_product

# Elements of one chunk's message array ``(chunk, irreps_out.dim)``: ~2 MiB in float32, which keeps the per-chunk
# temporaries cache-sized on CPU while amortising the loop's per-iteration cost.  Measured against 1 << 18 in one
# process per workload (2 cores, 2026-12-06, fwd / fwd+bwd / forces, two runs): mp-nequip-benzene (13 edges per
# chunk before) 16.6 / 51 / 37 -> 14.4 / 45 / 32 ms and 18.3 / 59 / 42 -> 16.7 / 51 / 35 ms, mp-mace-large 41 -> 34
# and 34 -> 30 ms fwd+bwd (forces 21 -> 24, then 22 -> 21 ms), mp-mace-medium 23.5 -> 22.1 ms fwd+bwd; 1 << 20 was
# no better.
TARGET_CHUNK_ELEMENTS = 1 << 19
MIN_CHUNK = 8


def default_chunk_size(num_edges: int, out_dim: int) -> int:
    """Edges per chunk: ``TARGET_CHUNK_ELEMENTS // out_dim``, at least ``MIN_CHUNK``, at most ``num_edges``."""
    chunk = max(MIN_CHUNK, TARGET_CHUNK_ELEMENTS // max(1, out_dim))
    return max(1, min(chunk, num_edges))


def _all_paths(spec: MessagePassingSpec, gathered, sh) -> list:
    """The unweighted tensor product of a few edges, one chunk per output segment.

    Its paths are grouped per pair of input segments (one stage A and B each): every message goes into the sum, so
    nothing is lost for dead-code elimination, and the scan bodies hold fewer, larger contractions, which compile
    faster (2 cores, 2026-12-07, A/B in one process, medians of 7: ``mp-nequip-benzene`` compile 2.1 / 8.2 / 6.8 s
    -> 1.7 / 6.5 / 4.7 s fwd / fwd+bwd / forces, ``mp-mace-large`` 0.59 / 2.05 / 1.55 -> 0.53 / 1.81 / 1.67 s; run
    times within 4 %).
    """
    description = spec.description
    return xla_tensor_product(
        description,
        [None] * len(description.paths),
        IrrepsArray(spec.irreps_in, gathered).chunks,
        IrrepsArray(spec.irreps_sh, sh).chunks,
        group_input_pairs=True,
    )


def chunk_messages(spec: MessagePassingSpec, gathered, sh, w) -> jnp.ndarray:
    """The messages ``tensor_product(gathered, sh) * w`` of a few edges, ``(edges, irreps_out.dim)``.

    ``gathered``: the edges' sender rows of the node features.  Linear in each of its three arguments.
    """
    description = spec.description
    outputs = _all_paths(spec, gathered, sh)
    pieces = {}  # first output column -> (edges, mul * (2l+1)) block
    for placement, chunk, (mul, ir) in zip(spec.placements, outputs, description.irreps_out):
        if chunk is None:  # no path writes here (cannot happen with non-zero inputs, kept for safety)
            chunk = jnp.zeros((sh.shape[0], mul, ir.dim), gathered.dtype)
        if w is not None:  # its transpose (the w slot) then sums over 2l+1 components as slice additions, not a reduce
            chunk = times_scalar_block(chunk, w[:, placement.copy : placement.copy + mul, None])
        pieces[placement.column] = chunk.reshape(chunk.shape[0], mul * ir.dim)
    if not pieces:
        return jnp.zeros((sh.shape[0], 0), gathered.dtype)
    return jnp.concatenate([pieces[column] for column in sorted(pieces)], axis=-1)


def chunk_weight_cotangent(spec: MessagePassingSpec, gathered, sh, cotangent) -> jnp.ndarray:
    """``dF/dw`` of a few edges, ``(edges, irreps_out.num_irreps)``: per irrep copy, the unweighted message's dot
    product with the cotangent rows (``cotangent``: ``(edges, irreps_out.dim)``, the receivers' rows of ``g``).

    Written out rather than transposed: autodiff of the forward's per-segment weight slices pads every segment's
    weight cotangent back to the full width and sums them (``mp-nequip-benzene``, 112 output segments: 37 ms for a
    440-edge chunk, against 11 ms for the forward).  Here the components are summed with slice additions (XLA's CPU
    reductions over short minor axes are slow, see :func:`~e3nn_fast.irreps_array.times_scalar_block`) and the
    copies are concatenated once.
    """
    description = spec.description
    outputs = _all_paths(spec, gathered, sh)
    pieces = {}  # first irrep copy -> (edges, mul)
    for placement, chunk, (mul, ir) in zip(spec.placements, outputs, description.irreps_out):
        if chunk is None:
            pieces[placement.copy] = jnp.zeros((sh.shape[0], mul), cotangent.dtype)
            continue
        rows = cotangent[:, placement.column : placement.column + mul * ir.dim].reshape(-1, mul, ir.dim)
        total = chunk[:, :, 0] * rows[:, :, 0]
        for k in range(1, ir.dim):
            total = total + chunk[:, :, k] * rows[:, :, k]
        pieces[placement.copy] = total
    return jnp.concatenate([pieces[copy] for copy in sorted(pieces)], axis=-1)


def _pad_edges(array: jnp.ndarray, total: int, value) -> jnp.ndarray:
    pad = total - array.shape[0]
    if pad == 0:
        return array
    return jnp.pad(array, [(0, pad)] + [(0, 0)] * (array.ndim - 1), constant_values=value)


@functools.lru_cache(maxsize=None)
def _form_base() -> type:
    # the graph-form primitive's module imports Pallas (for the kernels' executor): loaded at the first call only
    from e3nn_fast.kernels.graph_form import GraphForm

    return GraphForm


@dataclasses.dataclass(frozen=True)
class ChunkedFormMaths:
    """The message-passing form evaluated by edge-chunked jnp scans (a primitive parameter: hashable).

    Combined with :class:`~e3nn_fast.kernels.graph_form.GraphForm` by :func:`chunked_form`.  Slots ``x``
    ``(num_inputs, irreps_in.dim)``, ``sh`` ``(E, irreps_sh.dim)``, ``w`` ``(E, irreps_out.num_irreps)`` (only when
    ``weighted``) and ``out`` ``(num_nodes, irreps_out.dim)``; index arrays ``senders`` and ``receivers``
    (``(E,)``, a receiver equal to ``num_nodes`` drops its edge).
    """

    spec: MessagePassingSpec
    weighted: bool
    num_inputs: int
    num_nodes: int
    chunk_size: Optional[int]  # edges per scan step; None: default_chunk_size
    batch_shape: tuple[int, ...] = ()  # leading axes of every operand and index array (vmap), see :meth:`batch`

    index_count = 2
    uses_pallas = False

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("x", "sh", "w", "out") if self.weighted else ("x", "sh", "out")

    def rows(self, out_slot: int, num_edges: int) -> int:
        return {"x": self.num_inputs, "out": self.num_nodes}.get(self.slot_names[out_slot], num_edges)

    def columns(self, out_slot: int) -> int:
        spec = self.spec
        return {"x": spec.irreps_in.dim, "sh": spec.irreps_sh.dim, "w": spec.irreps_out.num_irreps,
                "out": spec.irreps_out.dim}[self.slot_names[out_slot]]

    def shape(self, out_slot: int, indices) -> tuple[int, ...]:
        return self.batch_shape + (self.rows(out_slot, indices[0].shape[-1]), self.columns(out_slot))

    def evaluate(self, out_slot, operands, indices):
        """``dF/d(out_slot)``: one scan over the edge chunks (see the module docstring's table), vmapped over
        :attr:`batch_shape`."""
        if self.batch_shape:
            inner = dataclasses.replace(self, batch_shape=self.batch_shape[1:])
            mapped = [None if op is None else 0 for op in operands]
            return jax.vmap(lambda ops, idx: inner.evaluate(out_slot, ops, idx), in_axes=(mapped, 0))(
                list(operands), list(indices))
        name = self.slot_names[out_slot]
        given = dict(zip(self.slot_names, operands))
        senders, receivers = indices
        num_edges = senders.shape[0]
        dtype = jnp.result_type(*[op for op in operands if op is not None])
        rows, columns = self.rows(out_slot, num_edges), self.columns(out_slot)
        # every operand varies over the same mesh axes inside shard_map (the primitive matched them): so must the carry
        axes = shard_compat.varying_axes(next(op for op in operands if op is not None))
        if num_edges == 0 or rows == 0 or columns == 0:
            return shard_compat.vary(jnp.zeros((rows, columns), dtype), axes)
        chunk = default_chunk_size(num_edges, self.spec.irreps_out.dim)
        if self.chunk_size is not None:
            chunk = max(1, min(self.chunk_size, num_edges))
        steps = -(-num_edges // chunk)
        total = steps * chunk

        def chunks(array, fill):
            return _pad_edges(array, total, fill).reshape((steps, chunk) + array.shape[1:])

        # Padding edges: zero harmonics and weights, sender 0, receiver num_nodes (a zero row of g, dropped by out).
        xs = {"senders": chunks(senders, 0), "receivers": chunks(receivers, self.num_nodes)}
        for slot in ("sh", "w"):
            if given.get(slot) is not None:
                xs[slot] = chunks(given[slot], 0)
        x = given["x"]
        g = None if name == "out" else jnp.pad(given["out"], ((0, 1), (0, 0)))  # row num_nodes: dropped edges

        def messages(inputs, **replaced):
            operands = {"gathered": None if x is None else x[inputs["senders"]], "sh": inputs.get("sh"),
                        "w": inputs.get("w")}
            operands.update(replaced)
            return chunk_messages(self.spec, operands["gathered"], operands["sh"], operands["w"])

        def transposed(inputs, slot: str, like):
            """The chunk's messages transposed w.r.t. ``slot`` (``"gathered"``, ``"sh"`` or ``"w"``), applied to
            the gathered cotangent rows."""
            linear = lambda value: messages(inputs, **{slot: value})
            cotangent = g[inputs["receivers"]]
            # The pullback at zero of a linear map is its transpose (XLA drops the unused primal).  Inside shard_map
            # the zero must vary like the cotangent: an unvarying one would be broadcast implicitly, and the
            # transpose of that broadcast is a psum over the devices.
            zero = shard_compat.vary(jnp.zeros(like, dtype), shard_compat.varying_axes(cotangent))
            (value,) = jax.vjp(linear, zero)[1](cotangent)
            return value

        if name in ("out", "x"):  # node rows: a scatter-add carry
            target = "receivers" if name == "out" else "senders"

            def node_step(carry, inputs):
                if name == "out":
                    values = messages(inputs)
                else:
                    values = transposed(inputs, "gathered", (chunk, self.spec.irreps_in.dim))
                return carry.at[inputs[target]].add(values, mode="drop"), None

            out, _ = jax.lax.scan(node_step, shard_compat.vary(jnp.zeros((rows, columns), dtype), axes), xs)
            return out

        def edge_step(carry, inputs):  # edge rows: each chunk's rows are its own
            if name == "w":
                gathered = x[inputs["senders"]]
                return carry, chunk_weight_cotangent(self.spec, gathered, inputs["sh"], g[inputs["receivers"]])
            return carry, transposed(inputs, name, (chunk, columns))

        _, out = jax.lax.scan(edge_step, None, xs)
        return out.reshape(total, columns)[:num_edges]

    def batch(self, out_slot: int, args, dims):
        """``vmap``: one contraction whose form has one more leading :attr:`batch_shape` axis (unmapped operands and index
        arrays are broadcast to it), so that the derivatives of the mapped op stay contractions of this form.

        Not merged into one larger graph: XLA could then no longer tell that a batch-sharded input's gathers stay on
        their own device, and would all-gather the batch.
        """
        size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
        moved = [jnp.broadcast_to(x, (size,) + x.shape) if d is None else jnp.moveaxis(x, d, 0)
                 for x, d in zip(args, dims)]
        operands, indices = moved[: len(moved) - self.index_count], moved[len(moved) - self.index_count :]
        operands.insert(out_slot, None)
        from e3nn_fast.kernels.graph_form import contract

        return contract(dataclasses.replace(self, batch_shape=(size,) + self.batch_shape), out_slot, operands, indices)


@functools.lru_cache(maxsize=None)
def _form_class() -> type:
    return dataclasses.dataclass(frozen=True)(
        type("ChunkedForm", (ChunkedFormMaths, _form_base()), {"__doc__": ChunkedFormMaths.__doc__})
    )


def chunked_form(spec, weighted: bool, num_inputs: int, num_nodes: int, chunk_size: Optional[int]):
    """The :class:`ChunkedFormMaths` of a call, as a graph form of the primitive."""
    return _form_class()(spec, bool(weighted), int(num_inputs), int(num_nodes), chunk_size)


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
        chunk_size: edges per scan step (default :func:`default_chunk_size`), in every derivative too; the results
            do not depend on it beyond floating-point summation order.
    """
    out_dim = spec.irreps_out.dim
    if sh.shape[0] == 0 or out_dim == 0 or num_nodes == 0 or x.shape[0] == 0:
        return jnp.zeros((num_nodes, out_dim), x.dtype)
    from e3nn_fast.kernels.graph_form import contract

    form = chunked_form(spec, w is not None, x.shape[0], num_nodes, None if chunk_size is None else int(chunk_size))
    operands = [x, sh, w, None] if w is not None else [x, sh, None]
    return contract(form, len(operands) - 1, operands, [senders.astype(jnp.int32), receivers.astype(jnp.int32)])
