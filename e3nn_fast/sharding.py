"""Graph-parallel message passing: one graph split over the devices of a mesh axis, each device owning a node range.

Data parallelism (many graphs per step) needs nothing from this module: every op of e3nn_fast works on
batch-sharded inputs under ``jax.jit`` and per shard inside ``jax.shard_map`` (see the README, "Scaling out").  This
module is for one graph too large for one device (a 100k-atom crystal or protein).

The recipe
----------
1. **Partition on the host** with :func:`partition_graph` (NumPy, outside ``jit``): shard ``p`` of ``num_shards``
   owns the contiguous node range ``[p * nodes_per_shard, (p + 1) * nodes_per_shard)`` and every edge whose
   *receiver* it owns.  Each shard's edges keep their original order and are padded to one length
   (``edges_per_shard``): padding edges send from local row 0 and point at receiver row ``nodes_per_shard``, which
   ``message_passing(..., mode="drop")`` drops.  Every shape is static, so one compiled program serves every graph
   of the same sizes.  The partition also lists, for each pair of shards, which node rows one needs from the other
   (the *halo*): ``halo_offsets[i]`` is a shard distance ``d`` for which some shard ``q`` sends rows to shard
   ``(q + d) % num_shards``, ``halo_sizes[i]`` how many (the maximum over ``q``, padded rows are never read).
   For many frames of one system, give the capacities (``edges_per_shard``, ``halo_offsets``, ``halo_capacity``;
   :func:`common_capacity` computes them): every frame's partition then has the same shapes and pytree structure,
   and one compilation serves them all (the edge counts are array leaves, not static data).
2. **Lay out the arrays**: node arrays get ``partition.pad_nodes`` (zero rows appended: ``num_shards *
   nodes_per_shard`` rows, node ``i`` stays row ``i``), edge arrays ``partition.shard_edges`` (rows in the shard-major
   edge order, zeros at padding edges).  Both are differentiable, and ``partition.unpad_nodes`` undoes the first.
   Sharded over the mesh axis (``PartitionSpec(axis)``), each device holds its own node range and edges.
3. **Message passing**: :func:`graph_message_passing` (global arrays in and out; it runs ``shard_map`` itself) or,
   inside your own ``shard_map``, :func:`local_message_passing` (per-shard arrays).  The sender features each shard
   needs come either by ``mode="all_gather"`` (every device gathers all node features: simple, the node table is
   replicated) or by ``mode="halo"`` (the default: each device receives only the remote rows its edges read, one
   ``ppermute`` per shard distance in ``halo_offsets``; the scalable mode when nodes are ordered so that neighbours
   are mostly on the same or nearby shards, e.g. sorted along a spatial axis or a space-filling curve).
   :func:`gather_senders` / :func:`gather_receivers` give per-edge sender/receiver values of any node array (e.g.
   positions, for edge vectors and forces) by the same exchange.  ``deterministic=True`` makes the output bitwise
   equal to one device's ``message_passing`` with the same edge chunk size (see :func:`local_message_passing` for
   the conditions, and why gradients with respect to node features are not bitwise).

Everything is plain JAX collectives inside ``shard_map``: gradients w.r.t. node features, edge attributes, edge
weights and positions flow back across shards (an all-gather's transpose is a reduce-scatter, a ``ppermute``'s is the
reverse ``ppermute``) and equal the single-device gradients.

Contract of a :class:`GraphPartition` (a pytree: its index arrays and edge counts are leaves, its shapes static),
with ``S = num_shards``, ``Np = nodes_per_shard``, ``Ep = edges_per_shard``, ``H = sum(halo_sizes)``:

=================== ============ ====================================================================================
field               shape        meaning
=================== ============ ====================================================================================
``edge_ids``        ``(S*Ep,)``  original edge index of each row, ``-1`` for a padding edge
``senders``         ``(S*Ep,)``  sender as a row of the padded node array (``all_gather`` mode's table)
``halo_senders``    ``(S*Ep,)``  sender as a row of the shard's table ``[own Np rows, received H rows]`` (``halo``)
``receivers``       ``(S*Ep,)``  receiver as a row of the shard's own node range; ``Np`` for padding edges
``halo_rows``       ``(S*H,)``   own rows each shard sends, ``halo_sizes[i]`` of them for offset ``halo_offsets[i]``
``edge_counts``     ``(S,)``     real edges of each shard (its first ``edge_counts[p]`` rows; the rest are padding)
=================== ============ ====================================================================================

Sharded with ``PartitionSpec(axis)`` (the whole partition takes one spec, a pytree prefix), each device sees its
``Ep`` / ``H`` / 1 entries: that is the view :func:`local_message_passing` and the gather functions expect.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from e3nn_fast import _shard_compat, dispatch
from e3nn_fast._static_int import static_int
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.message_passing import message_passing, message_passing_irreps_out

__all__ = [
    "GraphPartition",
    "partition_graph",
    "common_capacity",
    "local_message_passing",
    "graph_message_passing",
    "sender_table",
    "gather_senders",
    "gather_receivers",
    "shard_map",
    "MODES",
    "DETERMINISTIC_EDGE_CHUNK",
]

#: How each shard obtains the sender features it needs.
MODES = ("halo", "all_gather")

#: Edges per scan step of ``deterministic=True`` (see :func:`local_message_passing`) unless ``edge_chunk_size`` is
#: given: the single-device result it equals bitwise is ``message_passing(..., edge_chunk_size=DETERMINISTIC_EDGE_CHUNK)``.
DETERMINISTIC_EDGE_CHUNK = 64

shard_map = _shard_compat.shard_map  # ``jax.shard_map`` on every supported JAX (``check_vma`` spelled the same)

_LEAVES = ("edge_ids", "senders", "halo_senders", "receivers", "halo_rows", "edge_counts")


@dataclasses.dataclass(frozen=True)
class GraphPartition:
    """A graph split by receiver over ``num_shards`` devices; build it with :func:`partition_graph`.

    A pytree: the index arrays and the per-shard edge counts (see the module docstring for their contract) are its
    leaves, so a partition can be an argument of a jitted function and be sharded like any array; the shapes
    (``num_shards``, ``num_nodes``, ``nodes_per_shard``, ``edges_per_shard``, ``halo_offsets``, ``halo_sizes``) are
    static.  Frames of one system partitioned with the same capacities (:func:`common_capacity`) therefore have the
    same tree structure and share one compilation, however many edges each has.  Inside ``shard_map`` (spec
    ``PartitionSpec(axis)``) each device sees its own slice of every leaf.
    """

    num_shards: int
    num_nodes: int
    nodes_per_shard: int
    edges_per_shard: int
    halo_offsets: tuple
    halo_sizes: tuple
    edge_ids: np.ndarray
    senders: np.ndarray
    halo_senders: np.ndarray
    receivers: np.ndarray
    halo_rows: np.ndarray
    edge_counts: np.ndarray

    # -- sizes ------------------------------------------------------------------------------------------------------

    @property
    def padded_nodes(self) -> int:
        """Rows of a padded node array: ``num_shards * nodes_per_shard``."""
        return self.num_shards * self.nodes_per_shard

    @property
    def padded_edges(self) -> int:
        """Rows of a sharded edge array: ``num_shards * edges_per_shard``."""
        return self.num_shards * self.edges_per_shard

    @property
    def halo_rows_per_shard(self) -> int:
        """Remote node rows each shard receives in ``halo`` mode (padding included): ``sum(halo_sizes)``."""
        return int(sum(self.halo_sizes))

    @property
    def num_edges(self) -> int:
        """Real (non-padding) edges of the partitioned graph, ``sum(edge_counts)``.

        A leaf, not static data, so that frames with different edge counts share a compilation; hence it is only
        known outside ``jit`` (on a traced partition this raises a ``TypeError``)."""
        return _concrete_edge_count(self, "GraphPartition.num_edges")

    def node_mask(self) -> np.ndarray:
        """``(padded_nodes,)`` bool: True for real nodes, False for padding rows."""
        return np.arange(self.padded_nodes) < self.num_nodes

    def edge_mask(self) -> jax.Array:
        """``(padded_edges,)`` bool: True for real edges, False for padding edges (one shard's ``(edges_per_shard,)``
        inside ``shard_map``)."""
        return jnp.asarray(self.edge_ids) >= 0

    # -- array layout -----------------------------------------------------------------------------------------------

    def pad_nodes(self, values):
        """``(num_nodes, ...)`` -> ``(padded_nodes, ...)``: zero rows appended (node ``i`` stays row ``i``).

        An IrrepsArray stays one; differentiable."""
        array = _rows_array(values, "pad_nodes", "values", self.num_nodes, "num_nodes")
        padded = jnp.pad(array, [(0, self.padded_nodes - self.num_nodes)] + [(0, 0)] * (array.ndim - 1))
        return _like(values, padded)

    def unpad_nodes(self, values):
        """``(padded_nodes, ...)`` -> ``(num_nodes, ...)``: the padding rows removed."""
        array = _rows_array(values, "unpad_nodes", "values", self.padded_nodes, "padded_nodes")
        return _like(values, array[: self.num_nodes])

    def shard_edges(self, values):
        """``(num_edges, ...)`` -> ``(padded_edges, ...)``: rows in the partition's edge order, zeros at padding edges.

        An IrrepsArray stays one; differentiable (the gradient of a padding row is dropped).  Also works on a
        partition traced by ``jit`` (then the row count cannot be checked against ``num_edges``)."""
        array = values.array if isinstance(values, IrrepsArray) else jnp.asarray(values)
        known = _edge_count_if_concrete(self)
        if array.ndim < 1 or (known is not None and array.shape[0] != known):
            raise ValueError(
                f"GraphPartition.shard_edges: values must have num_edges = {known} rows, got shape {array.shape}"
            )
        ids = jnp.asarray(self.edge_ids)
        if array.shape[0] == 0:
            return _like(values, jnp.zeros((self.padded_edges,) + array.shape[1:], array.dtype))
        taken = jnp.take(array, jnp.maximum(ids, 0), axis=0)
        mask = (ids >= 0).reshape((-1,) + (1,) * (array.ndim - 1))
        return _like(values, jnp.where(mask, taken, jnp.zeros((), array.dtype)))

    def unshard_edges(self, values, num_edges: Optional[int] = None):
        """``(padded_edges, ...)`` -> ``(num_edges, ...)`` in the original edge order (padding rows dropped).

        ``num_edges`` (static int) is the number of rows returned: by default the partition's edge count, which is
        only known outside ``jit``; on a traced partition pass it (e.g. an edge capacity shared by every frame):
        rows past the frame's real edges are zeros."""
        where = "GraphPartition.unshard_edges"
        array = _rows_array(values, "unshard_edges", "values", self.padded_edges, "padded_edges")
        known = _edge_count_if_concrete(self)
        if num_edges is None:
            if known is None:
                raise TypeError(
                    f"{where}: the partition is traced (inside jit), so its edge count is not a static number; pass "
                    "num_edges=<static int> (rows past the real edges come back as zeros)"
                )
            num_edges = known
        num_edges = _positive_int(num_edges, "num_edges", where, minimum=0)
        if known is not None and num_edges < known:
            raise ValueError(f"{where}: num_edges={num_edges} is below the partition's {known} real edges")
        ids = jnp.asarray(self.edge_ids)
        # the real rows' ids are a permutation of 0..real-1: sorted by id (padding last), they are in edge order
        order = jnp.argsort(jnp.where(ids >= 0, ids, jnp.iinfo(ids.dtype).max), stable=True)
        positions = jnp.pad(order, (0, max(0, num_edges - order.shape[0])))[:num_edges]
        rows = jnp.take(array, positions, axis=0)
        real = jnp.arange(num_edges) < jnp.sum(jnp.asarray(self.edge_counts))
        return _like(values, jnp.where(real.reshape((-1,) + (1,) * (array.ndim - 1)), rows,
                                       jnp.zeros((), array.dtype)))

    def spec(self, axis_name) -> PartitionSpec:
        """The ``PartitionSpec`` of node arrays, edge arrays and the partition itself: ``PartitionSpec(axis_name)``."""
        return PartitionSpec(axis_name)


