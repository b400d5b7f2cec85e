"""Training over several devices and hosts (``train_potential.py --devices N``, ``--graph-parallel``, ``--coordinator``).

Two layouts, both on JAX's own SPMD machinery over a one-axis ``Mesh``:

*data parallel*  each step's graphs are split into one padded sub-batch per device, stacked along a leading axis that
                 is sharded over the mesh axis ``"batch"`` (``NamedSharding``); parameters and optimiser state are
                 replicated.  The loss is built from sums (:func:`training.loss_sums`) added over the sub-batches, so
                 it is the loss of the whole batch, and XLA all-reduces the gradients of the replicated parameters.
*graph parallel* one large graph is split by receiver over the mesh axis ``"graph"`` with
                 :func:`e3nn_fast.sharding.partition_graph`; inside one ``shard_map`` every device builds the edge
                 vectors of its edges from exchanged positions (``gather_senders`` / ``gather_receivers``), the
                 convolutions call ``local_message_passing`` and the atom-wise layers run on the device's own atoms;
                 the energy is the ``psum`` of the masked atomic energies and the forces its gradient with respect to
                 the (padded, sharded) positions.

Several processes (hosts): :func:`initialize_distributed` calls ``jax.distributed.initialize`` before JAX starts its
backends; the mesh then spans the devices of every process, every process reads the same data, draws the same batches
and partitions the same graphs (host-side NumPy, deterministic), and hands JAX only its own rows
(``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from e3nn_fast import sharding

from . import graphs as graphs_module
from . import training
from .graphs import PAD_EDGE_SHIFT, Graph, GraphBatch, PaddingBudget
from .model import Potential

# --- starting JAX: device count and several processes -------------------------------------------------------------


def backends_started() -> bool:
    """Whether JAX has already created its backends (after which the device count and processes are fixed)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else False


def request_cpu_devices(count: int) -> None:
    """Ask JAX for ``count`` host (CPU) devices, as ``XLA_FLAGS=--xla_force_host_platform_device_count=count`` does.

    Only possible before JAX starts its backends; afterwards this checks that enough devices exist.  On a GPU or TPU
    host the accelerators are used and this setting only affects the (unused) CPU backend.
    """
    if backends_started():
        return
    if "jax_num_cpu_devices" in getattr(jax.config, "values", {}) or hasattr(jax.config, "jax_num_cpu_devices"):
        jax.config.update("jax_num_cpu_devices", int(count))
    else:  # pragma: no cover  (older JAX: the XLA flag, read when the CPU backend starts)
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(count)}".strip()


def initialize_distributed(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int],
                           auto: bool = False) -> bool:
    """``jax.distributed.initialize`` for several processes (hosts); returns whether it was called.

    With ``coordinator`` (``host:port`` of process 0), ``num_processes`` and ``process_id`` given, those are used;
    with ``auto`` alone JAX detects them from the cluster (SLURM, Open MPI, ...).  CPU devices communicate through
    JAX's CPU collectives (gloo, the default of ``jax_cpu_collectives_implementation`` on JAX >= 0.10).
    """
    if coordinator is None and not auto:
        return False
    if backends_started():
        raise RuntimeError("jax.distributed.initialize must run before JAX starts its backends (any jax.devices() "
                           "or computation)")
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id (or JAX_NUM_PROCESSES and "
                         "JAX_PROCESS_ID)")
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                                   process_id=int(process_id))
    else:
        jax.distributed.initialize()
    return True


def select_devices(per_process: Optional[int]) -> List[Any]:
    """The first ``per_process`` local devices of every process (all of them when None), in process order."""
    chosen = []
    for process in range(jax.process_count()):
        mine = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
        if per_process is not None and len(mine) < per_process:
            raise ValueError(
                f"process {process} has {len(mine)} device(s), {per_process} requested; on a CPU start JAX with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={per_process} (this script does it when it "
                "starts JAX itself)"
            )
        chosen += mine if per_process is None else mine[:per_process]
    return chosen


# --- placing host data on the mesh ----------------------------------------------------------------------------------


