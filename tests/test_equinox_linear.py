"""e3nn_fast.equinox.Linear: the behaviour e3nn-jax's own equinox tests check, parity with e3nn_jax.equinox.Linear
(parameters for the same key, outputs, gradients), jit/grad through the module, equivariance and bad input."""

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import equinox as eqx  # noqa: E402  (a test extra: missing, the module fails rather than skips)

import e3nn_jax  # noqa: E402

import e3nn_fast as e3nn  # noqa: E402
import e3nn_fast.equinox as fast_eqx  # noqa: E402
from e3nn_fast.configuration import config  # noqa: E402
from e3nn_fast.irreps import Irreps  # noqa: E402
from e3nn_fast.irreps_array import IrrepsArray  # noqa: E402
from e3nn_fast.utils import assert_equivariant, assert_output_dtype_matches_input_dtype  # noqa: E402
from parity import assert_same, random_inputs  # noqa: E402


def keys(seed=0):
    """An endless supply of fresh PRNG keys."""
    key = jax.random.PRNGKey(seed)
    while True:
        key, subkey = jax.random.split(key)
        yield subkey


# ----------------------------------------------------------------------------------------------------------------
# What e3nn-jax's linear_equinox_test.py checks, on e3nn_fast: every reachable output is non-zero, unreachable
# ones are dropped, and the output has the expected leading shape, for each linear_type.

IN = ["5x0e", "1e + 2e + 4x1e + 3x3o", "2x1o + 0x3e", "0x0e"]
OUT = ["5x0e", "1e + 2e + 3x3o + 3x1e", "2x1o + 0x3e", "0x0e"]
GRID = [(a, b) for a in IN for b in OUT]
BATCH = 16


def assert_dense_output(y, leading_shape):
    """Shape ``leading_shape + (irreps.dim,)`` and no exact zero (unreachable irreps were dropped, not zero-filled)."""
    assert y.shape == leading_shape + (y.irreps.dim,)
    assert bool(jnp.all(y.array != 0.0))


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_vanilla(irreps_in, irreps_out):
    k = keys(1)
    linear = fast_eqx.Linear(irreps_in=irreps_in, irreps_out=irreps_out, key=next(k))
    y = linear(e3nn.normal(irreps_in, next(k), (BATCH,)))
    assert_dense_output(y, (BATCH,))
    assert y.irreps == linear.irreps_out


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_vanilla_channel_out(irreps_in, irreps_out):
    k = keys(2)
    for channels in (1, 3):
        linear = fast_eqx.Linear(irreps_in=irreps_in, irreps_out=irreps_out, channel_out=channels, key=next(k))
        y = linear(e3nn.normal(irreps_in, next(k), (BATCH,)))
        # channel_out creates a new axis before the irreps; the batch axis stays a batch axis.
        assert_dense_output(y, (BATCH, channels))


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_vanilla_force_irreps_out(irreps_in, irreps_out):
    k = keys(3)
    linear = fast_eqx.Linear(irreps_in=irreps_in, irreps_out=irreps_out, force_irreps_out=True, key=next(k))
    y = linear(e3nn.normal(irreps_in, next(k), (BATCH,)))
    assert y.irreps == irreps_out
    assert y.shape == (BATCH, Irreps(irreps_out).dim)


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_indexed(irreps_in, irreps_out):
    k = keys(4)
    linear = fast_eqx.Linear(
        irreps_in=irreps_in, irreps_out=irreps_out, linear_type="indexed", num_indexed_weights=5, key=next(k)
    )
    y = linear(jnp.arange(BATCH) % 5, e3nn.normal(irreps_in, next(k), (BATCH,)))
    assert_dense_output(y, (BATCH,))


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_mixed(irreps_in, irreps_out):
    k = keys(5)
    linear = fast_eqx.Linear(
        irreps_in=irreps_in, irreps_out=irreps_out, linear_type="mixed", weights_dim=6, key=next(k)
    )
    y = linear(jax.random.normal(next(k), (BATCH, 6)), e3nn.normal(irreps_in, next(k), (BATCH,)))
    assert_dense_output(y, (BATCH,))


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_mixed_per_channel(irreps_in, irreps_out):
    k = keys(6)
    linear = fast_eqx.Linear(
        irreps_in=irreps_in, irreps_out=irreps_out, linear_type="mixed_per_channel", weights_per_channel=True,
        weights_dim=6, channel_in=BATCH, key=next(k),
    )
    # The input's leading axis is the channel axis here: one weight set per channel, all mixed from the same e.
    y = linear(jax.random.normal(next(k), (6,)), e3nn.normal(irreps_in, next(k), (BATCH,)))
    assert_dense_output(y, (BATCH,))