def _edge_count_if_concrete(partition: GraphPartition) -> Optional[int]:
    """``sum(edge_counts)`` as an int, or None when the counts are traced (the partition is a ``jit`` argument)."""
    counts = partition.edge_counts
    if isinstance(counts, jax.core.Tracer):
        return None
    return int(np.sum(np.asarray(counts)))


def _concrete_edge_count(partition: GraphPartition, where: str) -> int:
    known = _edge_count_if_concrete(partition)
    if known is None:
        raise TypeError(
            f"{where}: the partition is traced (inside jit) and its edge count is a per-frame array leaf, not a "
            "static number; read it outside jit, or use jnp.sum(partition.edge_counts)"
        )
    return known


def _flatten(partition: GraphPartition):
    static = tuple(getattr(partition, f.name) for f in dataclasses.fields(partition) if f.name not in _LEAVES)
    return tuple(getattr(partition, name) for name in _LEAVES), static


def _unflatten(static, leaves):
    names = [f.name for f in dataclasses.fields(GraphPartition) if f.name not in _LEAVES]
    return GraphPartition(**dict(zip(names, static)), **dict(zip(_LEAVES, leaves)))


jax.tree_util.register_pytree_node(GraphPartition, _flatten, _unflatten)


# --- validation helpers ----------------------------------------------------------------------------------------------