class Placement:
    """A one-axis mesh and the two shardings used here: split along the leading axis, and replicated."""

    def __init__(self, devices: Sequence[Any], axis: str):
        self.axis = axis
        self.mesh = Mesh(np.array(devices), (axis,))
        self.split = NamedSharding(self.mesh, P(axis))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def size(self) -> int:
        return self.mesh.devices.size

    def shard(self, tree):
        """Host arrays (leading axis a multiple of the mesh size) -> global arrays split along that axis.  Every
        process holds the whole host array and hands JAX the rows of its own devices."""
        return jax.tree_util.tree_map(lambda a: _global_array(np.asarray(a), self.split), tree)

    def replicate(self, tree):
        """Host (or single-device) arrays -> global arrays replicated on every device of the mesh."""
        return jax.tree_util.tree_map(lambda a: _global_array(np.asarray(a), self.replicated), tree)

    @staticmethod
    def local(tree):
        """Replicated global arrays -> this process's copy (a single-device array each): for evaluation on one
        device, checkpoints and printing."""
        return jax.tree_util.tree_map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def _global_array(array: np.ndarray, sharding_: NamedSharding) -> jax.Array:
    """``jax.make_array_from_process_local_data`` with this process's rows (all of them when replicated)."""
    indices = sharding_.addressable_devices_indices_map(array.shape).values()
    rows = [index[0] if index else slice(None) for index in indices]
    start = min((r.start or 0) for r in rows)
    stop = max((array.shape[0] if r.stop is None else r.stop) for r in rows) if array.ndim else None
    local = array if array.ndim == 0 else array[start:stop]
    return jax.make_array_from_process_local_data(sharding_, local, array.shape)


# --- data parallel --------------------------------------------------------------------------------------------------


def stacked_batch(graph_list: Sequence[Graph], num_shards: int, budget: PaddingBudget, dtype=np.float32) -> GraphBatch:
    """``graph_list`` split into ``num_shards`` consecutive groups, each padded to ``budget``, stacked: every field
    gets a leading axis of ``num_shards``."""
    if len(graph_list) < num_shards:
        raise ValueError(f"{len(graph_list)} graphs cannot fill {num_shards} shards (one graph each at least)")
    groups = np.array_split(np.arange(len(graph_list)), num_shards)
    batches = [graphs_module.pad_and_batch([graph_list[i] for i in g], budget, dtype) for g in groups]
    return GraphBatch(*[np.stack(field) for field in zip(*batches)])


