"""Sphere grids (e3nn_fast.s2grid) and associated Legendre functions (e3nn_fast.legendre) against e3nn-jax 0.21."""

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast import legendre as L
from e3nn_fast import s2grid as S
from e3nn_fast.irreps_array import IrrepsArray

QUADRATURES = ["soft", "gausslegendre"]
TOL = {np.float64: 1e-10, np.float32: 2e-5}


def _rng(seed=0):
    return np.random.RandomState(seed)


def _close(a, b, dtype=np.float64, scale=1.0):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=TOL[dtype] * scale, rtol=TOL[dtype] * scale)


# ----------------------------------------------------------------------------------------------------------------
# legendre
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lmax,dtype", [(0, np.float64), (7, np.float64), (7, np.float32)])
def test_legendre_matches_e3nn(lmax, dtype):
    x = _rng().uniform(-0.99, 0.99, size=(4, 3)).astype(dtype)
    for phase in (1.0, -1.0):
        for is_normalized in (True, False) if dtype == np.float64 else (True,):
            ours = L.legendre(lmax, jnp.asarray(x), phase, is_normalized)
            ref = e3nn_jax.legendre.legendre(lmax, jnp.asarray(x), phase, is_normalized)
            # e3nn-jax promotes float32 to float64 here under x64; ours keeps the input dtype
            assert ours.shape == (lmax + 1, lmax + 1, 4, 3) and ours.dtype == dtype
            scale = 1.0 if is_normalized else float(np.abs(np.asarray(ref)).max())
            _close(ours, ref, dtype, scale=max(scale, 1.0))


def test_legendre_poles_values_and_gradients():
    lmax = 6
    p = np.asarray(L.legendre(lmax, jnp.array([-1.0, 1.0]), 1.0, is_normalized=True))
    assert np.all(np.isfinite(p))
    l = np.arange(lmax + 1)
    np.testing.assert_allclose(p[:, 0, 1], np.sqrt((2 * l + 1) / (4 * np.pi)), atol=1e-12)
    np.testing.assert_allclose(p[:, 0, 0], (-1.0) ** l * np.sqrt((2 * l + 1) / (4 * np.pi)), atol=1e-12)
    np.testing.assert_allclose(p[:, 1:, :], 0.0, atol=1e-12)
    for sign in (-1.0, 1.0):
        jac = jax.jit(jax.jacfwd(lambda x: L.legendre(lmax, x, 1.0, True)))(jnp.array(sign))
        assert np.all(np.isfinite(np.asarray(jac)))
        # m = 0: d/dx P_l(x) at x = 1 is l (l + 1) / 2 (times the normalisation)
        expected = sign ** (l + 1) * l * (l + 1) / 2 * np.sqrt((2 * l + 1) / (4 * np.pi))
        np.testing.assert_allclose(np.asarray(jac)[:, 0], expected, rtol=1e-10)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(L.legendre(lmax, x, -1.0, False))))(jnp.array(sign))
        assert np.isfinite(float(grad))


def test_legendre_spherical_harmonics_matches_e3nn():
    v = _rng(1).normal(size=(5, 3))
    for normalization, normalize in [("norm", False), ("component", True)]:
        ours = L.legendre_spherical_harmonics(4, jnp.asarray(v), normalize, normalization)
        ref = e3nn_jax.legendre.legendre_spherical_harmonics(4, jnp.asarray(v), normalize, normalization)
        _close(ours, ref, scale=10.0)


