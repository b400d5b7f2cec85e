"""flax.nnx modules: same parameters (names, shapes, initial values) and outputs as the linen / haiku modules and
e3nn-jax, equivariance, nnx.jit / jax.grad through nnx.split/merge, an optax train step, and clear errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import e3nn_fast.flax as fast_linen
import e3nn_fast.haiku as fast_haiku
import e3nn_fast.nnx as fast_nnx
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks

ej = pytest.importorskip("e3nn_jax")

F32 = jnp.float32


def _normal(seed: int, shape, dtype=F32) -> jax.Array:
    # numpy, not jax.random: compiling a sampler for each shape would dominate the run time of these tests
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=dtype)


def _params(module: nnx.Module) -> dict:
    """The module's parameters as a plain nested dict."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _nnx_apply(module: nnx.Module, *args):
    """Call the module under nnx.jit (tests always jit)."""
    return nnx.jit(lambda m, *a: m(*a))(module, *args)


def _assert_trees_equal(a, b, tol=0.0):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, atol=tol, rtol=tol)


# -- Linear -----------------------------------------------------------------------------------------------------------

# (irreps_in, irreps_out, nnx-only kwargs, shared kwargs, input leading shape, external weights or None)
LINEAR_CASES = {
    "plain": (
        "3x0e + 2x1o + 1e", "4x0e + 1o + 2e", {},
        {"biases": True, "force_irreps_out": True, "path_normalization": "path"}, (5,), None,
    ),
    "channel_out": ("2x0e + 1o", "0e + 2x1o", {"channel_in": 3}, {"channel_out": 2}, (4, 3), None),
    "indexed": ("2x0e + 1o", "3x0e + 1o", {}, {"num_indexed_weights": 4}, (6,), jnp.array([0, 3, 1, 1, 2, 0])),
    "mixed": ("2x0e + 1o", "0e + 2x1o", {"weights_dim": 3}, {"gradient_normalization": "element"}, (2,), "float"),
    "per_channel": (
        "0e + 1o", "2x0e + 1o", {"channel_in": 2, "weights_dim": 3}, {"weights_per_channel": True}, (4, 2), "float"
    ),
    "instructions": (
        "0e + 1o + 0e", "1o + 2x0e", {},
        {"instructions": [(0, 1), (2, 1), (1, 0)], "simplify_irreps_internally": False, "irreps_in": "0e + 1o + 0e"},
        (3,), None,
    ),
}  # fmt: skip


def _linear_case(name):
    irreps_in, irreps_out, nnx_kwargs, kwargs, lead, weights = LINEAR_CASES[name]
    x = _normal(1, lead + (Irreps(irreps_in).dim,))
    if isinstance(weights, str):
        weights = _normal(2, lead[:1] + (3,))
    module = fast_nnx.Linear(
        irreps_in, irreps_out, rngs=nnx.Rngs(7), **nnx_kwargs, **{k: v for k, v in kwargs.items() if k != "irreps_in"}
    )
    return module, irreps_in, irreps_out, kwargs, x, weights


