"""Radial bases and envelopes: parity with e3nn-jax 0.21, jit, gradients, bad input."""

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast import radial

DTYPES = [jnp.float32, jnp.float64]
TOL = {jnp.float32: dict(rtol=1e-5, atol=1e-6), jnp.float64: dict(rtol=1e-12, atol=1e-12)}


def _inputs(dtype, lo=-1.0, hi=2.0, n=40, seed=0):
    """Random points plus the special points where the bases switch branches."""
    x = jax.random.uniform(jax.random.PRNGKey(seed), (n,), minval=lo, maxval=hi, dtype=jnp.float64)
    special = jnp.array([0.0, -0.5, 1.5, 1.0, lo, hi])
    return jnp.concatenate([x, special]).reshape(2, -1).astype(dtype)


def _assert_parity(ours, theirs, dtype):
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), **TOL[dtype])


# ------------------------------------------------------------------ soft_one_hot_linspace


# Mixed ends only in float64: the dtype handling is already covered by the symmetric cases.
PARITY_CASES = [
    (dtype, basis, ends)
    for basis in ["gaussian", "cosine", "smooth_finite", "fourier"]
    for dtype in DTYPES
    for ends in [(True, True), (False, False)] + ([(True, False), (False, True)] if dtype == jnp.float64 else [])
]


@pytest.mark.parametrize("dtype,basis,ends", PARITY_CASES)
def test_soft_one_hot_linspace_parity(dtype, basis, ends):
    start_zero, end_zero = ends
    x = _inputs(dtype)
    kwargs = dict(start=-0.5, end=1.5, number=5, basis=basis, start_zero=start_zero, end_zero=end_zero)
    if basis == "fourier" and start_zero != end_zero:
        with pytest.raises(ValueError, match="start_zero == end_zero"):
            radial.soft_one_hot_linspace(x, **kwargs)
        return
    ours = radial.soft_one_hot_linspace(x, **kwargs)
    theirs = e3nn_jax.soft_one_hot_linspace(x, **kwargs)
    assert ours.shape == x.shape + (5,)
    _assert_parity(ours, theirs, dtype)


@pytest.mark.parametrize("cutoff", [True, False])
def test_soft_one_hot_linspace_cutoff_shorthand(cutoff):
    x = _inputs(jnp.float64, seed=1)
    for basis in radial.SOFT_ONE_HOT_BASES:
        kwargs = dict(start=0.0, end=3.0, number=7, basis=basis)
        ours = radial.soft_one_hot_linspace(x, cutoff=cutoff, **kwargs)
        same = radial.soft_one_hot_linspace(x, start_zero=cutoff, end_zero=cutoff, **kwargs)
        np.testing.assert_array_equal(ours, same)
    _assert_parity(ours, e3nn_jax.soft_one_hot_linspace(x, cutoff=cutoff, **kwargs), jnp.float64)


def test_soft_one_hot_linspace_fourier_single_function():
    x = _inputs(jnp.float64)
    kwargs = dict(start=0.0, end=1.0, number=1, basis="fourier", cutoff=False)
    _assert_parity(
        radial.soft_one_hot_linspace(x, **kwargs),
        e3nn_jax.soft_one_hot_linspace(x, **kwargs),
        jnp.float64,
    )


def test_soft_one_hot_linspace_normalisation():
    # The documented property: sum_i y_i(x)^2 is about 1 inside the interval.
    x = jnp.linspace(0.2, 0.8, 101)
    for basis in radial.SOFT_ONE_HOT_BASES:
        y = radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=10, basis=basis, cutoff=True)
        assert abs(float(jnp.mean(jnp.sum(y**2, axis=-1))) - 1.0) < 0.1, basis


@pytest.mark.parametrize("basis", ["gaussian", "cosine", "smooth_finite", "fourier"])
def test_soft_one_hot_linspace_jit_and_grad(basis):
    def f(x):
        return radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=4, basis=basis, cutoff=True)

    # Include the interval ends and the bump edges, where the branches switch.
    x = jnp.array([0.0, 0.2, 0.4, 0.5, 1.0, 1.3, -0.1, 0.37])
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-12)
    grads = jax.jit(jax.vmap(jax.jacfwd(f)))(x)
    assert jnp.all(jnp.isfinite(grads))
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(x) ** 2)))(x)
    assert jnp.all(jnp.isfinite(g))


