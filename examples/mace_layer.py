"""A MACE-style model on a real molecule: fused message passing + per-species symmetric contraction.

Builds :class:`potential.mace.MACEEnergy`, two :class:`potential.mace.MACELayer` blocks (``features`` channels, spherical harmonics up to ``lmax``, body
order ``correlation``), runs them on the first frame of ``--data`` (default ``../shared/data/rmd17_aspirin_train.xyz``;
a small random molecule when the file is absent), checks that the energy is invariant and the forces equivariant
under a random rotation with inversion, and times the energy and the forces (``-dE/dpositions``) under ``jax.jit``
with the chosen ``--backend``.

    python examples/mace_layer.py [--data FILE] [--features 32] [--lmax 3] [--correlation 3] [--backend auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e3nn_fast as e3nn  # noqa: E402
from potential.mace import MACEEnergy  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                            "rmd17_aspirin_train.xyz")


def molecule(path: str):
    """Positions (Å) and species indices of the first frame of ``path``, or of a random 20-atom molecule."""
    if os.path.exists(path):
        import ase.io

        atoms = ase.io.read(path, index=0)
        numbers = atoms.get_atomic_numbers()
        _, species = np.unique(numbers, return_inverse=True)
        return atoms.get_positions(), species, f"{os.path.basename(path)} frame 0 ({len(atoms)} atoms)"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 6, (20, 3)), rng.integers(0, 3, 20), "random 20-atom molecule (no data file)"


def graph(positions: np.ndarray, cutoff: float):
    """All ordered pairs closer than ``cutoff`` (no self-loops)."""
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    senders, receivers = np.nonzero((distances < cutoff) & ~np.eye(len(positions), dtype=bool))
    return senders.astype(np.int32), receivers.astype(np.int32)


def median_ms(f, *args, repeats: int = 10) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--lmax", type=int, default=3)
    parser.add_argument("--correlation", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--backend", default="auto", choices=["auto", "reference", "jnp", "pallas"])
    args = parser.parse_args(argv)

    positions, species, label = molecule(args.data)
    senders, receivers = graph(positions, args.cutoff)
    num_species = int(species.max()) + 1
    hidden = f"{args.features}x0e+{args.features}x1o"
    model = MACEEnergy(dict(features=args.features, hidden_irreps=hidden, num_species=num_species, lmax=args.lmax,
                            correlation=args.correlation, cutoff=args.cutoff,
                            avg_num_neighbours=len(senders) / len(positions)))
    positions = jnp.asarray(positions, jnp.float32)
    species = jnp.asarray(species, jnp.int32)
    with e3nn.backend(args.backend):
        params = jax.jit(model.init)(jax.random.PRNGKey(0), positions, species, senders, receivers)
        energy = jax.jit(lambda p, x: model.apply(p, x, species, senders, receivers))
        forces = jax.jit(lambda p, x: -jax.grad(lambda y: model.apply(p, y, species, senders, receivers))(x))
        e0, f0 = energy(params, positions), forces(params, positions)
        rotation = -e3nn.rand_matrix(jax.random.PRNGKey(1), (), dtype=jnp.float32)  # with the inversion
        e1, f1 = energy(params, positions @ rotation.T), forces(params, positions @ rotation.T)
        results = {
            "molecule": label,
            "edges": int(len(senders)),
            "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
            "energy": float(e0),
            "energy_invariance_error": float(abs(e1 - e0) / max(abs(e0), 1e-6)),
            "forces_equivariance_error": float(jnp.max(jnp.abs(f1 - f0 @ rotation.T)) / jnp.max(jnp.abs(f0))),
            "energy_ms": median_ms(energy, params, positions),
            "forces_ms": median_ms(forces, params, positions),
        }
    for key, value in results.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    return results


if __name__ == "__main__":
    main()
