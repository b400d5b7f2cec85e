"""Client code written against e3nn-jax runs unchanged on e3nn_fast once ``sys.modules["e3nn_jax"]`` is e3nn_fast.

This module is itself such a client: the model below imports e3nn-jax names at module level the way MACE- and
NequIP-style packages do, a private path included (mace-jax's ``from e3nn_jax._src.activation import
parity_function, scalar_activation``).  Each test evaluates a model here, on the real e3nn-jax (the test-only
oracle), and in a subprocess that aliases ``e3nn_jax`` to ``e3nn_fast`` *before* importing this very module, so
every ``e3nn_jax`` name above resolves to e3nn_fast there; energies and forces must agree.  The real e3nn-jax of
this test process is never touched by the alias.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax as e3nn
from e3nn_jax import Irrep, Irreps, IrrepsArray
from e3nn_jax._src.activation import parity_function, scalar_activation
from e3nn_jax.legacy import FunctionalTensorProduct

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# float64 on both sides: differences are rounding only, so the tolerance can be tight.
RTOL = 1e-9
ATOL = 1e-12

# ----------------------------------------------------------------------------------------------------------------
# A small MACE-style potential, written as a client of e3nn-jax would write it
# ----------------------------------------------------------------------------------------------------------------

NUM_SPECIES = 3
R_MAX = 3.0
AVG_NEIGHBORS = 5.0
CHANNEL = Irreps("0e + 1o")  # the irreps of one channel in the product basis
HIDDEN = Irreps("4x0e + 4x1o")  # four channels


class ScalarActivation:
    """mace-jax's adapter pattern: output irreps from ``parity_function`` up front, values by ``scalar_activation``."""

    def __init__(self, irreps_in, acts):
        self.irreps_in = Irreps(irreps_in)
        self.acts = list(acts)
        irreps_out = []
        for (mul, ir), act in zip(self.irreps_in, self.acts):
            if act is not None and ir.p == -1:
                parity = parity_function(act)
                if parity == 0:
                    raise ValueError(f"{act} is neither even nor odd, it cannot act on {mul}x{ir}")
                ir = Irrep(0, parity)
            irreps_out.append((mul, ir))
        self.irreps_out = Irreps(irreps_out)

    def __call__(self, x):
        y = scalar_activation(x, self.acts)
        if y.irreps != self.irreps_out:
            raise ValueError(f"expected {self.irreps_out}, got {y.irreps}")
        return y


def radial_embedding(lengths):
    """Bessel functions times MACE's polynomial envelope."""
    return e3nn.bessel(lengths, 8, R_MAX) * e3nn.poly_envelope(5, 2, R_MAX)(lengths)[:, None]


def mace_convolution(nodes, sh, radial, senders, receivers, num_nodes):
    """MACE's interaction: tensor product with the spherical harmonics, one radial weight per irrep copy."""
    messages = e3nn.tensor_product(nodes[senders], sh, filter_ir_out=CHANNEL).regroup()
    mlp = e3nn.haiku.MultiLayerPerceptron([16, messages.irreps.num_irreps], jax.nn.silu, output_activation=False)
    messages = messages * mlp(radial)  # a plain array: one weight per irrep copy
    return e3nn.scatter_sum(messages, dst=receivers, output_size=num_nodes) / AVG_NEIGHBORS