def _args(array_cls, irreps, x, weights):
    x = array_cls(irreps, x)
    return (x,) if weights is None else (weights, x)


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_linear_matches_linen_haiku_and_e3nn_jax(name):
    module, irreps_in, irreps_out, kwargs, x, weights = _linear_case(name)
    params = _params(module)["params"]

    # Same names and shapes as e3nn-jax's linen module; same key -> same initial values as ours (checked on the cases
    # with different initialisation scales: the key derivation does not depend on the case).
    linen = fast_linen.Linear(irreps_out, **kwargs)
    if name in ("plain", "mixed"):
        linen_params = jax.jit(linen.init)(nnx.Rngs(7).params(), *_args(IrrepsArray, irreps_in, x, weights))
        _assert_trees_equal(params, linen_params["params"], tol=1e-6)
    oracle_kwargs = {k: ej.Irreps(v) if k == "irreps_in" else v for k, v in kwargs.items()}
    oracle = ej.flax.Linear(irreps_out, **oracle_kwargs)
    oracle_params = jax.eval_shape(oracle.init, jax.random.PRNGKey(0), *_args(ej.IrrepsArray, irreps_in, x, weights))
    assert jax.tree_util.tree_map(jnp.shape, oracle_params["params"]) == jax.tree_util.tree_map(jnp.shape, params)

    out = _nnx_apply(module, *_args(IrrepsArray, irreps_in, x, weights))
    out_oracle = jax.jit(oracle.apply)({"params": params}, *_args(ej.IrrepsArray, irreps_in, x, weights))
    assert str(out.irreps) == str(out_oracle.irreps) and out.shape == out_oracle.shape and out.dtype == F32
    np.testing.assert_allclose(out.array, out_oracle.array, atol=1e-6, rtol=1e-6)
    if name == "plain":  # the three frameworks run the same code on the same parameters: bitwise equal
        out_linen = jax.jit(linen.apply)({"params": params}, *_args(IrrepsArray, irreps_in, x, weights))
        haiku = hk.without_apply_rng(hk.transform(lambda *a: fast_haiku.Linear(irreps_out, **kwargs)(*a)))
        out_haiku = jax.jit(haiku.apply)({"linear": params}, *_args(IrrepsArray, irreps_in, x, weights))
        np.testing.assert_array_equal(out.array, out_linen.array)
        np.testing.assert_array_equal(out.array, out_haiku.array)


def test_linear_loads_linen_parameters_and_state_is_readable():
    module = fast_nnx.Linear("2x0e + 1o", "0e + 1o", biases=True, rngs=nnx.Rngs(0))
    assert set(_params(module)["params"]) == {"w[0,0] 2x0e,1x0e", "w[1,1] 1x1o,1x1o", "b[0] 1x0e"}
    x = IrrepsArray("2x0e + 1o", _normal(3, (4, 5)))
    linen = fast_linen.Linear("0e + 1o", biases=True)
    variables = jax.jit(linen.init)(jax.random.PRNGKey(42), x)  # different values from the nnx module's
    variables = jax.tree_util.tree_map(lambda p: p + 1.0, variables)  # non-zero biases too
    nnx.update(module, variables)
    np.testing.assert_array_equal(_nnx_apply(module, x).array, jax.jit(linen.apply)(variables, x).array)


def test_linear_parameter_initializer_and_param_dtype():
    module = fast_nnx.Linear(
        "2x0e + 1o", "0e + 1o", rngs=nnx.Rngs(0), param_dtype=jnp.float64,
        parameter_initializer=lambda: jax.nn.initializers.ones,
    )  # fmt: skip
    for value in jax.tree_util.tree_leaves(_params(module)):
        assert value.dtype == jnp.float64
        np.testing.assert_array_equal(value, 1.0)


def test_linear_zero_chunks_are_explicit_zeros():
    module = fast_nnx.Linear("0e + 1o", "2x0e + 1o", rngs=nnx.Rngs(0))
    x = from_chunks("0e + 1o", [None, jnp.ones((2, 1, 3), F32)], (2,), F32)
    dense = IrrepsArray("0e + 1o", x.array)
    np.testing.assert_array_equal(_nnx_apply(module, x).array, _nnx_apply(module, dense).array)


