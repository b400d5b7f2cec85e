"""Fused message-passing Pallas kernel: gather, channelwise tensor product, edge weights and a deterministic
segment reduction in one ``pallas_call``, and its gradient kernels (the same kernel, other slot as output).

The form
--------
With harmonics of multiplicity one (``irreps_sh`` all ``1x``), every path of the full tensor product pairs channel
``u`` of the node features with the single channel of the edge attribute into channel ``u`` of the output, so with
the per-copy edge weights it is a weighted ``uvu`` path, and the whole op is the derivative ``dF/dg`` of the
multilinear form::

    F(x, sh, w, g) = sum_e sum_terms  c * x[senders[e], .] * sh[e, .] * w[e, .] * g[receivers[e], .]

whose terms (one per path and non-zero Clebsch-Gordan entry, unrolled at trace time from ``Path.sparse_cg``) are
those of the channel-aligned engine (:func:`e3nn_fast.kernels._aligned.aligned_plan`, packed layout of
:mod:`e3nn_fast.kernels.layout`).  Every derivative is ``dF/d(slot)`` for another slot, so one kernel builder
(:func:`_contract_kernel`) evaluates them all; only the way edges meet output rows differs:

=============== ================= ===========================================================================
output slot     rows              edges of a row
=============== ================= ===========================================================================
``out``         nodes (forward)   the edges with that receiver (edges sorted by receiver, segment offsets)
``x1``          input nodes       the edges with that sender (the reversed graph: sorted by sender), i.e. the
                                  gradient w.r.t. node features is a message pass with the transposed CG
``x2``, ``w``   edges             the edge itself: a per-edge product, no node-sized scatter
=============== ================= ===========================================================================

Each program owns a block of output rows and a block of channels, on a grid of (row blocks x channel blocks) sized
per launch (:func:`launch_shape`: rows halved from ``BLOCK_ROWS``, then channels split when every plane has the same
width, until the launch has about 4 programs per SM of an H100; the ``message_passing.*`` knobs fix either part);
for each row it loops over the row's edge range, gathers the node rows of the edge (sender
row of ``x``, receiver row of the cotangent ``g``) and its edge rows, accumulates every output plane in registers
(float32 for 16-bit inputs) and writes the row once.  With the ``message_passing.edge_tile`` knob T > 1 the node
kernels take a row's edges T at a time instead (one vector load of T edge ids, then ``(T, width)`` gathered blocks;
lanes past the row are masked out), which puts T independent loads in flight where one edge has a chain of three.
No atomics: the sums are in a fixed order for a given T, hence bitwise reproducible for a fixed knob value (the
order, so the rounding, differs between values of T; every T equals the reference within float tolerance), and
interpret mode is exact (its ``atomic_add`` is wrong for repeated indices, jax#24117).
No ``(num_edges, irreps_out.dim)`` array exists: the forward reads edges and writes nodes, the ``x``-gradient reads
the node-sized cotangent through the receiver index, the edge gradients write ``(num_edges, sh/w columns)``.

Differentiability: the kernels evaluate a :class:`~e3nn_fast.kernels.graph_form.GraphForm` (:class:`KernelForm`), so
the graph-form primitive's rules make every derivative this kernel again (the transpose w.r.t. ``x`` a message pass
over the reversed graph, w.r.t. an edge slot a per-edge product): reverse over reverse (forces in the loss),
``jax.jvp``, ``jax.hessian`` and ``vmap`` (one kernel call per mapped element) all work to any order, and
``mlir.lower_fun`` of the Pallas implementation keeps them inside kernels when lowered for the GPU.  (A recursive
``jax.custom_vjp`` would give reverse mode only.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from e3nn_fast.kernels import _pallas_compat as compat
from e3nn_fast.kernels import graph_form, tuning
from e3nn_fast.kernels.graph_form import GraphForm
from e3nn_fast.kernels._aligned import AlignedPlan, _product_groups, _zero_runs, aligned_plan, compute_dtype
from e3nn_fast.kernels.layout import pack, unpack
from e3nn_fast.path_description import TensorProductDescription, make_path
from e3nn_fast.reference.message_passing import MessagePassingSpec

# Launch shape (see :func:`launch_shape`; knobs ``message_passing.*`` of :mod:`e3nn_fast.kernels.tuning`).  The rows of
# a block are walked one after another by its program, so fewer rows per block cost little (the program's prologue and
# the zero columns, once per block) and give more programs: a GPU hides the latency of each program's chain of
# dependent index loads (edge id, then sender, then the gathered row) only with many programs per SM.  At MACE-large
# size (3,000 nodes) 16-row blocks gave 188 programs, 1.4 per SM of a 132-SM H100 (issue 14).
BLOCK_ROWS = 16  # rows of a block at most (a power of two).  Tests shrink it to get several programs.
MIN_BLOCK_ROWS = 4  # rows are halved down to this; below it a launch splits channels instead (keeps a padded tail)
TARGET_PROGRAMS = tuning.TARGET_PROGRAMS  # programs a node launch aims at: 4 per SM of a 132-SM H100 / H200
# Channels per program: None chooses them per launch (every channel unless the rows alone cannot reach
# TARGET_PROGRAMS); the ``message_passing.channel_block`` knob fixes them.  Split channel blocks run on a second grid
# axis (see :func:`channel_block`).
CHANNEL_BLOCK = None
MIN_CHANNELS = 32  # channel blocks at least a warp wide (128-byte rows of float32): narrower ones idle threads
# Edges a node launch (out, x1) gathers at once (a power of two; knob ``message_passing.edge_tile``).  1 walks a row's
# edges one by one: per edge a scalar edge id, then a scalar sender/receiver, then one (1, width) row per factor, a
# chain of dependent loads with few bytes in flight.  T > 1 loads T edge ids as one vector, gathers T senders /
# receivers and (T, width) blocks per factor, and sums the products over the tile (see :func:`_make_kernel`).  Edge
# launches (x2, weights) always use 1: each of their rows has exactly one edge, so T - 1 lanes would be masked.
EDGE_TILE = 1
# Edges x channels of one tile at most, where the channels are not fixed by a knob: a node kernel keeps (T, channels)
# blocks of every factor live, and at MACE-large size T = 4 over all 128 channels spilled 6.5 KB in the forward and
# 416 B in the x-gradient, while T = 2 x 128 and T = 4 x 64 did not (bench/results/sm90/
# 2026-12-05-message-passing-edge-tiles.txt).  So a tile of T edges gets at most this / T channels (not below
# MIN_CHANNELS): T = 2, 4 and 8 then compile without spills, the forward kernel at the 255-register cap in each
# (2026-12-06-message-passing-edge-tiles.txt; Triton gives every thread at least one register per live block, so
# narrower blocks stop saving registers).
EDGE_TILE_LANES = 256
# Kernel family whose GPU lowering is used (see _pallas_compat.LOWERING; "message_passing" once it is listed).
FAMILY = "message_passing" if "message_passing" in compat.LOWERING else "aligned"

# How each slot's row is found from an edge.
BY_SENDER, BY_EDGE, BY_RECEIVER = "sender", "edge", "receiver"
_ROW_OF = {"x1": BY_SENDER, "x2": BY_EDGE, "weights_batched": BY_EDGE, "out": BY_RECEIVER}


def qualifies(spec: MessagePassingSpec, dtype) -> bool:
    """Whether the kernel implements ``spec``: every edge-attribute irrep of multiplicity one (so every path is
    channelwise), at least one path, and a floating dtype."""
    return (
        len(spec.irreps_sh) > 0
        and all(mul == 1 for mul, _ in spec.irreps_sh)
        and len(spec.description.paths) > 0
        and jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    )


@functools.lru_cache(maxsize=256)
def _channelwise_description(description: TensorProductDescription, weighted: bool) -> TensorProductDescription:
    """The full tensor product's ``uvuv`` paths (``mul2 = 1``) as ``uvu`` paths, weighted per edge when asked: the
    same numbers, in the form the channel-aligned plan builder reads."""
    paths = tuple(
        make_path(description.irreps_in1, description.irreps_in2, description.irreps_out, p.in1, p.in2, p.out, "uvu",
                  p.coefficient, weighted)
        for p in description.paths
    )
    return TensorProductDescription(description.irreps_in1, description.irreps_in2, description.irreps_out, paths)


def _plan(spec: MessagePassingSpec, weighted: bool) -> tuple[TensorProductDescription, AlignedPlan]:
    description = _channelwise_description(spec.description, weighted)
    indices = tuple(range(len(description.paths)))
    kinds = tuple("batched" if weighted else None for _ in indices)
    return description, aligned_plan(description, indices, kinds)


# --- graph -------------------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Graph:
    """Index arrays of one call: the edges, and the two edge orders with segment offsets (computed once)."""

    senders: jnp.ndarray  # (E,) in [0, num_inputs)
    receivers: jnp.ndarray  # (E,) in [0, num_nodes]; num_nodes = dropped
    by_receiver: jnp.ndarray  # (E,) edge ids sorted by receiver
    receiver_offsets: jnp.ndarray  # (num_nodes + 1,)
    by_sender: jnp.ndarray  # (E,) edge ids sorted by sender
    sender_offsets: jnp.ndarray  # (num_inputs + 1,)

    def tree_flatten(self):
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self)), None  # no deep copy

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def build_graph(senders, receivers, num_inputs: int, num_nodes: int) -> Graph:
    """Sort the edges by receiver and by sender (stable: ties keep edge order, so sums are reproducible)."""
    senders, receivers = senders.astype(jnp.int32), receivers.astype(jnp.int32)

    def order(index, size):
        perm = jnp.argsort(index, stable=True).astype(jnp.int32)
        # method="sort": one sort instead of a loop of binary-search steps (cheap on GPU, no scan in the graph).
        offsets = jnp.searchsorted(index[perm], jnp.arange(size + 1, dtype=jnp.int32), side="left", method="sort")
        return perm, offsets.astype(jnp.int32)

    by_receiver, receiver_offsets = order(receivers, num_nodes)
    by_sender, sender_offsets = order(senders, num_inputs)
    return Graph(senders, receivers, by_receiver, receiver_offsets, by_sender, sender_offsets)


# --- the kernel --------------------------------------------------------------------------------------------------


def _plane_widths(groups) -> set[int]:
    """Widths of every plane ``groups`` read or write."""
    widths = {width for _, width, _, _ in groups}
    for _, _, common, products in groups:
        factors = list(common) + [f for _, fs in products for f in fs]
        widths |= {width for _, _, width in factors}
    return widths


def splittable_width(groups) -> Optional[int]:
    """The common width of the planes when ``groups``' channels can be split over programs, else ``None``.

    A split needs every output plane to be channel-aligned (a plane of width 1 sums over the channels: the gradient
    w.r.t. the edge attributes) and every multi-channel plane, read or written, to have one common width (the padded
    multiplicity), so that program ``j`` of the channel axis owns columns ``[j c, (j + 1) c)`` of every such plane."""
    multi = _plane_widths(groups) - {1}
    if 1 in {width for _, width, _, _ in groups} or len(multi) != 1:
        return None
    (width,) = multi
    return width


def channel_block(groups, channels: Optional[int] = None) -> int:
    """Channels per program for ``groups``: ``channels`` (default: the ``message_passing.channel_block`` knob, else
    every channel) where the channels can be split at all (:func:`splittable_width`), else the widest plane, read or
    written (so that the kernel loads every plane whole: an output of width 1 sums over its factors' channels)."""
    width = splittable_width(groups)
    if width is None:
        return max(_plane_widths(groups))
    if channels is None:
        channels = tuning.value("message_passing.channel_block", CHANNEL_BLOCK)
    return width if channels is None else min(width, channels)


def launch_shape(groups, rows: int, tile: int = 1) -> tuple[int, int]:
    """``(rows per block, channels per program)`` of a launch over ``rows`` output rows (powers of two), whose
    program gathers ``tile`` edges at once.

    Channels start at every channel, or ``EDGE_TILE_LANES / tile`` for a tile of several edges (registers).
    Rows start at ``BLOCK_ROWS`` (no more than ``rows`` needs) and are halved down to ``MIN_BLOCK_ROWS`` while the
    launch has fewer than ``target_programs`` programs; then, where the channels can be split, channel blocks are
    halved down to ``MIN_CHANNELS``.  Rows first: a program with every channel uses all its threads on each gathered
    row, a narrower block leaves some idle (or repeats the load on them) and reads the edge's indices once more.  The
    ``block_rows`` and ``channel_block`` knobs, when set, fix their part; ``target_programs=1`` gives the shape before
    issue 14 (``BLOCK_ROWS`` rows, every channel, one program per row block).  Only node launches (out, x1) ever
    need the halving: an edge launch has a row per edge, ~10,000 blocks at MACE-large size."""
    target = tuning.value("message_passing.target_programs", TARGET_PROGRAMS)
    fixed_rows = tuning.value("message_passing.block_rows", None)
    fixed_channels = tuning.value("message_passing.channel_block", CHANNEL_BLOCK)
    block = min(BLOCK_ROWS if fixed_rows is None else fixed_rows, compat.next_power_of_2(rows))
    width = splittable_width(groups)
    channels = channel_block(groups, fixed_channels)
    if fixed_channels is None and width is not None and tile > 1:
        channels = min(channels, max(MIN_CHANNELS, EDGE_TILE_LANES // tile))

    def programs(block: int, channels: int) -> int:
        return -(-rows // block) * (1 if width is None else max(1, width // channels))

    while programs(block, channels) < target:
        if fixed_rows is None and block > MIN_BLOCK_ROWS:
            block //= 2
        elif fixed_channels is None and width is not None and channels > MIN_CHANNELS:
            channels //= 2
        else:
            break
    return block, channels


def edge_tile(name: str) -> int:
    """Edges gathered at once by the launch whose output slot is ``name``: the ``message_passing.edge_tile`` knob
    (default ``EDGE_TILE``) for the node slots, 1 for the edge slots (a row there is one edge)."""
    if _ROW_OF.get(name) == BY_EDGE:
        return 1
    return tuning.value("message_passing.edge_tile", EDGE_TILE)


def _sum_products(groups, accs, load, mask=None):
    """``accs`` plus every group's products of one edge (``(1, width)`` factors, ``mask`` None) or of a tile of
    edges (``(T, width)`` factors; ``mask`` ``(T, 1)`` marks the edges of the row, the others add exactly zero).

    Within a tile the products of each shape are summed over the tile axis first and then added to the accumulator,
    so the order of the additions depends on T: fixed for a given T (bitwise reproducible), equal to the T = 1 sums
    within float rounding."""
    new = []
    for (column, width, common, products), acc in zip(groups, accs):
        partial: dict = {}
        for coefficient, factors in products:
            value = None
            for factor in factors:
                plane = load(factor)
                value = plane if value is None else value * plane
            value = jnp.full((1, 1), coefficient, acc.dtype) if value is None else value * coefficient
            partial[value.shape] = value if value.shape not in partial else partial[value.shape] + value
        for value in partial.values():
            for factor in common:
                value = value * load(factor)
            if mask is not None:
                # A select, not a product with 0/1: the lanes past the row read real edges (finite or not), and a
                # constant-only product counts once per edge of the row.
                value = jnp.where(mask, jnp.broadcast_to(value, (mask.shape[0], value.shape[1])), 0)
            if width == 1 and value.shape[1] != 1:
                value = jnp.sum(value, axis=1, keepdims=True)  # single output lane: sum over channels
            if mask is not None:
                value = jnp.sum(value, axis=0, keepdims=True)  # the tile's edges, in lane order
            acc = acc + jnp.broadcast_to(value, acc.shape)
        new.append(acc)
    return tuple(new)


def _make_kernel(groups, kinds: tuple[str, ...], out_columns: int, block: int, channels: int, dtype, tile: int = 1):
    """Kernel body: for each of ``block`` output rows, sum every group's products over the row's edges, for the
    ``channels`` channels of channel block ``program_id(1)`` (all of them when ``channels`` is a plane's width).

    ``tile`` = 1 visits the edges one by one; ``tile`` = T > 1 visits them in ``ceil(edges / T)`` tiles of T
    consecutive entries of the edge order (``perm_ref``, padded by T - 1 entries so that the last tile's vector load
    stays in bounds).  Lanes past the row's range load real edges (any valid id) and are masked out of the sums."""
    runs = _zero_runs(out_columns, [(column, width) for column, width, _, _ in groups])

    def kernel(offsets_ref, perm_ref, senders_ref, receivers_ref, *refs):
        *inputs, out_ref = refs
        first = compat.program_id(0) * block
        # read here, outside the loops: interpret mode resolves program ids only at the kernel's top level
        channel_offset = compat.program_id(1) * channels

        def columns(column, width):
            """This program's part of a plane: its channel block, or the single lane of a width-1 plane."""
            if width == 1 or channels >= width:
                return compat.ds(column, width)
            return compat.ds(column + channel_offset, channels)

        def loader(rows):
            """Loads each factor once per edge (or tile): ``rows`` maps a row kind to a scalar row (one edge) or a
            ``(T,)`` vector of rows (a tile, gathered as a ``(T, width)`` block)."""
            cache: dict = {}

            def load(factor):
                if factor not in cache:
                    position, column, width = factor
                    row = rows[kinds[position]]
                    index = compat.ds(row, 1) if tile == 1 else row
                    cache[factor] = inputs[position][index, columns(column, width)].astype(dtype)
                return cache[factor]

            return load

        def edge_step(k, accs):
            edge = perm_ref[k]
            rows = {BY_EDGE: edge, BY_SENDER: senders_ref[edge], BY_RECEIVER: receivers_ref[edge]}
            return _sum_products(groups, accs, loader(rows))

        def tile_steps(start, stop, accs):
            """The row's edges ``perm[start:stop]`` in tiles of ``tile``: one vector load of edge ids, one gather
            of their senders / receivers, then (T, width) blocks per factor."""
            lanes = jax.lax.broadcasted_iota(jnp.int32, (tile, 1), 0)

            def tile_step(t, accs):
                first_k = start + t * tile
                edges = perm_ref[compat.ds(first_k, tile)]  # in bounds: perm is padded by tile - 1 entries
                rows = {BY_EDGE: edges, BY_SENDER: senders_ref[edges], BY_RECEIVER: receivers_ref[edges]}
                return _sum_products(groups, accs, loader(rows), mask=first_k + lanes < stop)

            # ceil((stop - start) / tile) with a truncating division (the count is never negative)
            count = jax.lax.div(stop - start + (tile - 1), jnp.int32(tile))
            return jax.lax.fori_loop(0, count, tile_step, accs)

        def row_step(r, carry):
            row = first + r
            start, stop = offsets_ref[row], offsets_ref[row + 1]
            zeros = tuple(jnp.zeros((1, min(width, channels)), dtype) for _, width, _, _ in groups)
            if tile == 1:
                accs = jax.lax.fori_loop(start, stop, edge_step, zeros)
            else:
                accs = tile_steps(start, stop, zeros)
            for (column, width, _, _), acc in zip(groups, accs):
                out_ref[compat.ds(r, 1), columns(column, width)] = acc.astype(out_ref.dtype)
            # padding columns: every channel block writes the same zeros there (identical stores, no order needed)
            for start_column, size in runs:
                out_ref[compat.ds(r, 1), compat.ds(start_column, size)] = jnp.zeros((1, size), out_ref.dtype)
            return carry

        jax.lax.fori_loop(0, block, row_step, 0)

    return kernel


def _contract_kernel(plan: AlignedPlan, out_slot: int, operands, graph: Graph, rows: int, interpret: bool):
    """One ``pallas_call``: ``dF/d(slot out_slot)``, ``(rows, columns)``, from the other slots' operands."""
    name = plan.slots[out_slot].name
    out_columns = plan.slots[out_slot].columns
    inputs = [op for i, op in enumerate(operands) if i != out_slot]
    kinds = tuple(_ROW_OF[s.name] for i, s in enumerate(plan.slots) if i != out_slot)
    dtype = jnp.result_type(*inputs)
    num_edges = graph.senders.shape[0]
    if rows == 0:
        return jnp.zeros((0, out_columns), dtype)
    if name == "out":
        perm, offsets = graph.by_receiver, graph.receiver_offsets
    elif name == "x1":
        perm, offsets = graph.by_sender, graph.sender_offsets
    else:  # an edge slot: row e is edge e alone
        perm, offsets = jnp.arange(num_edges, dtype=jnp.int32), jnp.arange(num_edges + 1, dtype=jnp.int32)
    groups = _product_groups(plan, out_slot, frozenset())
    tile = edge_tile(name)
    block, channels = launch_shape(groups, rows, tile)
    blocks = -(-rows // block)
    # Rows of the padded tail have empty edge ranges (their offsets repeat the last one): they are written as zeros.
    offsets = jnp.concatenate([offsets, jnp.full((blocks * block - rows,), offsets[-1], jnp.int32)])
    if num_edges == 0:
        perm = senders = receivers = jnp.zeros((1,), jnp.int32)
    else:
        senders, receivers = graph.senders, graph.receivers
    if tile > 1:  # the last tile's vector load reads up to tile - 1 entries past the end: any valid edge id
        perm = jnp.concatenate([perm, jnp.zeros((tile - 1,), jnp.int32)])
    widest = max(width for _, width, _, _ in groups)
    kernel = _make_kernel(groups, kinds, out_columns, block, channels, compute_dtype(dtype), tile)

    # Grid: row blocks x channel blocks.  Every program of row block i writes its own columns of the same output block
    # (the output block spans the whole row): disjoint stores, so no order between them is needed.
    whole = lambda x: compat.BlockSpec(x.shape, lambda i, j, n=x.ndim: (0,) * n)
    indices = [offsets, perm, senders, receivers]
    result = compat.pallas_call(
        kernel,
        family=FAMILY,
        interpret=interpret,
        grid=(blocks, max(1, widest // channels)),
        in_specs=[whole(x) for x in indices + inputs],
        out_specs=compat.BlockSpec((block, out_columns), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((blocks * block, out_columns), dtype),
        name=f"e3nn_message_passing_{name}",
    )(*indices, *inputs)
    return result[:rows]


@dataclasses.dataclass(frozen=True)
class KernelForm(GraphForm):  # a primitive parameter: hashable (the plan hashes by identity)
    """The message-passing form evaluated by the Pallas kernels: the plan, the node slots' row counts, interpret
    mode.  Its index arrays are the leaves of a :class:`Graph` (both edge orders, computed once per call)."""

    plan: AlignedPlan
    num_inputs: int
    num_nodes: int
    interpret: bool

    index_count = len(dataclasses.fields(Graph))

    @property
    def slot_names(self) -> tuple[str, ...]:
        return tuple(slot.name for slot in self.plan.slots)

    def rows(self, out_slot: int, num_edges: int) -> int:
        return {"x1": self.num_inputs, "out": self.num_nodes}.get(self.plan.slots[out_slot].name, num_edges)

    def columns(self, out_slot: int) -> int:
        return self.plan.slots[out_slot].columns

    def evaluate(self, out_slot, operands, indices):
        graph = Graph(*indices)
        operands = list(operands)
        slot_out = self.plan.slot_index("out")
        if out_slot != slot_out:
            # The cotangent g is read through receivers, and dropped edges point at row num_nodes: a zero row.
            operands[slot_out] = jnp.pad(operands[slot_out], ((0, 1), (0, 0)))
        rows = self.rows(out_slot, graph.senders.shape[0])
        return _contract_kernel(self.plan, out_slot, operands, graph, rows, self.interpret)


# --- the executor ------------------------------------------------------------------------------------------------


def message_passing(
    spec: MessagePassingSpec, x, sh, w, senders, receivers, num_nodes: int, *, interpret: bool = False
) -> jnp.ndarray:
    """The Pallas executor (same contract as :func:`e3nn_fast.reference.message_passing.message_passing`)."""
    if not qualifies(spec, x.dtype):
        raise ValueError(f"The message-passing kernel needs edge irreps of multiplicity 1, got {spec.irreps_sh}")
    dtype = x.dtype
    if sh.shape[0] == 0 or num_nodes == 0:  # nothing to sum (a kernel cannot read rows of an empty array)
        return jnp.zeros((num_nodes, spec.irreps_out.dim), dtype)
    description, plan = _plan(spec, w is not None)
    x1 = pack(plan.layouts["x1"], _segments(spec.irreps_in, x), dtype)
    x2 = pack(plan.layouts["x2"], _segments(spec.irreps_sh, sh), dtype)
    operands: list[Optional[jnp.ndarray]] = []
    for slot in plan.slots:
        if slot.name == "x1":
            operands.append(x1)
        elif slot.name == "x2":
            operands.append(x2)
        elif slot.name == "weights_batched":  # path p's weights are the copies of its output segment
            chunks = {
                s.index: w[:, spec.placements[description.paths[s.index].out].copy :][:, : s.mul, None]
                for s in plan.layouts["weights_batched"].segments
            }
            operands.append(pack(plan.layouts["weights_batched"], chunks, dtype))
        else:
            operands.append(None)
    graph = build_graph(senders, receivers, x.shape[0], num_nodes)
    form = KernelForm(plan, x.shape[0], num_nodes, bool(interpret))
    packed = graph_form.contract(form, plan.slot_index("out"), operands, jax.tree.leaves(graph))
    pieces = {}
    for segment, chunk in unpack(plan.layouts["out"], packed).items():
        mul, ir = description.irreps_out[segment]
        pieces[spec.placements[segment].column] = chunk.reshape(num_nodes, mul * ir.dim)
    return jnp.concatenate([pieces[c] for c in sorted(pieces)], axis=-1).astype(dtype)


def _segments(irreps, array) -> dict[int, jnp.ndarray]:
    """Chunks ``(rows, mul, 2l+1)`` of a flat array, keyed by segment index."""
    out, start = {}, 0
    for index, (mul, ir) in enumerate(irreps):
        out[index] = array[:, start : start + mul * ir.dim].reshape(array.shape[0], mul, ir.dim)
        start += mul * ir.dim
    return out


def message_passing_interpret(spec, x, sh, w, senders, receivers, num_nodes: int) -> jnp.ndarray:
    """:func:`message_passing` in Pallas interpret mode (CPU testing only; slow)."""
    return message_passing(spec, x, sh, w, senders, receivers, num_nodes, interpret=True)
