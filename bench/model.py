"""The NequIP-style training-step workload: a small interatomic potential on a real molecule graph.

The model is written once against e3nn-jax's public API and built with whichever library a backend supplies (both
``e3nn_jax`` and ``e3nn_fast`` speak it): species embedding, edge spherical harmonics ``l <= 2``, a Bessel radial
basis with a polynomial envelope feeding a radial MLP that weights every message channel, ``tensor_product`` of the
sender features with the harmonics, ``scatter_sum`` onto the receivers, a species-indexed self-interaction and a gated
nonlinearity, twice, then a linear read-out summed into the energy (two interaction layers: enough to
nest two tensor products per force, and compile in seconds on a CPU).  Forces are ``-dE/dpositions``.

The data (:func:`dataset`, in this order):

* ``E3NN_FAST_BENCH_MOLECULE=emt``: the generated copper data below, whatever is on disk;
* ``E3NN_FAST_BENCH_MOLECULE=<file>``: that extended-XYZ file (skipped with a note when it does not exist);
* revised-MD17 aspirin, ``../shared/data/rmd17_aspirin_train.xyz`` from the repository root, when it exists (it
  lives outside the repository); every ordered pair of atoms of a frame closer than 5 Å is an edge;
* otherwise, so that a fresh clone runs the workload too, data generated offline by the training example's own
  generator (``simulate_emt_copper`` of ``examples/potential/data.py``, imported from there, never copied): Langevin
  molecular dynamics of a periodic 32-atom fcc copper cell at 800 K labelled by ASE's EMT calculator, with the
  example's 4 Å cutoff and its periodic neighbour list (edges to periodic images carry a shift vector).

Nothing is downloaded.  ``frames`` frames are put side by side as one disjoint graph.  Which data ran is recorded in
results.json (the workload's ``data`` and every row's ``data``) and in results.md.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bench.passes import Inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FILE = os.path.join(ROOT, "..", "shared", "data", "rmd17_aspirin_train.xyz")
EXAMPLE_PACKAGE = os.path.join(ROOT, "examples", "potential")  # the training example's building blocks
ENVIRONMENT_VARIABLE = "E3NN_FAST_BENCH_MOLECULE"
GENERATED = "emt"  # the environment variable's value that asks for the generated data
MOLECULE_CUTOFF = 5.0  # Å
EMT_CUTOFF = 4.0  # Å, as examples/train_potential.py uses for its EMT data
HIDDEN = "32x0e + 16x1o + 16x2e"
GATED = "64x0e + 16x1o + 16x2e"  # 32 scalars + 32 gates (one per non-scalar channel)
LAYERS = 2
RADIAL_BASIS = 8


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where the frames come from: ``file`` (extended XYZ) or None for the generated EMT copper data."""

    file: Optional[str]
    cutoff: float
    description: str


def data_file() -> str:
    """Path of the molecule file: ``E3NN_FAST_BENCH_MOLECULE`` when set to a path, else rMD17 aspirin."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return value if value and value != GENERATED else DATA_FILE


def dataset() -> Dataset:
    """The data the workload runs on (see the module docstring for the order)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    if value != GENERATED and (value or os.path.exists(DATA_FILE)):
        path = data_file()
        shown = os.path.relpath(path, ROOT) if path == DATA_FILE else path
        name = "rMD17 aspirin" if path == DATA_FILE else os.path.basename(path)
        return Dataset(path, MOLECULE_CUTOFF, f"{name} ({shown}), {MOLECULE_CUTOFF:g} Å cutoff")
    reason = "asked for" if value == GENERATED else f"{os.path.relpath(DATA_FILE, ROOT)} not found"
    return Dataset(None, EMT_CUTOFF, f"generated offline ({reason}): EMT copper MD, 32-atom periodic fcc cell at "
                                     f"800 K (ase EMT, examples/potential/data.py), {EMT_CUTOFF:g} Å cutoff")


def example_modules():
    """The training example's ``data`` and ``graphs`` modules (examples/potential/), imported from the checkout under a
    private package name (the example is not an installed package)."""
    name = "_e3nn_fast_bench_example_potential"
    if name not in sys.modules:
        init = os.path.join(EXAMPLE_PACKAGE, "__init__.py")
        if not os.path.exists(init):
            raise ImportError(f"{os.path.relpath(EXAMPLE_PACKAGE, ROOT)} not found (the EMT data generator)")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[EXAMPLE_PACKAGE])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
    return importlib.import_module(f"{name}.data"), importlib.import_module(f"{name}.graphs")