def nequip_convolution(nodes, sh, radial, senders, receivers, num_nodes):
    """jax-md's NequIP interaction: uvu paths of the legacy tensor product, radial-MLP weights, vmapped over edges."""
    irreps_mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(nodes.irreps):
        for j, (_, ir_sh) in enumerate(sh.irreps):
            for ir_out in ir_in * ir_sh:
                if ir_out in CHANNEL:
                    instructions.append((i, j, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    tp = FunctionalTensorProduct(nodes.irreps, sh.irreps, Irreps(irreps_mid), instructions)
    num_weights = sum(int(np.prod(ins.path_shape)) for ins in tp.instructions if ins.has_weight)
    weights = e3nn.haiku.MultiLayerPerceptron([16, num_weights], jax.nn.silu, output_activation=False)(radial)
    messages = e3nn.utils.vmap(tp.left_right)(weights, nodes[senders], sh)
    messages = messages.remove_zero_chunks().simplify()
    return e3nn.index_add(receivers, messages, out_dim=num_nodes) / AVG_NEIGHBORS


def product_basis(x, species, correlation):
    """MACE's product basis, per channel, from e3nn-jax's reduced symmetric tensor product bases."""
    x = x.mul_to_axis()  # (nodes, channels, CHANNEL)
    products = []
    for order in range(1, correlation + 1):
        basis = e3nn.reduced_symmetric_tensor_product_basis(CHANNEL, order, keep_ir=CHANNEL)
        terms = jnp.einsum("i...,nci->nc...", basis.array, x.array)
        for _ in range(order - 1):
            terms = jnp.einsum("nci...,nci->nc...", terms, x.array)
        products.append(IrrepsArray(basis.irreps, terms))
    products = e3nn.concatenate(products, axis=-1).regroup().axis_to_mul()
    return e3nn.haiku.Linear(HIDDEN, num_indexed_weights=NUM_SPECIES)(species, products)


def mace_like(positions, species, senders, receivers):
    """Energy of a structure: two interaction layers (MACE-style, then NequIP-style), each read out to energies."""
    num_nodes = positions.shape[0]
    vectors = IrrepsArray("1o", positions[receivers] - positions[senders])
    lengths = e3nn.norm(vectors).array[:, 0]
    sh = e3nn.spherical_harmonics(Irreps.spherical_harmonics(2), vectors, normalize=True, normalization="component")
    radial = radial_embedding(lengths)

    one_hot = IrrepsArray(f"{NUM_SPECIES}x0e", jax.nn.one_hot(species, NUM_SPECIES, dtype=positions.dtype))
    nodes = e3nn.haiku.Linear("4x0e")(one_hot)
    energy = 0.0
    for layer, convolution in enumerate([mace_convolution, nequip_convolution]):
        x = convolution(nodes, sh, radial, senders, receivers, num_nodes)
        x = e3nn.haiku.Linear(HIDDEN, force_irreps_out=True)(x)
        x = product_basis(x, species, correlation=3 - layer)
        if layer > 0:
            x = x + e3nn.haiku.Linear(x.irreps, num_indexed_weights=NUM_SPECIES, force_irreps_out=True)(species, nodes)
        vectors_x = x.filter("1o")
        triple = e3nn.tensor_product(vectors_x, e3nn.tensor_product(vectors_x, vectors_x, filter_ir_out="1e"))
        h = e3nn.concatenate([x, triple.filter("0o")])  # pseudoscalars, so that the odd scalars carry signal
        h = e3nn.haiku.Linear("8x0e + 4x0o + 4x1o")(h)
        h = ScalarActivation(h.irreps, [jax.nn.silu, jnp.tanh, None])(h)  # tanh is odd: 0o stays 0o
        pseudo = h.filter("0o")
        gates = ScalarActivation(pseudo.irreps, [jnp.abs])(pseudo)  # abs is even: 0o becomes 0e
        nodes = e3nn.gate(e3nn.concatenate([h, gates]))  # the last four scalars (the 0e gates) gate the 4x1o
        readout = e3nn.haiku.MultiLayerPerceptron([8, 1], jax.nn.silu, output_activation=False)(nodes.filter("0e"))
        energy = energy + jnp.sum(readout.array)
    return energy


# ----------------------------------------------------------------------------------------------------------------
# Scenarios: each returns the energy, the forces and the parameter layout; the same code runs on both libraries
# ----------------------------------------------------------------------------------------------------------------


def _random_parameters(shapes, seed: int):
    """Parameters of the given layout drawn from a fixed seed (identical layouts give identical values)."""
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(rng.normal(size=s.shape), s.dtype) for s in leaves])


def _layout(shapes) -> str:
    """The parameter names and shapes, one per line, to compare the layouts of the two runs."""
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return "\n".join(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}" for path, leaf in leaves)


def mace_like_energy_and_forces() -> dict:
    """The MACE-style model above on six atoms (all pairs are edges), with seeded random parameters."""
    rng = np.random.default_rng(0)
    positions = jnp.asarray(rng.normal(size=(6, 3)) * 1.2, jnp.float64)
    species = jnp.asarray([0, 1, 2, 0, 1, 0])
    senders, receivers = (jnp.asarray(i) for i in np.nonzero(~np.eye(6, dtype=bool)))
    model = hk.without_apply_rng(hk.transform(mace_like))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), positions, species, senders, receivers)
    params = _random_parameters(shapes, seed=1)
    energy, gradient = jax.jit(jax.value_and_grad(lambda r: model.apply(params, r, species, senders, receivers)))(
        positions
    )
    return {"energy": np.asarray(energy), "forces": -np.asarray(gradient), "layout": np.asarray(_layout(shapes))}


