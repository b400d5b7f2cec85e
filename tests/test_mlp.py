"""MultiLayerPerceptron (haiku and flax.linen): same parameters from the same key as e3nn-jax, same outputs, IrrepsArray
in/out, gradients and bad input."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

from e3nn_fast.activation import normalize_function
from e3nn_fast.configuration import config
from e3nn_fast.flax.mlp import MultiLayerPerceptron as FlaxMLP
from e3nn_fast.haiku.mlp import MultiLayerPerceptron as HaikuMLP
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from oracle_cache import cached_e3nn_jax_normalize_function  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("cached_e3nn_jax_normalize_function")

# (list_neurons, act, keyword arguments)
CONFIGS = [
    ([4, 5], jax.nn.gelu, {}),
    ([3], jax.nn.silu, dict(with_bias=True)),
    ([6, 2, 3], jnp.tanh, dict(gradient_normalization="element", output_activation=False)),
    ([4, 2], jax.nn.relu, dict(gradient_normalization=0.5, output_activation=jax.nn.sigmoid, with_bias=True)),
    ([3, 3], None, dict(gradient_normalization="path")),
]


def tol(dtype):
    return dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)


def assert_same_params(ours, ref):
    """Same tree (names, shapes, dtypes) and identical values."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def random_array(shape, dtype, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("list_neurons, act, kwargs", CONFIGS)
def test_haiku_mlp_matches_e3nn_jax(list_neurons, act, kwargs, dtype):
    ours = hk.without_apply_rng(hk.transform(lambda x: HaikuMLP(list_neurons, act, **kwargs)(x)))
    ref = hk.without_apply_rng(
        hk.transform(lambda x: e3nn_jax.haiku.MultiLayerPerceptron(list_neurons, act, **kwargs)(x))
    )
    x = random_array((7, 3), dtype)
    key = jax.random.PRNGKey(1)
    params, ref_params = ours.init(key, x), ref.init(key, x)
    assert_same_params(params, ref_params)
    assert sorted(params) == [f"multi_layer_perceptron/linear_{i}" for i in range(len(list_neurons))]
    y, y_ref = ours.apply(ref_params, x), ref.apply(ref_params, x)
    assert y.shape == (7, list_neurons[-1]) and y.dtype == y_ref.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("list_neurons, act, kwargs", CONFIGS)
def test_flax_mlp_matches_e3nn_jax(list_neurons, act, kwargs, dtype):
    ours = FlaxMLP(tuple(list_neurons), act, **kwargs)
    ref = e3nn_jax.flax.MultiLayerPerceptron(tuple(list_neurons), act, **kwargs)
    x = random_array((7, 3), dtype, seed=1)
    key = jax.random.PRNGKey(2)
    params, ref_params = ours.init(key, x), ref.init(key, x)
    assert_same_params(params, ref_params)
    assert sorted(params["params"]) == [f"Dense_{i}" for i in range(len(list_neurons))]
    y, y_ref = ours.apply(ref_params, x), ref.apply(ref_params, x)
    assert y.shape == (7, list_neurons[-1]) and y.dtype == y_ref.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **tol(dtype))


def test_mlp_irreps_array_in_and_out():
    x = IrrepsArray("2x0e + 0e", random_array((5, 3), np.float32))
    ref_x = e3nn_jax.IrrepsArray("2x0e + 0e", x.array)
    haiku_model = hk.without_apply_rng(hk.transform(lambda x: HaikuMLP([4, 2], jax.nn.gelu)(x)))
    params = haiku_model.init(jax.random.PRNGKey(0), x)
    y = haiku_model.apply(params, x)
    assert isinstance(y, IrrepsArray) and y.irreps == Irreps("2x0e") and y.shape == (5, 2)
    ref = hk.without_apply_rng(hk.transform(lambda x: e3nn_jax.haiku.MultiLayerPerceptron([4, 2], jax.nn.gelu)(x)))
    np.testing.assert_allclose(y.array, ref.apply(params, ref_x).array, rtol=1e-6)

    flax_model = FlaxMLP((4, 2), jax.nn.gelu)
    variables = flax_model.init(jax.random.PRNGKey(0), x)
    y = flax_model.apply(variables, x)
    assert isinstance(y, IrrepsArray) and y.irreps == Irreps("2x0e")
    y_ref = e3nn_jax.flax.MultiLayerPerceptron((4, 2), jax.nn.gelu).apply(variables, ref_x)
    np.testing.assert_allclose(y.array, y_ref.array, rtol=1e-6)


