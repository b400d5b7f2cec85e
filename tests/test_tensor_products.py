"""tensor_product, elementwise_tensor_product, tensor_square, tensor_product_with_spherical_harmonics vs e3nn-jax."""

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import e3nn_fast as e3nn

IRREPS_PAIRS = [
    ("0e", "0e"),
    ("2x0e + 1o", "0o + 2o"),
    ("3x1o", "1o"),
    ("16x0e + 16x1o", "0e + 1o + 2e + 3o"),
    ("2x1e + 2e", "2e"),
    ("1o + 0e + 1o", "2x1e + 0o"),
    ("4x2e + 3x3o", "1x2o + 1x1e"),
    ("0x1o + 2x0e", "1o"),
    ("4x0e + 2x4e", "3o + 4e"),
]


def _pair(irreps1, irreps2, dtype, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    a = jax.random.normal(k1, (3, e3nn.Irreps(irreps1).dim), dtype)
    b = jax.random.normal(k2, (3, e3nn.Irreps(irreps2).dim), dtype)
    return a, b


def _compiled(fn, *arrays):
    """The oracle under ``jax.jit``: one compile instead of hundreds of eager primitives (its IrrepsArray is a pytree
    of the array with the irreps as static data, so irreps, dtype and values come back unchanged)."""
    return jax.jit(fn)(*arrays)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-11, atol=1e-11)


def assert_same(ours, theirs, dtype):
    assert str(ours.irreps) == str(theirs.irreps)
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(theirs.array), **_tol(dtype))


@pytest.mark.parametrize("irreps1,irreps2", IRREPS_PAIRS)
def test_tensor_product_matches_e3nn_jax(irreps1, irreps2):
    for dtype, normalization in [(jnp.float32, "component"), (jnp.float64, "component"), (jnp.float64, "norm")]:
        a, b = _pair(irreps1, irreps2, dtype)
        ours = e3nn.tensor_product(
            e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b), irrep_normalization=normalization
        )
        theirs = _compiled(lambda a, b: e3nn_jax.tensor_product(
            e3nn_jax.IrrepsArray(irreps1, a), e3nn_jax.IrrepsArray(irreps2, b), irrep_normalization=normalization
        ), a, b)
        assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("irreps1,irreps2", IRREPS_PAIRS[4:7])
@pytest.mark.parametrize("filter_ir_out", [None, "0e + 1o", ["1e", "2e"]])
def test_tensor_product_options_match_e3nn_jax(irreps1, irreps2, filter_ir_out):
    a, b = _pair(irreps1, irreps2, jnp.float64, seed=1)
    for regroup in (True, False):
        ours = e3nn.tensor_product(
            e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b), filter_ir_out=filter_ir_out, regroup_output=regroup
        )
        theirs = _compiled(lambda a, b: e3nn_jax.tensor_product(
            e3nn_jax.IrrepsArray(irreps1, a),
            e3nn_jax.IrrepsArray(irreps2, b),
            filter_ir_out=filter_ir_out,
            regroup_output=regroup,
        ), a, b)
        assert_same(ours, theirs, jnp.float64)


def test_tensor_product_skips_zero_chunks():
    x = e3nn.from_chunks("2x0e + 1o", [None, jnp.ones((1, 3))], (), jnp.float32)
    y = e3nn.IrrepsArray("0e + 1o", jnp.arange(4.0, dtype=jnp.float32))
    out = e3nn.tensor_product(x, y)
    theirs = e3nn_jax.tensor_product(
        e3nn_jax.from_chunks("2x0e + 1o", [None, jnp.ones((1, 3))], (), jnp.float32),
        e3nn_jax.IrrepsArray("0e + 1o", jnp.arange(4.0, dtype=jnp.float32)),
    )
    assert str(out.irreps) == str(theirs.irreps)
    assert out.zero_flags == theirs.zero_flags
    np.testing.assert_allclose(out.array, theirs.array, atol=1e-6)


