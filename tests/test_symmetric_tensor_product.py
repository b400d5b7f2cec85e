"""haiku SymmetricTensorProduct (MACE product basis): parameters and outputs identical to e3nn-jax, equivariance,
bad input."""

import e3nn_jax
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast.haiku.symmetric_tensor_product import SymmetricTensorProduct
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.rotation import rand_matrix

CONFIGS = [
    # (irreps_in, orders, keep_irrep_out, leading shape (..., num_channel))
    ("0e+1o+2e", (1, 2, 3), "0e+1o", (3, 4)),
    ("0e+1o", (1, 2), None, (2,)),
    ("2x0e+1o", (1, 3), {e3nn_jax.Irrep("0e")}, (2, 2)),
]


def _transform(module_cls, array_cls, irreps, orders, keep):
    def f(x):
        return module_cls(orders, keep_irrep_out=keep)(array_cls(irreps, x))

    # jit the whole init/apply: one XLA compilation instead of one per einsum keeps the tests fast
    transformed = hk.without_apply_rng(hk.transform(f))
    return hk.Transformed(jax.jit(transformed.init), jax.jit(transformed.apply))


def _ours(irreps, orders, keep):
    keep = {str(ir) for ir in keep} if isinstance(keep, set) else keep  # e3nn_fast irreps from strings
    return _transform(SymmetricTensorProduct, IrrepsArray, irreps, orders, keep)


def _oracle(irreps, orders, keep):
    return _transform(e3nn_jax.haiku.SymmetricTensorProduct, e3nn_jax.IrrepsArray, irreps, orders, keep)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("irreps,orders,keep,shape", CONFIGS)
def test_same_parameters_and_outputs_as_e3nn_jax(irreps, orders, keep, shape, dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), shape + (Irreps(irreps).dim,), dtype=dtype)
    ours, ref = _ours(irreps, orders, keep), _oracle(irreps, orders, keep)
    p_ours = ours.init(jax.random.PRNGKey(1), x)
    p_ref = ref.init(jax.random.PRNGKey(1), x)

    assert jax.tree_util.tree_structure(p_ours) == jax.tree_util.tree_structure(p_ref)
    for module in p_ref:
        for name in p_ref[module]:
            assert p_ours[module][name].shape == p_ref[module][name].shape
            assert p_ours[module][name].dtype == p_ref[module][name].dtype == dtype
            np.testing.assert_array_equal(p_ours[module][name], p_ref[module][name])

    y_ours, y_ref = ours.apply(p_ref, x), ref.apply(p_ref, x)  # e3nn-jax params load unchanged
    assert str(y_ours.irreps) == str(y_ref.irreps)
    assert y_ours.shape == y_ref.shape
    assert y_ours.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(y_ours.array), np.asarray(y_ref.array), rtol=tol, atol=tol)


def test_parameter_names():
    x = jnp.ones((2, Irreps("0e+1o").dim))
    params = _ours("0e+1o", (1, 2), None).init(jax.random.PRNGKey(0), x)
    shapes = {name: p.shape for name, p in params["symmetric_tensor_product"].items()}
    # 0e+1o squared (symmetric part) has 2x0e + 1x1o + 1x2e
    assert shapes == {"w1_0e": (1, 2), "w1_1o": (1, 2), "w2_0e": (2, 2), "w2_1o": (1, 2), "w2_2e": (1, 2)}


def test_equivariance():
    irreps = Irreps("0e+1o")
    f = _ours(str(irreps), (1, 2, 3), None)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, irreps.dim))
    params = f.init(jax.random.PRNGKey(1), x)
    R = -rand_matrix(jax.random.PRNGKey(2), dtype=jnp.float64)  # improper: checks parity too
    y = f.apply(params, x)
    y_rot = f.apply(params, x @ irreps.D_from_matrix(R).T)
    np.testing.assert_allclose(
        np.asarray(y_rot.array), np.asarray(y.array @ y.irreps.D_from_matrix(R).T), atol=1e-9
    )


def test_keep_irrep_out_forms_agree():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, Irreps("0e+1o").dim))
    outs = []
    for keep in ["0e+2e", Irreps("0e+2e"), {"0e", "2e"}]:
        f = _ours("0e+1o", (1, 2), keep)
        y = f.apply(f.init(jax.random.PRNGKey(1), x), x)
        assert y.irreps == Irreps("0e+2e")
        outs.append(np.asarray(y.array))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_custom_get_parameter():
    calls = []

    def get_parameter(name, shape, dtype):
        calls.append((name, shape))
        return jnp.ones(shape, dtype)

    def f(x):
        return SymmetricTensorProduct((1,), get_parameter=get_parameter)(IrrepsArray("0e+1o", x))

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    y = hk.transform(f).apply({}, None, x)
    assert sorted(calls) == [("w1_0e", (1, 2)), ("w1_1o", (1, 2))]
    np.testing.assert_allclose(np.asarray(y.array), np.asarray(x), atol=1e-12)  # order 1 with unit weights