# -- MultiLayerPerceptron ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias, output_activation", [(True, False), (False, True)])
def test_mlp_matches_linen_haiku_and_e3nn_jax(with_bias, output_activation):
    kwargs = dict(act=jax.nn.silu, output_activation=output_activation, with_bias=with_bias)
    module = fast_nnx.MultiLayerPerceptron(5, (8, 3), rngs=nnx.Rngs(3), **kwargs)
    params = _params(module)
    x = _normal(4, (6, 5))

    linen = fast_linen.MultiLayerPerceptron((8, 3), **kwargs)
    _assert_trees_equal(params, jax.jit(linen.init)(nnx.Rngs(3).params(), x)["params"], tol=1e-6)
    if with_bias:  # start the biases away from zero so that they are tested
        nnx.update(module, jax.tree_util.tree_map(lambda p: p + 0.5, params))
        params = _params(module)

    out = _nnx_apply(module, x)
    oracle = ej.flax.MultiLayerPerceptron((8, 3), **kwargs)
    np.testing.assert_allclose(out, jax.jit(oracle.apply)({"params": params}, x), atol=1e-6, rtol=1e-6)
    if with_bias:  # haiku's layers hold the same arrays under other names
        haiku = hk.without_apply_rng(hk.transform(lambda a: fast_haiku.MultiLayerPerceptron((8, 3), **kwargs)(a)))
        haiku_params = {
            f"multi_layer_perceptron/linear_{i}": {"w": layer["kernel"], "b": layer["bias"]}
            for i, layer in enumerate([params["Dense_0"], params["Dense_1"]])
        }
        np.testing.assert_array_equal(out, jax.jit(haiku.apply)(haiku_params, x))

    out_irreps = _nnx_apply(module, IrrepsArray("5x0e", x))
    assert str(out_irreps.irreps) == "3x0e"
    np.testing.assert_array_equal(out_irreps.array, out)


# -- FullyConnectedTensorProduct ---------------------------------------------------------------------------------------


def test_fully_connected_tensor_product_matches_haiku_and_e3nn_jax():
    irreps_in1, irreps_in2, irreps_out = "2x0e + 1o + 1o", "0e + 1o", "3x0e + 1o + 1e"
    module = fast_nnx.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out, rngs=nnx.Rngs(0))
    params = _params(module)["params"]
    x1, x2 = _normal(5, (3, Irreps(irreps_in1).dim)), _normal(6, (1, Irreps(irreps_in2).dim))

    def transform(module_cls):
        return hk.without_apply_rng(hk.transform(lambda a, b: module_cls(irreps_out)(a, b)))

    ours, theirs = transform(fast_haiku.FullyConnectedTensorProduct), transform(ej.haiku.FullyConnectedTensorProduct)
    args = (IrrepsArray(irreps_in1, x1), IrrepsArray(irreps_in2, x2))
    args_oracle = (ej.IrrepsArray(irreps_in1, x1), ej.IrrepsArray(irreps_in2, x2))
    oracle_params = jax.eval_shape(theirs.init, jax.random.PRNGKey(0), *args_oracle)
    assert list(oracle_params["fully_connected_tensor_product"]) == list(params)
    assert jax.tree_util.tree_map(jnp.shape, oracle_params["fully_connected_tensor_product"]) == jax.tree_util.tree_map(
        jnp.shape, params
    )

    out = _nnx_apply(module, *args)
    haiku_params = {"fully_connected_tensor_product": params}
    np.testing.assert_array_equal(out.array, jax.jit(ours.apply)(haiku_params, *args).array)
    expected = jax.jit(theirs.apply)(haiku_params, *args_oracle)
    assert str(out.irreps) == str(expected.irreps) and out.shape == expected.shape == (3, Irreps(irreps_out).dim)
    np.testing.assert_allclose(out.array, expected.array, atol=1e-5, rtol=1e-5)


def test_fully_connected_tensor_product_is_equivariant():
    module = fast_nnx.FullyConnectedTensorProduct("0e + 1o", "1o + 0o", "0e + 1o + 1e + 0o", rngs=nnx.Rngs(1))
    x1 = IrrepsArray("0e + 1o", _normal(7, (2, 4), jnp.float64))
    x2 = IrrepsArray("1o + 0o", _normal(8, (2, 4), jnp.float64))
    q, r = np.linalg.qr(np.random.default_rng(9).standard_normal((3, 3)))
    R = -q * np.sign(np.diag(r)) * np.linalg.det(q * np.sign(np.diag(r)))  # improper: checks parity too

    @nnx.jit
    def both_ways(module, x1, x2, R):
        after = module(x1, x2).transform_by_matrix(R)
        before = module(x1.transform_by_matrix(R), x2.transform_by_matrix(R))
        return after.array, before.array

    after, before = both_ways(module, x1, x2, R)
    np.testing.assert_allclose(before, after, atol=1e-5)


# -- SymmetricTensorProduct --------------------------------------------------------------------------------------------


