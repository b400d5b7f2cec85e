"""Per-species symmetric contraction (MACE product basis): the public op, its executors (reference, jnp, Pallas in
interpret mode) against each other and against e3nn-jax's haiku SymmetricTensorProduct, derivatives (first and
forces-style second order, jvp, vmap), CUDA lowering from CPU, and bad input.

Interpret-mode programs are slow to compile: kernel cases use tiny sizes and fuse forward and derivatives into one
jitted function.
"""

from __future__ import annotations

import itertools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast import dispatch
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.kernels import symmetric_contraction as kernel_module
from e3nn_fast.reference.symmetric_contraction import symmetric_contraction as reference_executor
from e3nn_fast.symmetric_contraction import describe, symmetric_contraction, symmetric_contraction_weight_shapes
from e3nn_fast.xla import symmetric_contraction as xla_module
from e3nn_fast.xla.symmetric_contraction import symmetric_contraction as jnp_executor


def kernel_executor(description, x, species, weights):
    return kernel_module.symmetric_contraction(description, x, species, weights, interpret=True)


def make_inputs(irreps, orders, keep, nodes, channels, species_count, dtype, seed=0):
    description = describe(irreps, orders, keep)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(nodes, channels, Irreps(irreps).dim)).astype(dtype)
    species = rng.integers(0, species_count, size=(nodes,)).astype(np.int32)
    weights = tuple(rng.normal(size=(species_count, b.mul, channels)).astype(dtype) for b in description.blocks)
    return description, jnp.asarray(x), jnp.asarray(species), tuple(jnp.asarray(w) for w in weights)


def assert_close(a, b, tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = max(1.0, float(np.max(np.abs(np.asarray(v)))) if np.size(v) else 1.0)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol * scale)


# --- one species == e3nn-jax's haiku SymmetricTensorProduct ---------------------------------------------------------


@pytest.mark.parametrize("executor,dtype", [("jnp", np.float32), ("jnp", np.float64), ("reference", np.float64)])
def test_one_species_equals_e3nn_jax(executor, dtype):
    e3nn_jax = pytest.importorskip("e3nn_jax")
    irreps, orders, keep = "0e+1o", (1, 2, 3), "0e+1o"
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3, Irreps(irreps).dim), dtype=dtype)

    def oracle(x):
        return e3nn_jax.haiku.SymmetricTensorProduct(orders, keep_irrep_out=keep)(e3nn_jax.IrrepsArray(irreps, x))

    transformed = hk.without_apply_rng(hk.transform(oracle))
    params = jax.jit(transformed.init)(jax.random.PRNGKey(1), x)["symmetric_tensor_product"]
    expected = jax.jit(transformed.apply)({"symmetric_tensor_product": params}, x)

    weights = {name: p[None] for name, p in params.items()}
    with e3nn.backend(executor):
        ours = jax.jit(lambda x, w: symmetric_contraction(IrrepsArray(irreps, x), jnp.zeros(5, jnp.int32), w,
                                                          orders, keep))(x, weights)
    assert str(ours.irreps) == str(expected.irreps) == "1x0e+1x1o"
    assert ours.shape == expected.shape and ours.dtype == dtype
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(expected.array), rtol=tol, atol=tol)


# --- executors agree ----------------------------------------------------------------------------------------------

CONFIGS = [
    # irreps, orders, keep, dtype (compiling the reference's gradients at order 3 dominates: one large case)
    ("0e+1o+2e", (1, 2, 3), "0e+1o", np.float32),
    ("2x0e+1o", (1, 3), None, np.float64),
    ("0e+1o", (2,), "0e", np.float64),
    ("0e+1o", (1,), None, np.float64),  # linear: no shared prefixes, every term one input factor and a weight
    ("0e+1o", (2, 4), "0e+1o", np.float64),  # order 4: three prefix levels in the jnp executor's gather program
]


