"""Spherical harmonics (``e3nn_fast.harmonics`` and ``e3nn_fast.reference.spherical_harmonics``) vs e3nn-jax.

e3nn-jax is slow to compile its spherical harmonics (seconds per distinct call), so the oracle values are computed
once per module (``("legendre", "dense")`` for ``l = 0..11``, which e3nn-jax itself uses above ``l = 8`` and which
agrees with its recursive algorithm to rounding) and reused; irreps resolution is compared with ``jax.eval_shape``,
which traces e3nn-jax without compiling it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import e3nn_jax

import e3nn_fast
from e3nn_fast.harmonics import sh, spherical_harmonics
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reference.spherical_harmonics import (
    spherical_harmonics_concatenated,
    spherical_harmonics_per_l,
    stacked_harmonics,
    stacked_harmonics_by_recurrence,
)

LMAX = 11
ALL_LS = list(range(LMAX + 1))
LEGENDRE = ("legendre", "dense")
NORMALIZATIONS = ["component", "norm", "integral"]


def _vectors(n=16, seed=0, dtype=np.float64):
    x = np.random.RandomState(seed).randn(n, 3)
    x[0] = [0.0, 1.0, 0.0]  # the polar axis, where azimuthal formulas are most fragile
    x[1] = [0.0, -2.0, 0.0]
    x[2] = [1e-3, 0.0, -1e-3]  # short vector (matters for normalize=False)
    return x.astype(dtype)


def _per_l_blocks(array, ls):
    """Split a concatenated ``(..., sum(2l+1))`` array into one block per degree."""
    out, start = [], 0
    for l in ls:
        out.append(array[..., start : start + 2 * l + 1])
        start += 2 * l + 1
    return out


@functools.lru_cache(maxsize=None)
def _oracle_component(normalize: bool) -> np.ndarray:
    """e3nn-jax's Y^0..Y^11 (fp64, component), one compilation shared by both values of ``normalize``."""
    return np.asarray(e3nn_jax.sh(ALL_LS, _vectors(), normalize, "component", algorithm=LEGENDRE))


def _assert_close_per_l(ours, theirs, ls, tol):
    """Compare degree by degree, relative to the size of each block (values grow like |x|^l without normalize)."""
    for l, a, b in zip(ls, _per_l_blocks(np.asarray(ours), ls), _per_l_blocks(np.asarray(theirs), ls)):
        scale = max(np.abs(b).max(), 1e-30)
        np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=tol, err_msg=f"l={l}")