@pytest.mark.parametrize("irreps_in, irreps_out", GRID)
def test_output_dtype_follows_input(irreps_in, irreps_out):
    assert jax.config.read("jax_enable_x64")  # tests/conftest.py turns it on
    k = keys(7)
    linear = fast_eqx.Linear(irreps_in=irreps_in, irreps_out=irreps_out, key=next(k))
    assert_output_dtype_matches_input_dtype(linear, e3nn.normal(irreps_in, next(k), (BATCH,)))


def test_docstring_example():
    linear = e3nn.equinox.Linear(irreps_out="2x0e + 1o + 2e", irreps_in="0e + 1o", key=jax.random.PRNGKey(0))
    y = linear(e3nn.normal("0e + 1o", jax.random.PRNGKey(1), (3,)))
    assert str(y.irreps) == "2x0e+1x1o" and y.shape == (3, 5)


# ----------------------------------------------------------------------------------------------------------------
# Parity with e3nn_jax.equinox.Linear: same key -> bit-identical parameters, same outputs and gradients.

PARITY_CASES = [
    # (constructor kwargs, irreps of the input, input leading shape, call weights: None/"index"/"float"/"irreps")
    (dict(irreps_in="5x0e + 0o + 7x1o", irreps_out="0e + 0o + 1o"), "5x0e + 0o + 7x1o", (3,), None),
    (dict(irreps_in="3x0e + 2x1e + 0e", irreps_out="2x0e + 3x1e", biases=True), "3x0e + 2x1e + 0e", (3,), None),
    # the input chunked differently from irreps_in (equal up to regrouping)
    (dict(irreps_in="2x0e + 1o", irreps_out="0e + 1o + 2e", biases=True), "0e + 1o + 0e", (4,), None),
    (
        dict(irreps_in="0e + 2x0e + 1o + 2x1o", irreps_out="2x0e + 3x1o", biases=True,
             path_normalization="path", gradient_normalization="element"),
        "0e + 2x0e + 1o + 2x1o", (3,), None,
    ),
    (
        dict(irreps_in="2x0e + 1o", irreps_out="2x0e + 3x1o", path_normalization=0.25, gradient_normalization=0.5),
        "2x0e + 1o", (3,), None,
    ),
    (dict(irreps_in="2x0e + 1o + 1e", irreps_out="3x0e + 2x1o", channel_out=2, biases=True), "2x0e + 1o + 1e",
     (3, 4), None),
    (dict(irreps_in="3x0e + 2x1o", irreps_out="0e + 2e + 1o + 0e", force_irreps_out=True, biases=True),
     "3x0e + 2x1o", (3,), None),
    (dict(irreps_in="0x0e + 2x1e", irreps_out="1e + 0x2o"), "0x0e + 2x1e", (3,), None),
    (dict(irreps_in="10x0o", irreps_out="0e"), "10x0o", (3,), None),  # nothing reachable: empty output
    (dict(irreps_in="10x0o", irreps_out="0e + 0o", force_irreps_out=True), "10x0o", (3,), None),
    (dict(irreps_in="3x0e + 2x1o", irreps_out="2x0e + 1o", linear_type="indexed", num_indexed_weights=3,
          biases=True), "3x0e + 2x1o", (6,), "index"),
    (dict(irreps_in="3x0e + 2x1o", irreps_out="2x0e + 3x1o", linear_type="mixed", weights_dim=4, biases=True,
          gradient_normalization="element"), "3x0e + 2x1o", (5,), "float"),
    (dict(irreps_in="3x0e + 2x1o", irreps_out="2x0e + 3x1o", linear_type="mixed", weights_dim=4),
     "3x0e + 2x1o", (5,), "irreps"),
    (dict(irreps_in="3x0e + 2x1o", irreps_out="2x0e + 3x1o", linear_type="mixed_per_channel",
          weights_per_channel=True, weights_dim=3, channel_in=2), "3x0e + 2x1o", (5, 2), "float"),
    (dict(irreps_in="2x0e + 1o", irreps_out="0e + 1o", input_dtype=jnp.float64), "2x0e + 1o", (3,), None),
]