@pytest.mark.parametrize("slab_padding", [0, 3], ids=["slabs unpadded", "slabs padded"])
@pytest.mark.parametrize("irreps,orders,keep,dtype", CONFIGS)
def test_jnp_executor_matches_reference_with_gradients(irreps, orders, keep, dtype, slab_padding, monkeypatch):
    monkeypatch.setattr(xla_module, "CHUNK_LANES", 8)  # chunks of 2 nodes: several chunks and a padded tail
    monkeypatch.setattr(xla_module, "slab_padding", lambda lanes, itemsize: slab_padding)
    description, x, species, weights = make_inputs(irreps, orders, keep, 9, 4, 3, dtype)
    species = species.at[-1].set(7)  # out of range: zero weights, zero output

    def run(executor):
        def loss(x, weights):
            return jnp.sum(jnp.sin(executor(description, x, species, weights)))

        return jax.jit(lambda x, w: (executor(description, x, species, w), jax.grad(loss, (0, 1))(x, w)))(x, weights)

    ours, expected = run(jnp_executor), run(reference_executor)
    assert ours[0].dtype == dtype
    assert_close(ours, expected, 1e-4 if dtype == np.float32 else 1e-11)
    np.testing.assert_array_equal(np.asarray(ours[0][-1]), 0.0)


def test_row_loop_knob_changes_the_loop_not_the_result():
    from e3nn_fast.kernels import tuning

    description, x, species, weights = make_inputs("0e+1o", (1, 2), None, 9, 4, 3, np.float64)
    assert xla_module.row_loop(9, 4) == (2, 5)  # 36 lanes: two iterations on CPU all the same
    assert xla_module.row_loop(1, 4) == (1, 1)
    with tuning.override(symmetric_contraction__jnp_chunk_lanes=8):
        assert xla_module.row_loop(9, 4) == (5, 2)  # 2 rows per iteration, the tail padded
        chunked = jax.jit(lambda x: jnp_executor(description, x, species, weights))(x)
    one_pass = jax.jit(lambda x: jnp_executor(description, x, species, weights))(x)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(one_pass), rtol=1e-13, atol=1e-13)


def test_sparse_terms_rebuild_the_dense_basis():
    description = describe("0e+1o+2e", (1, 2, 3), None)
    for block in description.blocks:
        rebuilt = np.zeros_like(block.dense)
        for t, m, k, v in zip(block.indices, block.basis, block.component, block.value):
            perms = set(itertools.permutations(tuple(t)))
            for p in perms:  # value is the sum over the tuple's distinct permutations of a symmetric basis
                rebuilt[p + (m, k)] = v / len(perms)
        np.testing.assert_allclose(rebuilt, block.dense, atol=1e-12)
        assert np.all(np.diff(block.indices, axis=1) >= 0)  # sorted tuples only