def data_parallel_batches(train_graphs: Sequence[Graph], batch_size: int, num_shards: int, budget: PaddingBudget,
                          seed: int, step: int = 0) -> Iterator[GraphBatch]:
    """Stacked training batches from ``step`` on: the single-device run's shuffle (epoch ``k`` uses
    ``default_rng([seed, k])``), each batch of ``batch_size`` graphs split over the shards; an epoch's last,
    incomplete batch is dropped so that every step has the same sizes."""
    per_epoch = len(train_graphs) // batch_size
    if per_epoch < 1:
        raise ValueError(f"{len(train_graphs)} training graphs do not fill one batch of {batch_size}")
    epoch, skip = divmod(step, per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(train_graphs))
        for b in range(skip, per_epoch):
            chosen = [train_graphs[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            yield stacked_batch(chosen, num_shards, budget)
        skip, epoch = 0, epoch + 1


def data_parallel_loss(model: Potential, params, stacked: GraphBatch, weights: training.LossWeights) -> jax.Array:
    """The loss of all graphs of a stacked batch: per-shard sums (``vmap`` over the leading, sharded axis) added."""
    sums = jax.vmap(lambda batch: training.loss_sums(model, params, batch))(stacked)
    return training.combine_loss_sums([jnp.sum(s) for s in sums], weights, model.config.energy_scale)


def make_data_parallel_step(model: Potential, optimizer, weights: training.LossWeights, placement: Placement):
    """``(params, opt_state, host stacked batch) -> (params, opt_state, loss)``: the batch is placed split over the
    mesh, parameters and optimiser state stay replicated, the loss comes back as this process's copy."""

    @partial(jax.jit, out_shardings=placement.replicated)
    def step(params, opt_state, stacked):
        loss, grads = jax.value_and_grad(lambda p: data_parallel_loss(model, p, stacked, weights))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state, loss

    def train_step(params, opt_state, host_batch):
        params, opt_state, loss = step(params, opt_state, placement.shard(host_batch))
        return params, opt_state, Placement.local(loss)

    return train_step


# --- graph parallel -------------------------------------------------------------------------------------------------


class GraphParallelPotential(Potential):
    """:class:`Potential` on one device's part of a partitioned graph (call it inside ``shard_map``): the same layers
    and parameter tree; edge vectors from exchanged positions, convolutions by ``local_message_passing``.

    ``__call__(positions, species, partition, shifts)``: this device's node rows ``(nodes_per_shard, 3)`` and
    ``(nodes_per_shard,)``, its view of the partition, its edges' periodic shifts ``(edges_per_shard, 3)``.
    """

    axis_name: str = "graph"
    mode: str = "halo"  # or "all_gather" (see e3nn_fast.sharding)

    @nn.compact
    def __call__(self, positions, species, partition, shifts) -> jax.Array:
        e3nn, config = self.e3nn, self.config
        sender_pos = sharding.gather_senders(positions, partition, self.axis_name, self.mode)
        receiver_pos = sharding.gather_receivers(positions, partition)
        real = partition.edge_mask()[:, None]
        # Padding edges get the padding shift of graphs.py: far beyond the cutoff, never of zero length.
        vectors = jnp.where(real, sender_pos - receiver_pos + shifts, jnp.asarray(PAD_EDGE_SHIFT, positions.dtype))

        def convolve(nodes, sh, radial_weights, keep):
            num_weights = e3nn.message_passing_irreps_out(nodes.irreps, sh.irreps, keep).num_irreps
            out = sharding.local_message_passing(nodes, sh, radial_weights(num_weights), partition, self.axis_name,
                                                 mode=self.mode, filter_ir_out=keep)
            return out / config.avg_num_neighbours

        return self.atomic_energies(vectors, species, convolve)


class GraphInputs(NamedTuple):
    """One partitioned graph, laid out for the mesh (host NumPy, or global arrays after :func:`place_graph`).

    Node arrays have ``partition.padded_nodes`` rows (node ``i`` is row ``i``), edge arrays ``partition.padded_edges``
    rows in the partition's order; ``energy`` (relative to the reference energies) and ``num_atoms`` are scalars."""

    positions: Any
    species: Any
    shifts: Any
    node_mask: Any
    forces: Any
    partition: sharding.GraphPartition
    energy: Any
    num_atoms: Any


def graph_inputs(graph: Graph, num_shards: int, capacity: Optional[dict] = None, dtype=np.float32) -> GraphInputs:
    """Partition ``graph`` by receiver (host side; the same in every process) and lay out its arrays.

    ``capacity``: keyword arguments of :func:`e3nn_fast.sharding.partition_graph` fixing its shapes (from
    :func:`e3nn_fast.sharding.common_capacity`); None for the graph's own sizes."""
    part = sharding.partition_graph(graph.senders, graph.receivers, graph.num_nodes, num_shards, **(capacity or {}))

    def nodes(values):
        out = np.zeros((part.padded_nodes,) + values.shape[1:], values.dtype)
        out[: graph.num_nodes] = values
        return out

    ids = np.asarray(part.edge_ids)
    shifts = np.where((ids >= 0)[:, None], graph.shifts[np.maximum(ids, 0)], 0.0)
    return GraphInputs(
        positions=nodes(graph.positions).astype(dtype), species=nodes(graph.species).astype(np.int32),
        shifts=shifts.astype(dtype), node_mask=part.node_mask(), forces=nodes(graph.forces).astype(dtype),
        partition=part, energy=np.asarray(graph.energy, dtype), num_atoms=np.asarray(graph.num_nodes, dtype),
    )


def common_graph_inputs(graph_list: Sequence[Graph], num_shards: int, halo_multiple: int = 64,
                        edge_multiple: int = 64) -> List[GraphInputs]:
    """:func:`graph_inputs` of several graphs of one system partitioned with common capacities (the busiest shard's
    edges and, per shard distance, the most halo rows over all graphs, rounded up to these multiples): every
    partition then has the same shapes and pytree structure, so one compilation of the training step serves them
    all (their edge counts are array leaves of the partition, not static data)."""
    if not graph_list:
        return []
    natural = [sharding.partition_graph(g.senders, g.receivers, g.num_nodes, num_shards) for g in graph_list]
    capacity = sharding.common_capacity(natural, edge_multiple=edge_multiple, halo_multiple=halo_multiple)
    return [graph_inputs(g, num_shards, capacity) for g in graph_list]


def place_graph(inputs: GraphInputs, placement: Placement) -> GraphInputs:
    """Host :class:`GraphInputs` -> global arrays: node, edge and partition arrays split over the mesh axis, the
    scalars replicated."""
    split = placement.shard(inputs._replace(energy=None, num_atoms=None))
    return split._replace(energy=placement.replicate(inputs.energy), num_atoms=placement.replicate(inputs.num_atoms))


def graph_parallel_energy(model: GraphParallelPotential, params, positions, inputs: GraphInputs,
                          mesh: Mesh) -> jax.Array:
    """Total energy of a partitioned graph: one ``shard_map`` over ``model.axis_name``, atomic energies masked by
    the node mask and summed with ``psum``.  ``positions``: ``(padded_nodes, 3)``, split over the mesh axis."""
    spec = P(model.axis_name)

    def per_device(params, positions, species, partition, shifts, node_mask):
        atomic = model.apply(params, positions, species, partition, shifts)
        return jax.lax.psum(jnp.sum(jnp.where(node_mask, atomic, 0.0)), model.axis_name)

    run = sharding.shard_map(per_device, mesh=mesh, in_specs=(P(), spec, spec, spec, spec, spec), out_specs=P())
    return run(params, positions, inputs.species, inputs.partition, inputs.shifts, inputs.node_mask)


def graph_parallel_energy_and_forces(model: GraphParallelPotential, params, inputs: GraphInputs, mesh: Mesh):
    """(energy, forces ``(padded_nodes, 3)``): forces are minus the gradient with respect to the positions."""
    energy, gradient = jax.value_and_grad(graph_parallel_energy, argnums=2)(model, params, inputs.positions, inputs,
                                                                            mesh)
    return energy, -gradient


def graph_parallel_loss(model: GraphParallelPotential, params, inputs: GraphInputs, weights: training.LossWeights,
                        mesh: Mesh) -> jax.Array:
    """The loss of :func:`training.energy_forces_loss` for one graph, computed graph-parallel."""
    energy, forces = graph_parallel_energy_and_forces(model, params, inputs, mesh)
    energy_error = (energy - inputs.energy) / jnp.maximum(inputs.num_atoms, 1.0)
    force_error = jnp.where(inputs.node_mask[:, None], forces - inputs.forces, 0.0)
    sums = (energy_error**2, 1, jnp.sum(force_error**2), inputs.num_atoms)
    return training.combine_loss_sums(sums, weights, model.config.energy_scale)


def make_graph_parallel_step(model: GraphParallelPotential, optimizer, weights: training.LossWeights,
                             placement: Placement):
    """``(params, opt_state, placed GraphInputs) -> (params, opt_state, loss)``; parameters stay replicated."""

    @partial(jax.jit, out_shardings=placement.replicated)
    def step(params, opt_state, inputs):
        loss, grads = jax.value_and_grad(lambda p: graph_parallel_loss(model, p, inputs, weights, placement.mesh))(
            params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state, loss

    def train_step(params, opt_state, inputs):
        params, opt_state, loss = step(params, opt_state, inputs)
        return params, opt_state, Placement.local(loss)

    return train_step


def make_graph_parallel_errors(model: GraphParallelPotential, placement: Placement):
    """Jitted ``(params, placed GraphInputs) -> (|energy error|, sum of |force component errors|)``, replicated
    scalars: MAEs without bringing sharded forces to one host."""

    @partial(jax.jit, out_shardings=placement.replicated)
    def errors(params, inputs):
        energy, forces = graph_parallel_energy_and_forces(model, params, inputs, placement.mesh)
        force_error = jnp.where(inputs.node_mask[:, None], jnp.abs(forces - inputs.forces), 0.0)
        return jnp.abs(energy - inputs.energy), jnp.sum(force_error)

    return errors


def graph_parallel_metrics(errors, params, placed: Sequence[GraphInputs], num_atoms: Sequence[int]) -> dict:
    """Energy MAE (meV/atom) and force MAE (meV/Å per component) over placed graphs."""
    energy, forces = [], []
    for inputs, n in zip(placed, num_atoms):
        e, f = Placement.local(errors(params, inputs))
        energy.append(float(e) / n)
        forces.append(float(f) / (3 * n))
    return {"energy_mae_meV_per_atom": 1000.0 * float(np.mean(energy)),
            "forces_mae_meV_per_A": 1000.0 * float(np.sum(np.multiply(forces, num_atoms)) / np.sum(num_atoms))}