# ----------------------------------------------------------------------------------------------------------------
# values: parity with e3nn-jax
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_all_degrees_match_e3nn_jax_fp64(normalize):
    ours = sh(ALL_LS, _vectors(), normalize, "component")
    assert ours.dtype == jnp.float64 and ours.shape == (16, (LMAX + 1) ** 2)
    _assert_close_per_l(ours, _oracle_component(normalize), ALL_LS, tol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_all_degrees_fp32_accuracy(normalize):
    ours = sh(ALL_LS, _vectors(dtype=np.float32), normalize, "component")
    assert ours.dtype == jnp.float32
    _assert_close_per_l(ours, _oracle_component(normalize), ALL_LS, tol=1e-5)


@pytest.mark.parametrize("normalization", ["norm", "integral"])
def test_other_normalizations_match_e3nn_jax(normalization):
    # e3nn-jax's default (recursive) algorithm on a few degrees; the high degrees are covered through "component"
    x = _vectors()
    ls = [0, 1, 2, 3]
    theirs = e3nn_jax.sh(ls, x, True, normalization)
    _assert_close_per_l(sh(ls, x, True, normalization), theirs, ls, tol=1e-12)
    # the normalisations differ from "component" by a constant per degree, for every l
    scale = {"norm": lambda l: (2 * l + 1) ** -0.5, "integral": lambda l: (4 * np.pi) ** -0.5}[normalization]
    for normalize in [True, False]:
        blocks = _per_l_blocks(_oracle_component(normalize), ALL_LS)
        expected = np.concatenate([scale(l) * b for l, b in zip(ALL_LS, blocks)], -1)
        _assert_close_per_l(sh(ALL_LS, x, normalize, normalization), expected, ALL_LS, tol=1e-12)


def test_fp32_matches_e3nn_jax_fp32():
    x = _vectors(dtype=np.float32)
    theirs = e3nn_jax.spherical_harmonics("0e+1o+2e+3o", e3nn_jax.IrrepsArray("1o", x), True)
    ours = spherical_harmonics("0e+1o+2e+3o", IrrepsArray("1o", x), True)
    assert ours.array.dtype == theirs.array.dtype == jnp.float32
    np.testing.assert_allclose(ours.array, theirs.array, rtol=1e-5, atol=1e-5)


def test_documented_values():
    # e3nn-jax's documentation examples
    np.testing.assert_allclose(
        sh(2, jnp.array([0.0, 0.0, 1.0]), True), [0.0, 0.0, -1.118034, 0.0, 1.936492], atol=1e-6
    )
    np.testing.assert_allclose(
        sh(2, jnp.array([1.0, 2.0, 3.0]), False), [11.61895, 7.745967, -2.236068, 23.2379, 15.49193], rtol=1e-6
    )
    y = spherical_harmonics("1o", IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0])), False)
    np.testing.assert_allclose(y.array, np.sqrt(3) * np.array([1.0, 2.0, 3.0]), rtol=1e-12)  # Cartesian l=1 basis


def test_unit_sphere_norms():
    x = _vectors()
    for normalization, norm2 in [("component", lambda l: 2 * l + 1), ("norm", lambda l: 1.0)]:
        for l, y in zip(ALL_LS, _per_l_blocks(sh(ALL_LS, x, True, normalization), ALL_LS)):
            np.testing.assert_allclose(np.sum(np.asarray(y) ** 2, -1), norm2(l), rtol=1e-12)


def test_unnormalized_is_homogeneous():
    x = _vectors()
    y1, y2 = sh(ALL_LS, x, False), sh(ALL_LS, 1.7 * x, False)
    expected = np.concatenate([1.7**l * b for l, b in zip(ALL_LS, _per_l_blocks(np.asarray(y1), ALL_LS))], -1)
    _assert_close_per_l(y2, expected, ALL_LS, tol=1e-12)


def test_reference_per_l_and_concatenated_agree():
    x = _vectors()[:5].reshape(5, 1, 3)
    ls = [3, 0, 3, 7]
    per_l = jax.jit(lambda v: spherical_harmonics_per_l(ls, v, True, "norm"))(x)
    assert [y.shape for y in per_l] == [(5, 1, 2 * l + 1) for l in ls]
    full = jax.jit(lambda v: spherical_harmonics_concatenated(7, v, True, "norm"))(x)
    assert full.shape == (5, 1, 64)
    for l, y in zip(ls, per_l):
        np.testing.assert_array_equal(y, full[..., l * l : (l + 1) ** 2])


# ----------------------------------------------------------------------------------------------------------------
# the public API: irreps resolution, parities, layout
# ----------------------------------------------------------------------------------------------------------------

IRREPS_OUT_CASES = [
    ("1o", 3),
    ("1e", [0, 1, 2, 3]),
    ("1o", range(4)),
    ("1o", (2, 1)),
    ("1o", "0e+1o+2e"),
    ("1e", "1e+3e+2e"),
    ("1o", "2x1o+0e+3x2e"),
    ("1o", Irreps("0x1o+2e")),
    ("1o", ""),
    ("1o", []),
]


def _expected_from_oracle(irreps_out: Irreps, normalize: bool) -> np.ndarray:
    """e3nn-jax's values laid out as ``irreps_out`` (multiplicity-major copies of each Y^l)."""
    blocks = _per_l_blocks(_oracle_component(normalize), ALL_LS)
    pieces = [np.tile(blocks[ir.l], (1, mul)) for mul, ir in irreps_out]
    return np.concatenate(pieces, -1) if pieces else np.zeros((16, 0))


