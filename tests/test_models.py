"""Real model code runs unchanged on e3nn_fast: a NequIP-style potential written once against the public API.

The same model function is built with ``e3nn_jax`` and with ``e3nn_fast``; parameters created by e3nn-jax are loaded
into e3nn_fast and must give the same energy and forces (-dE/dpositions), the same training gradients, and an
O(3)-invariant energy with equivariant forces.
"""

import subprocess
import sys
import textwrap

import e3nn_jax
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast

NUM_SPECIES = 3
CUTOFF = 3.0


def nequip_like(e3nn, positions, species, senders, receivers):
    """Embedding, spherical harmonics, radial MLP weights, tensor product, scatter_sum, indexed skip Linear, gate."""
    vectors = e3nn.IrrepsArray("1o", positions[receivers] - positions[senders])
    sh = e3nn.spherical_harmonics([1, 2], vectors, normalize=True, normalization="component")
    lengths = e3nn.norm(vectors).array[:, 0]
    radial = e3nn.soft_one_hot_linspace(lengths, start=0.0, end=CUTOFF, number=6, basis="smooth_finite", cutoff=True)

    one_hot = e3nn.IrrepsArray(f"{NUM_SPECIES}x0e", jax.nn.one_hot(species, NUM_SPECIES, dtype=positions.dtype))
    nodes = e3nn.haiku.Linear("8x0e")(one_hot)
    for _ in range(2):
        messages = e3nn.concatenate([nodes[senders], e3nn.tensor_product(nodes[senders], sh)]).regroup()
        messages = messages.filter(keep="0e + 1o + 2e")
        weights = e3nn.haiku.MultiLayerPerceptron([8, messages.irreps.num_irreps], act=jax.nn.silu)(radial)
        messages = _weight_per_irrep(e3nn, messages, weights)
        aggregated = e3nn.scatter_sum(messages, dst=receivers, output_size=positions.shape[0]) / 2.0
        target = "12x0e + 4x1o + 4x2e"  # 8 scalars + 8 gates for the 4 + 4 non-scalars
        skip = e3nn.haiku.Linear(target, num_indexed_weights=NUM_SPECIES, force_irreps_out=True)(species, nodes)
        nodes = e3nn.gate(e3nn.haiku.Linear(target)(aggregated) + skip)
    return jnp.sum(e3nn.haiku.Linear("0e")(nodes).array)


def _weight_per_irrep(e3nn, messages, weights):
    """Multiply each irrep (each channel) of ``messages`` by its own per-edge scalar weight."""
    chunks = []
    offset = 0
    for (mul, ir), chunk in zip(messages.irreps, messages.chunks):
        chunks.append(chunk * weights[:, offset : offset + mul, None])
        offset += mul
    return e3nn.from_chunks(messages.irreps, chunks, messages.shape[:-1], messages.dtype)


def make_model(e3nn):
    return hk.without_apply_rng(hk.transform(lambda *args: nequip_like(e3nn, *args)))


@pytest.fixture(scope="module")
def molecule():
    rng = np.random.default_rng(0)
    positions = jnp.asarray(rng.normal(size=(6, 3)) * 1.2, dtype=jnp.float64)
    species = jnp.asarray([0, 1, 2, 0, 1, 0])
    senders, receivers = np.nonzero(~np.eye(6, dtype=bool))
    return positions, species, jnp.asarray(senders), jnp.asarray(receivers)


@pytest.fixture(scope="module")
def params(molecule):
    params = jax.jit(make_model(e3nn_jax).init)(jax.random.PRNGKey(0), *molecule)  # eager init: 50 s of compiles
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)


def energy_and_forces(e3nn, params, molecule):
    model = make_model(e3nn)
    positions, *rest = molecule

    def energy(positions):
        return model.apply(params, positions, *rest)

    value, gradient = jax.jit(jax.value_and_grad(energy))(positions)
    return value, -gradient


def test_e3nn_jax_parameters_give_the_same_energy_and_forces(molecule, params):
    ours_params = make_model(e3nn_fast).init(jax.random.PRNGKey(0), *molecule)
    assert jax.tree_util.tree_map(jnp.shape, ours_params) == jax.tree_util.tree_map(jnp.shape, params)

    energy, forces = energy_and_forces(e3nn_fast, params, molecule)
    energy_ref, forces_ref = energy_and_forces(e3nn_jax, params, molecule)
    np.testing.assert_allclose(energy, energy_ref, rtol=1e-5)
    np.testing.assert_allclose(forces, forces_ref, rtol=1e-5, atol=1e-8)