def _positive_int(value, name: str, where: str, minimum: int = 1) -> int:
    size = static_int(value)
    if size is None:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}: {name} must be an int, got {value!r}")
        raise TypeError(f"{where}: {name} must be a static Python int, got {type(value).__name__} ({value!r})")
    if size < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {size}")
    return size


def _host_indices(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"partition_graph: {name} is a traced value; partitioning runs on the host with concrete arrays "
            "(call partition_graph outside jax.jit / grad / vmap and pass NumPy arrays)"
        ) from None
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"partition_graph: {name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"partition_graph: {name} must have shape (num_edges,), got shape {array.shape}")
    return array.astype(np.int64)


def _check_range(array: np.ndarray, name: str, num_nodes: int) -> None:
    bad = np.nonzero((array < 0) | (array >= num_nodes))[0]
    if bad.size:
        first = int(bad[0])
        raise ValueError(
            f"partition_graph: {name} must lie in [0, num_nodes) = [0, {num_nodes}); {name}[{first}] = "
            f"{int(array[first])} ({bad.size} edge(s) out of range). Drop padding edges before partitioning: the "
            "partition adds its own"
        )


def _rows_array(values, where: str, name: str, rows: int, rows_name: str) -> jax.Array:
    array = values.array if isinstance(values, IrrepsArray) else jnp.asarray(values)
    if array.ndim < 1 or array.shape[0] != rows:
        raise ValueError(
            f"GraphPartition.{where}: {name} must have {rows_name} = {rows} rows, got shape {array.shape}"
        )
    return array


def _like(values, array):
    return IrrepsArray(values.irreps, array) if isinstance(values, IrrepsArray) else array


# --- partitioning (host side) ----------------------------------------------------------------------------------------