def test_seed_tensor_product_example():
    x = e3nn.IrrepsArray("2x0e + 1o", jnp.arange(5.0))
    y = e3nn.IrrepsArray("0o + 2o", jnp.arange(6.0))
    out = e3nn.tensor_product(x, y)
    assert out.irreps == e3nn.Irreps("2x0o+2x1e+1x2e+2x2o+1x3e")
    np.testing.assert_allclose(out.array[5:8], [-1.9, 16.65, 14.83], atol=5e-3)
    # irreps only, without data
    assert e3nn.tensor_product("2x1e + 2e", "2e") == e3nn.Irreps("1x0e+3x1e+3x2e+3x3e+1x4e")
    z = e3nn.tensor_product(e3nn.normal("1e", jax.random.PRNGKey(0)), e3nn.normal("2e", jax.random.PRNGKey(1)))
    assert z.irreps == e3nn.Irreps("1x1e+1x2e+1x3e")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "irreps1,irreps2",
    [("2x0e + 1o", "1e + 0o + 0o"), ("3x1o + 2x2e", "5x0e"), ("4x1o", "2x1e + 2x2o"), ("0e + 0e + 1o", "1o + 2x0o")],
)
def test_elementwise_tensor_product_matches_e3nn_jax(irreps1, irreps2, dtype):
    a, b = _pair(irreps1, irreps2, dtype, seed=2)
    for filter_ir_out in (None, ["1e", "0o", "1o"]):
        ours = e3nn.elementwise_tensor_product(
            e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b), filter_ir_out=filter_ir_out
        )
        theirs = _compiled(lambda a, b: e3nn_jax.elementwise_tensor_product(
            e3nn_jax.IrrepsArray(irreps1, a), e3nn_jax.IrrepsArray(irreps2, b), filter_ir_out=filter_ir_out
        ), a, b)
        assert_same(ours, theirs, dtype)
    if irreps2 == "5x0e":  # IrrepsArray * IrrepsArray: e3nn-jax allows it when one side of each pair is scalar
        product = e3nn.IrrepsArray(irreps1, a) * e3nn.IrrepsArray(irreps2, b)
        assert_same(product, e3nn_jax.IrrepsArray(irreps1, a) * e3nn_jax.IrrepsArray(irreps2, b), dtype)


def test_elementwise_tensor_product_seed_example():
    x = e3nn.IrrepsArray("2x0e + 1o", jnp.arange(5.0))
    y = e3nn.IrrepsArray("1e + 0o + 0o", jnp.arange(5.0))
    out = e3nn.elementwise_tensor_product(x, y)
    assert str(out.irreps) == "1x1e+1x0o+1x1e"
    np.testing.assert_allclose(out.array, [0.0, 0.0, 0.0, 3.0, 8.0, 12.0, 16.0], atol=1e-5)


@pytest.mark.parametrize("irreps", ["0e + 1o", "3x0e + 2x1o + 2e", "4x1e", "2x2o + 0o"])
@pytest.mark.parametrize("normalized_input", [False, True])
def test_tensor_square_matches_e3nn_jax(irreps, normalized_input):
    for dtype, normalization in [(jnp.float32, "component"), (jnp.float64, "norm"), (jnp.float64, "none")]:
        a = jax.random.normal(jax.random.PRNGKey(3), (2, e3nn.Irreps(irreps).dim), dtype)
        ours = e3nn.tensor_square(
            e3nn.IrrepsArray(irreps, a), normalized_input=normalized_input, irrep_normalization=normalization
        )
        theirs = _compiled(lambda a: e3nn_jax.tensor_square(
            e3nn_jax.IrrepsArray(irreps, a), normalized_input=normalized_input, irrep_normalization=normalization
        ), a)
        assert_same(ours, theirs, dtype)


