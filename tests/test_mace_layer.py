"""The MACE-style example layer (examples/potential/mace.py): fused message passing + per-species symmetric
contraction give an O(3)-invariant energy and equivariant forces, the same with every executor."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from potential.mace import MACEEnergy  # noqa: E402


@pytest.fixture(scope="module")
def system():
    rng = np.random.default_rng(0)
    positions = jnp.asarray(rng.uniform(0, 4, (7, 3)))
    species = jnp.array([0, 1, 0, 1, 1, 0, 2])
    senders, receivers = np.nonzero(~np.eye(7, dtype=bool))
    model = MACEEnergy(dict(features=2, hidden_irreps="2x0e+2x1o", num_species=3, lmax=1, correlation=3,
                            cutoff=5.0, avg_num_neighbours=6.0))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), positions, species, senders, receivers)

    def energy_and_forces(positions):
        energy = lambda x: model.apply(params, x, species, senders, receivers)
        return energy(positions), -jax.grad(energy)(positions)

    return positions, energy_and_forces


def test_energy_invariant_and_forces_equivariant(system):
    positions, energy_and_forces = system
    rotation = -np.asarray(e3nn.rand_matrix(jax.random.PRNGKey(3), (), dtype=jnp.float64))  # with the inversion
    f = jax.jit(energy_and_forces)
    e0, f0 = f(positions)
    e1, f1 = f(positions @ rotation.T)
    assert np.abs(np.asarray(f0)).max() > 1e-3
    np.testing.assert_allclose(e1, e0, rtol=1e-10)
    np.testing.assert_allclose(f1, f0 @ rotation.T, atol=1e-10)


@pytest.mark.slow  # the executors are compared op by op in test_message_passing / test_symmetric_contraction
def test_fused_executors_agree_with_the_reference(system):
    positions, energy_and_forces = system
    with e3nn.backend("reference"):
        expected = jax.jit(lambda x: energy_and_forces(x))(positions)
    got = jax.jit(lambda x: energy_and_forces(x))(positions)  # auto: the jnp executors on CPU
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-10)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-10)