def test_soft_one_hot_linspace_integer_input_is_promoted():
    y = radial.soft_one_hot_linspace(jnp.arange(3), start=0.0, end=2.0, number=3, basis="gaussian", cutoff=False)
    expected = radial.soft_one_hot_linspace(
        jnp.arange(3.0), start=0.0, end=2.0, number=3, basis="gaussian", cutoff=False
    )
    assert jnp.issubdtype(y.dtype, jnp.floating)
    np.testing.assert_allclose(y, expected)


def test_soft_one_hot_linspace_bad_input():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match="'gaussian', 'cosine', 'smooth_finite', 'fourier'"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=3, basis="bessel", cutoff=True)
    with pytest.raises(ValueError, match="basis=None"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=3, cutoff=True)
    with pytest.raises(ValueError, match="start_zero must be specified"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=3, basis="gaussian")
    with pytest.raises(ValueError, match="end_zero must be specified"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=3, basis="gaussian", start_zero=True)
    with pytest.raises(ValueError, match="not both"):
        radial.soft_one_hot_linspace(
            x, start=0.0, end=1.0, number=3, basis="gaussian", cutoff=True, start_zero=True
        )
    with pytest.raises(ValueError, match="number must be >= 1"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=0, basis="gaussian", cutoff=True)
    with pytest.raises(TypeError, match="number must be an int"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=3.0, basis="gaussian", cutoff=True)
    with pytest.raises(ValueError, match="start and end must differ"):
        radial.soft_one_hot_linspace(x, start=1.0, end=1.0, number=3, basis="gaussian", cutoff=True)
    with pytest.raises(ValueError, match="no grid spacing"):
        radial.soft_one_hot_linspace(x, start=0.0, end=1.0, number=1, basis="cosine", cutoff=False)
    with pytest.raises(ValueError, match="start_zero == end_zero"):
        radial.soft_one_hot_linspace(
            x, start=0.0, end=1.0, number=3, basis="fourier", start_zero=True, end_zero=False
        )


# ------------------------------------------------------------------ sus and envelopes


@pytest.mark.parametrize("dtype", DTYPES)
def test_sus_parity_and_gradient(dtype):
    x = _inputs(dtype, lo=-2.0, hi=5.0)
    _assert_parity(radial.sus(x), e3nn_jax.sus(x), dtype)
    tiny = jnp.array([0.0, -1.0, 1e-20, 1e-40, 1e-4, 1e-3, 2e-3, 0.05, 1.0], dtype)
    _assert_parity(radial.sus(tiny), e3nn_jax.sus(tiny), dtype)
    g = jax.vmap(jax.grad(radial.sus))(tiny)
    assert g.dtype == dtype
    # e3nn-jax's gradient is nan at 1e-20 in float32 (0 * inf); ours stays finite.
    assert jnp.all(jnp.isfinite(g))
    assert jnp.all(g[:4] == 0.0)
    # Away from 0 it is the analytic derivative exp(-1/x) / x^2.
    np.testing.assert_allclose(g[-1], np.exp(-1.0), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kwargs", [{}, dict(x_max=2.5), dict(x_max=1.5, arg_multiplicator=4.0, value_at_origin=1.0)]
)
def test_soft_envelope_parity(dtype, kwargs):
    x = _inputs(dtype, lo=-0.5, hi=3.0)
    _assert_parity(radial.soft_envelope(x, **kwargs), e3nn_jax.soft_envelope(x, **kwargs), dtype)
    x_max = kwargs.get("x_max", 1.0)
    edge = jnp.array([0.0, x_max, x_max * 1.1, x_max * 0.999], dtype)
    g = jax.vmap(jax.grad(lambda t: radial.soft_envelope(t, **kwargs)))(edge)
    assert jnp.all(jnp.isfinite(g))
    assert g[1] == 0.0 and g[2] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n0,n1,x_max", [(1, 2, 1.0), (10, 5, 2.0), (0, 0, 0.7)])
def test_poly_envelope_parity(dtype, n0, n1, x_max):
    x = _inputs(dtype, lo=0.0, hi=1.3 * x_max)
    ours = radial.poly_envelope(n0, n1, x_max)(x)
    theirs = e3nn_jax.poly_envelope(n0, n1, x_max)(x)
    tol = TOL[dtype] if dtype == jnp.float32 else dict(rtol=1e-9, atol=1e-9)
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, **tol)
    f = radial.poly_envelope(n0, n1, x_max)
    np.testing.assert_allclose(jax.jit(f)(x), ours, **TOL[dtype])
    edge = jnp.array([0.0, x_max, 1.2 * x_max], dtype)
    assert jnp.all(jnp.isfinite(jax.vmap(jax.grad(f))(edge)))


