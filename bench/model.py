"""The NequIP-style training-step workload: a small interatomic potential on a real molecule graph.

The model is written once against e3nn-jax's public API and built with whichever library a backend supplies (both
``e3nn_jax`` and ``e3nn_fast`` speak it): species embedding, edge spherical harmonics ``l <= 2``, a Bessel radial
basis with a polynomial envelope feeding a radial MLP that weights every message channel, ``tensor_product`` of the
sender features with the harmonics, ``scatter_sum`` onto the receivers, a species-indexed self-interaction and a gated
nonlinearity, twice, then a linear read-out summed into the energy (two interaction layers: enough to
nest two tensor products per force, and compile in seconds on a CPU).  Forces are ``-dE/dpositions``.

The graph comes from revised-MD17 aspirin (``../shared/data/rmd17_aspirin_train.xyz`` from the repository root,
read with ``ase.io``): ``molecules`` frames are put side by side as one disjoint graph, with every ordered pair of
atoms of a frame closer than the 5 Å cutoff as an edge.  When the file (or ``ase``) is missing the workload is
skipped with a note; nothing else depends on it.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bench.passes import Inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FILE = os.path.join(ROOT, "..", "shared", "data", "rmd17_aspirin_train.xyz")
CUTOFF = 5.0
SPECIES = (1, 6, 8)  # H, C, O: the elements of aspirin
HIDDEN = "32x0e + 16x1o + 16x2e"
GATED = "64x0e + 16x1o + 16x2e"  # 32 scalars + 32 gates (one per non-scalar channel)
LAYERS = 2
RADIAL_BASIS = 8


def data_file() -> str:
    """Path of the aspirin file (overridable with ``E3NN_FAST_BENCH_MOLECULE`` for other extended-XYZ files)."""
    return os.environ.get("E3NN_FAST_BENCH_MOLECULE", DATA_FILE)


def unavailable_reason() -> Optional[str]:
    """Why the workload cannot run here (missing file or ase), or None."""
    for module, package in (("ase.io", "ase"), ("haiku", "dm-haiku")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed"
    if not os.path.exists(data_file()):
        return f"molecule file {os.path.relpath(data_file(), ROOT)} not found"
    return None


def load_graph(molecules: int, dtype) -> dict:
    """``molecules`` frames of the data file as one disjoint graph: positions, species index, edges, targets."""
    import ase.io

    frames = ase.io.read(data_file(), index=f":{molecules}")
    if len(frames) < molecules:
        raise ValueError(f"{data_file()} holds {len(frames)} frames, fewer than the {molecules} requested")
    positions, species, senders, receivers, energies, forces = [], [], [], [], [], []
    offset = 0
    for frame in frames:
        pos = frame.get_positions()
        distances = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        src, dst = np.nonzero((distances < CUTOFF) & ~np.eye(len(pos), dtype=bool))
        positions.append(pos)
        species.append([SPECIES.index(z) for z in frame.get_atomic_numbers()])
        senders.append(src + offset)
        receivers.append(dst + offset)
        energies.append(frame.info.get("energy", 0.0))
        forces.append(frame.arrays["forces"] if "forces" in frame.arrays else np.zeros_like(pos))
        offset += len(pos)
    energies = np.asarray(energies)
    return {
        "positions": jnp.asarray(np.concatenate(positions), dtype),
        "species": jnp.asarray(np.concatenate(species), jnp.int32),
        "senders": jnp.asarray(np.concatenate(senders), jnp.int32),
        "receivers": jnp.asarray(np.concatenate(receivers), jnp.int32),
        # per-molecule energies, centred: the benchmark measures speed, a constant offset only hurts fp32 precision
        "energy": jnp.asarray(np.sum(energies - energies.mean()), dtype),
        "forces": jnp.asarray(np.concatenate(forces), dtype),
    }


def _weight_channels(lib, messages, weights):
    """Scale every channel of ``messages`` by its own per-edge weight (a column of ``weights``)."""
    chunks, offset = [], 0
    for (mul, _), chunk in zip(messages.irreps, messages.chunks):
        chunks.append(None if chunk is None else chunk * weights[:, offset : offset + mul, None])
        offset += mul
    return lib.from_chunks(messages.irreps, chunks, messages.shape[:-1], messages.dtype)


def potential(lib, positions, species, senders, receivers):
    """Total energy of the graph (inside ``hk.transform``)."""
    vectors = lib.IrrepsArray("1o", positions[receivers] - positions[senders])
    sh = lib.spherical_harmonics([1, 2], vectors, normalize=True, normalization="component")
    lengths = lib.norm(vectors).array[:, 0]
    radial = lib.bessel(lengths, RADIAL_BASIS, CUTOFF) * lib.poly_envelope(5, 2, CUTOFF)(lengths)[:, None]
    one_hot = lib.IrrepsArray(f"{len(SPECIES)}x0e", jax.nn.one_hot(species, len(SPECIES), dtype=positions.dtype))
    nodes = lib.haiku.Linear(HIDDEN)(one_hot)
    for _ in range(LAYERS):
        messages = lib.concatenate([nodes[senders], lib.tensor_product(nodes[senders], sh)]).regroup()
        messages = messages.filter(keep=HIDDEN)
        weights = lib.haiku.MultiLayerPerceptron([32, messages.irreps.num_irreps], act=jax.nn.silu)(radial)
        messages = _weight_channels(lib, messages, weights)
        aggregated = lib.scatter_sum(messages, dst=receivers, output_size=positions.shape[0]) / 8.0
        skip = lib.haiku.Linear(GATED, num_indexed_weights=len(SPECIES), force_irreps_out=True)(species, nodes)
        nodes = lib.gate(lib.haiku.Linear(GATED)(aggregated) + skip)
    return jnp.sum(lib.haiku.Linear("0e")(nodes).array)


def energy_function(lib):
    """``energy(params, positions, species, senders, receivers, energy_ref, forces_ref)`` built with ``lib``: the
    workload's forward takes every input array; the references only enter the training loss."""
    import haiku as hk

    apply = hk.without_apply_rng(hk.transform(lambda *args: potential(lib, *args))).apply

    def energy(params, positions, species, senders, receivers, energy_ref=None, forces_ref=None):
        return apply(params, positions, species, senders, receivers)

    return energy