def partition_graph(
    senders,
    receivers,
    num_nodes: int,
    num_shards: int,
    *,
    nodes_per_shard: Optional[int] = None,
    edges_per_shard: Optional[int] = None,
    halo_offsets: Optional[Sequence[int]] = None,
    halo_capacity=None,
    halo_multiple: int = 1,
) -> GraphPartition:
    """Split a graph by receiver over ``num_shards`` devices (host side, NumPy; static shapes out).

    Args:
        senders, receivers: integer arrays ``(num_edges,)`` (NumPy or concrete JAX), each in ``[0, num_nodes)``.
        num_nodes: number of nodes.
        num_shards: number of devices along the mesh axis the graph is split over.
        nodes_per_shard: rows per shard; default ``ceil(num_nodes / num_shards)`` (at least 1).  Shard ``p`` owns
            nodes ``[p * nodes_per_shard, (p + 1) * nodes_per_shard)``.  Give a larger value to reuse one compiled
            program for graphs of different sizes.
        edges_per_shard: edge capacity of a shard (padded edges per shard); default the most edges any shard
            receives.
        halo_offsets: the shard distances ``d`` over which halo rows are exchanged (shard ``q`` sends to shard
            ``(q + d) % num_shards``), each in ``[1, num_shards)``; default the distances this graph needs.
        halo_capacity: rows exchanged per distance: one int for every distance, or one int per entry of
            ``halo_offsets``; default the most rows any shard needs over that distance.
        halo_multiple: round every halo size up to a multiple of this (fewer distinct shapes as the graph changes).

    **Frames of one system** (molecular dynamics: the same atoms, slightly different neighbour lists): fix
    ``nodes_per_shard``, ``edges_per_shard``, ``halo_offsets`` and ``halo_capacity`` (:func:`common_capacity`
    returns all four, with headroom, from a few partitions: ``partition_graph(s, r, n, S, **capacity)``).  Every
    frame then gets a partition of the same shapes and tree structure, so a jitted step taking it as an argument
    compiles once; what varies per frame (edge counts, which rows are exchanged) is in its array leaves.  A frame
    that does not fit raises a ``ValueError`` naming the size it needs.

    Returns:
        A :class:`GraphPartition` (see the module docstring for its arrays).

    Raises:
        TypeError: non-integer or traced indices, non-int sizes.
        ValueError: indices of different shapes or out of ``[0, num_nodes)``, sizes below their minimum, a graph
            that does not fit the given capacities.
    """
    where = "partition_graph"
    senders = _host_indices(senders, "senders")
    receivers = _host_indices(receivers, "receivers")
    if senders.shape != receivers.shape:
        raise ValueError(
            f"{where}: senders and receivers must have the same shape (num_edges,), got {senders.shape} and "
            f"{receivers.shape}"
        )
    num_nodes = _positive_int(num_nodes, "num_nodes", where, minimum=0)
    num_shards = _positive_int(num_shards, "num_shards", where)
    halo_multiple = _positive_int(halo_multiple, "halo_multiple", where)
    _check_range(senders, "senders", num_nodes)
    _check_range(receivers, "receivers", num_nodes)
    nodes_per_shard = _node_capacity(num_nodes, num_shards, nodes_per_shard, where)

    owner_r = receivers // nodes_per_shard
    order = np.argsort(owner_r, kind="stable")  # edges grouped by receiver's shard, original order kept within
    counts = np.bincount(owner_r, minlength=num_shards)
    edges_per_shard = _edge_capacity(counts, edges_per_shard, where)
    starts = np.concatenate([[0], np.cumsum(counts)])
    shard_edges = [order[starts[p] : starts[p + 1]] for p in range(num_shards)]
    needs = _remote_senders(senders, shard_edges, nodes_per_shard)
    halo_offsets, halo_sizes = _halo_layout(needs, num_shards, halo_offsets, halo_capacity, halo_multiple, where)
    arrays = _shard_arrays(senders, receivers, shard_edges, needs, nodes_per_shard, edges_per_shard, halo_offsets,
                           halo_sizes)
    return GraphPartition(
        num_shards=num_shards,
        num_nodes=num_nodes,
        nodes_per_shard=nodes_per_shard,
        edges_per_shard=edges_per_shard,
        halo_offsets=halo_offsets,
        halo_sizes=halo_sizes,
        edge_counts=counts.astype(np.int32),
        **arrays,
    )