# ----------------------------------------------------------------------------------------------------------------
# to_s2grid / from_s2grid
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_grid_transforms_match_e3nn_fp64(quadrature):
    rng = _rng(2)
    cases = [("0e+1o+2e+3o", None, "integral"), ("1e+3e", 1, "component"), ("0o+1e+2o+3e", None, "norm")]
    for irreps, p, normalization in cases:
        c = rng.normal(size=(2, e3nn_jax.Irreps(irreps).dim))
        for fft in (True, False):
            ours = S.to_s2grid(IrrepsArray(irreps, jnp.asarray(c)), 8, 9, quadrature=quadrature,
                               normalization=normalization, fft=fft, p_val=p, p_arg=p)
            ref = e3nn_jax.to_s2grid(e3nn_jax.IrrepsArray(irreps, jnp.asarray(c)), 8, 9, quadrature=quadrature,
                                     normalization=normalization, fft=fft, p_val=p, p_arg=p)
            _close(ours.grid_values, ref.grid_values)
            assert (ours.p_val, ours.p_arg, ours.quadrature) == (ref.p_val, ref.p_arg, ref.quadrature)
            back = S.from_s2grid(ours, irreps, normalization=normalization, fft=fft, lmax_in=4)
            back_ref = e3nn_jax.from_s2grid(ref, irreps, normalization=normalization, fft=fft, lmax_in=4)
            assert str(back.irreps) == str(back_ref.irreps)
            _close(back.array, back_ref.array)


@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_grid_transforms_fp32(quadrature):
    """float32 stays float32 and agrees with our float64 result; against e3nn-jax once (costly to compile there)."""
    irreps = "0e+1o+2e+3o"
    c = _rng(3).normal(size=(3, 16)).astype(np.float32)
    ours = S.to_s2grid(IrrepsArray(irreps, jnp.asarray(c)), 8, 9, quadrature=quadrature)
    assert ours.dtype == jnp.float32
    ours64 = S.to_s2grid(IrrepsArray(irreps, jnp.asarray(c, np.float64)), 8, 9, quadrature=quadrature)
    _close(ours.grid_values, ours64.grid_values, np.float32, scale=10.0)
    signal = _rng(4).normal(size=(3, 8, 9)).astype(np.float32)
    for fft in (True, False):
        back = S.from_s2grid(S.SphericalSignal(jnp.asarray(signal), quadrature), irreps, fft=fft)
        assert back.dtype == jnp.float32
        back64 = S.from_s2grid(S.SphericalSignal(jnp.asarray(signal, np.float64), quadrature), irreps, fft=fft)
        _close(back.array, back64.array, np.float32, scale=10.0)
    if quadrature == "gausslegendre":
        ref = e3nn_jax.to_s2grid(e3nn_jax.IrrepsArray(irreps, jnp.asarray(c)), 8, 9, quadrature=quadrature)
        _close(ours.grid_values, ref.grid_values, np.float32, scale=10.0)
        ref = e3nn_jax.from_s2grid(e3nn_jax.SphericalSignal(jnp.asarray(signal), quadrature), irreps)
        _close(back.array, ref.array, np.float32, scale=10.0)


@pytest.mark.parametrize("quadrature,res_beta", [("soft", 8), ("gausslegendre", 4)])
def test_round_trip_band_limited(quadrature, res_beta):
    lmax = 3  # soft is exact from res_beta = 2 (lmax + 1), Gauss-Legendre from lmax + 1
    irreps = S.s2_irreps(lmax)
    x = IrrepsArray(irreps, jnp.asarray(_rng(5).normal(size=(2, irreps.dim))))
    for normalization, fft in [("integral", True), ("component", False), ("norm", True)]:
        signal = S.to_s2grid(x, res_beta, 2 * lmax + 1, quadrature=quadrature, normalization=normalization, fft=fft)
        back = S.from_s2grid(signal, irreps, normalization=normalization, fft=fft)
        _close(back.array, x.array)


def test_fft_and_dense_agree_and_even_res_alpha():
    x = IrrepsArray(S.s2_irreps(3), jnp.asarray(_rng(6).normal(size=(16,))))
    a = S.to_s2grid(x, 8, 9, quadrature="soft", fft=True)
    b = S.to_s2grid(x, 8, 9, quadrature="soft", fft=False)
    _close(a.grid_values, b.grid_values)
    even = S.to_s2grid(x, 8, 10, quadrature="soft", fft=False)  # even res_alpha: only without fft
    _close(S.from_s2grid(even, S.s2_irreps(3), fft=True).array, S.from_s2grid(even, S.s2_irreps(3), fft=False).array)