def test_tensor_square_seed_example():
    x = e3nn.IrrepsArray("0e + 1o", jnp.array([10, 1, 2, 3.0]))
    out = e3nn.tensor_square(x)
    assert str(out.irreps) == "2x0e+1x1o+1x2e"
    np.testing.assert_allclose(out.array, [57.74, 3.61, 10.0, 20.0, 30.0, 3.0, 2.0, -0.58, 6.0, 4.0], atol=5e-3)


@pytest.mark.parametrize("vector_irreps", ["1o", "1e"])
def test_tensor_product_with_spherical_harmonics_matches_e3nn_jax(vector_irreps):
    x = jax.random.normal(jax.random.PRNGKey(4), (5, e3nn.Irreps("3x0e + 2x1o + 2e").dim))
    v = jax.random.normal(jax.random.PRNGKey(5), (5, 3))

    def run(lib, x, v):
        out = lib.tensor_product_with_spherical_harmonics(
            lib.IrrepsArray("3x0e + 2x1o + 2e", x), lib.IrrepsArray(vector_irreps, v), 3
        )
        return out.array, str(out.irreps)

    ours, ours_irreps = jax.jit(lambda x, v: run(e3nn, x, v)[0])(x, v), run(e3nn, x, v)[1]
    theirs = jax.jit(lambda x, v: run(e3nn_jax, x, v)[0])(x, v)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)
    expected_irreps = e3nn_jax.tensor_product(
        e3nn_jax.IrrepsArray("3x0e + 2x1o + 2e", x), e3nn_jax.spherical_harmonics([0, 1, 2, 3], e3nn_jax.IrrepsArray(vector_irreps, v), True)
    ).irreps
    assert ours_irreps == str(expected_irreps)


@pytest.mark.parametrize("irreps1,irreps2", [("2x0e + 1o + 2e", "0e + 1o + 2e"), ("3x1e", "1o + 2o")])
def test_tensor_products_are_equivariant(irreps1, irreps2):
    a, b = _pair(irreps1, irreps2, jnp.float64, seed=6)
    x, y = e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b)
    R = -e3nn.rand_matrix(jax.random.PRNGKey(7), (), dtype=jnp.float64)  # includes the inversion
    for fn in (e3nn.tensor_product, lambda p, q: e3nn.tensor_square(p)):
        out_of_rotated = fn(x.transform_by_matrix(R), y.transform_by_matrix(R))
        rotated_out = fn(x, y).transform_by_matrix(R)
        np.testing.assert_allclose(out_of_rotated.array, rotated_out.array, atol=1e-10)


def test_tensor_product_gradients_order_two():
    a, b = _pair("2x0e + 1o", "1o + 2e", jnp.float64, seed=8)

    @jax.jit
    def f(a, b):
        return e3nn.tensor_product(e3nn.IrrepsArray("2x0e + 1o", a), e3nn.IrrepsArray("1o + 2e", b)).array

    check_grads(f, (a, b), order=2, modes=("rev", "fwd"))


def test_tensor_product_bad_input():
    x = e3nn.IrrepsArray("0e + 1o", jnp.ones((3, 4)))
    y = e3nn.IrrepsArray("1o", jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        e3nn.tensor_product(x, y)
    with pytest.raises(ValueError):
        e3nn.tensor_product(x, x, filter_ir_out="2q")
    with pytest.raises(ValueError, match="irrep_normalization"):
        e3nn.tensor_product(x, x, irrep_normalization="bogus")
    with pytest.raises(ValueError, match="number of irreps"):
        e3nn.elementwise_tensor_product(x, e3nn.IrrepsArray("1o", jnp.ones((3, 3))))
    with pytest.raises(ValueError, match="1o or 1e"):
        e3nn.tensor_product_with_spherical_harmonics(x, e3nn.IrrepsArray("2e", jnp.ones((3, 5))), 2)


def test_irreps_only_mode():
    assert e3nn.elementwise_tensor_product("2x0e + 1o", "1e + 0o + 0o") == e3nn.Irreps("1x1e+1x0o+1x1e")
    assert e3nn.tensor_square("0e + 1o") == e3nn.Irreps("2x0e+1x1o+1x2e")