def make_inputs(molecules: int, dtype, key) -> Inputs:
    """Parameters (initialised with e3nn_fast; e3nn-jax uses the same names and shapes) and the graph."""
    import haiku as hk

    import e3nn_fast

    graph = load_graph(molecules, dtype)
    structure = (graph["positions"], graph["species"], graph["senders"], graph["receivers"])
    init = hk.without_apply_rng(hk.transform(lambda *args: potential(e3nn_fast, *args))).init
    params = jax.jit(init)(key, *structure)  # eager haiku init dispatches thousands of small ops
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    arrays = (params, *structure, graph["energy"], graph["forces"])
    return Inputs(arrays, differentiable=(0, 1), force=1, trained=(0,))


def training_passes(energy, inputs: Inputs) -> dict:
    """``fwd``: the energy; ``fwd+bwd``: energy and forces; ``forces``: one training step's loss and parameter
    gradient, the loss matching energy and forces (a double backward through ``-dE/dpositions``)."""

    def fwd(params, positions, species, senders, receivers, energy_ref, forces_ref, _cotangent):
        return energy(params, positions, species, senders, receivers)

    def fwd_bwd(params, positions, species, senders, receivers, energy_ref, forces_ref, _cotangent):
        e, minus_forces = jax.value_and_grad(energy, argnums=1)(params, positions, species, senders, receivers)
        return e, -minus_forces

    def loss(params, positions, species, senders, receivers, energy_ref, forces_ref):
        e, minus_forces = jax.value_and_grad(energy, argnums=1)(params, positions, species, senders, receivers)
        return (e - energy_ref) ** 2 / positions.shape[0] + jnp.mean((-minus_forces - forces_ref) ** 2)

    def step(params, positions, species, senders, receivers, energy_ref, forces_ref, _cotangent):
        return jax.value_and_grad(loss)(params, positions, species, senders, receivers, energy_ref, forces_ref)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "forces": step}