def call_args(irreps, leading_shape, external, dtype, seed, weights_dim=None):
    """Positional call arguments for our module and for e3nn-jax's, built from the same numbers."""
    x, x_ref = random_inputs(irreps, leading_shape, dtype, seed)
    rng = np.random.default_rng(seed + 100)
    if external is None:
        return (x,), (x_ref,)
    if external == "index":
        # negative indices count from the end, as in array indexing
        i = jnp.asarray(rng.integers(-3, 3, size=leading_shape), dtype=jnp.int32)
        return (i, x), (i, x_ref)
    w = jnp.asarray(rng.normal(size=leading_shape[:1] + (weights_dim,)).astype(dtype))
    if external == "irreps":
        return (IrrepsArray(f"{weights_dim}x0e", w), x), (e3nn_jax.IrrepsArray(f"{weights_dim}x0e", w), x_ref)
    return (w, x), (w, x_ref)


def assert_same_parameters(ours, ref):
    """Same parameter names, shapes, dtypes and bit-identical values, and the same pytree leaves in the same
    order (so equinox serialisation of one loads into the other)."""
    assert sorted(ours._weights) == sorted(ref._weights)
    for name, w in ours._weights.items():
        w_ref = ref._weights[name]
        assert w.shape == w_ref.shape and w.dtype == w_ref.dtype, name
        np.testing.assert_array_equal(np.asarray(w), np.asarray(w_ref), err_msg=name)
    leaves, ref_leaves = jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def parity_pair(k):
    """Both modules and their call arguments for PARITY_CASES[k]; float32 and float64 inputs alternate."""
    kwargs, irreps, leading_shape, external = PARITY_CASES[k]
    dtype = np.float64 if kwargs.get("input_dtype") is jnp.float64 else [np.float32, np.float64][k % 2]
    key = jax.random.PRNGKey(10 + k)
    ours, ref = fast_eqx.Linear(**kwargs, key=key), e3nn_jax.equinox.Linear(**kwargs, key=key)
    args, ref_args = call_args(irreps, leading_shape, external, dtype, k, kwargs.get("weights_dim"))
    return ours, ref, args, ref_args, dtype


@pytest.mark.parametrize("k", range(len(PARITY_CASES)))
def test_parity_with_e3nn_jax(k):
    ours, ref, args, ref_args, dtype = parity_pair(k)
    assert_same_parameters(ours, ref)
    assert str(ours.irreps_in) == str(ref.irreps_in) and str(ours.irreps_out) == str(ref.irreps_out)
    assert ours.gradient_normalization == ref.gradient_normalization
    assert_same(ours(*args), ref(*ref_args), dtype)


@pytest.mark.parametrize("k", [1, 5, 10, 11, 13])
def test_gradient_parity_with_e3nn_jax(k):
    """Gradients of a loss with respect to the parameters equal e3nn-jax's."""
    ours, ref, args, ref_args, _ = parity_pair(k)

    def loss(module, *a):
        return jnp.sum(module(*a).array ** 2)

    grads = eqx.filter_grad(loss)(ours, *args)
    ref_grads = eqx.filter_grad(loss)(ref, *ref_args)
    assert sorted(grads._weights) == sorted(ref_grads._weights)
    for name, g in grads._weights.items():
        # the parameters are float32 (input_dtype) even for a float64 input: their gradients are float32
        tol = dict(rtol=1e-5, atol=1e-5) if g.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref_grads._weights[name]), err_msg=name, **tol)


def test_default_gradient_normalization_read_at_construction():
    """gradient_normalization=None takes the global config when the module is built (as e3nn-jax does)."""
    key = jax.random.PRNGKey(3)
    kwargs = dict(irreps_in="4x0e + 2x1o", irreps_out="3x0e + 1o", linear_type="mixed", weights_dim=2)
    try:
        config("gradient_normalization", "element")
        e3nn_jax.config("gradient_normalization", "element")
        ours, ref = fast_eqx.Linear(**kwargs, key=key), e3nn_jax.equinox.Linear(**kwargs, key=key)
    finally:
        config("gradient_normalization", "path")
        e3nn_jax.config("gradient_normalization", "path")
    assert ours.gradient_normalization == ref.gradient_normalization == 0.0
    assert_same_parameters(ours, ref)
    args, ref_args = call_args("4x0e + 2x1o", (3,), "float", np.float64, 0, 2)
    assert_same(ours(*args), ref(*ref_args), np.float64)  # built under "element": the config reset has no effect


# ----------------------------------------------------------------------------------------------------------------
# jit / grad through the module, equivariance