@pytest.mark.parametrize("input_irreps, irreps_out", IRREPS_OUT_CASES)
def test_spherical_harmonics_irreps_out_forms(input_irreps, irreps_out):
    x = _vectors()
    ours = spherical_harmonics(irreps_out, IrrepsArray(input_irreps, x), True)
    their_irreps_out = str(irreps_out) if isinstance(irreps_out, Irreps) else irreps_out
    theirs = jax.eval_shape(
        lambda v: e3nn_jax.spherical_harmonics(
            their_irreps_out, e3nn_jax.IrrepsArray(input_irreps, v), True, algorithm=LEGENDRE
        ),
        x,
    )
    assert str(ours.irreps) == str(theirs.irreps)
    assert ours.array.shape == theirs.array.shape and ours.array.dtype == theirs.array.dtype
    np.testing.assert_allclose(ours.array, _expected_from_oracle(ours.irreps, True), rtol=1e-12, atol=1e-12)
    assert [c.shape for c in ours.chunks] == [(16, mul, ir.dim) for mul, ir in ours.irreps]


@pytest.mark.parametrize("irreps_out", [2, [0, 1, 2], "1e+2e", "2x2e+0e", range(3)])
def test_sh_irreps_out_forms(irreps_out):
    x = _vectors()
    ours = sh(irreps_out, x, False)
    theirs = jax.eval_shape(lambda v: e3nn_jax.sh(irreps_out, v, False, algorithm=LEGENDRE), x)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    resolved = Irreps([(1, (irreps_out, 1))]) if isinstance(irreps_out, int) else None
    if resolved is None:
        resolved = Irreps(irreps_out) if isinstance(irreps_out, str) else Irreps([(1, (l, 1)) for l in irreps_out])
    np.testing.assert_allclose(ours, _expected_from_oracle(resolved, False), rtol=1e-12, atol=1e-12)


def test_plain_array_input_and_leading_shapes():
    x = _vectors()[:6]
    y = spherical_harmonics("0e+1o+2e", x, True)
    assert isinstance(y, IrrepsArray) and str(y.irreps) == "1x0e+1x1o+1x2e"
    np.testing.assert_allclose(y.array, spherical_harmonics("0e+1o+2e", IrrepsArray("1o", x), True).array)
    batched = sh([0, 1, 2], x.reshape(2, 3, 3), True)
    assert batched.shape == (2, 3, 9)
    np.testing.assert_allclose(batched.reshape(6, 9), sh([0, 1, 2], x, True))
    single = sh([0, 1, 2], x[0], True)
    assert single.shape == (9,)
    np.testing.assert_allclose(single, batched[0, 0])


def test_default_normalization_from_config():
    from e3nn_fast.configuration import config

    x = _vectors()[:4]
    before = config("spherical_harmonics_normalization")
    try:
        config("spherical_harmonics_normalization", "integral")
        np.testing.assert_allclose(sh([0, 1, 2], x, True), sh([0, 1, 2], x, True, "integral"))
    finally:
        config("spherical_harmonics_normalization", before)
    np.testing.assert_allclose(sh([0, 1, 2], x, True), sh([0, 1, 2], x, True, "component"))


def test_algorithm_is_accepted():
    x = _vectors()[:4]
    for algorithm in [("legendre", "dense"), ("recursive", "sparse", "custom_jvp")]:
        np.testing.assert_allclose(sh([0, 3], x, True, algorithm=algorithm), sh([0, 3], x, True))