# --- Pallas kernels (interpret mode) ------------------------------------------------------------------------------


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 nodes x 2 channels: several grid steps in both directions and a padded node tail."""
    monkeypatch.setattr(kernel_module, "TILE_ELEMENTS", 8)
    monkeypatch.setattr(kernel_module, "MAX_CHANNEL_BLOCK", 2)


def derivatives(executor, description, species):
    """Forward, first derivatives w.r.t. x and weights, and the weight gradient of a forces-style loss."""

    def energy(x, weights):
        return jnp.sum(jnp.sin(executor(description, x, species, weights)))

    def forces_loss(x, weights):
        return jnp.sum(jax.grad(energy)(x, weights) ** 2)

    def everything(x, weights):
        return (executor(description, x, species, weights), jax.grad(energy, (0, 1))(x, weights),
                jax.grad(forces_loss, (0, 1))(x, weights))

    return jax.jit(everything)


def test_kernel_and_jnp_forward_gradients_and_second_order_fp64(small_tiles):
    # keep 1o only: every order, few terms (interpret-mode compile time grows with them)
    description, x, species, weights = make_inputs("0e+1o", (1, 2, 3), "1o", 6, 3, 2, np.float64)
    species = species.at[0].set(-1)
    expected = derivatives(reference_executor, description, species)(x, weights)
    assert_close(derivatives(kernel_executor, description, species)(x, weights), expected, 1e-11)
    assert_close(derivatives(jnp_executor, description, species)(x, weights), expected, 1e-11)


def test_kernel_forward_and_gradient_fp32(small_tiles):
    description, x, species, weights = make_inputs("2x0e+1o", (1, 2), None, 5, 3, 3, np.float32)

    def run(executor):
        loss = lambda x, w: jnp.sum(executor(description, x, species, w) ** 2)
        return jax.jit(lambda x, w: (executor(description, x, species, w), jax.grad(loss, (0, 1))(x, w)))(x, weights)

    ours, expected = run(kernel_executor), run(reference_executor)
    assert ours[0].dtype == jnp.float32
    assert_close(ours, expected, 1e-5)


@pytest.mark.parametrize("executor", [kernel_executor, jnp_executor], ids=["kernel", "jnp"])
def test_jvp_and_vmap(executor):
    description, x, species, weights = make_inputs("0e+1o", (1, 2), None, 3, 2, 2, np.float64)
    tangent = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) * 0.3, (x, weights))

    def transformed(executor):
        f = lambda x, w: executor(description, x, species, w)
        primal, jvp = jax.jvp(f, (x, weights), tangent)
        batched = jax.vmap(lambda x: f(x, weights))(jnp.stack([x, 2 * x]))
        return primal, jvp, batched

    ours = jax.jit(lambda: transformed(executor))()
    expected = jax.jit(lambda: transformed(reference_executor))()
    assert_close(ours, expected, 1e-11)


def test_gradient_graph_runs_only_kernels():
    description, x, species, weights = make_inputs("0e+1o", (1, 2), None, 3, 2, 2, np.float64)
    energy = lambda x, w: jnp.sum(jnp.sin(kernel_executor(description, x, species, w)))
    text = str(jax.make_jaxpr(jax.grad(energy, (0, 1)))(x, weights))
    assert "e3nn_fast_multilinear" in text
    assert "dot_general" not in text  # no dense basis contraction anywhere


def test_public_op_through_interpret_backend_with_leading_axes():
    irreps, orders, keep = "0e+1o", (1, 2), None
    shapes = symmetric_contraction_weight_shapes(irreps, 2, 3, orders, keep)
    rng = np.random.default_rng(3)
    weights = {name: jnp.asarray(rng.normal(size=shape)) for name, shape in shapes.items()}
    x = IrrepsArray(irreps, jnp.asarray(rng.normal(size=(2, 3, 2, 4))))
    species = jnp.asarray(rng.integers(0, 3, size=(2, 3)))
    f = jax.jit(lambda x, s, w: symmetric_contraction(x, s, w, orders, keep))
    with e3nn.backend("pallas-interpret"):
        ours = f(x, species, weights)
    with e3nn.backend("reference"):
        expected = jax.jit(lambda x, s, w: symmetric_contraction(x, s, w, orders, keep))(x, species, weights)
    assert ours.irreps == expected.irreps == Irreps("0e+1o+2e")
    assert ours.shape == (2, 3, 2, 9)
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(expected.array), atol=1e-12)


from pallas_lowering import lower_for_platform as _lower_for_platform  # noqa: E402
from pallas_lowering import require_pallas_lowering as _require_pallas_lowering  # noqa: E402


@pytest.mark.parametrize("platform,marker", [("cuda", "triton"), ("tpu", "tpu_custom_call")])
def test_kernels_and_gradient_graphs_lower(platform, marker):
    _require_pallas_lowering(platform)  # fails (never skips) when this jax cannot lower Pallas there at all
    # 130 channels: padded to 256, two channel blocks of 128 (TPU tiles need 128 lanes); 37 nodes: a padded tail
    description, x, species, weights = make_inputs("0e+1o", (1, 2, 3), "0e+1o", 37, 130, 3, np.float32)
    compiled = lambda d, x, s, w: kernel_module.symmetric_contraction(d, x, s, w, interpret=False)
    everything = derivatives(compiled, description, species)
    text = _lower_for_platform(everything, (x, weights), platform).as_text()
    assert marker in text
    # forward, 3 + 1 first-derivative kernels, and the second-order ones
    assert text.count("e3nn_symmetric_contraction") >= 8
    assert "dot_general" not in text


def test_load_groups_change_the_loads_not_the_result():
    """``symmetric_contraction.load_group_planes``: by default each factor is loaded once per program, with ``1``
    once per output plane that uses it (the kernel before 2026-12-06); the lowered Triton kernel issues fewer loads
    by default, and interpret mode gives the same numbers either way (forward, gradients, forces-style)."""
    from bench.sm90_resources import triton_launches
    from e3nn_fast.kernels import tuning

    _require_pallas_lowering("cuda")
    description, x, species, weights = make_inputs("0e+1o", (1, 2, 3), "0e+1o", 6, 3, 2, np.float64)
    expected = derivatives(kernel_executor, description, species)(x, weights)
    loads = {}
    for group in (1, 2, None):
        with tuning.override(**({} if group is None else {"symmetric_contraction__load_group_planes": group})):
            assert_close(derivatives(kernel_executor, description, species)(x, weights), expected, 1e-12)
            x32, w32 = x.astype(np.float32), jax.tree.map(lambda v: v.astype(np.float32), weights)
            # a new function each time: jax.jit's trace cache does not know the knobs
            forward = lambda x, w: kernel_module.symmetric_contraction(description, x, species, w, interpret=False)
            (launch,) = triton_launches(_lower_for_platform(forward, (x32, w32), "cuda"))
            loads[group] = launch.ttir.count("tt.load")
    assert loads[None] < loads[2] < loads[1], loads  # 25 < 39 < 60 here (jax 0.10.2)


@pytest.mark.parametrize("executor", [kernel_executor, jnp_executor], ids=["kernel", "jnp"])
def test_empty_batch_and_half_precision(executor):
    description, x, species, weights = make_inputs("0e+1o", (1, 2), None, 4, 3, 2, np.float32)
    empty = jax.jit(lambda x, s, w: executor(description, x, s, w))(x[:0], species[:0], weights)
    assert empty.shape == (0, 3, 9)
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (x, weights))
    out = jax.jit(lambda x, w: executor(description, x, species, w))(*half)
    assert out.dtype == jnp.bfloat16
    as_fp32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), half)
    expected = jax.jit(lambda x, w: reference_executor(description, x, species, w))(*as_fp32)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected), rtol=2e-2, atol=2e-2)


# --- dispatch and bad input ---------------------------------------------------------------------------------------


def test_dispatcher_registration_and_cpu_default():
    assert {"reference", "jnp", "pallas", "pallas-interpret"} <= set(dispatch.available("symmetric_contraction"))
    if jax.default_backend() == "cpu":
        assert dispatch.choose("symmetric_contraction", size=10**6) == "jnp"
    with e3nn.backend("pallas-interpret"):
        assert dispatch.choose("symmetric_contraction", size=10) == "pallas-interpret"
        assert dispatch.choose("symmetric_contraction", size=10, qualifies=False) == "jnp"


def test_no_output_irrep_gives_an_empty_output():
    x = IrrepsArray("0e+1o", jnp.ones((2, 3, 4)))
    assert symmetric_contraction_weight_shapes("0e+1o", 3, 2, (1,), "4e") == {}
    y = jax.jit(lambda x: symmetric_contraction(x, jnp.zeros((2,), jnp.int32), {}, (1,), "4e"))(x)
    assert y.irreps == Irreps("") and y.shape == (2, 3, 0)


def test_bad_input():
    irreps, orders = "0e+1o", (1, 2)
    shapes = symmetric_contraction_weight_shapes(irreps, 2, 3, orders)
    weights = {name: jnp.ones(shape) for name, shape in shapes.items()}
    x = IrrepsArray(irreps, jnp.ones((4, 2, 4)))
    species = jnp.zeros((4,), jnp.int32)
    with pytest.raises(TypeError, match="IrrepsArray"):
        symmetric_contraction(jnp.ones((4, 2, 4)), species, weights, orders)
    with pytest.raises(ValueError, match="num_channel"):
        symmetric_contraction(IrrepsArray(irreps, jnp.ones((4,))), species, weights, orders)
    with pytest.raises(TypeError, match="species should be an integer"):
        symmetric_contraction(x, species.astype(jnp.float32), weights, orders)
    with pytest.raises(ValueError, match="species should have shape"):
        symmetric_contraction(x, jnp.zeros((3,), jnp.int32), weights, orders)
    with pytest.raises(ValueError, match="missing \\['w2_2e'\\]"):
        symmetric_contraction(x, species, {k: v for k, v in weights.items() if k != "w2_2e"}, orders)
    with pytest.raises(ValueError, match="unexpected \\['w9_0e'\\]"):
        symmetric_contraction(x, species, dict(weights, w9_0e=jnp.ones((3, 1, 2))), orders)
    with pytest.raises(ValueError, match="w1_0e should have shape"):
        symmetric_contraction(x, species, dict(weights, w1_0e=jnp.ones((3, 1, 5))), orders)
    with pytest.raises(ValueError, match="same num_species"):
        symmetric_contraction(x, species, dict(weights, w1_0e=jnp.ones((2, 1, 2))), orders)
    with pytest.raises(TypeError, match="dict"):
        symmetric_contraction(x, species, list(weights.values()), orders)
    with pytest.raises(ValueError, match="orders"):
        symmetric_contraction(x, species, weights, (0,))
    with pytest.raises(ValueError, match="keep_irrep_out"):
        symmetric_contraction(x, species, weights, orders, "2x0e")