def test_rotation_equivariance_and_integral():
    coeffs = IrrepsArray(S.s2_irreps(3), jnp.asarray(_rng(7).normal(size=(16,))))
    q, r = np.linalg.qr(_rng(16).normal(size=(3, 3)))
    R = q * np.sign(np.diag(r)) * np.linalg.det(q * np.sign(np.diag(r)))  # a float64 rotation, det +1
    points = IrrepsArray("1o", jnp.asarray(_rng(8).normal(size=(6, 3))))
    rotated = S.to_s2point(coeffs.transform_by_matrix(jnp.asarray(R)), points)
    expected = S.to_s2point(coeffs, IrrepsArray("1o", points.array @ R))  # f'(x) = f(R^T x)
    _close(rotated.array, expected.array)
    # parity: [I f](x) = p_val f(p_arg x)
    inverted = S.to_s2point(coeffs.transform_by_matrix(-jnp.eye(3)), points)
    _close(inverted.array, S.to_s2point(coeffs, IrrepsArray("1o", -points.array)).array)
    # the integral is the invariant part of the signal
    signal = S.to_s2grid(coeffs, 8, 9, quadrature="soft")
    _close(signal.integrate().array, coeffs.array[:1] * 4 * np.pi)  # "integral": a constant 1 has c_0 = 1


# ----------------------------------------------------------------------------------------------------------------
# points, diracs, m = 0 transforms
# ----------------------------------------------------------------------------------------------------------------


def test_to_s2point_matches_e3nn_and_grid():
    rng = _rng(9)
    c, p = rng.normal(size=(3, 16)), rng.normal(size=(4, 3))
    # "norm" is checked below against the grid (itself compared with e3nn-jax above)
    for irreps, vec, normalization in [("0e+1o+2e+3o", "1o", "integral"), ("0e+1e+2e+3e", "1e", "component")]:
        ours = S.to_s2point(IrrepsArray(irreps, jnp.asarray(c)), IrrepsArray(vec, jnp.asarray(p)),
                            normalization=normalization)
        ref = e3nn_jax.to_s2point(e3nn_jax.IrrepsArray(irreps, jnp.asarray(c)), e3nn_jax.IrrepsArray(vec, jnp.asarray(p)),
                                  normalization=normalization)
        assert str(ours.irreps) == str(ref.irreps) and ours.shape == (3, 4, 1)
        _close(ours.array, ref.array)
    coeffs = IrrepsArray("0e+1o+2e+3o", jnp.asarray(c[0]))
    grid = S.to_s2grid(coeffs, 8, 9, quadrature="gausslegendre", normalization="norm")
    at_points = S.to_s2point(coeffs, IrrepsArray("1o", grid.grid_vectors), normalization="norm")
    _close(at_points.array[..., 0], grid.grid_values)


def test_s2_dirac_matches_e3nn_and_integrates_to_one():
    p = jnp.asarray(_rng(10).normal(size=(4, 3)))
    for p_val, p_arg in [(1, -1), (1, 1)]:
        ours = S.s2_dirac(p, 3, p_val=p_val, p_arg=p_arg)
        ref = e3nn_jax.s2_dirac(p, 3, p_val=p_val, p_arg=p_arg)
        assert str(ours.irreps) == str(ref.irreps)
        _close(ours.array, ref.array)
    odd = S.s2_dirac(p, 3, p_val=-1, p_arg=-1)  # e3nn-jax rejects odd p_val; values are the same, labels differ
    assert odd.irreps == S.s2_irreps(3, -1, -1)
    _close(odd.array, S.s2_dirac(p, 3).array)
    signal = S.to_s2grid(S.s2_dirac(p[0], 3), 8, 9, quadrature="soft")
    _close(signal.integrate().array, [1.0])


@pytest.mark.parametrize("quadrature,normalization", [("soft", "integral"), ("gausslegendre", "component"),
                                                      ("soft", "norm")])