def _node_capacity(num_nodes: int, num_shards: int, nodes_per_shard, where: str) -> int:
    """``nodes_per_shard``, checked to hold every node, or its smallest value."""
    needed = max(1, -(-num_nodes // num_shards))
    if nodes_per_shard is None:
        return needed
    nodes_per_shard = _positive_int(nodes_per_shard, "nodes_per_shard", where)
    if nodes_per_shard < needed:
        raise ValueError(
            f"{where}: nodes_per_shard={nodes_per_shard} is too small for {num_nodes} nodes on {num_shards} "
            f"shards; it must be at least ceil(num_nodes / num_shards) = {needed}"
        )
    return nodes_per_shard


def _edge_capacity(counts: np.ndarray, edges_per_shard, where: str) -> int:
    """``edges_per_shard``, checked to hold the busiest shard's edges, or exactly that many (at least 1)."""
    needed = max(1, int(counts.max()) if counts.size else 1)
    if edges_per_shard is None:
        return needed
    edges_per_shard = _positive_int(edges_per_shard, "edges_per_shard", where)
    if edges_per_shard < needed:
        busiest = int(np.argmax(counts))
        raise ValueError(
            f"{where}: edges_per_shard={edges_per_shard} is too small: shard {busiest} receives {needed} edges; "
            f"pass edges_per_shard >= {needed} (or None for exactly that)"
        )
    return edges_per_shard


def _remote_senders(senders: np.ndarray, shard_edges, nodes_per_shard: int) -> list:
    """``needs[p][q]``: the sorted node ids of shard ``q`` that shard ``p``'s edges read (``q != p``)."""
    needs = []
    for p, edges in enumerate(shard_edges):
        s = senders[edges]
        remote = np.unique(s[s // nodes_per_shard != p])
        owners = remote // nodes_per_shard
        needs.append({int(q): remote[owners == q] for q in np.unique(owners)})
    return needs


def _halo_layout(needs: list, num_shards: int, halo_offsets, halo_capacity, halo_multiple: int, where: str):
    """The static halo shapes ``(halo_offsets, halo_sizes)``: the given distances and capacities, checked against
    what the graph needs (the busiest pair of shards per distance), or exactly what it needs."""
    needed = {}  # shard distance d = (p - q) % S -> (rows, p, q) of the pair of shards that needs the most
    for p, by_owner in enumerate(needs):
        for q, nodes in by_owner.items():
            d = (p - q) % num_shards
            if len(nodes) > needed.get(d, (-1,))[0]:
                needed[d] = (len(nodes), p, q)
    if halo_offsets is None:
        offsets = tuple(sorted(needed))
    else:
        offsets = _halo_offsets(halo_offsets, num_shards, where)
        for d in sorted(set(needed) - set(offsets)):
            rows, p, q = needed[d]
            raise ValueError(
                f"{where}: shard {p} reads {rows} node rows of shard {q} (shard distance {d} = ({p} - {q}) % "
                f"{num_shards}), but halo_offsets={offsets} has no {d}; add it to halo_offsets (common_capacity of "
                "this graph's partition lists every distance it needs)"
            )
    capacity = _halo_capacity(halo_capacity, offsets, where)
    sizes = []
    for d, cap in zip(offsets, capacity):
        rows, p, q = needed.get(d, (0, None, None))
        if cap is not None and cap < rows:
            raise ValueError(
                f"{where}: halo_capacity={cap} for shard distance {d} is too small: shard {p} reads {rows} node rows "
                f"of shard {q}; pass halo_capacity >= {rows} for that distance"
            )
        size = rows if cap is None else cap
        sizes.append(-(-size // halo_multiple) * halo_multiple)
    return offsets, tuple(sizes)


def _halo_offsets(value, num_shards: int, where: str) -> tuple:
    """``halo_offsets`` as a sorted tuple of distinct ints in ``[1, num_shards)``."""
    if isinstance(value, (int, np.integer)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise TypeError(f"{where}: halo_offsets must be a sequence of ints (shard distances), got {value!r}")
    offsets = [_positive_int(d, "halo_offsets entry", where) for d in value]
    bad = [d for d in offsets if d >= num_shards]
    if bad:
        raise ValueError(
            f"{where}: halo_offsets must lie in [1, num_shards) = [1, {num_shards}) (distance 0 is the shard's own "
            f"rows), got {bad[0]}"
        )
    if len(set(offsets)) != len(offsets):
        raise ValueError(f"{where}: halo_offsets must be distinct, got {tuple(offsets)}")
    return tuple(sorted(offsets))


def _halo_capacity(value, offsets: tuple, where: str) -> tuple:
    """One capacity (int, or None for "what the graph needs") per halo offset."""
    if value is None:
        return (None,) * len(offsets)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return (_positive_int(value, "halo_capacity", where, minimum=0),) * len(offsets)
    if not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{where}: halo_capacity must be an int or a sequence of ints, got {value!r}")
    capacity = tuple(_positive_int(c, "halo_capacity entry", where, minimum=0) for c in value)
    if len(capacity) != len(offsets):
        raise ValueError(
            f"{where}: halo_capacity has {len(capacity)} entries but there are {len(offsets)} halo offsets "
            f"{offsets}; give one capacity per offset (and pass halo_offsets with it), or one int for all"
        )
    return capacity


def _shard_arrays(senders, receivers, shard_edges, needs, nodes_per_shard: int, edges_per_shard: int,
                  halo_offsets: tuple, halo_sizes: tuple) -> dict:
    """The index leaves of a partition (see the module docstring), int32, flattened shard-major."""
    num_shards = len(shard_edges)
    first_row = dict(zip(halo_offsets, np.cumsum((0,) + halo_sizes[:-1]).tolist()))
    halo_total = int(sum(halo_sizes))
    edge_ids = np.full((num_shards, edges_per_shard), -1, np.int64)
    global_senders = np.zeros((num_shards, edges_per_shard), np.int64)
    halo_senders = np.zeros((num_shards, edges_per_shard), np.int64)
    local_receivers = np.full((num_shards, edges_per_shard), nodes_per_shard, np.int64)
    halo_rows = np.zeros((num_shards, halo_total), np.int64)
    for p, edges in enumerate(shard_edges):
        count = len(edges)
        edge_ids[p, :count] = edges
        s = senders[edges]
        owner = s // nodes_per_shard
        global_senders[p, :count] = s
        local_receivers[p, :count] = receivers[edges] - p * nodes_per_shard
        table_row = s - p * nodes_per_shard  # own senders: their local row
        for q, nodes in needs[p].items():
            d = (p - q) % num_shards
            is_q = owner == q
            table_row[is_q] = nodes_per_shard + first_row[d] + np.searchsorted(nodes, s[is_q])
            halo_rows[q, first_row[d] : first_row[d] + len(nodes)] = nodes - q * nodes_per_shard
        halo_senders[p, :count] = table_row
    as_int32 = lambda a: a.reshape(-1).astype(np.int32)
    return dict(edge_ids=as_int32(edge_ids), senders=as_int32(global_senders), halo_senders=as_int32(halo_senders),
                receivers=as_int32(local_receivers), halo_rows=as_int32(halo_rows))


def common_capacity(partitions, *, headroom: float = 0.0, edge_multiple: int = 1, halo_multiple: int = 1) -> dict:
    """Capacities that fit every given partition (e.g. of a few frames of one system), as keyword arguments of
    :func:`partition_graph`: ``partition_graph(s, r, n, S, **common_capacity([...], headroom=0.1))``.

    Args:
        partitions: one or more :class:`GraphPartition` of the same ``num_shards`` (a single one is accepted).
        headroom: relative margin added to the edge and halo capacities (``0.1``: 10% more), for frames not seen.
        edge_multiple, halo_multiple: round the edge capacity / each halo capacity up to a multiple of this.

    Returns:
        ``dict(nodes_per_shard=..., edges_per_shard=..., halo_offsets=..., halo_capacity=...)``: the largest node
        range and edge count, every shard distance any partition exchanges over, and per distance the most rows.
    """
    where = "common_capacity"
    partitions = [partitions] if isinstance(partitions, GraphPartition) else list(partitions)
    if not partitions or not all(isinstance(p, GraphPartition) for p in partitions):
        raise TypeError(f"{where}: partitions must be one or more GraphPartitions (from partition_graph)")
    shards = {p.num_shards for p in partitions}
    if len(shards) != 1:
        raise ValueError(f"{where}: the partitions have different num_shards {sorted(shards)}; capacities are per "
                         "shard, so partition every graph over the same number of shards")
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float, np.floating)) or not headroom >= 0:
        raise ValueError(f"{where}: headroom must be a number >= 0 (a relative margin), got {headroom!r}")
    edge_multiple = _positive_int(edge_multiple, "edge_multiple", where)
    halo_multiple = _positive_int(halo_multiple, "halo_multiple", where)
    grow = lambda size, multiple: -(-int(np.ceil(size * (1.0 + headroom))) // multiple) * multiple
    halo = {}
    for p in partitions:
        for d, size in zip(p.halo_offsets, p.halo_sizes):
            halo[d] = max(halo.get(d, 0), size)
    offsets = tuple(sorted(halo))
    return dict(
        nodes_per_shard=max(p.nodes_per_shard for p in partitions),
        edges_per_shard=grow(max(p.edges_per_shard for p in partitions), edge_multiple),
        halo_offsets=offsets,
        halo_capacity=tuple(grow(halo[d], halo_multiple) for d in offsets),
    )


# --- per-shard functions (inside shard_map) -------------------------------------------------------------------------


def _mode(value, where: str) -> str:
    if value not in MODES:
        raise ValueError(f"{where}: mode={value!r} is not supported; use one of {MODES}")
    return value


def _check_local(partition: GraphPartition, where: str) -> None:
    if not isinstance(partition, GraphPartition):
        raise TypeError(f"{where}: partition must be a GraphPartition (from partition_graph), got "
                        f"{type(partition).__name__}")
    if tuple(np.shape(partition.receivers)) != (partition.edges_per_shard,):
        raise ValueError(
            f"{where}: expected one shard's view of the partition ({partition.edges_per_shard} edges), got "
            f"{np.shape(partition.receivers)[0]} edges: call it inside shard_map with the partition sharded by "
            "PartitionSpec(axis_name), or use graph_message_passing on global arrays"
        )


def _local_rows(values, partition: GraphPartition, where: str) -> jax.Array:
    array = values.array if isinstance(values, IrrepsArray) else jnp.asarray(values)
    if array.ndim < 1 or array.shape[0] != partition.nodes_per_shard:
        raise ValueError(
            f"{where}: node values must be one shard's rows, (nodes_per_shard = {partition.nodes_per_shard}, ...), "
            f"got shape {array.shape}"
        )
    return array


def sender_table(values, partition: GraphPartition, axis_name, mode: str = "halo"):
    """Per shard: the node rows this shard's edges read, and each edge's row in them.

    Args:
        values: this shard's node rows ``(nodes_per_shard, ...)`` (array or IrrepsArray).
        partition: this shard's view of the partition (inside ``shard_map``).
        axis_name: the mesh axis the graph is split over.
        mode: ``"halo"`` (own rows followed by the received remote rows, ``(nodes_per_shard + H, ...)``) or
            ``"all_gather"`` (every shard's rows, ``(padded_nodes, ...)``).

    Returns:
        ``(table, senders)``: ``table[senders]`` are the sender values of this shard's edges (``(edges_per_shard,
        ...)``; padding edges read some valid row).  ``table`` is an IrrepsArray when ``values`` is one.
    """
    where = "sender_table"
    mode = _mode(mode, where)
    _check_local(partition, where)
    array = _local_rows(values, partition, where)
    if mode == "all_gather":
        return _like(values, jax.lax.all_gather(array, axis_name, tiled=True)), partition.senders
    pieces, start = [array], 0
    for offset, size in zip(partition.halo_offsets, partition.halo_sizes):
        rows = partition.halo_rows[start : start + size]
        start += size
        if not size:
            continue
        outgoing = jnp.take(array, rows, axis=0)  # the rows shard (me + offset) needs from me
        perm = [(q, (q + offset) % partition.num_shards) for q in range(partition.num_shards)]
        pieces.append(jax.lax.ppermute(outgoing, axis_name, perm))
    table = jnp.concatenate(pieces, axis=0) if len(pieces) > 1 else array
    return _like(values, table), partition.halo_senders


def gather_senders(values, partition: GraphPartition, axis_name, mode: str = "halo"):
    """Per shard: the sender's row of ``values`` for each of this shard's edges, ``(edges_per_shard, ...)``
    (e.g. sender positions for edge vectors).  Padding edges get some valid row (their messages are dropped); where
    a function of them could be NaN (a radial function of a zero length, say), mask them with
    ``partition.edge_mask()`` (per shard inside ``shard_map``)."""
    table, senders = sender_table(values, partition, axis_name, mode)
    array = table.array if isinstance(table, IrrepsArray) else table
    return _like(values, jnp.take(array, senders, axis=0))


def gather_receivers(values, partition: GraphPartition):
    """Per shard: the receiver's row of ``values`` (this shard's node rows) for each of this shard's edges,
    ``(edges_per_shard, ...)``; zeros for padding edges.  No communication: receivers are local."""
    where = "gather_receivers"
    _check_local(partition, where)
    array = _local_rows(values, partition, where)
    return _like(values, jnp.take(array, partition.receivers, axis=0, mode="fill", fill_value=0))


def local_message_passing(
    node_feats: IrrepsArray,
    edge_sh: IrrepsArray,
    edge_weights,
    partition: GraphPartition,
    axis_name,
    *,
    mode: str = "halo",
    filter_ir_out=None,
    irrep_normalization: Optional[str] = None,
    edge_chunk_size: Optional[int] = None,
    deterministic: bool = False,
) -> IrrepsArray:
    """:func:`e3nn_fast.message_passing` on this shard's part of a partitioned graph (call it inside ``shard_map``).

    Args:
        node_feats: IrrepsArray ``(nodes_per_shard, irreps_in.dim)``: this shard's node rows.
        edge_sh: IrrepsArray ``(edges_per_shard, irreps_sh.dim)``: this shard's edges (``partition.shard_edges``
            order; padding rows are ignored).
        edge_weights: ``(edges_per_shard, irreps_out.num_irreps)`` or None.
        partition: this shard's view of the partition (sharded by ``PartitionSpec(axis_name)``).
        axis_name: the mesh axis the graph is split over.
        mode: ``"halo"`` or ``"all_gather"`` (see the module docstring); the results are equal.
        filter_ir_out, irrep_normalization, edge_chunk_size: as in :func:`e3nn_fast.message_passing`.
        deterministic: make the output bitwise equal to one device's (see below); it runs the ``jnp`` executor with
            ``edge_chunk_size`` (default :data:`DETERMINISTIC_EDGE_CHUNK`) edges per step.

    Returns:
        IrrepsArray ``(nodes_per_shard, irreps_out.dim)``: the messages into this shard's nodes (padding nodes: 0).

    **Deterministic mode.**  With ``deterministic=True`` the output equals, bit for bit, the rows of
    ``message_passing(..., edge_chunk_size=C)`` of the unpartitioned graph on one device with the ``jnp`` executor
    (``C`` the same chunk size, the graph having at least ``C`` edges), on CPU (tested on 8 fake devices).  Why it
    holds: that executor adds the edges' messages into their receivers one edge chunk after another, in edge order,
    so each node's sum is ``0 + m[e1] + m[e2] + ...`` over its edges in edge order whatever the chunk boundaries;
    here every receiver's edges are on its own shard in their original order, and each message is computed from
    exact copies of the same inputs.  What it takes: the same *chunk size* on both sides, since XLA compiles the
    per-edge arithmetic of a chunk differently for different chunk sizes (e.g. 1, 2-32 and 64+ edges give
    last-bit-different messages on CPU); so this mode fixes ``C`` and pads a shard with fewer than ``C`` edges up to
    ``C`` (the executor would otherwise shrink its chunk to the edge count).  Not bitwise, and not made so: the
    Pallas kernels and the reference executor (another summation order; this mode always uses ``jnp``), GPUs
    unless XLA's scatter is made deterministic (``XLA_FLAGS=--xla_gpu_deterministic_ops=true``; otherwise even
    one device is not reproducible), and *gradients with respect to node features* (hence forces): a node's
    cotangent sums over the edges it sends, which lie on several shards, and the shards' partial sums are added
    after the exchange in another order than one device's single scan.  (Gradients with respect to the edge inputs,
    harmonics and weights, came out bitwise equal in the tests, each edge's being formed from its receiver's
    cotangent and its sender's features, but that is not promised.)  Reductions the caller adds (a ``psum`` of
    per-shard energies) also sum in another order than one device.
    """
    where = "local_message_passing"
    if not isinstance(node_feats, IrrepsArray) or not isinstance(edge_sh, IrrepsArray):
        raise TypeError(f"{where}: node_feats and edge_sh must be IrrepsArrays, got {type(node_feats).__name__} "
                        f"and {type(edge_sh).__name__}")
    _check_local(partition, where)
    if edge_sh.ndim != 2 or edge_sh.shape[0] != partition.edges_per_shard:
        raise ValueError(
            f"{where}: edge_sh must be one shard's edges, (edges_per_shard = {partition.edges_per_shard}, "
            f"irreps_sh.dim), got shape {edge_sh.shape}"
        )
    table, senders = sender_table(node_feats, partition, axis_name, mode)
    receivers = partition.receivers
    options = dict(filter_ir_out=filter_ir_out, irrep_normalization=irrep_normalization, mode="drop")
    if not _flag(deterministic, "deterministic", where):
        return message_passing(table, edge_sh, edge_weights, senders, receivers, partition.nodes_per_shard,
                               edge_chunk_size=edge_chunk_size, **options)
    chunk = DETERMINISTIC_EDGE_CHUNK if edge_chunk_size is None else _positive_int(
        edge_chunk_size, "edge_chunk_size", where)
    edge_sh, edge_weights, senders, receivers = _pad_edges_to(
        chunk, edge_sh, edge_weights, senders, receivers, partition.nodes_per_shard)
    with dispatch.backend("jnp"):  # the executor whose summation order is defined (see the docstring)
        return message_passing(table, edge_sh, edge_weights, senders, receivers, partition.nodes_per_shard,
                               edge_chunk_size=chunk, **options)


def _flag(value, name: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


def _pad_edges_to(count: int, edge_sh: IrrepsArray, edge_weights, senders, receivers, num_nodes: int):
    """This shard's edges padded with dropped edges (zero harmonics and weights, sender 0, receiver ``num_nodes``)
    up to ``count`` rows, when it has fewer: so that the executor's scan runs chunks of exactly ``count`` edges."""
    missing = count - edge_sh.shape[0]
    if missing <= 0:
        return edge_sh, edge_weights, senders, receivers
    pad = lambda a, value: jnp.concatenate([a, jnp.full((missing,) + a.shape[1:], value, a.dtype)])
    edge_sh = IrrepsArray(edge_sh.irreps, pad(edge_sh.array, 0))
    if edge_weights is not None:
        edge_weights = pad(edge_weights.array if isinstance(edge_weights, IrrepsArray) else jnp.asarray(edge_weights),
                           0)
    return edge_sh, edge_weights, pad(jnp.asarray(senders), 0), pad(jnp.asarray(receivers), num_nodes)


# --- global entry point -------------------------------------------------------------------------------------------


def _mesh_axis_size(mesh, axis_name, num_shards: int, where: str) -> None:
    names = tuple(mesh.axis_names)
    if axis_name not in names:
        raise ValueError(f"{where}: axis_name={axis_name!r} is not an axis of the mesh (axes {names})")
    size = dict(zip(names, mesh.devices.shape))[axis_name]
    if size != num_shards:
        raise ValueError(
            f"{where}: the mesh axis {axis_name!r} has {size} device(s) but the partition has {num_shards} shards; "
            f"partition with num_shards={size}"
        )


def _place(array, mesh, spec: PartitionSpec):
    """On a mesh with explicit axes, ``shard_map`` needs inputs already sharded as ``spec``; elsewhere it reshards
    them itself."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is not None and explicit in tuple(getattr(mesh, "axis_types", ()) or ()):
        return jax.sharding.reshard(array, NamedSharding(mesh, spec))
    return array


def graph_message_passing(
    node_feats: IrrepsArray,
    edge_sh: IrrepsArray,
    edge_weights,
    partition: GraphPartition,
    mesh,
    axis_name,
    *,
    mode: str = "halo",
    filter_ir_out=None,
    irrep_normalization: Optional[str] = None,
    edge_chunk_size: Optional[int] = None,
    deterministic: bool = False,
) -> IrrepsArray:
    """Graph-parallel :func:`e3nn_fast.message_passing` on global arrays: ``shard_map`` over ``axis_name`` of
    ``mesh`` around :func:`local_message_passing`.

    Args:
        node_feats: IrrepsArray ``(partition.padded_nodes, irreps_in.dim)`` (``partition.pad_nodes``).
        edge_sh: IrrepsArray ``(partition.padded_edges, irreps_sh.dim)`` (``partition.shard_edges``).
        edge_weights: ``(partition.padded_edges, irreps_out.num_irreps)`` (``partition.shard_edges``) or None.
        partition: from :func:`partition_graph` with ``num_shards`` = the size of the mesh axis.
        mesh: a ``jax.sharding.Mesh``; axes other than ``axis_name`` are left to XLA (replicated here).
        axis_name: the mesh axis the graph is split over.
        mode, filter_ir_out, irrep_normalization, edge_chunk_size, deterministic: as in
            :func:`local_message_passing` (``deterministic=True``: the output is bitwise equal to
            ``message_passing(..., edge_chunk_size=DETERMINISTIC_EDGE_CHUNK)`` on one device, under the conditions
            given there).

    Returns:
        IrrepsArray ``(partition.padded_nodes, irreps_out.dim)``, sharded like the node features
        (``partition.unpad_nodes`` gives the ``num_nodes`` real rows).  Equal to ``message_passing`` of the
        unpartitioned graph (up to float summation order, or bitwise with ``deterministic=True``); differentiable
        like it.
    """
    where = "graph_message_passing"
    mode = _mode(mode, where)
    deterministic = _flag(deterministic, "deterministic", where)
    if not isinstance(partition, GraphPartition):
        raise TypeError(f"{where}: partition must be a GraphPartition (from partition_graph), got "
                        f"{type(partition).__name__}")
    if not isinstance(node_feats, IrrepsArray) or not isinstance(edge_sh, IrrepsArray):
        raise TypeError(f"{where}: node_feats and edge_sh must be IrrepsArrays, got {type(node_feats).__name__} "
                        f"and {type(edge_sh).__name__}")
    _mesh_axis_size(mesh, axis_name, partition.num_shards, where)
    if node_feats.ndim != 2 or node_feats.shape[0] != partition.padded_nodes:
        raise ValueError(
            f"{where}: node_feats must have shape (partition.padded_nodes = {partition.padded_nodes}, "
            f"irreps.dim), got {node_feats.shape}; pad it with partition.pad_nodes"
        )
    if edge_sh.ndim != 2 or edge_sh.shape[0] != partition.padded_edges:
        raise ValueError(
            f"{where}: edge_sh must have shape (partition.padded_edges = {partition.padded_edges}, irreps.dim), "
            f"got {edge_sh.shape}; reorder it with partition.shard_edges"
        )
    if edge_weights is not None:
        edge_weights = edge_weights.array if isinstance(edge_weights, IrrepsArray) else jnp.asarray(edge_weights)
        if edge_weights.ndim != 2 or edge_weights.shape[0] != partition.padded_edges:
            raise ValueError(
                f"{where}: edge_weights must have shape (partition.padded_edges = {partition.padded_edges}, "
                f"irreps_out.num_irreps), got {edge_weights.shape}; reorder it with partition.shard_edges"
            )
    irreps_in, irreps_sh = node_feats.irreps, edge_sh.irreps
    irreps_out = message_passing_irreps_out(irreps_in, irreps_sh, filter_ir_out)
    spec = PartitionSpec(axis_name)
    partition = jax.tree_util.tree_map(jnp.asarray, partition)
    args = [node_feats.array, edge_sh.array, partition] + ([] if edge_weights is None else [edge_weights])
    args = [jax.tree_util.tree_map(lambda x: _place(x, mesh, spec), a) for a in args]

    def per_shard(x, sh, part, w=None):
        out = local_message_passing(
            IrrepsArray(irreps_in, x), IrrepsArray(irreps_sh, sh), w, part, axis_name, mode=mode,
            filter_ir_out=filter_ir_out, irrep_normalization=irrep_normalization, edge_chunk_size=edge_chunk_size,
            deterministic=deterministic,
        )
        return out.array

    # Every input and the output vary over axis_name, so the varying-axes check proves nothing here; it is off so
    # that the Pallas executors (whose interpret mode JAX cannot type-check per shard yet) run as well.
    run = shard_map(per_shard, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, check_vma=False)
    return IrrepsArray(irreps_out, run(*args))
