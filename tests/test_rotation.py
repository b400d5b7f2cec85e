"""Tests of e3nn_fast.rotation against e3nn-jax 0.21 (the numerical oracle) and against the group structure."""

import inspect

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast import rotation

DTYPES = [jnp.float32, jnp.float64]
TOL = {jnp.float32: 3e-5, jnp.float64: 1e-11}
N = 16  # batch size of the random inputs

PUBLIC = sorted(rotation.__all__)


def _inputs(dtype):
    """Random rotations in every parametrisation, plus free vectors, from fixed keys."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    angles = e3nn_jax.rand_angles(k1, (N,), dtype)
    angles2 = e3nn_jax.rand_angles(k2, (N,), dtype)
    vectors = jax.random.normal(k3, (N, 3), dtype) * 2  # norm up to ~2 pi: log coordinates / axes / points
    axis, angle = e3nn_jax.angles_to_axis_angle(*angles)
    return dict(
        angles=angles,
        angles2=angles2,
        matrix=e3nn_jax.angles_to_matrix(*angles),
        matrix2=e3nn_jax.angles_to_matrix(*angles2),
        quaternion=e3nn_jax.angles_to_quaternion(*angles),
        quaternion2=e3nn_jax.angles_to_quaternion(*angles2),
        axis_angle=(axis, angle),
        axis_angle2=(vectors, angles2[0]),  # axes that are not normalised
        log=vectors,
        log2=jnp.roll(vectors, 1, axis=0),
    )


def _arguments(name, x):
    """Positional arguments of the public function ``name`` built from the inputs ``x``."""
    if name in ("compose_angles", "rotation_angle_from_angles"):
        return (*x["angles"], *x["angles2"])
    if name == "angles_to_xyz":
        return x["angles"][:2]
    if name.startswith("angles_to") or name == "inverse_angles":
        return x["angles"]
    if name in ("matrix_x", "matrix_y", "matrix_z"):
        return (x["angles"][1] * 3 - 2,)
    if name.startswith("matrix_to") or name == "rotation_angle_from_matrix":
        return (x["matrix"],)
    if name in ("compose_quaternion", "rotation_angle_from_quaternion"):
        return (x["quaternion"], x["quaternion2"])
    if name.startswith("quaternion_to") or name == "inverse_quaternion":
        return (x["quaternion"],)
    if name in ("compose_axis_angle", "rotation_angle_from_axis_angle"):
        return (*x["axis_angle"], *x["axis_angle2"])
    if name.startswith("axis_angle_to"):
        return x["axis_angle2"]
    if name in ("compose_log_coordinates", "rotation_angle_from_log_coordinates"):
        return (x["log"], x["log2"])
    if name.startswith("log_coordinates_to") or name == "inverse_log_coordinates":
        return (x["log"],)
    if name == "xyz_to_angles":
        return (x["log"],)
    raise KeyError(name)


# e3nn-jax's rotation_angle_from_angles fails with batch axes (tested unbatched below)
DETERMINISTIC = [n for n in PUBLIC if not n.startswith(("rand_", "identity_")) and n != "rotation_angle_from_angles"]


def _evaluate_all(module, x):
    return {name: getattr(module, name)(*_arguments(name, x)) for name in DETERMINISTIC}


def _assert_tree_close(ours, theirs, atol, what):
    ours, theirs = jax.tree.leaves(ours), jax.tree.leaves(theirs)
    assert len(ours) == len(theirs), what
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (what, a.shape, b.shape)
        assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=what)


def test_public_names_and_signatures_match_e3nn():
    for name in PUBLIC:
        ours = inspect.signature(getattr(rotation, name))
        theirs = inspect.signature(getattr(e3nn_jax, name))
        assert list(ours.parameters) == list(theirs.parameters), name
        for p in ours.parameters.values():
            assert p.default == theirs.parameters[p.name].default, (name, p.name)
    assert len(PUBLIC) == 45


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_conversion_matches_e3nn(dtype):
    x = _inputs(dtype)
    # one jitted computation per library: eager dispatch would compile every primitive separately
    ours = jax.jit(lambda x: _evaluate_all(rotation, x))(x)
    theirs = jax.jit(lambda x: _evaluate_all(e3nn_jax, x))(x)
    assert ours.keys() == theirs.keys()
    for name in DETERMINISTIC:
        _assert_tree_close(ours[name], theirs[name], TOL[dtype], name)


def test_rotation_angle_from_angles_unbatched_matches_e3nn():
    # e3nn-jax transposes R2 with `.T`, which is only right without batch axes: compare there
    a1 = tuple(a[0] for a in e3nn_jax.rand_angles(jax.random.PRNGKey(1), (1,), jnp.float64))
    a2 = tuple(a[0] for a in e3nn_jax.rand_angles(jax.random.PRNGKey(2), (1,), jnp.float64))
    np.testing.assert_allclose(
        rotation.rotation_angle_from_angles(*a1, *a2), e3nn_jax.rotation_angle_from_angles(*a1, *a2), atol=1e-12
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_draws_match_e3nn(dtype):
    key = jax.random.PRNGKey(42)
    for name in [n for n in PUBLIC if n.startswith("rand_")]:
        for shape in [(), (3, 2)]:
            ours = getattr(rotation, name)(key, shape, dtype)
            theirs = getattr(e3nn_jax, name)(key, shape, dtype)
            _assert_tree_close(ours, theirs, {jnp.float32: 1e-6, jnp.float64: 1e-14}[dtype], f"{name}{shape}")
    # default dtype is float32 even with x64 enabled, like e3nn-jax
    assert rotation.rand_matrix(key).dtype == jnp.float32
    assert rotation.rand_angles(key)[0].shape == ()


def test_identities_match_e3nn():
    for name in [n for n in PUBLIC if n.startswith("identity_")]:
        for args in [(), ((2, 3),), ((4,), jnp.float64)]:
            _assert_tree_close(getattr(rotation, name)(*args), getattr(e3nn_jax, name)(*args), 0.0, name)


def test_edge_cases_match_e3nn():
    v = jnp.array([[0.0, 0, 0], [0, 1, 0], [0, -2, 0], [1, 0, 0], [0, 0, -1], [1e-30, 1, 0]])
    _assert_tree_close(rotation.xyz_to_angles(v), e3nn_jax.xyz_to_angles(v), 1e-15, "xyz_to_angles")
    # a zero axis means the z axis in e3nn-jax; a zero angle is the identity
    _assert_tree_close(rotation.axis_angle_to_matrix(v, 0.7), e3nn_jax.axis_angle_to_matrix(v, 0.7), 1e-15, "axis")
    _assert_tree_close(rotation.axis_angle_to_matrix(v, 0.0), e3nn_jax.axis_angle_to_matrix(v, 0.0), 1e-15, "axis0")
    identity = e3nn_jax.identity_quaternion((2,), jnp.float64)
    for name in ["quaternion_to_matrix", "quaternion_to_axis_angle", "quaternion_to_log_coordinates"]:
        _assert_tree_close(getattr(rotation, name)(identity), getattr(e3nn_jax, name)(identity), 1e-15, name)
    eye = jnp.eye(3)
    for name in ["matrix_to_angles", "matrix_to_axis_angle", "matrix_to_quaternion", "matrix_to_log_coordinates"]:
        _assert_tree_close(getattr(rotation, name)(eye), getattr(e3nn_jax, name)(eye), 1e-15, name)
    zero = jnp.zeros((2, 3))
    for name in ["log_coordinates_to_matrix", "log_coordinates_to_quaternion", "log_coordinates_to_axis_angle"]:
        _assert_tree_close(getattr(rotation, name)(zero), getattr(e3nn_jax, name)(zero), 1e-15, name)
    # python scalars
    _assert_tree_close(rotation.angles_to_xyz(1.7, 0.0), e3nn_jax.angles_to_xyz(1.7, 0.0), 1e-15, "xyz")
    _assert_tree_close(rotation.angles_to_matrix(1.0, 2.0, 3.0), e3nn_jax.angles_to_matrix(1.0, 2.0, 3.0), 1e-15, "R")


def test_broadcasting_matches_e3nn():
    a, b, c = jnp.linspace(0, 1, 3), jnp.linspace(0, 2, 2)[:, None], 0.3
    for name in ["angles_to_matrix", "angles_to_quaternion", "angles_to_axis_angle", "angles_to_log_coordinates"]:
        _assert_tree_close(getattr(rotation, name)(a, b, c), getattr(e3nn_jax, name)(a, b, c), 1e-12, name)
    axis = jnp.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    angle = jnp.linspace(0.1, 2.0, 3)[:, None]  # (3, 1) against axes (2, 3) -> (3, 2)
    for name in ["axis_angle_to_matrix", "axis_angle_to_quaternion", "axis_angle_to_log_coordinates"]:
        _assert_tree_close(getattr(rotation, name)(axis, angle), getattr(e3nn_jax, name)(axis, angle), 1e-12, name)
    q = rotation.rand_quaternion(jax.random.PRNGKey(0), (2, 1), jnp.float64)
    assert rotation.compose_quaternion(q, q[:, 0]).shape == (2, 2, 4)
    R1 = rotation.rand_matrix(jax.random.PRNGKey(1), (3,), jnp.float64)
    R2 = rotation.rand_matrix(jax.random.PRNGKey(2), (2, 1), jnp.float64)
    a1, a2 = rotation.matrix_to_angles(R1), rotation.matrix_to_angles(R2)
    expected = rotation.rotation_angle_from_matrix(R1 @ jnp.swapaxes(R2, -1, -2))
    np.testing.assert_allclose(rotation.rotation_angle_from_angles(*a1, *a2), expected, atol=1e-12)


def _close_rotations(R1, R2, atol):
    np.testing.assert_allclose(R1, R2, atol=atol)


def test_round_trips():
    key = jax.random.PRNGKey(7)
    R = rotation.rand_matrix(key, (32,), jnp.float64)
    atol = 1e-12
    _close_rotations(rotation.angles_to_matrix(*rotation.matrix_to_angles(R)), R, atol)
    _close_rotations(rotation.quaternion_to_matrix(rotation.matrix_to_quaternion(R)), R, 1e-9)  # axis near pi
    _close_rotations(rotation.axis_angle_to_matrix(*rotation.matrix_to_axis_angle(R)), R, 1e-9)
    _close_rotations(rotation.log_coordinates_to_matrix(rotation.matrix_to_log_coordinates(R)), R, 1e-9)

    angles = rotation.rand_angles(key, (32,), jnp.float64)
    R = rotation.angles_to_matrix(*angles)
    _close_rotations(rotation.quaternion_to_matrix(rotation.angles_to_quaternion(*angles)), R, atol)
    _close_rotations(rotation.angles_to_matrix(*rotation.quaternion_to_angles(rotation.angles_to_quaternion(*angles))), R, atol)
    log = rotation.rand_log_coordinates(key, (32,), jnp.float64)
    _close_rotations(rotation.angles_to_matrix(*rotation.log_coordinates_to_angles(log)), rotation.log_coordinates_to_matrix(log), atol)
    np.testing.assert_allclose(rotation.quaternion_to_log_coordinates(rotation.log_coordinates_to_quaternion(log)), log, atol=1e-12)
    axis, angle = rotation.log_coordinates_to_axis_angle(log)
    np.testing.assert_allclose(rotation.axis_angle_to_log_coordinates(axis, angle), log, atol=1e-14)

    # points on the sphere: R(alpha, beta, 0) e_y = angles_to_xyz(alpha, beta)
    xyz = jax.random.normal(key, (32, 3), jnp.float64)
    alpha, beta = rotation.xyz_to_angles(xyz)
    unit = xyz / jnp.linalg.norm(xyz, axis=-1, keepdims=True)
    np.testing.assert_allclose(rotation.angles_to_xyz(alpha, beta), unit, atol=1e-14)
    np.testing.assert_allclose(rotation.angles_to_matrix(alpha, beta, 0.0)[..., :, 1], unit, atol=1e-14)


def test_compose_inverse_and_rotation_angle():
    k1, k2 = jax.random.split(jax.random.PRNGKey(8))
    a1 = rotation.rand_angles(k1, (8,), jnp.float64)
    a2 = rotation.rand_angles(k2, (8,), jnp.float64)
    R1, R2 = rotation.angles_to_matrix(*a1), rotation.angles_to_matrix(*a2)
    R12 = R1 @ R2
    eye = np.broadcast_to(np.eye(3), R1.shape)

    np.testing.assert_allclose(rotation.angles_to_matrix(*rotation.compose_angles(*a1, *a2)), R12, atol=1e-12)
    np.testing.assert_allclose(rotation.angles_to_matrix(*rotation.inverse_angles(*a1)), jnp.swapaxes(R1, -1, -2), atol=1e-12)

    q1, q2 = rotation.angles_to_quaternion(*a1), rotation.angles_to_quaternion(*a2)
    np.testing.assert_allclose(rotation.quaternion_to_matrix(rotation.compose_quaternion(q1, q2)), R12, atol=1e-9)
    q_id = rotation.compose_quaternion(q1, rotation.inverse_quaternion(q1))
    np.testing.assert_allclose(q_id, rotation.identity_quaternion((8,), jnp.float64), atol=1e-14)

    aa1, aa2 = rotation.angles_to_axis_angle(*a1), rotation.angles_to_axis_angle(*a2)
    np.testing.assert_allclose(rotation.axis_angle_to_matrix(*rotation.compose_axis_angle(*aa1, *aa2)), R12, atol=1e-9)

    l1, l2 = rotation.matrix_to_log_coordinates(R1), rotation.matrix_to_log_coordinates(R2)
    np.testing.assert_allclose(rotation.log_coordinates_to_matrix(rotation.compose_log_coordinates(l1, l2)), R12, atol=1e-9)
    np.testing.assert_allclose(rotation.log_coordinates_to_matrix(rotation.inverse_log_coordinates(l1)) @ R1, eye, atol=1e-9)

    # the relative rotation angle is the same in every parametrisation
    expected = rotation.rotation_angle_from_matrix(R1 @ jnp.swapaxes(R2, -1, -2))
    np.testing.assert_allclose(rotation.rotation_angle_from_angles(*a1, *a2), expected, atol=1e-7)
    np.testing.assert_allclose(rotation.rotation_angle_from_quaternion(q1, q2), expected, atol=1e-7)
    np.testing.assert_allclose(rotation.rotation_angle_from_axis_angle(*aa1, *aa2), expected, atol=1e-6)
    np.testing.assert_allclose(rotation.rotation_angle_from_log_coordinates(l1, l2), expected, atol=1e-6)
    # rotations are orthogonal with determinant one
    np.testing.assert_allclose(R12 @ jnp.swapaxes(R12, -1, -2), eye, atol=1e-12)
    np.testing.assert_allclose(jnp.linalg.det(R12), 1.0, atol=1e-12)


def test_elementary_rotations_follow_the_right_hand_rule():
    t = 0.3
    e_x, e_y, e_z = jnp.eye(3)
    np.testing.assert_allclose(rotation.matrix_x(jnp.pi / 2) @ e_y, e_z, atol=1e-15)
    np.testing.assert_allclose(rotation.matrix_y(jnp.pi / 2) @ e_z, e_x, atol=1e-15)
    np.testing.assert_allclose(rotation.matrix_z(jnp.pi / 2) @ e_x, e_y, atol=1e-15)
    for i, f in enumerate([rotation.matrix_x, rotation.matrix_y, rotation.matrix_z]):
        np.testing.assert_allclose(f(t), rotation.log_coordinates_to_matrix(t * jnp.eye(3)[i]), atol=1e-15)


def test_gradients():
    # log_coordinates_to_matrix is smooth at the identity, its derivative there is the so(3) basis
    jacobian = jax.jacfwd(rotation.log_coordinates_to_matrix)(jnp.zeros(3))
    basis = jnp.array(
        [[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]], [[0, -1, 0], [1, 0, 0], [0, 0, 0]]],
        jnp.float64,
    )
    np.testing.assert_allclose(jnp.moveaxis(jacobian, -1, 0), basis, atol=1e-15)
    # and matches e3nn-jax (expm) elsewhere, including just above the Taylor threshold
    log = jnp.array([[0.3, -1.2, 2.0], [1e-5, 2e-5, -1e-5], [1e-9, 0.0, 0.0]])
    ours = jax.vmap(jax.jacfwd(rotation.log_coordinates_to_matrix))(log)
    theirs = jax.vmap(jax.jacfwd(e3nn_jax.log_coordinates_to_matrix))(log)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    # gradients stay finite at the poles and at the identity quaternion
    assert np.all(np.isfinite(jax.grad(lambda v: sum(rotation.xyz_to_angles(v)))(jnp.array([0.0, 1.0, 0.0]))))
    assert np.all(np.isfinite(jax.grad(lambda q: jnp.sum(rotation.log_coordinates_to_quaternion(q)))(jnp.zeros(3))))
    g = jax.grad(lambda a: jnp.sum(rotation.angles_to_matrix(a, 0.4, 0.5) * jnp.arange(9.0).reshape(3, 3)))(0.3)
    g_e3nn = jax.grad(lambda a: jnp.sum(e3nn_jax.angles_to_matrix(a, 0.4, 0.5) * jnp.arange(9.0).reshape(3, 3)))(0.3)
    np.testing.assert_allclose(g, g_e3nn, atol=1e-14)


def test_bad_shape_argument():
    key = jax.random.PRNGKey(0)
    with pytest.raises(TypeError, match="shape"):
        rotation.rand_angles(key, "abc")
    with pytest.raises(TypeError, match="shape"):
        rotation.identity_quaternion(None)
    # an int is accepted as a one-axis shape
    assert rotation.rand_matrix(key, 4).shape == (4, 3, 3)
