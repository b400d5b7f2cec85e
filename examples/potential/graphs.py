"""Graphs from frames (neighbour lists within a cutoff) and jraph-style padding of several graphs to fixed shapes.

``jax.jit`` compiles once per input shape, so every batch is padded to the same :class:`PaddingBudget`: extra nodes
and edges belong to one extra "padding graph" that is masked out of the loss.  The padding edges join the last
padding node to itself through a long fixed shift vector, so their length is far beyond any cutoff (no message) and
never zero (no 0/0 in the gradient of ``|r|``, which would otherwise leak NaNs into the force loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from .data import Frame, reference_energy, species_indices

PAD_EDGE_SHIFT = np.array([1000.0, 0.0, 0.0])  # Å; longer than any cutoff


@dataclass(frozen=True)
class Graph:
    """One structure as a graph (numpy).  An edge ``senders -> receivers`` has the vector
    ``positions[senders] - positions[receivers] + shifts`` (``shifts``: periodic image offsets in Å).  ``energy`` is
    the total energy minus the per-species reference energies."""

    species: np.ndarray
    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    energy: float
    forces: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.species)

    @property
    def num_edges(self) -> int:
        return len(self.senders)


def neighbour_list(frame: Frame, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(senders, receivers, shifts in Å) of every ordered pair closer than ``cutoff``, periodic images included."""
    import ase
    from ase.neighborlist import neighbor_list

    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    # ase: positions[j] - positions[i] + S @ cell is the vector from atom i to the image of atom j.
    i, j, image = neighbor_list("ijS", atoms, cutoff)
    return j.astype(np.int32), i.astype(np.int32), image.astype(np.float64) @ frame.cell


def build_graph(frame: Frame, cutoff: float, table: np.ndarray, e0: np.ndarray) -> Graph:
    """The graph of ``frame``, with its energy relative to the reference energies ``e0`` (computed in float64)."""
    senders, receivers, shifts = neighbour_list(frame, cutoff)
    return Graph(
        species=species_indices(frame.numbers, table).astype(np.int32),
        positions=frame.positions,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        energy=frame.energy - reference_energy(frame, table, e0),
        forces=frame.forces,
    )


class PaddingBudget(NamedTuple):
    """Fixed sizes of a padded batch; ``num_graphs`` includes the padding graph."""

    num_nodes: int
    num_edges: int
    num_graphs: int


def padding_budget(graphs: Sequence[Graph], batch_size: int) -> PaddingBudget:
    """The smallest budget that fits any ``batch_size`` of ``graphs``, plus one padding node and graph."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    nodes = sorted((g.num_nodes for g in graphs), reverse=True)[:batch_size]
    edges = sorted((g.num_edges for g in graphs), reverse=True)[:batch_size]
    return PaddingBudget(num_nodes=sum(nodes) + 1, num_edges=sum(edges) + 1, num_graphs=batch_size + 1)


class GraphBatch(NamedTuple):
    """Several graphs concatenated and padded (a pytree of arrays, fixed shapes).  ``N``, ``E``, ``G`` are the budget.

    positions (N, 3), species (N,), senders (E,), receivers (E,), shifts (E, 3), node_graph (N,) graph of each node,
    node_mask (N,), graph_mask (G,), num_atoms (G,), energy (G,), forces (N, 3).
    """

    positions: np.ndarray
    species: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    node_graph: np.ndarray
    node_mask: np.ndarray
    graph_mask: np.ndarray
    num_atoms: np.ndarray
    energy: np.ndarray
    forces: np.ndarray


def pad_and_batch(graphs: Sequence[Graph], budget: PaddingBudget, dtype=np.float32) -> GraphBatch:
    """Concatenate ``graphs`` (node indices offset per graph) and pad to ``budget``."""
    num_nodes = sum(g.num_nodes for g in graphs)
    num_edges = sum(g.num_edges for g in graphs)
    if not graphs or len(graphs) >= budget.num_graphs or num_nodes >= budget.num_nodes or num_edges > budget.num_edges:
        raise ValueError(
            f"{len(graphs)} graphs with {num_nodes} nodes and {num_edges} edges do not fit {budget} "
            "(one node and one graph are kept for padding)"
        )
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs[:-1]])
    pad_nodes, pad_edges = budget.num_nodes - num_nodes, budget.num_edges - num_edges
    pad_graph, last_node = len(graphs), budget.num_nodes - 1

    def nodes(field, fill_shape=()):
        real = np.concatenate([getattr(g, field) for g in graphs])
        return np.concatenate([real, np.zeros((pad_nodes,) + fill_shape, real.dtype)])

    senders = np.concatenate([g.senders + o for g, o in zip(graphs, offsets)] + [np.full(pad_edges, last_node)])
    receivers = np.concatenate([g.receivers + o for g, o in zip(graphs, offsets)] + [np.full(pad_edges, last_node)])
    shifts = np.concatenate([g.shifts for g in graphs] + [np.tile(PAD_EDGE_SHIFT, (pad_edges, 1))])
    node_graph = np.concatenate(
        [np.full(g.num_nodes, k) for k, g in enumerate(graphs)] + [np.full(pad_nodes, pad_graph)]
    )
    graph_mask = np.arange(budget.num_graphs) < len(graphs)
    num_atoms = np.zeros(budget.num_graphs)
    num_atoms[: len(graphs)] = [g.num_nodes for g in graphs]
    num_atoms[pad_graph] = pad_nodes
    energy = np.zeros(budget.num_graphs)
    energy[: len(graphs)] = [g.energy for g in graphs]
    return GraphBatch(
        positions=nodes("positions", (3,)).astype(dtype),
        species=nodes("species").astype(np.int32),
        senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32),
        shifts=shifts.astype(dtype),
        node_graph=node_graph.astype(np.int32),
        node_mask=np.arange(budget.num_nodes) < num_nodes,
        graph_mask=graph_mask,
        num_atoms=num_atoms.astype(dtype),
        energy=energy.astype(dtype),
        forces=nodes("forces", (3,)).astype(dtype),
    )


def iterate_batches(
    graphs: Sequence[Graph], batch_size: int, budget: PaddingBudget, rng: Optional[np.random.Generator] = None
) -> Iterator[GraphBatch]:
    """One pass over ``graphs`` in batches of ``batch_size`` (shuffled when ``rng`` is given; the last may be short)."""
    order = np.arange(len(graphs)) if rng is None else rng.permutation(len(graphs))
    for start in range(0, len(graphs), batch_size):
        yield pad_and_batch([graphs[i] for i in order[start : start + batch_size]], budget)


def average_num_neighbours(graphs: Sequence[Graph]) -> float:
    """Mean number of edges per node: the model divides its aggregated messages by it."""
    return sum(g.num_edges for g in graphs) / sum(g.num_nodes for g in graphs)


def forces_rms(graphs: Sequence[Graph]) -> float:
    """Root mean square force component (eV/Å): the natural energy scale of the model's output."""
    forces = np.concatenate([g.forces for g in graphs])
    return float(np.sqrt(np.mean(forces**2)))