@pytest.mark.parametrize("n0,n1", [(3, 2), (20, 20)])
def test_poly_envelope_shape(n0, n1):
    # Independent check of the definition; at (20, 20) e3nn-jax's float64 solve is visibly off
    # (errors ~0.5), ours is exact to rounding.
    f = radial.poly_envelope(n0, n1)
    x = jnp.linspace(0.0, 1.0, 201)
    y = f(x)
    assert abs(float(y[0]) - 1.0) < 1e-12
    assert abs(float(f(jnp.array(1.0 - 1e-12)))) < 1e-9
    assert jnp.all(jnp.diff(y) <= 1e-10)  # monotone from 1 to 0 (up to rounding)
    assert jnp.all((y >= -1e-10) & (y <= 1 + 1e-10))


def test_poly_envelope_flat_derivatives():
    # poly_envelope(3, 2): derivatives 1..3 vanish at 0, derivatives 1..2 vanish at 1.
    f = radial.poly_envelope(3, 2)
    d1 = jax.grad(f)
    d2 = jax.grad(d1)
    d3 = jax.grad(d2)
    derivs = jax.jit(lambda t: jnp.stack([d1(t), d2(t), d3(t)]))
    np.testing.assert_allclose(derivs(0.0), 0.0, atol=1e-10)
    np.testing.assert_allclose(derivs(1.0 - 1e-9)[:2], 0.0, atol=1e-6)
    assert abs(float(derivs(1.0 - 1e-9)[2])) > 1.0  # the third one is not constrained


def test_envelopes_bad_input():
    with pytest.raises(ValueError, match="n0 must be >= 0"):
        radial.poly_envelope(-1, 2)
    with pytest.raises(TypeError, match="n1 must be an int"):
        radial.poly_envelope(1, 2.0)
    with pytest.raises(ValueError, match="x_max must be nonzero"):
        radial.poly_envelope(1, 2, 0.0)
    with pytest.raises(ValueError, match="arg_multiplicator must be > 0"):
        radial.soft_envelope(jnp.ones(2), arg_multiplicator=0.0)
    with pytest.raises(ValueError, match="x_max must be nonzero"):
        radial.soft_envelope(jnp.ones(2), x_max=0)


# ------------------------------------------------------------------ bessel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,x_max", [(1, 1.0), (8, 1.0), (5, 3.5)])
def test_bessel_parity(dtype, n, x_max):
    x = _inputs(dtype, lo=0.0, hi=x_max)
    ours = radial.bessel(x, n, x_max)
    assert ours.shape == x.shape + (n,)
    _assert_parity(ours, e3nn_jax.bessel(x, n, x_max), dtype)
    np.testing.assert_allclose(jax.jit(radial.bessel, static_argnums=1)(x, n, x_max), ours, **TOL[dtype])


def test_bessel_origin_and_gradient():
    x = jnp.array([0.0, 1e-8, 0.5, 1.0])
    y = radial.bessel(x, 4, 2.0)
    k = np.arange(1, 5)
    np.testing.assert_allclose(y[0], np.sqrt(2.0 / 2.0) * k * np.pi / 2.0)
    np.testing.assert_allclose(y[1], y[0], rtol=1e-10)  # continuous at the origin
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda t: radial.bessel(t, 4, 2.0))))(x)
    assert jnp.all(jnp.isfinite(jac))
    np.testing.assert_allclose(jac[0], 0.0, atol=1e-12)  # the function is even in x


def test_bessel_orthonormality():
    # Documented normalisation: int_0^c r^2 B_n B_m dr = delta_nm.
    c = 1.7
    r = jnp.linspace(0.0, c, 20001)
    b = radial.bessel(r, 4, c)
    gram = jnp.trapezoid(r[:, None, None] ** 2 * b[:, :, None] * b[:, None, :], r, axis=0)
    np.testing.assert_allclose(gram, np.eye(4), atol=1e-6)


def test_bessel_bad_input():
    with pytest.raises(TypeError, match="n must be an int"):
        radial.bessel(jnp.ones(2), 3.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        radial.bessel(jnp.ones(2), -1)
    with pytest.raises(ValueError, match="x_max must be nonzero"):
        radial.bessel(jnp.ones(2), 3, 0.0)