def unavailable_reason() -> Optional[str]:
    """Why the workload cannot run here (missing ase or haiku, a named file that does not exist), or None."""
    for module, package in (("ase.io", "ase"), ("haiku", "dm-haiku")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed"
    data = dataset()
    if data.file is not None and not os.path.exists(data.file):
        return f"molecule file {data.file} not found"
    if data.file is None and not os.path.exists(os.path.join(EXAMPLE_PACKAGE, "data.py")):
        return f"no rMD17 file and no EMT generator ({os.path.relpath(EXAMPLE_PACKAGE, ROOT)}/data.py)"
    return None


def details(frames: int) -> dict:
    """What results.json records about the workload: the data used."""
    return {"data": dataset().description}


@functools.lru_cache(maxsize=None)
def _generated_frames(frames: int) -> tuple:
    data, _ = example_modules()
    return tuple(data.simulate_emt_copper(frames))


def _molecule_frames(path: str, frames: int) -> list:
    """(atomic numbers, positions, energy, forces) of the first ``frames`` frames of an extended-XYZ file."""
    import ase.io

    structures = ase.io.read(path, index=f":{frames}")
    if len(structures) < frames:
        raise ValueError(f"{path} holds {len(structures)} frames, fewer than the {frames} requested")
    out = []
    for atoms in structures:
        energy = atoms.info.get("energy")
        if energy is None and atoms.calc is not None:
            energy = atoms.calc.results.get("energy")
        forces = atoms.arrays.get("forces")
        if forces is None and atoms.calc is not None:
            forces = atoms.calc.results.get("forces")
        positions = atoms.get_positions()
        out.append((atoms.get_atomic_numbers(), positions, 0.0 if energy is None else float(energy),
                    np.zeros_like(positions) if forces is None else np.asarray(forces)))
    return out


def _all_pairs(positions: np.ndarray, cutoff: float):
    """(senders, receivers, shifts) of every ordered pair of distinct atoms closer than ``cutoff`` (no periodicity)."""
    distances = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    senders, receivers = np.nonzero((distances < cutoff) & ~np.eye(len(positions), dtype=bool))
    return senders, receivers, np.zeros((len(senders), 3))


def species_table() -> tuple:
    """The atomic numbers of the data (sorted); an atom's species index is its position here.  For a file, those of
    its first frame (rMD17 aspirin: H, C, O)."""
    data = dataset()
    if data.file is None:
        return (29,)  # copper
    numbers = _molecule_frames(data.file, 1)[0][0]
    return tuple(int(z) for z in np.unique(numbers))


def load_graph(frames: int, dtype) -> dict:
    """``frames`` frames of the data as one disjoint graph: positions, species index, edges (with the periodic image
    shift of each edge, zero for molecules), energy and forces."""
    data = dataset()
    table = species_table()
    if data.file is None:
        _, graphs = example_modules()
        labelled = []
        for frame in _generated_frames(frames):
            # the example's convention: the vector of an edge is positions[senders] - positions[receivers] + shift
            senders, receivers, shifts = graphs.neighbour_list(frame, data.cutoff)
            labelled.append((frame.numbers, frame.positions, frame.energy, frame.forces, senders, receivers, -shifts))
    else:
        labelled = [(z, pos, e, f, *_all_pairs(pos, data.cutoff))
                    for z, pos, e, f in _molecule_frames(data.file, frames)]
    positions, species, senders, receivers, shifts, energies, forces = [], [], [], [], [], [], []
    offset = 0
    for numbers, pos, energy, force, src, dst, shift in labelled:
        unknown = sorted(set(int(z) for z in numbers) - set(table))
        if unknown:
            raise ValueError(f"elements {unknown} are not among the species {table} of the first frame")
        positions.append(pos)
        species.append([table.index(int(z)) for z in numbers])
        senders.append(src + offset)
        receivers.append(dst + offset)
        shifts.append(shift)
        energies.append(energy)
        forces.append(force)
        offset += len(pos)
    energies = np.asarray(energies)
    return {
        "positions": jnp.asarray(np.concatenate(positions), dtype),
        "species": jnp.asarray(np.concatenate(species), jnp.int32),
        "senders": jnp.asarray(np.concatenate(senders), jnp.int32),
        "receivers": jnp.asarray(np.concatenate(receivers), jnp.int32),
        # per edge: add to positions[receivers] - positions[senders] for the edge vector (periodic images)
        "shifts": jnp.asarray(np.concatenate(shifts), dtype),
        # per-frame energies, centred: the benchmark measures speed, a constant offset only hurts fp32 precision
        "energy": jnp.asarray(np.sum(energies - energies.mean()), dtype),
        "forces": jnp.asarray(np.concatenate(forces), dtype),
    }


def _weight_channels(lib, messages, weights):
    """Scale every channel of ``messages`` by its own per-edge weight (a column of ``weights``), written as client
    code writes it: ``messages * weights`` with ``weights.shape[-1] == messages.irreps.num_irreps`` (NequIP and MACE
    layers built on e3nn-jax do exactly this; both libraries route it through their elementwise product).

    Until 2026-12-05 this workload spelled the product out chunk by chunk in plain ``jnp`` (``chunk * w[:, a:b,
    None]`` and ``from_chunks``), which is library-neutral code: XLA then differentiates it the same way for both
    libraries (its weight gradient, a ``reduce_sum`` per chunk, became a dense dot with a 0/1 matrix, about 7 of the
    20 ms of a training step here).  The README gives the step's times both ways."""
    return messages * weights


def potential(lib, positions, species, senders, receivers, shifts, num_species: int, cutoff: float):
    """Total energy of the graph (inside ``hk.transform``)."""
    vectors = lib.IrrepsArray("1o", positions[receivers] - positions[senders] + shifts)
    sh = lib.spherical_harmonics([1, 2], vectors, normalize=True, normalization="component")
    lengths = lib.norm(vectors).array[:, 0]
    radial = lib.bessel(lengths, RADIAL_BASIS, cutoff) * lib.poly_envelope(5, 2, cutoff)(lengths)[:, None]
    one_hot = lib.IrrepsArray(f"{num_species}x0e", jax.nn.one_hot(species, num_species, dtype=positions.dtype))
    nodes = lib.haiku.Linear(HIDDEN)(one_hot)
    for _ in range(LAYERS):
        messages = lib.concatenate([nodes[senders], lib.tensor_product(nodes[senders], sh)]).regroup()
        messages = messages.filter(keep=HIDDEN)
        weights = lib.haiku.MultiLayerPerceptron([32, messages.irreps.num_irreps], act=jax.nn.silu)(radial)
        messages = _weight_channels(lib, messages, weights)
        aggregated = lib.scatter_sum(messages, dst=receivers, output_size=positions.shape[0]) / 8.0
        skip = lib.haiku.Linear(GATED, num_indexed_weights=num_species, force_irreps_out=True)(species, nodes)
        nodes = lib.gate(lib.haiku.Linear(GATED)(aggregated) + skip)
    return jnp.sum(lib.haiku.Linear("0e")(nodes).array)


def _transformed(lib):
    """The haiku-transformed potential for the current data's species and cutoff."""
    import haiku as hk

    num_species, cutoff = len(species_table()), dataset().cutoff
    return hk.without_apply_rng(hk.transform(lambda *args: potential(lib, *args, num_species, cutoff)))


def energy_function(lib):
    """``energy(params, positions, species, senders, receivers, shifts, energy_ref, forces_ref)`` built with ``lib``:
    the workload's forward takes every input array; the references only enter the training loss."""
    apply = _transformed(lib).apply

    def energy(params, positions, species, senders, receivers, shifts, energy_ref=None, forces_ref=None):
        return apply(params, positions, species, senders, receivers, shifts)

    return energy


def make_inputs(frames: int, dtype, key) -> Inputs:
    """Parameters (initialised with e3nn_fast; e3nn-jax uses the same names and shapes) and the graph."""
    import e3nn_fast

    graph = load_graph(frames, dtype)
    structure = (graph["positions"], graph["species"], graph["senders"], graph["receivers"], graph["shifts"])
    init = _transformed(e3nn_fast).init
    params = jax.jit(init)(key, *structure)  # eager haiku init dispatches thousands of small ops
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    arrays = (params, *structure, graph["energy"], graph["forces"])
    return Inputs(arrays, differentiable=(0, 1), force=1, trained=(0,))


def training_passes(energy, inputs: Inputs) -> dict:
    """``fwd``: the energy; ``fwd+bwd``: energy and forces (the step whose compile time the report compares);
    ``forces``: one training step's loss and parameter gradient, the loss matching energy and forces (a double
    backward through ``-dE/dpositions``)."""

    def fwd(params, positions, species, senders, receivers, shifts, energy_ref, forces_ref, _cotangent):
        return energy(params, positions, species, senders, receivers, shifts)

    def fwd_bwd(params, positions, species, senders, receivers, shifts, energy_ref, forces_ref, _cotangent):
        e, minus_forces = jax.value_and_grad(energy, argnums=1)(params, positions, species, senders, receivers,
                                                                 shifts)
        return e, -minus_forces

    def loss(params, positions, species, senders, receivers, shifts, energy_ref, forces_ref):
        e, minus_forces = jax.value_and_grad(energy, argnums=1)(params, positions, species, senders, receivers,
                                                                 shifts)
        return (e - energy_ref) ** 2 / positions.shape[0] + jnp.mean((-minus_forces - forces_ref) ** 2)

    def step(params, positions, species, senders, receivers, shifts, energy_ref, forces_ref, _cotangent):
        return jax.value_and_grad(loss)(params, positions, species, senders, receivers, shifts, energy_ref,
                                        forces_ref)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "forces": step}