def test_energy_invariant_forces_equivariant(molecule, params):
    positions, *rest = molecule
    rotation = -np.asarray(e3nn_fast.rand_matrix(jax.random.PRNGKey(3), (), dtype=jnp.float64))  # with inversion
    energy, forces = energy_and_forces(e3nn_fast, params, molecule)
    energy_rot, forces_rot = energy_and_forces(e3nn_fast, params, (positions @ rotation.T, *rest))
    np.testing.assert_allclose(energy_rot, energy, rtol=1e-10)
    np.testing.assert_allclose(forces_rot, forces @ rotation.T, atol=1e-10)


def test_training_step_on_energy_and_forces(molecule, params):
    positions, *rest = molecule
    target_energy, target_forces = 1.0, jnp.zeros_like(positions)

    def loss(e3nn, params):
        model = make_model(e3nn)
        energy, minus_forces = jax.value_and_grad(lambda p: model.apply(params, p, *rest))(positions)
        return (energy - target_energy) ** 2 + jnp.mean((-minus_forces - target_forces) ** 2)

    grads = jax.jit(jax.grad(lambda p: loss(e3nn_fast, p)))(params)
    grads_ref = jax.jit(jax.grad(lambda p: loss(e3nn_jax, p)))(params)
    flat, flat_ref = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref)
    assert all(np.all(np.isfinite(g)) for g in flat)
    for g, g_ref in zip(flat, flat_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-9)


def test_flax_model_matches_e3nn_jax():
    import flax.linen as nn

    def make(e3nn):
        class Block(nn.Module):
            @nn.compact
            def __call__(self, x, vectors):
                sh = e3nn.spherical_harmonics("0e + 1o + 2e", vectors, normalize=True)
                x = e3nn.flax.Linear("4x0e + 2x1o")(x)
                y = e3nn.tensor_product(x, sh, filter_ir_out="0e + 1o + 2e")
                y = e3nn.flax.Linear("6x0e + 2x1o + 2x2e")(y)
                return e3nn.gate(y)

        return Block()

    key = jax.random.PRNGKey(1)
    x = e3nn_jax.normal("3x0e + 1o", key, (5,))
    v = e3nn_jax.normal("1o", jax.random.PRNGKey(2), (5,))
    params = make(e3nn_jax).init(key, x, v)
    ours_params = make(e3nn_fast).init(key, e3nn_fast.IrrepsArray(x.irreps.__str__(), x.array), e3nn_fast.IrrepsArray("1o", v.array))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ours_params)):
        np.testing.assert_array_equal(a, b)
    out_ref = make(e3nn_jax).apply(params, x, v)
    out = make(e3nn_fast).apply(params, e3nn_fast.IrrepsArray(str(x.irreps), x.array), e3nn_fast.IrrepsArray("1o", v.array))
    assert str(out.irreps) == str(out_ref.irreps)
    np.testing.assert_allclose(out.array, out_ref.array, rtol=1e-5, atol=1e-6)


def test_module_aliasing_keeps_one_class_per_concept():
    """A client that maps e3nn_jax.* onto e3nn_fast.* in sys.modules sees one Irreps / IrrepsArray class."""
    script = textwrap.dedent(
        """
        import sys, importlib
        import e3nn_fast
        for name in ["", ".haiku", ".flax", ".legacy", ".utils"]:
            sys.modules["e3nn_jax" + name] = importlib.import_module("e3nn_fast" + name)
        import e3nn_jax as e3nn
        from e3nn_jax import Irreps, IrrepsArray
        from e3nn_jax.legacy import FunctionalTensorProduct
        import jax.numpy as jnp
        x = e3nn.IrrepsArray("1o", jnp.ones(3))
        y = e3nn.tensor_product(x, x)
        assert type(y) is IrrepsArray is e3nn_fast.IrrepsArray, type(y)
        assert type(y.irreps) is Irreps is e3nn_fast.Irreps
        assert FunctionalTensorProduct is e3nn_fast.legacy.FunctionalTensorProduct
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