def jax_md_nequip_energy_and_forces() -> dict:
    """jax-md's NequIP (``energy.nequip_neighbor_list``) on eight atoms in a periodic cube, seeded parameters."""
    from jax_md import energy, space
    from jax_md._nn import nequip

    cfg = nequip.default_config()
    cfg.graph_net_steps = 2
    cfg.n_elements = 2
    cfg.hidden_irreps = "8x0e + 4x1e + 2x2e"
    cfg.num_basis = 4
    cfg.r_max = 2.5
    cfg.radial_net_n_hidden = 8
    cfg.n_neighbors = 6.0
    cfg.shift, cfg.scale = 0.0, 1.0

    box = 6.0
    rng = np.random.default_rng(0)
    positions = jnp.asarray(rng.uniform(0.0, box, size=(8, 3)), jnp.float64)
    atoms = jax.nn.one_hot(jnp.asarray(rng.integers(0, 2, size=8)), 2)
    displacement, _ = space.periodic(box)
    neighbor_fn, init_fn, energy_fn = energy.nequip_neighbor_list(displacement, box, cfg, atoms=atoms)
    neighbors = neighbor_fn.allocate(positions)
    shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0), positions, neighbors)
    params = _random_parameters(shapes, seed=1)
    value, gradient = jax.jit(jax.value_and_grad(lambda r: energy_fn(params, r, neighbors)))(positions)
    return {"energy": np.asarray(value), "forces": -np.asarray(gradient), "layout": np.asarray(_layout(shapes))}


# ----------------------------------------------------------------------------------------------------------------
# Running a scenario with e3nn_jax aliased to e3nn_fast
# ----------------------------------------------------------------------------------------------------------------

# The subprocess: alias first (the one line a client adds), then import this module, run, and check that every
# e3nn_jax name the module bound, the private path included, is e3nn_fast's and that the real e3nn-jax never loaded.
_ALIASED_RUN = textwrap.dedent(
    """
    import os, sys
    import e3nn_fast
    sys.modules["e3nn_jax"] = e3nn_fast

    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np

    tests_dir, scenario, output = sys.argv[1:4]
    sys.path.insert(0, tests_dir)
    import test_clients as client

    assert client.e3nn is e3nn_fast
    assert client.IrrepsArray is e3nn_fast.IrrepsArray and client.Irreps is e3nn_fast.Irreps
    assert client.parity_function is e3nn_fast.activation.parity_function
    assert client.scalar_activation is e3nn_fast.scalar_activation
    assert client.FunctionalTensorProduct is e3nn_fast.legacy.FunctionalTensorProduct
    results = getattr(client, scenario)()

    package_dir = os.path.dirname(e3nn_fast.__file__)
    for name, module in list(sys.modules.items()):
        if name == "e3nn_jax" or name.startswith("e3nn_jax."):
            assert os.path.dirname(module.__file__).startswith(package_dir), (name, module.__file__)
    np.savez(output, **results)
    """
)


def _start_aliased(scenario: str, output: str) -> subprocess.Popen:
    """Start ``scenario`` of this module in a subprocess where ``e3nn_jax`` is e3nn_fast (runs while we compute)."""
    # CPU: on a GPU machine the test process already holds most of the accelerator's memory.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-c", _ALIASED_RUN, TESTS_DIR, scenario, output],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish_aliased(process: subprocess.Popen, output: str, timeout: float) -> dict:
    """Wait for the subprocess and read its results; its stderr is the failure message."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, stderr
    with np.load(output) as data:
        return {key: data[key] for key in data.files}


def _compare(scenario, timeout: float) -> None:
    """Run ``scenario`` aliased (subprocess) and on the real e3nn-jax (here) at the same time; compare the results."""
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "aliased.npz")
        process = _start_aliased(scenario.__name__, output)
        try:
            reference = scenario()
        except BaseException:
            process.kill()
            process.communicate()
            raise
        ours = _finish_aliased(process, output, timeout)
    assert str(ours["layout"]) == str(reference["layout"])
    np.testing.assert_allclose(ours["energy"], reference["energy"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours["forces"], reference["forces"], rtol=RTOL, atol=ATOL)
    assert np.any(reference["forces"] != 0.0)  # the comparison is not vacuous


def test_this_module_runs_on_the_real_e3nn_jax_here():
    """In the test process the client's names are the oracle's (the alias lives only in the subprocesses)."""
    assert e3nn.__name__ == "e3nn_jax"
    assert parity_function.__module__ == "e3nn_jax._src.activation"


def test_mace_like_client_matches_e3nn_jax():
    _compare(mace_like_energy_and_forces, timeout=300)


@pytest.mark.slow
def test_jax_md_nequip_matches_e3nn_jax():
    """jax-md's NequIP, an unmodified third-party client; skipped where jax-md is not installed."""
    pytest.importorskip("jax_md")
    _compare(jax_md_nequip_energy_and_forces, timeout=600)
