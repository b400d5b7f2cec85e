"""Activations (scalar_activation, norm_activation, normalize_function, soft_odd, soft_normalization): parity with
e3nn-jax, equivariance, zero chunks, jit/grad and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

from e3nn_fast.activation import (
    norm_activation,
    normalize_function,
    scalar_activation,
    soft_normalization,
    soft_odd,
)
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.utils import assert_equivariant
from oracle_cache import cached_e3nn_jax_normalize_function  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("cached_e3nn_jax_normalize_function")

DTYPES = [np.float32, np.float64]
IRREPS = ["3x0e + 2x0o + 1o + 0e", "4x0e", "2x0o + 2e + 0e + 0o"]


from parity import assert_same, random_inputs, tol  # noqa: E402,F401


def odd_cubic(x):
    return x**3 - x


# -- soft_odd and normalize_function --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_odd_matches_e3nn_jax(dtype):
    x = jnp.linspace(-4.0, 4.0, 41, dtype=dtype)
    np.testing.assert_array_equal(soft_odd(x), e3nn_jax.soft_odd(x))
    np.testing.assert_allclose(soft_odd(-x), -soft_odd(x))


@pytest.mark.parametrize("phi", [jax.nn.gelu, jax.nn.sigmoid, jnp.tanh, soft_odd, jnp.cos, jax.nn.silu])
def test_normalize_function_matches_e3nn_jax(phi):
    x = jnp.linspace(-3.0, 3.0, 13, dtype=np.float32)
    psi = normalize_function(phi)
    np.testing.assert_array_equal(psi(x), e3nn_jax.normalize_function(phi)(x))
    # unit second moment under the standard normal (Monte Carlo check, independent of the quadrature)
    z = jax.random.normal(jax.random.PRNGKey(0), (200_000,), np.float64)
    assert abs(float(jnp.mean(psi(z) ** 2)) - 1.0) < 0.02


def test_normalize_function_keeps_normalized_functions_and_caches():
    psi = normalize_function(jax.nn.gelu)
    assert psi is not jax.nn.gelu
    assert normalize_function(jax.nn.gelu) is psi  # cached: no second million-point evaluation
    assert normalize_function(psi) is psi  # already normalised: returned as is

    def scaled_identity(x):
        return 2.0 * x

    # the quadrature's E[x^2] is 1 - 2.5e-5 (truncated tails): identity gets rescaled too, as in e3nn-jax
    x = jnp.linspace(-2.0, 2.0, 5)
    np.testing.assert_array_equal(
        normalize_function(scaled_identity)(x), e3nn_jax.normalize_function(scaled_identity)(x)
    )


def test_normalize_function_bad_input():
    with pytest.raises(TypeError, match="callable"):
        normalize_function(3.0)
    with pytest.raises(ValueError, match="zero"):
        normalize_function(lambda x: 0.0 * x)


# -- scalar_activation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("irreps", IRREPS)
def test_scalar_activation_default_matches_e3nn_jax(irreps, dtype):
    x, x_ref = random_inputs(irreps, (3, 2), dtype)
    assert_same(scalar_activation(x), e3nn_jax.scalar_activation(x_ref), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize_act", [True, False])
def test_scalar_activation_custom_acts_match_e3nn_jax(dtype, normalize_act):
    irreps = "2x0e + 0o + 1o + 3x0o + 0e"
    acts = [jnp.exp, jnp.cos, None, odd_cubic, jax.nn.relu]
    x, x_ref = random_inputs(irreps, (5,), dtype, seed=1)
    ours = scalar_activation(x, acts, normalize_act=normalize_act)
    ref = e3nn_jax.scalar_activation(x_ref, acts, normalize_act=normalize_act)
    assert_same(ours, ref, dtype)
    assert str(ours.irreps) == "2x0e+1x0e+1x1o+3x0o+1x0e"  # cos is even: 0o -> 0e; odd_cubic keeps 0o


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_activation_keyword_acts_match_e3nn_jax(dtype):
    x, x_ref = random_inputs("3x0e + 2x0o + 1e", (4,), dtype, seed=2)
    kwargs = dict(even_act=jax.nn.silu, odd_act=jnp.tanh)
    assert_same(scalar_activation(x, **kwargs), e3nn_jax.scalar_activation(x_ref, **kwargs), dtype)
    kwargs = dict(even_act=jax.nn.silu, odd_act=jnp.cos)
    assert str(scalar_activation(x, **kwargs).irreps) == "3x0e+2x0e+1x1e"


def test_scalar_activation_on_bare_irreps_and_plain_arrays():
    for irreps in IRREPS + ["0o + 0o + 1e"]:
        assert scalar_activation(irreps) == Irreps(str(e3nn_jax.scalar_activation(irreps)))
    assert scalar_activation("0e + 0o", [jnp.cos, None]) == Irreps("0e + 0o")
    assert scalar_activation("0o", odd_act=jnp.cos) == Irreps("0e")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32))
    y = scalar_activation(x)  # a plain array is n x 0e
    assert y.irreps == Irreps("3x0e")
    np.testing.assert_allclose(y.array, normalize_function(jax.nn.gelu)(x))


def test_scalar_activation_doc_example():
    x = IrrepsArray("0e + 0o + 1o", jnp.array([1.0, 0.0, 1.0, 1.0, 2.0], np.float32))
    y = scalar_activation(x, [jnp.exp, jnp.sin, None])
    assert y.irreps == Irreps("0e + 0o + 1o")
    # exp is divided by its RMS under N(0, 1), sqrt(E[exp(2X)]) = e: exp(1) / e = 1 (up to the quadrature error)
    np.testing.assert_allclose(y.array, [1.0, 0.0, 1.0, 1.0, 2.0], rtol=1e-3)
    ref = e3nn_jax.scalar_activation(e3nn_jax.IrrepsArray("0e + 0o + 1o", x.array), [jnp.exp, jnp.sin, None])
    np.testing.assert_array_equal(y.array, ref.array)


def test_scalar_activation_zero_chunks():
    x = from_chunks("2x0e + 0o + 1o", [jnp.ones((3, 2, 1), np.float32), None, None], (3,))
    y = scalar_activation(x)  # gelu(0) = soft_odd(0) = 0: the zero blocks stay known zeros
    assert y.zero_flags == (False, True, True)
    ref = e3nn_jax.scalar_activation(
        e3nn_jax.from_chunks("2x0e + 0o + 1o", [jnp.ones((3, 2, 1), np.float32), None, None], (3,))
    )
    np.testing.assert_allclose(y.array, ref.array, rtol=1e-6)
    # a function that does not vanish at 0 turns a zero block into the constant f(0) (same as without zero flags)
    y = scalar_activation(x, [None, jnp.cos, None])
    assert y.zero_flags == (False, False, True)
    np.testing.assert_allclose(y.array, scalar_activation(IrrepsArray(x.irreps, x.array), [None, jnp.cos, None]).array)
    np.testing.assert_allclose(y.chunks[1], normalize_function(jnp.cos)(jnp.zeros((3, 1, 1))))


def test_scalar_activation_jit_grad_and_equivariance():
    x, _ = random_inputs("2x0e + 2x0o + 1o", (4,), np.float64)
    y = jax.jit(scalar_activation)(x)
    np.testing.assert_allclose(y.array, scalar_activation(x).array, rtol=1e-12)
    grad = jax.jit(jax.grad(lambda a: jnp.sum(scalar_activation(IrrepsArray(x.irreps, a)).array ** 2)))(x.array)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert_equivariant(jax.jit(scalar_activation), jax.random.PRNGKey(0), "2x0e + 2x0o + 1o + 2e")
    assert_equivariant(jax.jit(lambda x: scalar_activation(x, [jnp.cos, None])), jax.random.PRNGKey(1), "3x0o + 1e")


def test_scalar_activation_bad_input():
    x = IrrepsArray("0e + 0o + 1o", jnp.ones(5))
    with pytest.raises(ValueError, match="non-scalar"):
        scalar_activation(x, [None, None, jnp.tanh])
    with pytest.raises(ValueError, match="neither"):
        scalar_activation(x, [None, jnp.exp, None])  # exp is neither even nor odd
    with pytest.raises(ValueError, match="3 blocks"):
        scalar_activation(x, [jnp.tanh])
    with pytest.raises(TypeError, match="acts must be a list"):
        scalar_activation(x, jnp.tanh)
    with pytest.raises(TypeError, match=r"acts\[1\]"):
        scalar_activation(x, [None, "tanh", None])
    with pytest.raises(TypeError, match="even_act"):
        scalar_activation(x, even_act=1.0)
    with pytest.raises(TypeError, match="IrrepsArray"):
        scalar_activation({"a": 1})


# -- norm_activation and soft_normalization ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalization", ["component", "norm"])
def test_norm_activation_matches_e3nn_jax(dtype, normalization):
    irreps = "2x0e + 0o + 3x1o + 2e"
    acts = [jnp.tanh, None, jax.nn.sigmoid, jnp.exp]
    x, x_ref = random_inputs(irreps, (3, 2), dtype, seed=3)
    ours = norm_activation(x, acts, normalization=normalization)
    assert_same(ours, e3nn_jax.norm_activation(x_ref, acts, normalization=normalization), dtype)
    if dtype == np.float64:
        equivariant = jax.jit(lambda x: norm_activation(x, acts, normalization=normalization))
        assert_equivariant(equivariant, jax.random.PRNGKey(2), x, atol=1e-12, rtol=1e-12)


def test_norm_activation_zero_vectors_and_gradient():
    x = IrrepsArray("0e + 1o", jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 2.0]]))
    y = norm_activation(x, [jnp.tanh, jnp.tanh])
    np.testing.assert_allclose(y.array[0], 0.0)
    np.testing.assert_allclose(y.array[1], [np.tanh(1.0), *(np.tanh(np.sqrt(2.0)) * np.array([1.0, 1.0, 2.0]))])
    grad = jax.jit(jax.grad(lambda a: jnp.sum(norm_activation(IrrepsArray("0e + 1o", a), [jnp.tanh] * 2).array)))(
        x.array
    )
    assert bool(jnp.all(jnp.isfinite(grad)))
    zeros = from_chunks("0e + 1o", [None, jnp.ones((1, 3))], ())
    assert norm_activation(zeros, [jnp.cos, jnp.tanh]).zero_flags == (True, False)


def test_norm_activation_bad_input():
    x = IrrepsArray("0e + 1o", jnp.ones(4))
    with pytest.raises(ValueError, match="normalization"):
        norm_activation(x, [None, jnp.tanh], normalization="integral")
    with pytest.raises(ValueError, match="2 blocks"):
        norm_activation(x, [jnp.tanh])
    with pytest.raises(TypeError, match="list"):
        norm_activation(x, jnp.tanh)
    with pytest.raises(TypeError, match="IrrepsArray"):
        norm_activation("0e + 1o", [None, jnp.tanh])


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_normalization_matches_e3nn_jax(dtype):
    x, x_ref = random_inputs("2x0e + 2x1o + 2e", (4,), dtype, seed=4)
    x, x_ref = 3.0 * x, 3.0 * x_ref
    assert_same(soft_normalization(x, 2.0), e3nn_jax.soft_normalization(x_ref, 2.0), dtype)
    assert_equivariant(jax.jit(lambda x: soft_normalization(x, 0.5)), jax.random.PRNGKey(3), "0e + 1o + 2e")
