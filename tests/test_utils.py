"""e3nn_fast.utils: equivariance_test / assert_equivariant (on equivariant and non-equivariant functions, same draws
as e3nn-jax), vmap (keeps zero flags), assert_output_dtype_matches_input_dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

import e3nn_fast.utils as utils
from e3nn_fast.activation import scalar_activation
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks, norm
from e3nn_fast.tensor_products import tensor_product
from e3nn_fast.utils import assert_equivariant, assert_output_dtype_matches_input_dtype, equivariance_test, vmap


def test_public_namespace_matches_e3nn_jax():
    assert sorted(utils.__all__) == sorted(e3nn_jax.utils.__all__)
    for name in utils.__all__:
        assert callable(getattr(utils, name))


# -- equivariance_test / assert_equivariant ---------------------------------------------------------------------


def test_assert_equivariant_accepts_equivariant_functions():
    key = jax.random.PRNGKey(0)
    x = IrrepsArray("1e", jnp.array([0.0, 4.0, 3.0]))
    assert_equivariant(norm, key, x)
    assert_equivariant(norm, key, "1e + 2x2o")  # inputs drawn from irreps
    # several arguments, arrays and irreps mixed; the tensor product mixes parities
    assert_equivariant(jax.jit(tensor_product), key, "0e + 1o", IrrepsArray("1e + 2o", jnp.arange(8.0)), atol=1e-5)
    # a pytree of outputs
    assert_equivariant(lambda x: (x, {"n": norm(x)}), key, "1o + 2e")


@pytest.mark.parametrize(
    "fun, irreps",
    [
        (lambda x: IrrepsArray(x.irreps, x.array[..., ::-1]), "1o"),  # permutes the components of a vector
        (lambda x: IrrepsArray("1e", x.array), "1o"),  # wrong parity: only the inversion detects it
        (lambda x: IrrepsArray("0e", x.array[..., :1]), "1o"),  # a component is not a scalar
        (lambda x: x * x.array[..., 1:2], "0e + 1e"),  # scaling by a component of a vector, not an invariant
    ],
)
def test_assert_equivariant_rejects_non_equivariant_functions(fun, irreps):
    with pytest.raises(AssertionError):
        assert_equivariant(fun, jax.random.PRNGKey(1), irreps)


def test_assert_equivariant_tolerances():
    def almost(x):  # equivariant up to 1e-4
        return x + 1e-4 * IrrepsArray(x.irreps, x.array[..., ::-1])

    with pytest.raises(AssertionError):
        assert_equivariant(almost, jax.random.PRNGKey(2), "1o")
    assert_equivariant(almost, jax.random.PRNGKey(2), "1o", atol=1e-3, rtol=1e-3)


def test_equivariance_test_same_draws_as_e3nn_jax():
    key = jax.random.PRNGKey(3)
    ours = equivariance_test(lambda x, y: x, key, "2x0e + 1o + 2e", "1o")
    ref = e3nn_jax.utils.equivariance_test(lambda x, y: x, key, "2x0e + 1o + 2e", "1o")
    for a, b in zip(ours, ref):
        assert str(a.irreps) == str(b.irreps) and a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-6)
    # arrays set the dtype of the drawn inputs; a plain array is a scalar input
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2,)))
    ours = equivariance_test(lambda a, b: b, key, x, "1o")
    ref = e3nn_jax.utils.equivariance_test(lambda a, b: b, key, x, "1o")
    assert ours[0].dtype == jnp.float64
    np.testing.assert_allclose(ours[0].array, ref[0].array, rtol=1e-12)
    np.testing.assert_allclose(ours[0].array, ours[1].array, rtol=1e-12)


def test_equivariance_test_bad_input():
    with pytest.raises(TypeError, match="argument 0"):
        equivariance_test(norm, jax.random.PRNGKey(0), 3)
    with pytest.raises(TypeError, match="must return IrrepsArrays"):
        equivariance_test(lambda x: x.array, jax.random.PRNGKey(0), "1o")


# -- vmap -------------------------------------------------------------------------------------------------------


def test_vmap_keeps_zero_flags_and_values():
    x = from_chunks("0e + 0e + 1o", [jnp.ones((10, 1, 1)), None, jnp.ones((10, 1, 3))], (10,))
    y = vmap(scalar_activation)(x)
    assert y.zero_flags == (False, True, False) and y.chunks[1] is None
    assert jax.vmap(scalar_activation)(x).zero_flags == (False, False, False)  # what plain jax.vmap loses
    np.testing.assert_allclose(y.array, scalar_activation(x).array, rtol=1e-12)


def test_vmap_axes_and_mixed_arguments():
    x = IrrepsArray("0e + 1o", jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 4))))
    w = jnp.arange(5.0)

    def fun(x, w, scale):
        return x * w * scale, norm(x)

    y, n = vmap(fun, in_axes=(1, 0, None), out_axes=(0, 1))(x, w, 2.0)
    assert y.shape == (5, 3, 4) and n.shape == (3, 5, 2)
    np.testing.assert_allclose(y.array, jnp.moveaxis(x.array, 1, 0) * w[:, None, None] * 2.0, rtol=1e-12)
    np.testing.assert_allclose(n.array, norm(x).array, rtol=1e-12)
    ref = e3nn_jax.utils.vmap(lambda x: e3nn_jax.norm(x))(e3nn_jax.IrrepsArray("0e + 1o", x.array))
    np.testing.assert_allclose(vmap(norm)(x).array, ref.array, rtol=1e-12)
    # jit of a vmap
    np.testing.assert_allclose(jax.jit(vmap(norm))(x).array, ref.array, rtol=1e-12)


def test_vmap_rejects_the_irreps_axis():
    with pytest.raises(ValueError, match="in_axes=-1"):
        vmap(norm, in_axes=-1)
    with pytest.raises(ValueError, match="out_axes=-1"):
        vmap(norm, out_axes=-1)


# -- assert_output_dtype_matches_input_dtype ------------------------------------------------------------------


def test_assert_output_dtype_matches_input_dtype():
    x = IrrepsArray("0e + 0o + 1o", jnp.ones((2, 5), jnp.float32))
    assert_output_dtype_matches_input_dtype(scalar_activation, x)
    assert_output_dtype_matches_input_dtype(lambda x, n: x * n, x, 3)  # ints do not count
    assert_output_dtype_matches_input_dtype(lambda z: jnp.abs(z), jnp.ones(3, jnp.complex64))
    with pytest.raises(AssertionError, match="float64"):
        assert_output_dtype_matches_input_dtype(lambda x: x.astype(jnp.float32), x)
    with pytest.raises(AssertionError):
        assert_output_dtype_matches_input_dtype(lambda x: x.array * jnp.ones((), jnp.float64), x)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="jax_enable_x64"):
            assert_output_dtype_matches_input_dtype(scalar_activation, x)


def test_assert_output_dtype_matches_e3nn_jax_verdicts():
    x = jnp.ones((3,), jnp.float32)
    for fun in [lambda x: x + 1.0, lambda x: x.astype(jnp.float64), lambda x: x.astype(jnp.float32)]:
        verdicts = []
        for check in [assert_output_dtype_matches_input_dtype, e3nn_jax.utils.assert_output_dtype_matches_input_dtype]:
            try:
                check(fun, x)
                verdicts.append(True)
            except AssertionError:
                verdicts.append(False)
        assert verdicts[0] == verdicts[1]


def test_irreps_strings_are_irreps():
    out1, out2 = equivariance_test(lambda x: x, jax.random.PRNGKey(0), Irreps("2e"))
    assert out1.irreps == Irreps("2e")
    np.testing.assert_allclose(out1.array, out2.array, atol=1e-6)