def test_jit_and_grad_through_module():
    k = keys(8)
    linear = fast_eqx.Linear(irreps_in="3x0e + 2x1o + 2e", irreps_out="2x0e + 3x1o + 2e", biases=True, key=next(k))
    x = e3nn.normal("3x0e + 2x1o + 2e", next(k), (4,))
    y = linear(x)

    # eqx.filter_jit and plain jax.jit (the module is a pytree whose only leaves are the parameters)
    np.testing.assert_allclose(eqx.filter_jit(lambda m, x: m(x))(linear, x).array, y.array, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x).array)(linear, x), y.array, rtol=1e-6, atol=1e-6)

    # d/dw of sum(y * c) is linear in the input: the bias gradient is sum of c over the batch and components.
    c = jax.random.normal(next(k), y.shape)
    grads = jax.jit(jax.grad(lambda m, x: jnp.sum(m(x).array * c)))(linear, x)
    assert set(grads._weights) == set(linear._weights)
    bias = grads._weights["b[0] 2x0e"]
    np.testing.assert_allclose(bias, jnp.sum(c[:, :2], axis=0), rtol=1e-5, atol=1e-6)

    # gradient with respect to the input: the map is linear, so it is the transpose applied to c
    gx = jax.grad(lambda a: jnp.sum(linear(IrrepsArray(x.irreps, a)).array * c))(x.array)
    assert gx.shape == x.shape and bool(jnp.all(jnp.isfinite(gx)))

    # a training step changes the parameters and keeps the module usable
    updated = jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, linear, grads)
    assert updated(x).shape == y.shape


def test_jit_indexed_and_mixed():
    k = keys(9)
    x = e3nn.normal("2x0e + 1o", next(k), (6,))
    indexed = fast_eqx.Linear(irreps_in="2x0e + 1o", irreps_out="0e + 1o", linear_type="indexed",
                              num_indexed_weights=4, key=next(k))
    i = jnp.array([0, 1, 2, 3, -1, 2])
    np.testing.assert_allclose(eqx.filter_jit(lambda m, i, x: m(i, x))(indexed, i, x).array, indexed(i, x).array,
                               rtol=1e-6, atol=1e-6)
    mixed = fast_eqx.Linear(irreps_in="2x0e + 1o", irreps_out="0e + 1o", linear_type="mixed", weights_dim=3,
                            key=next(k))
    w = jax.random.normal(next(k), (6, 3))
    np.testing.assert_allclose(eqx.filter_jit(lambda m, w, x: m(w, x))(mixed, w, x).array, mixed(w, x).array,
                               rtol=1e-6, atol=1e-6)


def test_equivariance():
    k = keys(10)
    linear = fast_eqx.Linear(
        irreps_in="3x0e + 0o + 2x1o + 1e + 2x2e", irreps_out="2x0e + 0o + 3x1o + 1e + 2x2e + 2o", biases=True,
        key=next(k),
    )
    assert_equivariant(linear, next(k), e3nn.normal("3x0e + 0o + 2x1o + 1e + 2x2e", next(k), (3,), dtype=jnp.float64),
                       atol=1e-10, rtol=1e-10)


def test_module_attributes_and_lazy_import():
    linear = e3nn.equinox.Linear(irreps_in="1o + 2x0e", irreps_out="0e + 1o + 2e", key=jax.random.PRNGKey(0))
    assert e3nn.equinox is fast_eqx
    assert str(linear.irreps_in) == "2x0e+1x1o"  # regrouped
    assert str(linear.irreps_out) == "1x0e+1x1o"  # 2e unreachable
    assert linear.linear_type == "vanilla" and linear.gradient_normalization == 1.0
    assert sorted(linear._weights) == ["w[0,0] 2x0e,1x0e", "w[1,1] 1x1o,1x1o"]


