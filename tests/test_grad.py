"""``e3nn_fast.grad.grad``: the equivariant gradient, compared with e3nn-jax and checked for equivariance."""

import math

import e3nn_jax as ej
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast.grad import grad
from e3nn_fast.harmonics import spherical_harmonics
from e3nn_fast.irreps_array import IrrepsArray, norm
from e3nn_fast.tensor_products import tensor_product


def test_doc_example_cross_product():
    # d(x cross y)/dx reduced into irreps: only the 1o part (proportional to y) survives.
    def cross_product(x, y):
        return tensor_product(x, y)["1e"]

    x = IrrepsArray("1o", jnp.array([1.0, 2.0, 0.0], dtype=jnp.float32))
    y = IrrepsArray("1o", jnp.array([2.0, 2.0, 1.0], dtype=jnp.float32))
    out = grad(cross_product)(x, y)
    assert str(out.irreps) == "1x0o+1x1o+1x2o" and out.dtype == jnp.float32
    np.testing.assert_allclose(out.array, [0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_doc_example_spherical_harmonics():
    # The l=2 part of the gradient of Y^3, times 0.18443, is Y^2 (e3nn-jax's documentation example).
    x = IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0], dtype=jnp.float32))
    f = grad(lambda x: spherical_harmonics("3o", x, False))
    gradient = f(x)
    assert str(gradient.irreps) == "1x2e+1x3e+1x4e"
    np.testing.assert_allclose(
        (0.18443 * gradient["2e"]).array, spherical_harmonics("2e", x, False).array, rtol=1e-4
    )
    np.testing.assert_allclose(gradient["3e + 4e"].array, 0.0, atol=1e-4)


def test_docstring_example_norm():
    out = grad(lambda x: 0.5 * norm(x, squared=True))(IrrepsArray("1o", jnp.array([3.0, 0.0, 4.0])))
    assert str(out.irreps) == "1x1o"
    np.testing.assert_allclose(out.array, [3.0, 0.0, 4.0])


@pytest.mark.parametrize("regroup_output, dtype", [(True, jnp.float32), (False, jnp.float64)])
def test_matches_e3nn_jax_with_leading_axes(regroup_output, dtype):
    irreps = "2x0e + 1o + 1e"
    x = jax.random.normal(jax.random.PRNGKey(0), (2, ej.Irreps(irreps).dim), dtype)

    def ours(a):  # outputs with a leading axis of 3, inputs with a leading axis of 2
        return tensor_product(a[0], a[1]) * jnp.arange(1.0, 4.0, dtype=dtype)[:, None]

    def theirs(a):
        return ej.tensor_product(a[0], a[1]) * jnp.arange(1.0, 4.0, dtype=dtype)[:, None]

    out = jax.jit(lambda a: grad(ours, regroup_output=regroup_output)(IrrepsArray(irreps, a)))(x)
    expected = jax.jit(lambda a: ej.grad(theirs, regroup_output=regroup_output)(ej.IrrepsArray(irreps, a)))(x)
    assert str(out.irreps) == str(expected.irreps)
    assert out.shape == expected.shape == (3, 2, expected.irreps.dim) and out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(out.array, expected.array, atol=tol, rtol=tol)


def test_argnums_and_has_aux():
    x = IrrepsArray("1o + 0e", jnp.array([0.3, -1.0, 2.0, 0.5]))
    y = IrrepsArray("1o", jnp.array([1.0, 2.0, -0.5]))

    def ours(a, b, scale):
        return scale * tensor_product(a, b).filter(keep="0e + 1e"), "aux"

    def theirs(a, b, scale):
        return scale * ej.tensor_product(a, b).filter(keep="0e + 1e"), "aux"

    out, aux = grad(ours, argnums=1, has_aux=True)(x, y, 2.0)
    x_jax, y_jax = ej.IrrepsArray("1o + 0e", x.array), ej.IrrepsArray("1o", y.array)
    expected, _ = ej.grad(theirs, argnums=1, has_aux=True)(x_jax, y_jax, 2.0)
    assert aux == "aux" and str(out.irreps) == str(expected.irreps)
    np.testing.assert_allclose(out.array, expected.array, atol=1e-12)


def test_zero_blocks_are_differentiated():
    # A block flagged zero in the input is still a variable of the function.
    from e3nn_fast.irreps_array import from_chunks

    x = from_chunks("0e + 1o", [None, jnp.array([[1.0, 2.0, 3.0]])], (), jnp.float64)
    out = grad(lambda a: a * 3.0, regroup_output=False)(x)
    # Blocks (out, in): 0e x 0e -> 0e; 0e x 1o -> 1o; 1o x 0e -> 1o; 1o x 1o -> 0e + 1e + 2e.
    assert str(out.irreps) == "1x0e+1x1o+1x1o+1x0e+1x1e+1x2e"
    # d(3 x)/dx is 3 times the identity: its trace parts are 3 and 3 * 3 / sqrt(3), the rest vanishes.
    np.testing.assert_allclose(np.asarray(out.array)[[0, 7]], [3.0, 3.0 * math.sqrt(3.0)], atol=1e-12)
    np.testing.assert_allclose(np.delete(np.asarray(out.array), [0, 7]), 0.0, atol=1e-12)


def test_equivariance():
    irreps = "0e + 1o"
    x = jax.random.normal(jax.random.PRNGKey(1), (ej.Irreps(irreps).dim,))
    f = jax.jit(lambda a: grad(lambda b: tensor_product(b, b))(IrrepsArray(irreps, a)))
    out_irreps = f(x).irreps
    alpha, beta, gamma = 0.3, 1.2, -2.0
    for k in (0, 1):
        D_in = np.asarray(ej.Irreps(irreps).D_from_angles(alpha, beta, gamma, k))
        D_out = np.asarray(ej.Irreps(str(out_irreps)).D_from_angles(alpha, beta, gamma, k))
        np.testing.assert_allclose(f(D_in @ x).array, D_out @ f(x).array, atol=1e-10)


def test_bad_input():
    x = IrrepsArray("1o", jnp.ones(3))
    with pytest.raises(ValueError, match="argnums"):
        grad(lambda a: a, argnums=(0,))
    with pytest.raises(TypeError, match="IrrepsArray"):
        grad(lambda a: a)(jnp.ones(3))
    with pytest.raises(TypeError, match="return an IrrepsArray"):
        grad(lambda a: a.array)(x)
    with pytest.raises(ValueError, match="argnums=2"):
        grad(lambda a: a, argnums=2)(x)