def test_legendre_transforms_match_e3nn(quadrature, normalization):
    rng = _rng(11)
    c, xb = rng.normal(size=(2, 4)), rng.normal(size=(2, 8))
    ours = S.legendre_transform_to_s2grid(jnp.asarray(c), 8, quadrature=quadrature, normalization=normalization)
    ref = e3nn_jax.legendre_transform_to_s2grid(jnp.asarray(c), 8, quadrature=quadrature, normalization=normalization)
    _close(ours, ref)
    ours = S.legendre_transform_from_s2grid(jnp.asarray(xb), 3, 8, quadrature=quadrature, normalization=normalization)
    ref = e3nn_jax.legendre_transform_from_s2grid(jnp.asarray(xb), 3, 8, quadrature=quadrature,
                                                  normalization=normalization)
    _close(ours, ref)
    # m = 0 round trip, and agreement with the full transform of an axially symmetric signal
    back = S.legendre_transform_from_s2grid(
        S.legendre_transform_to_s2grid(jnp.asarray(c), 8, quadrature=quadrature, normalization=normalization),
        3, 8, quadrature=quadrature, normalization=normalization)
    _close(back, c)
    full = S.from_s2grid(S.betas_to_spherical_signal(jnp.asarray(xb), 9, quadrature=quadrature), S.s2_irreps(3),
                         normalization=normalization)
    _close(S.m0_values_to_irrepsarray(ours, 3, 1, -1).array, full.array)


def test_m0_and_betas_helpers_match_e3nn():
    rng = _rng(12)
    m0 = jnp.asarray(rng.normal(size=(3, 4)))
    ours, ref = S.m0_values_to_irrepsarray(m0, 3, 1, -1), e3nn_jax.m0_values_to_irrepsarray(m0, 3, 1, -1)
    assert str(ours.irreps) == str(ref.irreps)
    _close(ours.array, ref.array)
    xb = jnp.asarray(rng.normal(size=(2, 8)))
    ours, ref = S.betas_to_spherical_signal(xb, 7, quadrature="soft"), e3nn_jax.betas_to_spherical_signal(
        xb, 7, quadrature="soft")
    _close(ours.grid_values, ref.grid_values)
    assert S.get_s2fft_grid_resolution(5) == e3nn_jax.get_s2fft_grid_resolution(5)
    assert S.s2_irreps(3, -1, 1) == IrrepsArray(str(e3nn_jax.s2_irreps(3, -1, 1)), jnp.zeros(16)).irreps


# ----------------------------------------------------------------------------------------------------------------
# SphericalSignal
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_spherical_signal_grid_matches_e3nn(quadrature):
    values = jnp.asarray(_rng(13).normal(size=(2, 8, 9)))
    ours, ref = S.SphericalSignal(values, quadrature), e3nn_jax.SphericalSignal(values, quadrature)
    assert ours.grid_resolution == ref.grid_resolution == (8, 9)
    assert (ours.res_beta, ours.res_alpha, ours.shape, ours.ndim) == (8, 9, (2, 8, 9), 3)
    _close(ours.grid_y, ref.grid_y)
    _close(ours.grid_alpha, ref.grid_alpha)
    _close(ours.grid_vectors, ref.grid_vectors)
    _close(ours.quadrature_weights, ref.quadrature_weights)
    _close(ours.integrate().array, ref.integrate().array)
    assert repr(S.SphericalSignal.zeros(2, 3, quadrature)) == repr(e3nn_jax.SphericalSignal.zeros(2, 3, quadrature))