def _species_energy(module_cls, array_cls, irreps, orders):
    """MACE's use: the module vmapped over nodes, each node reading its species' weights through get_parameter."""

    def energy(x, table, species):
        def per_node(x_node, s):
            get_parameter = lambda name, shape, dtype: table[name][s].astype(dtype)
            f = hk.transform(lambda v: module_cls(orders, get_parameter=get_parameter)(array_cls(irreps, v)))
            return f.apply({}, None, x_node).array

        return jnp.sum(jnp.sin(jax.vmap(per_node)(x, species)))

    return energy


def _shared_energy(module_cls, array_cls, irreps, orders):
    """Weights shared by every node: the module called on ``(nodes, channels, irreps)`` (hk.vmap inside)."""

    def energy(x, params, species):
        del species
        f = hk.without_apply_rng(hk.transform(lambda v: module_cls(orders)(array_cls(irreps, v))))
        return jnp.sum(jnp.sin(f.apply(params, x).array))

    return energy


@pytest.mark.parametrize("build", [_species_energy, _shared_energy], ids=["per-node species weights", "shared"])
def test_gradients_and_second_derivatives_match_e3nn_jax(build):
    irreps, orders, nodes, channels, num_species = "0e+1o+2e", (1, 2, 3), 5, 3, 2
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(nodes, channels, Irreps(irreps).dim)))
    shapes = jax.eval_shape(_oracle(irreps, orders, None).init, jax.random.PRNGKey(0), x)
    module_name, = shapes
    if build is _species_energy:
        weights = {n: jnp.asarray(rng.normal(size=(num_species,) + a.shape)) for n, a in shapes[module_name].items()}
    else:
        weights = {module_name: {n: jnp.asarray(rng.normal(size=a.shape)) for n, a in shapes[module_name].items()}}
    species = jnp.asarray(rng.integers(0, num_species, nodes))
    ours = build(SymmetricTensorProduct, IrrepsArray, irreps, orders)
    ref = build(e3nn_jax.haiku.SymmetricTensorProduct, e3nn_jax.IrrepsArray, irreps, orders)

    def derivatives(energy):
        value, grads = jax.value_and_grad(energy, argnums=(0, 1))(x, weights, species)
        # force training: the loss holds d(energy)/dx, differentiated again w.r.t. x and the weights
        force_loss = lambda x, w: jnp.sum(jax.grad(energy)(x, w, species) ** 2)
        return value, grads, jax.grad(force_loss, argnums=(0, 1))(x, weights)

    got, want = jax.jit(lambda: derivatives(ours))(), jax.jit(lambda: derivatives(ref))()
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)
    assert len(jax.tree_util.tree_leaves(got)) == 1 + 2 * (1 + len(shapes[module_name]))


@pytest.mark.parametrize("orders", [(0,), (), (1.5,), (True,)])
def test_bad_orders(orders):
    with pytest.raises(ValueError, match="orders"):
        hk.transform(lambda: SymmetricTensorProduct(orders)).init(None)


def test_bad_input():
    def not_irreps_array(x):
        return SymmetricTensorProduct((1,))(x)

    def missing_channel_axis(x):
        return SymmetricTensorProduct((1,))(IrrepsArray("0e+1o", x))

    with pytest.raises(TypeError, match="IrrepsArray"):
        hk.transform(not_irreps_array).init(None, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="num_channel"):
        hk.transform(missing_channel_axis).init(None, jnp.ones((4,)))
    with pytest.raises(ValueError, match="keep_irrep_out"):
        hk.transform(lambda: SymmetricTensorProduct((1,), keep_irrep_out="2x0e")).init(None)


@pytest.mark.parametrize("returned", [lambda s: s[::-1], lambda s: s[:1], lambda s: (2,) + s])
def test_get_parameter_returning_a_wrong_shape_is_named(returned):
    get_parameter = lambda name, shape, dtype: jnp.ones(returned(shape), dtype)
    f = hk.transform(lambda x: SymmetricTensorProduct((1, 2), get_parameter=get_parameter)(IrrepsArray("0e+1o", x)))
    with pytest.raises(ValueError, match=r"get_parameter returned shape .* for w2_0e.*\(2, 3\)"):
        f.apply({}, None, jnp.ones((3, 4)))


def test_get_parameter_returning_integers_is_refused():
    get_parameter = lambda name, shape, dtype: jnp.ones(shape, jnp.int32)
    f = hk.transform(lambda x: SymmetricTensorProduct((1,), get_parameter=get_parameter)(IrrepsArray("0e+1o", x)))
    with pytest.raises(TypeError, match="get_parameter returned dtype int32"):
        f.apply({}, None, jnp.ones((3, 4)))
