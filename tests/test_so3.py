"""Tests of e3nn_fast.so3 against e3nn-jax 0.21 (the numerical oracle) and against group theory."""

import itertools

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3nn_jax._src.so3 import change_basis_real_to_complex as e3nn_change_basis

from e3nn_fast import rotation, so3

HALF_INTEGERS = [j / 2 for j in range(0, 9)]
DTYPES = [jnp.float32, jnp.float64]
TOL = {jnp.float32: 2e-6, jnp.float64: 1e-12}


def _random_angles(seed, shape, dtype):
    return rotation.rand_angles(jax.random.PRNGKey(seed), shape, dtype)


# ---------------------------------------------------------------------------------------------------------------
# generators and change of basis


def test_generators_match_e3nn():
    for l in range(13):
        ours = so3.generators(l)
        assert ours.shape == (3, 2 * l + 1, 2 * l + 1) and ours.dtype == np.float64
        np.testing.assert_allclose(ours, e3nn_jax.generators(l), atol=1e-13, err_msg=f"l={l}")


def test_su2_generators_match_e3nn():
    for j in HALF_INTEGERS:
        ours = so3.su2_generators(j)
        assert ours.dtype == np.complex128
        np.testing.assert_allclose(ours, e3nn_jax.su2_generators(j), atol=1e-14, err_msg=f"j={j}")


def test_change_basis_matches_e3nn_and_is_unitary():
    for l in range(9):
        q = so3.change_basis_real_to_complex(l)
        np.testing.assert_allclose(q, e3nn_change_basis(l), atol=1e-15)
        np.testing.assert_allclose(q @ q.conj().T, np.eye(2 * l + 1), atol=1e-14)


def test_generators_commutation_relations():
    # [X_x, X_y] = X_z and cyclic, antisymmetric, as for the l=1 cross-product matrices
    for l in range(7):
        x = so3.generators(l)
        for a, b, c in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
            np.testing.assert_allclose(x[a] @ x[b] - x[b] @ x[a], x[c], atol=1e-12)
        np.testing.assert_allclose(x, -np.swapaxes(x, 1, 2), atol=1e-14)
    for j in HALF_INTEGERS:
        x = so3.su2_generators(j)
        np.testing.assert_allclose(x[0] @ x[1] - x[1] @ x[0], x[2], atol=1e-12)