def test_spherical_signal_methods_match_e3nn():
    values = jnp.asarray(_rng(13).normal(size=(2, 8, 9)))
    ours, ref = S.SphericalSignal(values, "soft"), e3nn_jax.SphericalSignal(values, "soft")
    _close((2.0 * ours + ours * ours - ours / 4.0).grid_values, (2.0 * ref + ref * ref - ref / 4.0).grid_values)
    _close((ours * IrrepsArray("0e", jnp.array([[2.0], [3.0]]))).grid_values,
           (ref * e3nn_jax.IrrepsArray("0e", jnp.array([[2.0], [3.0]]))).grid_values)
    _close(ours.apply(jnp.exp).grid_values, ref.apply(jnp.exp).grid_values)
    _close(ours.resample(4, 9, 3, "gausslegendre").grid_values, ref.resample(4, 9, 3, "gausslegendre").grid_values)
    # rotating a band-limited signal on the grid = rotating its coefficients
    coeffs = S.from_s2grid(ours, S.s2_irreps(3))
    band_limited = S.to_s2grid(coeffs, 8, 9, quadrature="soft")
    _close(band_limited.transform_by_angles(0.1, 0.2, 0.3, 3).grid_values,
           S.to_s2grid(coeffs.transform_by_angles(0.1, 0.2, 0.3), 8, 9, quadrature="soft").grid_values)
    _close(ours[1].grid_values, ref[1].grid_values)
    key = jax.random.PRNGKey(0)
    for a, b in zip(ours.apply(jnp.exp).sample(key), ref.apply(jnp.exp).sample(key)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    f = lambda v: v[0] * v[1] + v[2]
    _close(S.SphericalSignal.from_function(f, 8, 9, "soft").grid_values,
           e3nn_jax.SphericalSignal.from_function(f, 8, 9, "soft").grid_values, np.float32)


def test_spherical_signal_pytree_and_jit():
    signal = S.SphericalSignal(jnp.ones((2, 4, 5)), "soft", p_val=-1, p_arg=1)
    doubled = jax.jit(lambda s: s * 2.0)(signal)
    assert isinstance(doubled, S.SphericalSignal) and (doubled.p_val, doubled.p_arg) == (-1, 1)
    _close(doubled.grid_values, 2.0 * np.ones((2, 4, 5)))
    assert str(signal.integrate().irreps) == "1x0o"
    assert len(jax.tree_util.tree_leaves(signal)) == 1
    # the transforms trace under jit and vmap
    c = jnp.asarray(_rng(17).normal(size=(3, 16)))
    round_trip = jax.jit(lambda a: S.from_s2grid(S.to_s2grid(IrrepsArray(S.s2_irreps(3), a), 8, 9, quadrature="soft"),
                                                 S.s2_irreps(3)).array)
    _close(round_trip(c), c)
    batched = jax.vmap(lambda a: S.to_s2grid(IrrepsArray(S.s2_irreps(3), a), 8, 9, quadrature="soft").grid_values)
    _close(batched(c), S.to_s2grid(IrrepsArray(S.s2_irreps(3), c), 8, 9, quadrature="soft").grid_values)


# ----------------------------------------------------------------------------------------------------------------
# no NaN at the poles
# ----------------------------------------------------------------------------------------------------------------


def test_no_nan_at_poles():
    coeffs = jnp.asarray(_rng(14).normal(size=(16,)))
    irreps = S.s2_irreps(3)
    poles = jnp.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 2.0, 0.0]])

    def at_points(c, x):
        return jnp.sum(S.to_s2point(IrrepsArray(irreps, c), IrrepsArray("1o", x)).array ** 2)

    grads = jax.jit(jax.grad(at_points, argnums=(0, 1)))(coeffs, poles)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    on_grid = lambda c: jnp.sum(S.to_s2grid(IrrepsArray(irreps, c), 8, 9, quadrature="soft").grid_values ** 2)
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(on_grid))(coeffs))))
    # an axially symmetric signal at the poles: exact values from P_l(+-1) = (+-1)^l
    c = jnp.asarray(_rng(15).normal(size=(4,)))
    values = S.legendre_transform_to_s2grid(c, 4, quadrature="gausslegendre")
    assert np.all(np.isfinite(np.asarray(values)))
    l = np.arange(4)
    pole = S.to_s2point(S.m0_values_to_irrepsarray(c[None], 3, 1, -1), IrrepsArray("1o", poles[:2]))
    np.testing.assert_allclose(np.asarray(pole.array)[0, :, 0],
                               [np.sum(c * np.sqrt(2 * l + 1)), np.sum(c * (-1.0) ** l * np.sqrt(2 * l + 1))],
                               rtol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


def test_bad_input_errors():
    x = IrrepsArray(S.s2_irreps(3), jnp.zeros(16))
    with pytest.raises(ValueError, match="quadrature"):
        S.to_s2grid(x, 8, 9, quadrature="trapezoid")
    with pytest.raises(ValueError, match="quadrature"):
        S.SphericalSignal(jnp.zeros((4, 5)), "trapezoid")
    with pytest.raises(ValueError, match="quadrature"):
        S.legendre_transform_to_s2grid(jnp.zeros(4), 6, quadrature="trapezoid")
    with pytest.raises(ValueError, match="too small"):
        S.to_s2grid(x, 8, 5, quadrature="soft")
    with pytest.raises(ValueError, match="too small"):
        S.from_s2grid(S.SphericalSignal(jnp.zeros((8, 5)), "soft"), S.s2_irreps(3))
    with pytest.raises(ValueError, match="odd"):
        S.to_s2grid(x, 8, 10, quadrature="soft")
    with pytest.raises(ValueError, match="even"):
        S.to_s2grid(x, 7, 9, quadrature="soft")
    with pytest.raises(ValueError, match="res_beta"):
        S.to_s2grid(x, 0, 9, quadrature="gausslegendre")
    with pytest.raises(ValueError, match="normalization"):
        S.to_s2grid(x, 8, 9, quadrature="soft", normalization="unit")
    with pytest.raises(ValueError, match="Multiplicities"):
        S.to_s2grid(IrrepsArray("2x0e", jnp.zeros(2)), 8, 9, quadrature="soft")
    with pytest.raises(ValueError, match="both"):
        S.to_s2grid(x, 8, 9, quadrature="soft", p_val=1)
    with pytest.raises(ValueError, match="parities"):
        S.to_s2grid(IrrepsArray("0e+1e+2o", jnp.zeros(9)), 8, 9, quadrature="soft")
    with pytest.raises(ValueError, match="p_val and p_arg cannot be determined"):
        S.to_s2grid(IrrepsArray("2e", jnp.zeros(5)), 8, 9, quadrature="soft")
    with pytest.raises(TypeError):
        S.to_s2point(x, jnp.zeros(3))
    with pytest.raises(ValueError, match="parity"):
        S.SphericalSignal(jnp.zeros((4, 5)), "soft", p_val=-1).apply(jnp.exp)
    with pytest.raises(ValueError, match="lmax"):
        L.legendre(-1, jnp.zeros(3), 1.0)


@pytest.mark.parametrize("lmax, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_degree_arguments_are_checked(lmax, error):
    """A negative or non-integer ``lmax`` raises, naming the function, where it gave an empty irreps, an empty Dirac
    delta, a ``(0, -1)`` grid or a bare ``max() arg is an empty sequence`` from deep inside."""
    signal = S.to_s2grid(IrrepsArray("0e+1o", jnp.ones(4)), 6, 11, quadrature="soft", p_val=1, p_arg=-1)
    calls = {
        "s2_irreps": lambda: S.s2_irreps(lmax),
        "s2_dirac": lambda: S.s2_dirac(jnp.array([0.0, 0.0, 1.0]), lmax),
        "get_s2fft_grid_resolution": lambda: S.get_s2fft_grid_resolution(lmax),
        "SphericalSignal": lambda: signal.transform_by_angles(0.1, 0.2, 0.3, lmax=lmax),
        "legendre_transform_from_s2grid": lambda: S.legendre_transform_from_s2grid(
            jnp.ones(6), lmax, 6, quadrature="soft"),
        "m0_values_to_irrepsarray": lambda: S.m0_values_to_irrepsarray(jnp.ones(1), lmax, 1, -1),
    }
    for name, call in calls.items():
        with pytest.raises(error, match=f"{name}.*lmax must be a non-negative int"):
            call()
    assert S.s2_irreps(np.int64(1)) == S.s2_irreps(1)  # numpy integers are degrees too
