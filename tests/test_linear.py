"""Equivariant Linear layers: parity with e3nn-jax (FunctionalLinear, haiku and flax modules), equivariance, errors."""

import flax.linen
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

import e3nn_fast.flax as fast_flax
import e3nn_fast.haiku as fast_haiku
from e3nn_fast.configuration import config
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import FunctionalLinear
from parity import random_inputs

# (irreps_in, irreps_out): scalars only, mixed parities, repeated and unsorted blocks, zero multiplicities,
# outputs not reachable from the input, and an input with nothing in common with the output.
CONFIGS = [
    ("5x0e + 0o + 7x1o", "0e + 0o + 1o"),
    ("0e + 1o", "2x0e + 1o + 2e"),
    ("3x0e + 2x1e + 0e", "2x0e + 3x1e"),
    ("1o + 2x0e", "0e + 1o + 2e"),
    ("2x1o + 3x2e + 1x1o", "2x1o + 2x2e + 0e"),
    ("4x0e", "3x0e"),
    ("0x0e + 2x1e", "1e + 0x2o"),
    ("3x0e + 2x1o + 1x2e", "2x0e + 2x1o + 3x2e"),
    ("1e + 1e + 0o", "3x1e + 2x0o"),
    ("2x0e + 1o + 1e + 2x2o", "0e + 1o + 1e + 2o + 3x0e"),
    ("10x0o", "0e"),
]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def assert_same_irreps_array(ours, ref, dtype):
    assert str(ours.irreps) == str(ref.irreps)
    assert ours.shape == ref.shape
    assert ours.dtype == ref.dtype
    assert tuple(ours.zero_flags) == tuple(ref.zero_flags)
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), **tol(dtype))


def assert_same_params(ours, ref):
    """Same tree (names, shapes, dtypes) and bit-identical values."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def param_shapes(params):
    return jax.tree_util.tree_map(lambda x: x.shape, params)


def haiku_parity(kwargs, ours_args, ref_args, dtype):
    """Init and apply e3nn_fast.haiku.Linear and e3nn_jax.haiku.Linear with the same key; compare everything."""
    ours = hk.without_apply_rng(hk.transform(lambda *a: fast_haiku.Linear(**kwargs)(*a)))
    ref = hk.without_apply_rng(hk.transform(lambda *a: e3nn_jax.haiku.Linear(**kwargs)(*a)))
    return compare_modules(ours, ref, jax.random.PRNGKey(1), ours_args, ref_args, dtype)


def compare_modules(ours, ref, key, ours_args, ref_args, dtype):
    """init both with ``key`` (same parameters expected), then apply both with e3nn-jax's parameters."""
    params, ref_params = ours.init(key, *ours_args), ref.init(key, *ref_args)
    assert_same_params(params, ref_params)
    # Checkpoint compatibility: e3nn-jax's parameters drive our module to e3nn-jax's output.
    y, y_ref = ours.apply(ref_params, *ours_args), ref.apply(ref_params, *ref_args)
    assert_same_irreps_array(y, y_ref, dtype)
    return params


def flax_parity(kwargs, ours_args, ref_args, dtype):
    """Same as :func:`haiku_parity` for the flax modules."""
    ref_kwargs = dict(kwargs)
    if ref_kwargs.get("irreps_in") is not None:
        # e3nn-jax's flax Linear compares irreps_in unconverted: a string never equals the input irreps there.
        ref_kwargs["irreps_in"] = e3nn_jax.Irreps(ref_kwargs["irreps_in"])
    ours, ref = fast_flax.Linear(**kwargs), e3nn_jax.flax.Linear(**ref_kwargs)
    return compare_modules(ours, ref, jax.random.PRNGKey(2), ours_args, ref_args, dtype)


# ----------------------------------------------------------------------------------------------------------------
# FunctionalLinear


NORMALIZATIONS = [("element", "path"), ("path", "element"), (0.3, 0.7), ("path", "path"), ("element", "element")]