def test_symmetric_tensor_product_matches_haiku_and_e3nn_jax():
    irreps_in, orders, keep = "0e + 1o", (1, 2, 3), "0e + 1o"
    module = fast_nnx.SymmetricTensorProduct(irreps_in, 3, orders, keep, rngs=nnx.Rngs(0))
    params = _params(module)["params"]
    x = _normal(10, (2, 3, Irreps(irreps_in).dim))

    def transform(module_cls):
        return hk.without_apply_rng(hk.transform(lambda a: module_cls(orders, keep_irrep_out=keep)(a)))

    ours, theirs = transform(fast_haiku.SymmetricTensorProduct), transform(ej.haiku.SymmetricTensorProduct)
    oracle_params = jax.eval_shape(theirs.init, jax.random.PRNGKey(0), ej.IrrepsArray(irreps_in, x))
    (haiku_name,) = oracle_params
    assert jax.tree_util.tree_map(jnp.shape, oracle_params[haiku_name]) == jax.tree_util.tree_map(jnp.shape, params)

    out = _nnx_apply(module, IrrepsArray(irreps_in, x))
    haiku_params = {haiku_name: params}
    np.testing.assert_array_equal(out.array, jax.jit(ours.apply)(haiku_params, IrrepsArray(irreps_in, x)).array)
    expected = jax.jit(theirs.apply)(haiku_params, ej.IrrepsArray(irreps_in, x))
    assert str(out.irreps) == str(expected.irreps) and out.shape == expected.shape
    np.testing.assert_allclose(out.array, expected.array, atol=1e-5, rtol=1e-5)


# -- transformations, training, abstract construction ----------------------------------------------------------------