def test_zero_chunks_in_input():
    """A zero-flagged input block contributes nothing (e3nn-jax's module rejects such an input)."""
    linear = fast_eqx.Linear(irreps_in="2x0e + 1o", irreps_out="0e + 1o", key=jax.random.PRNGKey(0))
    x = e3nn.from_chunks("2x0e + 1o", [jnp.ones((3, 2, 1)), None], (3,))
    dense = IrrepsArray("2x0e + 1o", jnp.concatenate([jnp.ones((3, 2)), jnp.zeros((3, 3))], axis=-1))
    np.testing.assert_allclose(linear(x).array, linear(dense).array, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def build(**kwargs):
    kwargs.setdefault("irreps_in", "2x0e + 1o")
    kwargs.setdefault("irreps_out", "0e + 1o")
    return fast_eqx.Linear(**kwargs, key=jax.random.PRNGKey(0))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="linear_type must be one of"):
        build(linear_type="index")
    with pytest.raises(ValueError, match="needs num_indexed_weights"):
        build(linear_type="indexed")
    with pytest.raises(ValueError, match="needs weights_dim"):
        build(linear_type="mixed")
    with pytest.raises(ValueError, match="needs channel_in"):
        build(linear_type="mixed_per_channel", weights_dim=2)
    with pytest.raises(ValueError, match="irreps_in is required"):
        build(irreps_in=None)
    with pytest.raises(ValueError, match="irreps_out"):
        build(irreps_out="1x")
    with pytest.raises(ValueError, match="positive int"):
        build(linear_type="indexed", num_indexed_weights=0)
    with pytest.raises(TypeError, match="positive int"):
        build(linear_type="indexed", num_indexed_weights=True)
    with pytest.raises(TypeError, match="positive int"):
        build(channel_out=2.0)
    # combinations e3nn-jax asserts on: both ValueError and AssertionError
    with pytest.raises(ValueError, match="channel_out and weights_per_channel"):
        build(channel_out=2, weights_per_channel=True, linear_type="mixed_per_channel", weights_dim=2, channel_in=2)
    with pytest.raises(AssertionError, match="only applies to linear_type='indexed'"):
        build(linear_type="mixed", weights_dim=2, num_indexed_weights=3)
    # a flag that would otherwise be silently ignored
    with pytest.raises(ValueError, match="weights_per_channel=True needs linear_type='mixed_per_channel'"):
        build(linear_type="mixed", weights_dim=2, weights_per_channel=True)
    with pytest.raises(TypeError):
        fast_eqx.Linear(irreps_in="0e", irreps_out="0e")  # the key is required


def test_bad_call_arguments():
    x = IrrepsArray("2x0e + 1o", jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="do not match irreps_in=2x0e\\+1x1o"):
        build()(IrrepsArray("2x0e + 1e", jnp.ones((3, 5))))
    with pytest.raises(ValueError, match="channel_in=4 expects an input of shape"):
        build(channel_in=4)(x)
    with pytest.raises(AssertionError, match="takes no weights"):
        build()(jnp.ones((3, 2)), x)
    with pytest.raises(ValueError, match="needs weights"):
        build(linear_type="mixed", weights_dim=2)(x)

    indexed = build(linear_type="indexed", num_indexed_weights=3)
    with pytest.raises(ValueError, match=r"must lie in \[-3, 3\)"):
        indexed(jnp.array([0, 1, 3]), x)
    with pytest.raises(ValueError, match=r"must lie in \[-3, 3\)"):
        indexed(jnp.array([0, -4, 1]), x)
    with pytest.raises(ValueError, match="integer indices"):
        indexed(jnp.ones(3), x)

    mixed = build(linear_type="mixed", weights_dim=2)
    with pytest.raises(ValueError, match="float weights"):
        mixed(jnp.ones((3, 2), dtype=jnp.int32), x)
    with pytest.raises(ValueError, match=r"weights_dim=2\), got \(3, 5\)"):
        mixed(jnp.ones((3, 5)), x)
    with pytest.raises(ValueError, match="scalar"):
        mixed(IrrepsArray("1o", jnp.ones((3, 3))), x)

    per_channel = build(linear_type="mixed_per_channel", weights_dim=2, channel_in=3, weights_per_channel=True)
    with pytest.raises(ValueError, match="channel_in=3"):
        per_channel(jnp.ones(2), IrrepsArray("2x0e + 1o", jnp.ones((2, 5))))

    # parameters replaced by arrays of the wrong shape
    broken = eqx.tree_at(lambda m: m._weights, build(), {n: jnp.ones((7,)) for n in build()._weights})
    with pytest.raises(ValueError, match="has shape \\(7,\\)"):
        broken(x)


def test_missing_equinox_gives_install_hint(monkeypatch):
    """Without equinox, importing e3nn_fast.equinox names the extra to install."""
    monkeypatch.setitem(sys.modules, "equinox", None)  # makes `import equinox` fail as if it were absent
    for name in ("e3nn_fast.equinox", "e3nn_fast.equinox.linear"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(e3nn, "equinox", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'e3nn_fast\[equinox\]'"):
        importlib.import_module("e3nn_fast.equinox")