@pytest.mark.parametrize("k, irreps_in, irreps_out", [(k,) + c for k, c in enumerate(CONFIGS)])
def test_functional_linear_instructions(k, irreps_in, irreps_out):
    path_normalization, gradient_normalization = NORMALIZATIONS[k % len(NORMALIZATIONS)]
    kwargs = dict(
        biases=k % 2 == 0, path_normalization=path_normalization, gradient_normalization=gradient_normalization
    )
    ours = FunctionalLinear(irreps_in, irreps_out, **kwargs)
    ref = e3nn_jax.FunctionalLinear(irreps_in, irreps_out, **kwargs)
    assert [tuple(i) for i in ours.instructions] == [tuple(i) for i in ref.instructions]
    for a, b in zip(ours.instructions, ref.instructions):
        assert (a.i_in, a.i_out, a.path_shape, a.path_weight, a.weight_std) == (
            b.i_in, b.i_out, b.path_shape, b.path_weight, b.weight_std,
        )
    assert ours.num_weights == ref.num_weights
    np.testing.assert_array_equal(np.asarray(ours.output_mask), np.asarray(ref.output_mask))
    assert repr(ours) == repr(ref)


@pytest.mark.parametrize(
    "irreps_in, irreps_out, dtype",
    [CONFIGS[0] + (np.float32,), CONFIGS[9] + (np.float64,)],
)
def test_functional_linear_call_and_matrix(irreps_in, irreps_out, dtype):
    ours, ref = FunctionalLinear(irreps_in, irreps_out), e3nn_jax.FunctionalLinear(irreps_in, irreps_out)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(ours.num_weights,)).astype(dtype))
    x, x_ref = random_inputs(irreps_in, (), dtype)

    # Flat weights and weights split per instruction give e3nn-jax's result.
    assert_same_irreps_array(ours(w, x), ref(w, x_ref), dtype)
    ws = ours.split_weights(w)
    assert [v.shape for v in ws] == [v.shape for v in ref.split_weights(w)]
    assert_same_irreps_array(ours(ws, x), ref(ws, x_ref), dtype)

    matrix = ours.matrix(ws)
    np.testing.assert_allclose(np.asarray(matrix), np.asarray(ref.matrix(ws)), **tol(dtype))
    np.testing.assert_allclose(np.asarray(x.array @ matrix), np.asarray(ours(ws, x).array), **tol(dtype))


def test_functional_linear_default_normalization_follows_config():
    try:
        config("path_normalization", "path")
        config("gradient_normalization", "element")
        ours = FunctionalLinear("2x0e + 3x0e", "0e")
    finally:
        config("path_normalization", "element")
        config("gradient_normalization", "path")
    ref = e3nn_jax.FunctionalLinear("2x0e + 3x0e", "0e", path_normalization="path", gradient_normalization="element")
    assert [tuple(i) for i in ours.instructions] == [tuple(i) for i in ref.instructions]


def test_functional_linear_explicit_instructions_and_bias_list():
    kwargs = dict(instructions=[(0, 1), (2, 1), (1, 0)], biases=[False, True])
    ours = FunctionalLinear("2x0e + 1o + 3x0e", "1o + 2x0e", **kwargs)
    ref = e3nn_jax.FunctionalLinear("2x0e + 1o + 3x0e", "1o + 2x0e", **kwargs)
    assert [tuple(i) for i in ours.instructions] == [tuple(i) for i in ref.instructions]


def test_functional_linear_zero_chunk_input():
    # A zero input chunk contributes nothing and leaves an output block that only it feeds as a zero chunk.
    ours, ref = FunctionalLinear("2x0e + 1o", "0e + 1o"), e3nn_jax.FunctionalLinear("2x0e + 1o", "0e + 1o")
    w = jnp.arange(ours.num_weights, dtype=jnp.float64)
    x = IrrepsArray("2x0e + 1o", jnp.array([1.0, 2.0, 0.0, 0.0, 0.0]), zero_flags=(False, True))
    x_ref = e3nn_jax.IrrepsArray("2x0e + 1o", jnp.array([1.0, 2.0, 0.0, 0.0, 0.0]), zero_flags=(False, True))
    y, y_ref = ours(w, x), ref(w, x_ref)
    assert_same_irreps_array(y, y_ref, np.float64)
    assert y.chunks[1] is None and y_ref.chunks[1] is None

    # The modules drop zero chunks before building the map: no parameter for the 1o block.
    params = haiku_parity(dict(irreps_out="0e + 1o"), (x,), (x_ref,), np.float64)
    assert param_shapes(params) == {"linear": {"w[0,0] 2x0e,1x0e": (2, 1)}}