def test_mlp_forward_formula():
    """Path normalisation: h = act(W x / sqrt(fan_in)) with W ~ N(0, 1); the activation is normalised."""
    x = random_array((2, 3), np.float64)
    model = hk.without_apply_rng(hk.transform(lambda x: HaikuMLP([4], jnp.tanh, gradient_normalization="path")(x)))
    params = model.init(jax.random.PRNGKey(0), x)
    w = params["multi_layer_perceptron/linear_0"]["w"]
    np.testing.assert_allclose(model.apply(params, x), normalize_function(jnp.tanh)(x @ w / np.sqrt(3.0)), rtol=1e-12)


def test_mlp_gradient_normalization_resolution():
    """haiku reads the config default at construction, flax at call time (as in e3nn-jax)."""
    x = random_array((1, 4), np.float64)
    before = config("gradient_normalization")
    try:
        config("gradient_normalization", "element")
        haiku_params = hk.transform(lambda x: HaikuMLP([3], None)(x)).init(jax.random.PRNGKey(0), x)
        flax_params = FlaxMLP((3,)).init(jax.random.PRNGKey(0), x)
    finally:
        config("gradient_normalization", before)
    # element: weights initialised with std 1/sqrt(fan_in) = 0.5
    ref = hk.transform(lambda x: e3nn_jax.haiku.MultiLayerPerceptron([3], None, gradient_normalization="element")(x))
    assert_same_params(haiku_params, ref.init(jax.random.PRNGKey(0), x))
    ref = e3nn_jax.flax.MultiLayerPerceptron((3,), gradient_normalization="element")
    assert_same_params(flax_params, ref.init(jax.random.PRNGKey(0), x))


def test_mlp_jit_and_grad():
    x = random_array((6, 3), np.float64)
    model = hk.without_apply_rng(hk.transform(lambda x: HaikuMLP([5, 2], jax.nn.silu, with_bias=True)(x)))
    params = model.init(jax.random.PRNGKey(3), x)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), model.apply(params, x), rtol=1e-12)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    flax_model = FlaxMLP((5, 2), jax.nn.silu)
    variables = flax_model.init(jax.random.PRNGKey(3), x)
    grads = jax.grad(lambda v: jnp.sum(flax_model.apply(v, x) ** 2))(variables)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_mlp_bad_input():
    x = random_array((2, 3), np.float32)

    def haiku_init(*args, inputs=x, **kwargs):
        return hk.transform(lambda x: HaikuMLP(*args, **kwargs)(x)).init(jax.random.PRNGKey(0), inputs)

    with pytest.raises(ValueError, match="scalar"):
        haiku_init([3], jax.nn.gelu, inputs=IrrepsArray("0e + 1o", jnp.ones((2, 4))))
    with pytest.raises(ValueError, match="scalar"):
        FlaxMLP((3,), jax.nn.gelu).init(jax.random.PRNGKey(0), IrrepsArray("0o", jnp.ones((2, 1))))
    with pytest.raises(TypeError, match="list_neurons"):
        haiku_init(3, jax.nn.gelu)
    with pytest.raises(TypeError, match="list_neurons"):
        haiku_init([3.5], jax.nn.gelu)
    with pytest.raises(TypeError, match="act"):
        haiku_init([3], "gelu")
    with pytest.raises(TypeError, match="output_activation"):
        haiku_init([3], jax.nn.gelu, output_activation="tanh")
    with pytest.raises(ValueError, match="gradient_normalization"):
        haiku_init([3], jax.nn.gelu, gradient_normalization="layer")
    with pytest.raises(TypeError, match="output_activation"):
        FlaxMLP((3,), jax.nn.gelu, output_activation=1).init(jax.random.PRNGKey(0), x)
    with pytest.raises(TypeError, match="input"):
        FlaxMLP((3,), jax.nn.gelu).init(jax.random.PRNGKey(0), 1.0)
