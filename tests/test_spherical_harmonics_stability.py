"""High degrees and extreme inputs: spherical harmonics stay finite and accurate in float32.

The exact values come from scipy's orthonormal complex harmonics (an independent implementation), mapped to our
convention (``y`` polar axis, azimuth in the ``z, x`` plane, no Condon-Shortley phase, ``component``
normalisation).  Timings of high degrees live in ``bench/spherical_harmonics_stability.py``, not here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import e3nn_fast
from e3nn_fast.harmonics import sh
from e3nn_fast.reference import spherical_harmonics as reference
from e3nn_fast.xla import spherical_harmonics as straight_line


def exact_harmonics(l: int, x: np.ndarray) -> np.ndarray:
    """``component``-normalised :math:`Y^l` of the directions of ``x`` (float64, shape ``(n, 2l + 1)``)."""
    u = np.asarray(x, np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    beta = np.arctan2(np.hypot(u[:, 0], u[:, 2]), u[:, 1])  # not arccos: ill-conditioned at the poles
    alpha = np.arctan2(u[:, 0], u[:, 2])
    m = np.arange(l + 1)
    complex_y = scipy.special.sph_harm_y(l, m[:, None], beta[None, :], alpha[None, :])
    complex_y = complex_y * (np.sqrt(4 * np.pi) * (-1.0) ** m)[:, None]  # drop the Condon-Shortley phase
    out = np.empty((len(u), 2 * l + 1))
    out[:, l] = complex_y[0].real
    out[:, l + 1 :] = np.sqrt(2) * complex_y[1:].real.T
    out[:, :l] = np.sqrt(2) * complex_y[1:].imag.T[:, ::-1]
    return out


def hard_directions(dtype=np.float32) -> np.ndarray:
    """The poles, directions 1e-2 ... 1e-6 rad from them (where the old recurrence overflowed), a few others."""
    rows = [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.0, -0.8]]
    for angle in [1e-2, 1e-4, 1e-6]:
        for pole in [1.0, -1.0]:
            rows.append([angle * math.sin(1.1), pole, angle * math.cos(1.1)])
    rows += list(np.random.RandomState(0).randn(6, 3))
    return np.array(rows, dtype)


def relative_errors(ours: np.ndarray, exact: np.ndarray) -> np.ndarray:
    ours = np.asarray(ours, np.float64)
    return np.linalg.norm(ours - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


def test_float32_accurate_up_to_l300():
    x = hard_directions()
    ls = [10, 100, 185, 300]
    ys = jax.jit(lambda v: reference.spherical_harmonics_per_l(ls, v, True, "component"))(x)
    for l, y in zip(ls, ys):
        assert y.dtype == jnp.float32 and np.isfinite(y).all(), l
        errors = relative_errors(y, exact_harmonics(l, x))  # exact at the float32 inputs themselves
        assert errors.max() < 1e-4, (l, errors)


def test_float64_matches_scipy_at_l300():
    x = hard_directions(np.float64)
    [y] = reference.spherical_harmonics_per_l([300], x, True, "component")
    assert y.dtype == jnp.float64
    assert relative_errors(y, exact_harmonics(300, x)).max() < 1e-11


def test_unnormalized_high_degree_is_r_to_the_l_times_the_sphere():
    x = hard_directions(np.float64) * 1.01
    [y] = reference.spherical_harmonics_per_l([150], x, False, "norm")
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    expected = r**150 * exact_harmonics(150, x) / np.sqrt(301)
    assert relative_errors(y, expected).max() < 1e-11


def test_float32_gradient_at_l300_is_finite_and_accurate():
    x = hard_directions()[[0, 1, 4, 7, 10, 12]]  # poles, near the poles, generic

    def total(v):
        return jnp.sum(jnp.sin(reference.spherical_harmonics_per_l([300], v, True, "component")[0]))

    g32 = jax.jit(jax.grad(total))(jnp.asarray(x))
    assert g32.dtype == jnp.float32 and np.isfinite(g32).all()
    g64 = jax.jit(jax.grad(total))(jnp.asarray(x, jnp.float64))
    scale = np.abs(g64).max(axis=-1, keepdims=True)
    np.testing.assert_allclose(g32 / scale, g64 / scale, atol=2e-3)


@pytest.mark.parametrize("executor", ["jnp", "reference"])
@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e-20, 1e-30])
def test_normalize_any_magnitude_float32(executor, magnitude):
    per_l = {"jnp": straight_line.spherical_harmonics_per_l, "reference": reference.spherical_harmonics_per_l}[executor]
    ls = (0, 1, 2, 5, 8)  # all within the straight-line executor's range
    u = hard_directions()[[2, 3, 4, 9, 10]]
    w = jnp.asarray(np.random.RandomState(1).randn(len(u), sum(2 * l + 1 for l in ls)), jnp.float32)

    def weighted(v):
        return jnp.sum(w * jnp.concatenate(per_l(ls, v, True, "component"), axis=-1))

    f = jax.jit(lambda v: (jnp.concatenate(per_l(ls, v, True, "component"), axis=-1), jax.grad(weighted)(v)))
    y_unit, g_unit = f(jnp.asarray(u))
    x = jnp.asarray(u * np.float32(magnitude))
    assert np.isfinite(np.asarray(x)).all() and (np.abs(x).max(-1) > 0).all()
    y, g = f(x)
    np.testing.assert_allclose(y, y_unit, atol=1e-5)
    assert np.isfinite(g).all()
    # Y(x / |x|) is scale invariant: its gradient scales like 1 / |x|
    np.testing.assert_allclose(g * np.float32(magnitude), g_unit, atol=1e-5 * np.abs(g_unit).max())


def test_public_api_extreme_magnitudes_and_zero_vector():
    x = np.array([[1e20, -2e20, 3e20], [1e-30, 2e-30, -3e-30], [0.0, 0.0, 0.0]], np.float32)
    unit = np.array([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [0.0, 0.0, 0.0]], np.float32)
    for backend in ["jnp", "reference"]:
        with e3nn_fast.backend(backend):
            np.testing.assert_allclose(sh([0, 1, 2, 12], x, True), sh([0, 1, 2, 12], unit, True), atol=1e-5)
            zero = sh([0, 1, 2, 12], x[2], True)
            np.testing.assert_array_equal(zero, np.eye(1, zero.shape[-1])[0])  # Y^0 and zeros, as before


def test_ladder_coefficients_closed_form_against_factorials():
    # derivative_coefficients uses simplified factorial ratios: compare with A_lm^2 = (2l+1)(l-m)!(l+m)! (x2 if m > 0)
    def a2(l, m):
        return (2 * l + 1) * math.factorial(l - m) * math.factorial(l + m) * (2 if m > 0 else 1)

    same, lower, upper = reference._ladder_ratios(9)
    for l in range(1, 10):
        for m in range(l + 1):
            expected = [
                math.sqrt(a2(l, m) / a2(l - 1, m_in)) if 0 <= m_in <= l - 1 else 0.0 for m_in in (m, m - 1, m + 1)
            ]
            np.testing.assert_allclose([same[l, m], lower[l, m], upper[l, m]], expected, rtol=1e-14)