def test_inside_jit_and_vmap():
    x = jnp.asarray(_vectors())
    f = lambda v: spherical_harmonics("0e+1o+2e+3o", IrrepsArray("1o", v), True).array
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(f)(x), f(x), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# equivariance
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_irreps", ["1o", "1e"])
def test_o3_equivariance(input_irreps):
    from e3nn_fast.rotation import rand_matrix

    p = -1 if input_irreps == "1o" else 1
    ls = ALL_LS if input_irreps == "1o" else [0, 1, 2, 3]  # the pseudo-vector case checks the parities
    irreps_out = Irreps([(1, (l, p**l)) for l in ls])
    x = jnp.asarray(_vectors()[3:8])
    R = rand_matrix(jax.random.PRNGKey(0), (), jnp.float64)
    Q = jnp.stack([R, -R])  # a rotation and an improper rotation

    @jax.jit
    def both_sides(x, Q):
        x_rotated = x @ Irreps(input_irreps).D_from_matrix(Q).T
        y_rotated = spherical_harmonics(irreps_out, IrrepsArray(input_irreps, x_rotated), True).array
        y = spherical_harmonics(irreps_out, IrrepsArray(input_irreps, x), True).array
        return y_rotated, y @ irreps_out.D_from_matrix(Q).T

    for k in range(2):
        left, right = both_sides(x, Q[k])
        np.testing.assert_allclose(left, right, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# zero vector and derivatives
# ----------------------------------------------------------------------------------------------------------------


def test_zero_vector_matches_e3nn_jax():
    zero = jnp.zeros(3)
    f_all = lambda v: sh(ALL_LS, v, True)
    values, jacobian, hessian = jax.jit(lambda v: (f_all(v), jax.jacrev(f_all)(v), jax.hessian(f_all)(v)))(zero)
    # e3nn-jax (default algorithm) on the first degrees: values and first derivatives
    f_theirs = lambda v: e3nn_jax.sh([0, 1, 2], v, True)
    np.testing.assert_allclose(values[:9], f_theirs(zero), atol=1e-15)
    np.testing.assert_allclose(jacobian[:9], jax.jacfwd(f_theirs)(zero), atol=1e-14)
    # every degree: Y^0 and zeros, finite first and second derivatives
    np.testing.assert_array_equal(values, np.eye(1, (LMAX + 1) ** 2)[0])
    assert np.isfinite(jacobian).all() and np.isfinite(hessian).all()
    np.testing.assert_allclose(jacobian[1:4], np.sqrt(3) * np.eye(3), atol=1e-15)  # d(sqrt(3) x/|x|) at 0
    np.testing.assert_allclose(jacobian[4:], 0.0, atol=1e-15)


def test_gradients_match_e3nn_jax():
    ls = [0, 1, 2, 3]
    x = jnp.asarray(_vectors()[1:5])
    f_ours = jax.jit(jax.vmap(jax.jacrev(lambda v: sh(ls, v, True))))
    f_theirs = jax.jit(jax.vmap(jax.jacrev(lambda v: e3nn_jax.sh(ls, v, True))))
    np.testing.assert_allclose(f_ours(x), f_theirs(x), atol=1e-12)


def test_ladder_derivatives_match_autodiff_of_the_recurrence():
    # the custom_jvp rule (derivatives from Y^{l-1}) against plain autodiff through the recurrence loop
    x = jnp.asarray(_vectors()[3:6])

    @jax.jit
    def jacobians(v):
        out = []
        for normalization in NORMALIZATIONS:
            for f in (stacked_harmonics, stacked_harmonics_by_recurrence):
                out.append(jax.jacfwd(lambda u: f(LMAX, u, normalization))(v))
        return out

    jacs = jacobians(x)
    for ladder, loop in zip(jacs[0::2], jacs[1::2]):
        np.testing.assert_allclose(ladder, loop, rtol=1e-11, atol=1e-11 * np.abs(loop).max())

    @jax.jit
    def hessians(u):
        return [jax.hessian(lambda v: f(5, v, "norm"))(u) for f in (stacked_harmonics, stacked_harmonics_by_recurrence)]

    ladder, loop = hessians(x[0])
    np.testing.assert_allclose(ladder, loop, atol=1e-11 * np.abs(loop).max())


def test_second_order_gradients():
    x = _vectors()[3:6]
    x = jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))  # moderate values for finite differences
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 49), jnp.float64)

    @jax.jit
    def f(v):
        ls = list(range(7))
        return jnp.sum(w[0] * sh(ls, v, True)) + jnp.sum(w[1] * sh(ls, 0.9 * v, False))

    # The reference's ladder-rule derivatives, numerically; the straight-line executor is compared with it below.
    with e3nn_fast.backend("reference"):
        check_grads(f, (x,), order=2, modes=["rev"], eps=1e-4)