def test_generators_l1_are_cartesian():
    x = so3.generators(1)
    np.testing.assert_allclose(x[0], [[0, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(x[1], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(x[2], [[0, -1, 0], [1, 0, 0], [0, 0, 0]], atol=1e-15)


def test_returned_arrays_are_fresh_copies():
    for f, args in [(so3.generators, (2,)), (so3.clebsch_gordan, (1, 1, 2)), (so3.su2_clebsch_gordan, (1, 1, 2))]:
        a = f(*args)
        a[...] = 7.0
        assert not np.any(f(*args) == 7.0), f.__name__


# ---------------------------------------------------------------------------------------------------------------
# Clebsch-Gordan


def test_clebsch_gordan_matches_e3nn():
    triples = list(itertools.product(range(5), repeat=3)) + [(7, 6, 5), (6, 6, 12), (8, 8, 8), (3, 9, 7)]
    for l1, l2, l3 in triples:
        ours = so3.clebsch_gordan(l1, l2, l3)
        assert ours.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1) and ours.dtype == np.float64
        np.testing.assert_allclose(ours, e3nn_jax.clebsch_gordan(l1, l2, l3), atol=1e-13, err_msg=str((l1, l2, l3)))


def test_clebsch_gordan_norm_and_triangle_rule():
    for l1, l2, l3 in itertools.product(range(6), repeat=3):
        c = so3.clebsch_gordan(l1, l2, l3)
        if abs(l1 - l2) <= l3 <= l1 + l2:
            np.testing.assert_allclose(np.linalg.norm(c), 1.0, atol=1e-13)
        else:
            assert np.all(c == 0.0), (l1, l2, l3)


def test_clebsch_gordan_equivariance():
    alpha, beta, gamma = _random_angles(0, (), jnp.float64)
    d = jax.jit(lambda a, b, c: [so3.wigner_D(l, a, b, c) for l in range(6)])(alpha, beta, gamma)
    d = [np.asarray(x) for x in d]
    for l1, l2, l3 in itertools.product(range(4), range(4), range(6)):
        c = so3.clebsch_gordan(l1, l2, l3)
        left = np.einsum("ai,bj,ijk->abk", d[l1], d[l2], c)
        right = np.einsum("abc,ck->abk", c, d[l3])
        np.testing.assert_allclose(left, right, atol=1e-12, err_msg=str((l1, l2, l3)))


def test_su2_clebsch_gordan_matches_e3nn():
    for j1, j2, j3 in itertools.product(HALF_INTEGERS[:6], repeat=3):
        ours = so3.su2_clebsch_gordan(j1, j2, j3)
        theirs = e3nn_jax.su2_clebsch_gordan(j1, j2, j3)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-13, err_msg=str((j1, j2, j3)))


def test_su2_clebsch_gordan_unit_norm_and_zero_when_forbidden():
    for j1, j2, j3 in itertools.product(HALF_INTEGERS[:6], repeat=3):
        c = so3.su2_clebsch_gordan(j1, j2, j3)
        allowed = abs(j1 - j2) <= j3 <= j1 + j2 and (j1 + j2 + j3) == int(j1 + j2 + j3)
        if allowed:
            np.testing.assert_allclose(np.linalg.norm(c), 1.0, atol=1e-13)
        else:
            assert np.all(c == 0.0), (j1, j2, j3)


def test_su2_clebsch_gordan_equivariance():
    # (X1 (x) 1 + 1 (x) X2) C = C X3 for each generator: the infinitesimal form of equivariance
    for j1, j2, j3 in [(0.5, 0.5, 1), (0.5, 1, 1.5), (1.5, 1, 0.5), (2, 1.5, 2.5), (2, 2, 3)]:
        c = so3.su2_clebsch_gordan(j1, j2, j3)
        x1, x2, x3 = so3.su2_generators(j1), so3.su2_generators(j2), so3.su2_generators(j3)
        for a in range(3):
            left = np.einsum("ai,ijk->ajk", x1[a], c) + np.einsum("bj,ijk->ibk", x2[a], c)
            right = np.einsum("ijc,ck->ijk", c, x3[a])
            np.testing.assert_allclose(left, right, atol=1e-12)


def test_large_clebsch_gordan_is_exact_enough():
    # exact integer arithmetic: orthogonality of the l=15 block survives large cancellations
    c = so3.clebsch_gordan(15, 15, 15)
    np.testing.assert_allclose(np.linalg.norm(c), 1.0, atol=1e-12)
    gram = np.einsum("ijk,ijl->kl", c, c) * 31
    np.testing.assert_allclose(gram, np.eye(31), atol=1e-11)


# ---------------------------------------------------------------------------------------------------------------
# Wigner D
#
# Every batch of degrees goes through ONE jitted function: eager dispatch (and e3nn-jax's vmapped implementation in
# particular) would otherwise compile hundreds of tiny computations.


def _ours_all_l(ls):
    return jax.jit(lambda a, b, c: [so3.wigner_D(l, a, b, c) for l in ls])


def _e3nn_all_l(ls):
    return jax.jit(lambda a, b, c: [e3nn_jax.Irrep(l, 1).D_from_angles(a, b, c) for l in ls])


@pytest.mark.parametrize("dtype", DTYPES)
def test_wigner_D_matches_e3nn(dtype):
    # small, negative and large angles (both libraries reduce modulo 2 pi). e3nn-jax switches to expm at l = 12
    # (accurate to ~1e-10 in fp64), checked in fp64 only to keep compilation of the oracle short.
    alpha, beta, gamma = (x * jnp.array([1, 1, -2, 3, 10, -30], dtype) for x in _random_angles(1, (6,), dtype))
    ls = list(range(9)) + ([12] if dtype == jnp.float64 else [])
    ours = _ours_all_l(ls)(alpha, beta, gamma)
    theirs = _e3nn_all_l(ls)(alpha, beta, gamma)
    for l, d1, d2 in zip(ls, ours, theirs):
        assert d1.shape == d2.shape == (6, 2 * l + 1, 2 * l + 1)
        assert d1.dtype == d2.dtype == dtype
        tol = TOL[dtype] if l < 12 else 1e-9
        np.testing.assert_allclose(d1, d2, atol=tol, err_msg=f"l={l}")


def test_wigner_D_broadcasting_and_scalars():
    a = jnp.linspace(0, 1, 3)
    b = jnp.linspace(0, 2, 2)[:, None]
    d = so3.wigner_D(2, a, b, 0.3)
    assert d.shape == (2, 3, 5, 5)
    theirs = jax.jit(lambda a, b: e3nn_jax.Irrep(2, 1).D_from_angles(a, b, 0.3))(a, b)
    np.testing.assert_allclose(d, theirs, atol=1e-12)
    # python scalars and integer angles promote to the default float dtype
    d = so3.wigner_D(3, 1, 2, 3)
    assert d.shape == (7, 7) and d.dtype == jnp.float64
    np.testing.assert_allclose(d, so3.wigner_D(3, jnp.array(1.0), jnp.array(2.0), jnp.array(3.0)), atol=1e-15)
    assert so3.wigner_D(0, a, 0.0, 0.0).shape == (3, 1, 1)
    # mixed precision promotes like jnp
    assert so3.wigner_D(1, jnp.float32(1), 0.5, jnp.zeros((2,), jnp.float32)).dtype == jnp.float32


def test_wigner_D_l1_is_the_rotation_matrix():
    angles = _random_angles(3, (5,), jnp.float64)
    np.testing.assert_allclose(so3.wigner_D(1, *angles), rotation.angles_to_matrix(*angles), atol=1e-14)


def test_wigner_D_representation_properties():
    a1 = _random_angles(4, (3,), jnp.float64)
    a2 = _random_angles(5, (3,), jnp.float64)
    # one batch holding R1, R2, R1 R2 and R1^-1
    batch = [jnp.stack(x) for x in zip(a1, a2, rotation.compose_angles(*a1, *a2), rotation.inverse_angles(*a1))]
    ls = list(range(9))
    for l, (d1, d2, d12, inv) in zip(ls, _ours_all_l(ls)(*batch)):
        np.testing.assert_allclose(d1 @ d2, d12, atol=1e-11, err_msg=f"l={l}")  # homomorphism
        eye = np.broadcast_to(np.eye(2 * l + 1), d1.shape)
        np.testing.assert_allclose(d1 @ jnp.swapaxes(d1, -1, -2), eye, atol=1e-12)  # orthogonal
        np.testing.assert_allclose(inv, jnp.swapaxes(d1, -1, -2), atol=1e-12)


def test_wigner_D_is_generated_by_generators():
    # D(R_y(t)) = expm(t X_y) and D(R_x(t)) = expm(t X_x): the derivatives at t = 0 are the generators
    ls = list(range(6))

    @jax.jit
    def derivatives(t):
        d_alpha = [jax.jacfwd(lambda t: so3.wigner_D(l, t, 0.0, 0.0))(t) for l in ls]
        d_beta = [jax.jacfwd(lambda t: so3.wigner_D(l, 0.0, t, 0.0))(t) for l in ls]
        return d_alpha, d_beta

    for l, d_alpha, d_beta in zip(ls, *derivatives(0.0)):
        x = so3.generators(l)
        np.testing.assert_allclose(d_alpha, x[1], atol=1e-12)
        np.testing.assert_allclose(d_beta, x[0], atol=1e-12)


def test_wigner_D_gradient_matches_e3nn():
    angles = _random_angles(6, (2,), jnp.float64)
    ls = [3]
    weights = [jax.random.normal(jax.random.PRNGKey(l), (2, 2 * l + 1, 2 * l + 1)) for l in ls]

    def gradient(make_d):
        def loss(a, b, c):
            return sum(jnp.sum(w * make_d(l, a, b, c)) for l, w in zip(ls, weights))

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*angles)

    ours = gradient(so3.wigner_D)
    theirs = gradient(lambda l, a, b, c: e3nn_jax.Irrep(l, 1).D_from_angles(a, b, c))
    for g1, g2 in zip(ours, theirs):
        np.testing.assert_allclose(g1, g2, atol=1e-11)


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_degrees():
    for bad in [-1, -3]:
        with pytest.raises(ValueError, match="non-negative"):
            so3.generators(bad)
        with pytest.raises(ValueError, match="l3"):
            so3.clebsch_gordan(1, 1, bad)
        with pytest.raises(ValueError):
            so3.wigner_D(bad, 0.0, 0.0, 0.0)
        with pytest.raises(ValueError):
            so3.change_basis_real_to_complex(bad)
    for bad in [1.5, 1.0, "1", None, True]:
        with pytest.raises(TypeError, match="integer"):
            so3.generators(bad)
        with pytest.raises(TypeError):
            so3.clebsch_gordan(bad, 1, 1)
        with pytest.raises(TypeError):
            so3.wigner_D(bad, 0.0, 0.0, 0.0)
    # numpy integers are fine
    np.testing.assert_allclose(so3.generators(np.int64(2)), so3.generators(2))


def test_bad_spins():
    for bad in [0.3, 1.25, -0.5, -1]:
        with pytest.raises(ValueError, match="half-integer"):
            so3.su2_generators(bad)
        with pytest.raises(ValueError, match="j2"):
            so3.su2_clebsch_gordan(1, bad, 1)
    for bad in ["1", None, 1j]:
        with pytest.raises(TypeError):
            so3.su2_generators(bad)
        with pytest.raises(TypeError, match="j3"):
            so3.su2_clebsch_gordan(1, 1, bad)