class _Model(nnx.Module):
    """A Linear whose scalars feed an MLP: two nnx modules in one graph."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = fast_nnx.Linear("2x0e + 1o", "2x0e + 1o", biases=True, rngs=rngs)
        self.mlp = fast_nnx.MultiLayerPerceptron("2x0e", (3,), jax.nn.silu, with_bias=True, rngs=rngs)

    def __call__(self, x: IrrepsArray) -> jax.Array:
        h = self.linear(x)
        return jnp.concatenate([h.array, self.mlp(h.filter(keep="0e")).array], axis=-1)


def test_jit_and_grad_through_split_merge_match_linen():
    module = fast_nnx.Linear("2x0e + 1o", "3x0e + 1o", biases=True, rngs=nnx.Rngs(0))
    x = IrrepsArray("2x0e + 1o", _normal(11, (4, 5)))
    graphdef, state = nnx.split(module)

    @jax.jit
    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x).array ** 2)

    linen = fast_linen.Linear("3x0e + 1o", biases=True)
    linen_loss = jax.jit(lambda p, x: jnp.sum(linen.apply({"params": p}, x).array ** 2))
    params = _params(module)["params"]
    grads = nnx.to_pure_dict(jax.grad(loss)(state, x))["params"]
    _assert_trees_equal(grads, jax.grad(linen_loss)(params, x), tol=1e-6)
    np.testing.assert_allclose(loss(state, x), linen_loss(params, x), rtol=1e-6)

    # nnx.grad on the module itself agrees with jax.grad on its state
    nnx_grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x).array ** 2)))(module, x)
    _assert_trees_equal(nnx.to_pure_dict(nnx_grads)["params"], grads, tol=1e-6)


def test_optax_train_step_with_nnx_optimizer():
    model = _Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = IrrepsArray("2x0e + 1o", _normal(12, (8, 5)))
    target = _normal(13, (8, 8))

    def loss_fn(model):
        return jnp.mean((model(x) - target) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    before = _params(model)
    losses = [float(train_step(model, optimizer)) for _ in range(5)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), before, _params(model))
    assert all(jax.tree_util.tree_leaves(changed))  # every parameter (biases included) was trained
    assert int(optimizer.step[...]) == 5


def test_abstract_construction_with_eval_shape():
    abstract = nnx.eval_shape(lambda: _Model(nnx.Rngs(0)))
    shapes = jax.tree_util.tree_map(lambda v: v.shape, _params(abstract))
    assert shapes == jax.tree_util.tree_map(jnp.shape, _params(_Model(nnx.Rngs(0))))


# -- errors ----------------------------------------------------------------------------------------------------------


def test_bad_construction_raises_clear_errors():
    rngs = nnx.Rngs(0)
    with pytest.raises(TypeError, match="nnx.Rngs"):
        fast_nnx.Linear("0e", "0e", rngs=0)
    with pytest.raises(ValueError, match="irreps_in"):
        fast_nnx.Linear("2x3q", "0e", rngs=rngs)
    with pytest.raises(ValueError, match="channel_in"):
        fast_nnx.Linear("0e", "0e", 4, rngs=rngs)
    with pytest.raises(ValueError, match="exclude"):
        fast_nnx.Linear("0e", "0e", weights_dim=2, num_indexed_weights=3, rngs=rngs)
    with pytest.raises(ValueError, match="weights_dim"):
        fast_nnx.Linear("0e", "0e", weights_dim=0, rngs=rngs)
    with pytest.raises(ValueError, match="simplify_irreps_internally"):
        fast_nnx.Linear("0e + 0e", "0e", instructions=[(0, 0)], rngs=rngs)
    with pytest.raises(TypeError, match="list_neurons"):
        fast_nnx.MultiLayerPerceptron(3, 4, rngs=rngs)
    with pytest.raises(ValueError, match="scalars"):
        fast_nnx.MultiLayerPerceptron("1o", (4,), rngs=rngs)
    with pytest.raises(ValueError, match="orders"):
        fast_nnx.SymmetricTensorProduct("0e + 1o", 2, (0, 1), rngs=rngs)
    with pytest.raises(ValueError, match="num_channel"):
        fast_nnx.SymmetricTensorProduct("0e + 1o", 0, (1, 2), rngs=rngs)


def test_bad_calls_raise_clear_errors():
    # Modules built abstractly (no initialisation to compile): the checks run before any parameter is used.
    def build(cls, *args, **kwargs):
        return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs))

    x = IrrepsArray("2x0e + 1o", jnp.ones((3, 5), F32))
    with pytest.raises(ValueError, match="do not match irreps_in"):
        build(fast_nnx.Linear, "0e + 1o", "0e")(x)
    with pytest.raises(ValueError, match="module\\(indices, x\\)"):
        build(fast_nnx.Linear, "2x0e + 1o", "0e", num_indexed_weights=2)(x)
    with pytest.raises(ValueError, match="without weights_dim"):
        build(fast_nnx.Linear, "2x0e + 1o", "0e")(jnp.ones((3, 2)), x)
    with pytest.raises(ValueError, match="weights_dim=3"):
        build(fast_nnx.Linear, "2x0e + 1o", "0e", weights_dim=3)(jnp.ones((3, 2)), x)
    with pytest.raises(ValueError, match="channel_in=4"):
        build(fast_nnx.Linear, "2x0e + 1o", "0e", 2, channel_in=4)(x[None])
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        build(fast_nnx.MultiLayerPerceptron, 4, (2,))(jnp.ones((2, 3)))
    fctp = build(fast_nnx.FullyConnectedTensorProduct, "2x0e + 1o", "1o", "0e")
    with pytest.raises(ValueError, match="x2 has irreps"):
        fctp(x, IrrepsArray("1e", jnp.ones(3)))
    with pytest.raises(TypeError, match="x1 must be an IrrepsArray"):
        fctp(x.array, IrrepsArray("1o", jnp.ones(3)))
    with pytest.raises(TypeError, match="fast"):
        fctp(x, IrrepsArray("1o", jnp.ones(3)), fast=1)
    stp = build(fast_nnx.SymmetricTensorProduct, "2x0e + 1o", 2, (1, 2))
    with pytest.raises(ValueError, match="num_channel=2"):
        stp(x)
    with pytest.raises(ValueError, match="irreps_in"):
        stp(IrrepsArray("1o + 2x0e", jnp.ones((2, 5))))