def test_third_derivative_of_y3():
    # Y^3 is a cubic polynomial (normalize=False): its third derivative is the same nonzero constant everywhere
    f = lambda v: sh(3, v, False)
    d3 = jax.jit(jax.vmap(jax.jacfwd(jax.jacfwd(jax.jacrev(f)))))
    third = d3(jnp.asarray(_vectors()[3:5]))
    assert third.shape == (2, 7, 3, 3, 3)
    np.testing.assert_allclose(third[0], third[1], atol=1e-12)
    assert np.abs(third).max() > 0.1


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


def test_integer_vectors_are_promoted_as_in_e3nn_jax():
    """Integer coordinates give the harmonics of the same float vectors, in the default float dtype (they raised a
    TypeError before).  e3nn-jax accepts them too but computes in integers, which truncates the coefficients of
    the higher degrees; its results for the float vectors are the reference."""
    lattice = np.array([[1, 0, 0], [1, 1, 0], [2, -1, 3]], np.int32)
    default_float = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 here: the test suite enables x64
    for normalize in (True, False):
        ours = spherical_harmonics("0e+1o+2e+3o", lattice, normalize)
        theirs = e3nn_jax.spherical_harmonics("0e+1o+2e+3o", lattice.astype(default_float), normalize)
        assert ours.dtype == default_float
        np.testing.assert_allclose(np.asarray(ours.array), np.asarray(theirs.array), rtol=1e-12, atol=1e-12)
        expected = spherical_harmonics("0e+1o+2e+3o", lattice.astype(default_float), normalize)
        np.testing.assert_array_equal(np.asarray(ours.array), np.asarray(expected.array))


def test_bad_input():
    x = _vectors()[:2]
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        sh([1], np.zeros((2, 4)), True)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        spherical_harmonics("1o", np.zeros((2, 2)), True)
    with pytest.raises(TypeError, match="real"):
        sh([1], np.ones((2, 3), np.complex64), True)
    with pytest.raises(TypeError, match="real"):
        spherical_harmonics("1o", jnp.ones((2, 3), jnp.complex64), False)
    with pytest.raises(ValueError, match="compatible parity"):
        spherical_harmonics("1o", IrrepsArray("1e", x), True)
    with pytest.raises(ValueError, match="compatible parity"):
        sh("1o", x, True)  # sh reads its input as 1e
    with pytest.raises(ValueError, match="even degree"):
        spherical_harmonics("2o", x, True)
    with pytest.raises(ValueError, match="odd degree"):
        spherical_harmonics("1o+3e", x, True)
    with pytest.raises(ValueError, match="must be an IrrepsArray"):
        spherical_harmonics(2, x, True)
    with pytest.raises(ValueError, match="must be an IrrepsArray"):
        spherical_harmonics([0, 1], x, True)
    with pytest.raises(ValueError, match="single vector"):
        spherical_harmonics([1], IrrepsArray("2x1o", np.zeros((2, 6))), True)
    with pytest.raises(ValueError, match="vector"):
        spherical_harmonics([1], IrrepsArray("2e", np.zeros((2, 5))), True)
    with pytest.raises(ValueError, match="normalization"):
        sh([1], x, True, "unit")
    with pytest.raises(ValueError, match="algorithm"):
        sh([1], x, True, algorithm=("fast",))
    with pytest.raises(ValueError, match=">= 0"):
        spherical_harmonics([-1], IrrepsArray("1o", x), True)


