"""Frames labelled with energies and forces: reading extended XYZ, generating EMT molecular dynamics, reference
energies.

A :class:`Frame` is plain numpy (float64) so that large total energies (aspirin: -17618 eV) keep their precision;
per-species reference energies are subtracted here, in float64, before anything is cast to float32 for the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One labelled structure: atomic numbers (n,), positions (n, 3) Å, cell (3, 3) Å, pbc (3,), energy (eV), forces
    (n, 3) eV/Å."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    forces: np.ndarray

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)


def frame_from_atoms(atoms) -> Frame:
    """Convert an ``ase.Atoms`` carrying energy and forces (calculator results, or ``info``/``arrays``) to a Frame."""
    energy, forces = None, None
    if atoms.calc is not None:
        # ase's extxyz reader stores the labels in a SinglePointCalculator.
        energy = atoms.calc.results.get("energy")
        forces = atoms.calc.results.get("forces")
    if energy is None:
        energy = atoms.info.get("energy", atoms.info.get("REF_energy"))
    if forces is None:
        forces = atoms.arrays.get("forces", atoms.arrays.get("REF_forces"))
    if energy is None or forces is None:
        raise ValueError(f"structure {atoms.get_chemical_formula()} has no energy and forces labels")
    return Frame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell[:], dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        energy=float(energy),
        forces=np.asarray(forces, dtype=np.float64),
    )


def read_xyz(path: str | os.PathLike, limit: Optional[int] = None) -> List[Frame]:
    """Read an extended XYZ file of labelled frames (all of them, or the first ``limit``)."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist")
    index = ":" if limit is None else f":{int(limit)}"
    frames = [frame_from_atoms(atoms) for atoms in ase.io.read(path, index=index)]
    if not frames:
        raise ValueError(f"data file {str(path)!r} holds no frames")
    return frames


def write_xyz(path: str | os.PathLike, frames: Sequence[Frame]) -> None:
    """Write frames as extended XYZ (energies and forces as calculator results), atomically (tmp file + rename)."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = []
    for frame in frames:
        atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = SinglePointCalculator(atoms, energy=frame.energy, forces=frame.forces)
        structures.append(atoms)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.xyz")  # processes writing the same cache do not collide
    ase.io.write(temporary, structures, format="extxyz")
    os.replace(temporary, path)


CACHE_VERSION = 2  # bump when simulate_emt_copper changes, so that stale cached data is not reused


def default_cache_dir() -> Path:
    """``$E3NN_FAST_CACHE`` or ``~/.cache/e3nn_fast``."""
    return Path(os.environ.get("E3NN_FAST_CACHE", Path.home() / ".cache" / "e3nn_fast"))


def simulate_emt_copper(
    num_frames: int,
    temperature_K: float = 800.0,
    interval: int = 10,
    timestep_fs: float = 5.0,
    repeat: int = 2,
    seed: int = 0,
) -> List[Frame]:
    """Langevin molecular dynamics of an fcc Cu cell (``4 * repeat**3`` atoms, periodic) with ASE's EMT calculator.

    Snapshots every ``interval`` steps after a short equilibration, each labelled with the EMT energy and forces.
    Real (if simple) physics: EMT is an effective-medium many-body potential fitted to copper.
    """
    import ase.units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    if num_frames < 1 or interval < 1:
        raise ValueError(f"need num_frames >= 1 and interval >= 1, got {num_frames} and {interval}")
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat, repeat, repeat))
    atoms.rattle(stdev=0.05, rng=rng)
    atoms.calc = EMT()
    # Maxwell-Boltzmann momenta, drawn directly (ase renamed its helper between versions).
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * ase.units.kB * temperature_K))
    dynamics = Langevin(
        atoms, timestep_fs * ase.units.fs, temperature_K=temperature_K, friction=0.01 / ase.units.fs, fixcm=False,
        rng=rng,
    )
    dynamics.run(20 * interval)  # equilibrate: the rattled lattice heats up to temperature_K
    frames = []
    for _ in range(num_frames):
        dynamics.run(interval)
        frames.append(frame_from_atoms(_labelled_copy(atoms)))
    return frames


def _labelled_copy(atoms):
    """A copy of ``atoms`` carrying its current energy and forces (so later MD steps do not overwrite them)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    return copy