# ----------------------------------------------------------------------------------------------------------------
# haiku and flax modules: parity over irreps configurations


def config_case(k):
    """dtype and biases for configuration k: both precisions and both bias settings occur for each framework."""
    dtype = [np.float32, np.float64][(k // 2) % 2]
    return dtype, k % 2 == 0


@pytest.mark.parametrize("k, irreps_in, irreps_out", [(k,) + c for k, c in enumerate(CONFIGS)])
def test_haiku_parity(k, irreps_in, irreps_out):
    dtype, biases = config_case(k)
    x, x_ref = random_inputs(irreps_in, (3,), dtype, seed=k)
    haiku_parity(dict(irreps_out=irreps_out, biases=biases), (x,), (x_ref,), dtype)


@pytest.mark.parametrize("k, irreps_in, irreps_out", [(k,) + c for k, c in enumerate(CONFIGS)])
def test_flax_parity(k, irreps_in, irreps_out):
    dtype, biases = config_case(k)
    x, x_ref = random_inputs(irreps_in, (3,), dtype, seed=k)
    flax_parity(dict(irreps_out=irreps_out, biases=not biases), (x,), (x_ref,), dtype)


# ----------------------------------------------------------------------------------------------------------------
# haiku and flax modules: options

OPTION_CASES = [
    # (constructor kwargs, irreps_in, input leading shape, external weights: None / "float" / "index")
    (dict(irreps_out="3x0e + 2x1o", channel_out=2, biases=True), "2x0e + 1o + 1e", (3, 4), None),
    (dict(irreps_out="2x0e + 1o", num_indexed_weights=3, biases=True), "3x0e + 2x1o", (3,), "index"),
    (dict(irreps_out="2x0e + 3x1o", biases=True, gradient_normalization="element"), "3x0e + 2x1o", (3,), "float"),
    (dict(irreps_out="2x0e + 3x1o", weights_per_channel=True), "3x0e + 2x1o", (3, 2), "float"),
    (dict(irreps_out="0e + 2e + 1o + 0e", force_irreps_out=True, biases=True), "3x0e + 2x1o", (3,), None),
    (dict(irreps_out="2x0e + 3x1o", path_normalization="path"), "0e + 2x0e + 1o + 2x1o", (3,), None),
    (dict(irreps_out="2x0e + 3x1o", gradient_normalization=0.5, path_normalization=0.25), "2x0e + 1o", (3,), None),
    (dict(irreps_out="0e + 1o", irreps_in="2x0e + 1o"), "1o + 2x0e", (3,), None),
    (
        dict(irreps_out="1o + 2x0e", irreps_in="2x0e + 1o + 3x0e", instructions=[(0, 1), (2, 1), (1, 0)],
             simplify_irreps_internally=False, biases=True),
        "2x0e + 1o + 3x0e", (3,), None,
    ),
    (dict(irreps_out="2x0e + 1o", simplify_irreps_internally=False), "0e + 1o + 0e", (3,), None),
]


def option_args(irreps_in, leading_shape, external, dtype, seed):
    """Positional call arguments (ours, e3nn-jax's) for one OPTION_CASES entry."""
    x, x_ref = random_inputs(irreps_in, leading_shape, dtype, seed)
    if external is None:
        return (x,), (x_ref,)
    rng = np.random.default_rng(seed + 100)
    if external == "index":
        e = jnp.asarray(rng.integers(0, 3, size=leading_shape[:1]), dtype=jnp.int32)
    else:
        e = jnp.asarray(rng.normal(size=leading_shape[:1] + (3,)).astype(dtype))
    return (e, x), (e, x_ref)


@pytest.mark.parametrize("k", range(len(OPTION_CASES)))
def test_haiku_options_parity(k):
    kwargs, irreps_in, leading_shape, external = OPTION_CASES[k]
    dtype = [np.float64, np.float32][k % 2]
    ours_args, ref_args = option_args(irreps_in, leading_shape, external, dtype, k)
    haiku_parity(kwargs, ours_args, ref_args, dtype)


@pytest.mark.parametrize("k", range(len(OPTION_CASES)))
def test_flax_options_parity(k):
    kwargs, irreps_in, leading_shape, external = OPTION_CASES[k]
    dtype = [np.float64, np.float32][k % 2]  # same as for haiku: shared shapes compile once
    ours_args, ref_args = option_args(irreps_in, leading_shape, external, dtype, k)
    flax_parity(kwargs, ours_args, ref_args, dtype)


def test_parameter_initializer():
    x, x_ref = random_inputs("2x0e + 1o", (3,), np.float64)
    params = haiku_parity(
        dict(irreps_out="0e + 1o", biases=True, parameter_initializer=lambda: hk.initializers.Constant(0.5)),
        (x,), (x_ref,), np.float64,
    )
    assert all(np.all(np.asarray(p) == 0.5) for p in jax.tree_util.tree_leaves(params))
    params = flax_parity(
        dict(irreps_out="0e + 1o", parameter_initializer=lambda: flax.linen.initializers.ones),
        (x,), (x_ref,), np.float64,
    )
    assert all(np.all(np.asarray(p) == 1.0) for p in jax.tree_util.tree_leaves(params))


def test_haiku_amuse_bouche():
    """e3nn-jax's introductory example: Linear('0e + 0o + 1o') after a tensor product with spherical harmonics."""
    expected = {"linear": {"w[0,0] 5x0e,1x0e": (5, 1), "w[1,1] 1x0o,1x0o": (1, 1), "w[2,2] 7x1o,1x1o": (7, 1)}}
    f = hk.without_apply_rng(hk.transform(lambda x: fast_haiku.Linear("0e + 0o + 1o")(x)))

    # The documented features: sh([0, 1, 2], 1o vector) x normal('4x0e + 1o + 1e', (16,)), made by e3nn-jax.
    sh = e3nn_jax.spherical_harmonics([0, 1, 2], e3nn_jax.IrrepsArray("1o", jnp.array([1.0, 2.0, 0.0])), False)
    features_ref = e3nn_jax.tensor_product(sh, e3nn_jax.normal("4x0e + 1o + 1e", jax.random.PRNGKey(0), (16,)))
    features = IrrepsArray(str(features_ref.irreps), features_ref.array)
    params = haiku_parity(dict(irreps_out="0e + 0o + 1o"), (features,), (features_ref,), np.float32)
    assert param_shapes(params) == expected
    assert f.apply(params, features).shape == (16, 5)

    # The same layer on exactly the irreps it keeps.
    x, x_ref = random_inputs("5x0e + 0o + 7x1o", (), np.float32)
    params = haiku_parity(dict(irreps_out="0e + 0o + 1o"), (x,), (x_ref,), np.float32)
    assert param_shapes(params) == expected
    y = f.apply(params, x)
    assert str(y.irreps) == "1x0e+1x0o+1x1o" and y.shape == (5,)
    # Under jit too (irreps are static pytree metadata).
    np.testing.assert_allclose(np.asarray(jax.jit(f.apply)(params, x).array), np.asarray(y.array), rtol=1e-6)


def test_flax_docs_example():
    """``e3nn.flax.Linear("1e")`` from e3nn-jax's documentation."""
    x, x_ref = random_inputs("0e + 3x1e + 1o", (4,), np.float32)
    params = flax_parity(dict(irreps_out="1e"), (x,), (x_ref,), np.float32)
    # The input is regrouped (0e, 1o, 1e) before the parameters are named.
    assert param_shapes(params) == {"params": {"w[2,0] 3x1e,1x1e": (3, 1)}}
    y = fast_flax.Linear("1e").apply(params, x)
    assert str(y.irreps) == "1x1e" and y.shape == (4, 3)


def test_modules_default_normalization_follows_config():
    x, x_ref = random_inputs("2x0e + 3x0e + 1o", (3,), np.float64)
    explicit = dict(irreps_out="0e + 1o", path_normalization="path", gradient_normalization="element")
    ref = hk.without_apply_rng(hk.transform(lambda x: e3nn_jax.haiku.Linear(**explicit)(x)))
    try:
        config("path_normalization", "path")
        config("gradient_normalization", "element")
        ours = hk.without_apply_rng(hk.transform(lambda x: fast_haiku.Linear("0e + 1o")(x)))
        params = ours.init(jax.random.PRNGKey(0), x)
        assert_same_params(params, ref.init(jax.random.PRNGKey(0), x_ref))
        assert_same_irreps_array(ours.apply(params, x), ref.apply(params, x_ref), np.float64)
        y = fast_flax.Linear("0e + 1o").apply({"params": params["linear"]}, x)
    finally:
        config("path_normalization", "element")
        config("gradient_normalization", "path")
    assert_same_irreps_array(y, ref.apply(params, x_ref), np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Equivariance


def random_o3(seed, dtype):
    """A random orthogonal 3x3 matrix with determinant -1 (rotation times inversion)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) > 0:
        q = -q
    return jnp.asarray(q.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64])
def test_equivariance(dtype):
    """f(D_in(g) x) = D_out(g) f(x) for an improper rotation g (so parities are exercised too)."""
    irreps_in = Irreps("3x0e + 0o + 2x1o + 1e + 2x2e + 2o")  # every parity, l up to 2
    x, _ = random_inputs(irreps_in, (3,), dtype)
    R = random_o3(7, np.float64)

    layer = lambda x: fast_haiku.Linear("2x0e + 0o + 3x1o + 1e + 2x2e + 2x2o", biases=True)(x)
    f = hk.without_apply_rng(hk.transform(layer))
    params = f.init(jax.random.PRNGKey(0), x)
    y = f.apply(params, x)
    D_in = np.asarray(irreps_in.D_from_matrix(R)).astype(dtype)
    D_out = np.asarray(y.irreps.D_from_matrix(R)).astype(dtype)
    y_rot = f.apply(params, IrrepsArray(irreps_in, x.array @ D_in.T))
    np.testing.assert_allclose(np.asarray(y_rot.array), np.asarray(y.array) @ D_out.T, **tol(dtype))


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_errors_functional_linear():
    lin = FunctionalLinear("2x0e + 1o", "0e + 1o")
    x = IrrepsArray("2x0e + 1o", jnp.ones(5))
    with pytest.raises(ValueError, match="incompatible with irreps_in"):
        lin(jnp.ones(lin.num_weights), IrrepsArray("2x0e + 1e", jnp.ones(5)))
    with pytest.raises(ValueError, match="shape"):
        lin(jnp.ones(lin.num_weights + 1), x)
    with pytest.raises(ValueError, match="shape"):
        lin([jnp.ones((2, 1)), jnp.ones((2, 1))], x)
    with pytest.raises(ValueError, match="expected 2 weight arrays"):
        lin([jnp.ones((2, 1))], x)
    with pytest.raises(ValueError, match="unbatched input"):
        lin(jnp.ones(lin.num_weights), IrrepsArray("2x0e + 1o", jnp.ones((3, 5))))
    with pytest.raises(TypeError, match="IrrepsArray"):
        lin(jnp.ones(lin.num_weights), jnp.ones(5))
    with pytest.raises(ValueError, match="only connect identical irreps"):
        FunctionalLinear("2x0e + 1o", "0e + 1o", instructions=[(0, 1)])
    with pytest.raises(ValueError, match="out of range"):
        FunctionalLinear("2x0e + 1o", "0e + 1o", instructions=[(2, 0)])
    with pytest.raises(ValueError, match="break equivariance"):
        FunctionalLinear("2x0e + 1o", "0e + 1o", biases=[False, True])
    with pytest.raises(ValueError, match="path_normalization"):
        FunctionalLinear("2x0e", "0e", path_normalization="elements")
    with pytest.raises(ValueError, match="irreps"):
        FunctionalLinear("2x0q", "0e")
    with pytest.raises(ValueError, match="affine"):
        FunctionalLinear("2x0e", "0e", biases=True).matrix(jnp.ones(3))


def test_errors_modules():
    x = IrrepsArray("2x0e + 1o", jnp.ones((3, 5)))

    def haiku_call(*args, **kwargs):
        f = hk.without_apply_rng(hk.transform(lambda *a: fast_haiku.Linear(**kwargs)(*a)))
        return f.init(jax.random.PRNGKey(0), *args)

    def flax_call(*args, **kwargs):
        return fast_flax.Linear(**kwargs).init(jax.random.PRNGKey(0), *args)

    for call in (haiku_call, flax_call):
        with pytest.raises(ValueError, match="do not match the expected irreps irreps_in="):
            call(x, irreps_out="0e", irreps_in="2x0e + 1e")
        with pytest.raises(ValueError, match="num_indexed_weights"):
            call(jnp.ones(3, dtype=jnp.int32), x, irreps_out="0e")
        with pytest.raises(ValueError, match="num_indexed_weights"):
            call(jnp.ones((3, 2)), x, irreps_out="0e", num_indexed_weights=2)
        with pytest.raises(ValueError, match="scalar"):
            call(IrrepsArray("1o", jnp.ones((3, 3))), x, irreps_out="0e")
        with pytest.raises(ValueError, match="weights_per_channel"):
            call(x, irreps_out="0e", weights_per_channel=True)
        with pytest.raises(ValueError, match="simplify_irreps_internally"):
            call(x, irreps_out="0e", irreps_in="2x0e + 1o", instructions=[(0, 0)])
        with pytest.raises(ValueError, match="(?i)irreps"):
            call(x, irreps_out="1x")


# --------------------------------------------------------------------------------------------------------------------
# the dispatcher: Linear through the fully connected tensor-product kernels (interpret mode on CPU)


def test_linear_through_kernels_matches_reference():
    import e3nn_fast
    from e3nn_fast import dispatch

    assert dispatch.choose("linear") == "reference"  # auto on CPU: the einsum is the fast path
    lin = FunctionalLinear(Irreps("3x0e+2x1o+0x2e+5x1o"), Irreps("4x0e+3x1o+1x2e"), biases=True)
    key = jax.random.PRNGKey(3)
    ws = [jax.random.normal(jax.random.fold_in(key, i), ins.path_shape) for i, ins in enumerate(lin.instructions)]
    x = IrrepsArray(lin.irreps_in, jax.random.normal(key, (5, lin.irreps_in.dim)))
    per_row = [1.0 + 0.1 * jnp.arange(5.0).reshape((5,) + (1,) * w.ndim) * w for w in ws]  # indexed-style weights

    def loss(apply):
        return lambda ws, x: jnp.sum(jnp.sin(apply(ws, x)))

    # fresh functions per backend: the executor is chosen when a function is traced
    def run():
        apply = lambda ws, x: lin.apply(ws, IrrepsArray(lin.irreps_in, x)).array
        return (jax.jit(apply)(ws, x.array), jax.jit(apply)(per_row, x.array),
                jax.jit(jax.grad(loss(apply), argnums=(0, 1)))(ws, x.array))

    expected = run()
    with e3nn_fast.backend("pallas-interpret"):
        assert dispatch.choose("linear") == "pallas-interpret"
        got = run()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_haiku_linear_with_indexed_weights_through_kernels():
    import e3nn_fast

    def build():
        return hk.without_apply_rng(hk.transform(
            lambda x, i: fast_haiku.Linear("3x0e+2x1o", num_indexed_weights=3)(i, x)))

    x = IrrepsArray("4x0e+1x1o", jax.random.normal(jax.random.PRNGKey(0), (6, 7)))
    index = jnp.array([0, 2, 1, 1, 0, 2])
    params = build().init(jax.random.PRNGKey(1), x, index)
    expected = jax.jit(build().apply)(params, x, index)
    with e3nn_fast.backend("pallas-interpret"):
        assert e3nn_fast.dispatch.choose("linear") == "pallas-interpret"
        got = jax.jit(build().apply)(params, x, index)
    np.testing.assert_allclose(got.array, expected.array, rtol=1e-10, atol=1e-12)