# ----------------------------------------------------------------------------------------------------------------
# executors: the straight-line jnp executor against the reference's loop
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["component", "norm", "integral"])
def test_straight_line_executor_matches_reference_with_derivatives(normalization):
    from e3nn_fast.reference import spherical_harmonics as reference
    from e3nn_fast.xla import spherical_harmonics as xla

    x = jnp.asarray(_vectors()[:4])
    ls = (0, 1, 2, 3, 4, 5, 8)

    def total(per_l):
        return lambda v: sum(jnp.sum(jnp.sin(y)) for y in per_l(ls, v, True, normalization))

    for a, b in zip(xla.spherical_harmonics_per_l(ls, x, True, normalization),
                    reference.spherical_harmonics_per_l(ls, x, True, normalization)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    f_xla, f_ref = total(xla.spherical_harmonics_per_l), total(reference.spherical_harmonics_per_l)
    np.testing.assert_allclose(jax.jit(jax.grad(f_xla))(x), jax.jit(jax.grad(f_ref))(x), rtol=1e-10, atol=1e-10)
    if normalization == "component":  # second derivatives once, at l <= 4: they dominate the compile time
        low = lambda per_l: lambda v: sum(jnp.sum(jnp.sin(y)) for y in per_l((2, 4), v, True, "component"))
        np.testing.assert_allclose(jax.jit(jax.hessian(low(xla.spherical_harmonics_per_l)))(x[:2]),
                                   jax.jit(jax.hessian(low(reference.spherical_harmonics_per_l)))(x[:2]),
                                   rtol=1e-9, atol=1e-9)


def test_both_derivative_forms_of_the_normalisation_agree():
    """Below and from VECTOR_FORM_DERIVATIVE_FROM_DEGREE the normalised components have the same values and the same
    first and second derivatives (forward and reverse mode, under vmap), the zero vector included."""
    from e3nn_fast.xla import spherical_harmonics as xla

    low, high = xla.VECTOR_FORM_DERIVATIVE_FROM_DEGREE - 1, xla.VECTOR_FORM_DERIVATIVE_FROM_DEGREE
    x = jnp.concatenate([jnp.asarray(_vectors()[:3]), jnp.zeros((1, 3)), jnp.asarray([[1e-30, -2e-30, 0.5e-30]])])

    def weighted(lmax):
        return lambda v: sum(w * c for w, c in zip((0.3, -1.1, 0.7), xla.unit_components(v, lmax)))

    for a, b in zip(xla.unit_components(x, low), xla.unit_components(x, high)):
        np.testing.assert_array_equal(a, b)
    for derivative in (jax.jacrev, jax.jacfwd, lambda f: jax.hessian(f)):
        np.testing.assert_allclose(jax.vmap(derivative(weighted(high)))(x), jax.vmap(derivative(weighted(low)))(x),
                                   rtol=1e-12, atol=1e-12)


def test_dispatcher_picks_and_switches_executors(monkeypatch):
    from e3nn_fast import dispatch

    assert dispatch.choose("spherical_harmonics") == "jnp"  # auto on CPU
    calls = []
    original = dispatch.implementation

    def spy(op, name):
        calls.append((op, name))
        return original(op, name)

    monkeypatch.setattr(dispatch, "implementation", spy)
    x = jnp.asarray(_vectors()[:3])
    default = sh(3, x, True)
    with e3nn_fast.backend("reference"):
        forced = sh(3, x, True)  # must not be served from the jnp trace's cache
    assert ("spherical_harmonics", "reference") in calls
    # atol: where a harmonic vanishes exactly (y = 0 and l + m odd), the straight-line polynomial gives 0 and the
    # reference's Legendre recurrence a rounding residue (~1e-16 here)
    np.testing.assert_allclose(default, forced, rtol=1e-12, atol=1e-14)