def cached_emt_dataset(num_frames: int, cache_dir: Optional[str | os.PathLike] = None, **md_options) -> List[Frame]:
    """:func:`simulate_emt_copper`, stored as extended XYZ under ``cache_dir`` keyed by the MD settings."""
    settings = dict(num_frames=num_frames, generator=CACHE_VERSION, **md_options)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"emt_cu_md_{key}.xyz"
    if path.is_file():
        return read_xyz(path)
    write_xyz(path, simulate_emt_copper(num_frames, **md_options))
    return read_xyz(path)  # what the file holds, so that a first run and later runs (or processes) see equal data


def emt_copper_supercell(
    num_frames: int, repeat: int = 14, displacement_A: tuple = (0.05, 0.12), seed: int = 0
) -> List[Frame]:
    """Large periodic fcc Cu cells (``4 * repeat**3`` atoms; ``repeat=14``: 10,976) labelled with ASE's EMT.

    Molecular dynamics of ten thousand atoms with ASE's pure-Python EMT would take long, so each frame is the lattice
    with independent Gaussian displacements of an rms amplitude drawn per frame from ``displacement_A`` (Å per
    component; 0.1 Å is roughly copper at 800 K), which spreads the energies as well as the forces.  Atoms are
    sorted along x, then y, then z (the lattice sites, so every frame has the same order): in slabs along x,
    neighbours sit on the same or the next device when the graph is split into node ranges.
    """
    import ase
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    if num_frames < 1 or repeat < 1:
        raise ValueError(f"need num_frames >= 1 and repeat >= 1, got {num_frames} and {repeat}")
    lattice = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat, repeat, repeat))
    sites = lattice.positions
    order = np.lexsort((np.round(sites[:, 2], 3), np.round(sites[:, 1], 3), np.round(sites[:, 0], 3)))
    lattice = lattice[order]
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(num_frames):
        amplitude = rng.uniform(*displacement_A)
        atoms = ase.Atoms(lattice.numbers, lattice.positions + rng.normal(scale=amplitude, size=sites.shape),
                          cell=lattice.cell, pbc=True)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(frame_from_atoms(atoms))
    return frames


def cached_emt_supercell(num_frames: int, repeat: int = 14, cache_dir: Optional[str | os.PathLike] = None,
                         seed: int = 0) -> List[Frame]:
    """:func:`emt_copper_supercell`, cached as extended XYZ like :func:`cached_emt_dataset`."""
    settings = dict(num_frames=num_frames, repeat=repeat, seed=seed, generator=f"supercell-{CACHE_VERSION}")
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"emt_cu_supercell_{key}.xyz"
    if path.is_file():
        return read_xyz(path)
    write_xyz(path, emt_copper_supercell(num_frames, repeat=repeat, seed=seed))
    return read_xyz(path)


def split(frames: Sequence[Frame], num_test: int, seed: int = 0) -> tuple[List[Frame], List[Frame]]:
    """Shuffle and split into (train, test) with ``num_test`` test frames."""
    if not 0 < num_test < len(frames):
        raise ValueError(f"cannot hold out {num_test} of {len(frames)} frames")
    order = np.random.default_rng(seed).permutation(len(frames))
    return [frames[i] for i in order[num_test:]], [frames[i] for i in order[:num_test]]


def species_table(frames: Sequence[Frame]) -> np.ndarray:
    """The sorted atomic numbers present; an atom's species index is its position in this table."""
    return np.unique(np.concatenate([frame.numbers for frame in frames]))


def species_indices(numbers: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map atomic numbers to indices into ``table``; an element absent from the table is an error."""
    indices = np.searchsorted(table, numbers)
    indices = np.clip(indices, 0, len(table) - 1)
    unknown = table[indices] != numbers
    if np.any(unknown):
        raise ValueError(f"elements {sorted(set(numbers[unknown].tolist()))} are not in the training species {table}")
    return indices


def fit_reference_energies(frames: Sequence[Frame], table: np.ndarray) -> np.ndarray:
    """Per-species reference energies ``e0`` minimising ``sum_frames (E - sum_atoms e0[species])**2`` (least squares).

    When the composition never varies (one molecule, one crystal) the problem is rank deficient and lstsq returns the
    minimum-norm solution, which still reproduces the mean energy: that is all the model needs from it.
    """
    counts = np.stack([np.bincount(species_indices(f.numbers, table), minlength=len(table)) for f in frames])
    energies = np.array([f.energy for f in frames])
    e0, *_ = np.linalg.lstsq(counts.astype(np.float64), energies, rcond=None)
    return e0


def reference_energy(frame: Frame, table: np.ndarray, e0: np.ndarray) -> float:
    """The sum of the per-species reference energies of the atoms of ``frame``."""
    return float(np.sum(e0[species_indices(frame.numbers, table)]))
