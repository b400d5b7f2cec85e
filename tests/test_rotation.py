"""Tests of e3nn_fast.rotation against e3nn-jax 0.21 (the numerical oracle) and against the group structure."""

import functools
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


@functools.partial(jax.jit, static_argnums=0)
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


def _assert_pairs_close(pairs):
    """``pairs``: name -> (actual, expected, atol), typically computed inside one jit."""
    for name, (actual, expected, atol) in pairs.items():
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_draws_match_e3nn(dtype):
    names = [n for n in PUBLIC if n.startswith("rand_")]
    shapes = [(), (3, 2)]

    def draws(module, key):
        return {(name, shape): getattr(module, name)(key, shape, dtype) for name in names for shape in shapes}

    key = jax.random.PRNGKey(42)
    ours = jax.jit(lambda k: draws(rotation, k))(key)
    theirs = jax.jit(lambda k: draws(e3nn_jax, k))(key)
    for what in ours:
        _assert_tree_close(ours[what], theirs[what], {jnp.float32: 1e-6, jnp.float64: 1e-14}[dtype], str(what))
    # default dtype is float32 even with x64 enabled, like e3nn-jax
    assert rotation.rand_matrix(key).dtype == jnp.float32
    assert rotation.rand_angles(key)[0].shape == ()


def test_identities_match_e3nn():
    for name in [n for n in PUBLIC if n.startswith("identity_")]:
        for args in [(), ((2, 3),), ((4,), jnp.float64)]:
            _assert_tree_close(getattr(rotation, name)(*args), getattr(e3nn_jax, name)(*args), 0.0, name)


def _edge_cases(module):
    v = jnp.array([[0.0, 0, 0], [0, 1, 0], [0, -2, 0], [1, 0, 0], [0, 0, -1], [1e-30, 1, 0]])
    identity = module.identity_quaternion((2,), jnp.float64)
    eye = jnp.eye(3)
    zero = jnp.zeros((2, 3))
    out = {
        "xyz_to_angles": module.xyz_to_angles(v),
        # a zero axis means the z axis in e3nn-jax; a zero angle is the identity
        "axis_angle_to_matrix": module.axis_angle_to_matrix(v, 0.7),
        "axis_angle_to_matrix(angle=0)": module.axis_angle_to_matrix(v, 0.0),
        "angles_to_xyz(scalars)": module.angles_to_xyz(1.7, 0.0),
        "angles_to_matrix(scalars)": module.angles_to_matrix(1.0, 2.0, 3.0),
    }
    for name in ["quaternion_to_matrix", "quaternion_to_axis_angle", "quaternion_to_log_coordinates"]:
        out[name] = getattr(module, name)(identity)
    for name in ["matrix_to_angles", "matrix_to_axis_angle", "matrix_to_quaternion", "matrix_to_log_coordinates"]:
        out[name] = getattr(module, name)(eye)
    for name in ["log_coordinates_to_matrix", "log_coordinates_to_quaternion", "log_coordinates_to_axis_angle"]:
        out[name] = getattr(module, name)(zero)
    return out


def test_edge_cases_match_e3nn():
    ours = jax.jit(lambda: _edge_cases(rotation))()
    theirs = jax.jit(lambda: _edge_cases(e3nn_jax))()
    for name in ours:
        _assert_tree_close(ours[name], theirs[name], 1e-15, name)


def _broadcasts(module):
    a, b, c = jnp.linspace(0, 1, 3), jnp.linspace(0, 2, 2)[:, None], 0.3
    axis = jnp.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    angle = jnp.linspace(0.1, 2.0, 3)[:, None]  # (3, 1) against axes (2, 3) -> (3, 2)
    out = {}
    for name in ["angles_to_matrix", "angles_to_quaternion", "angles_to_axis_angle", "angles_to_log_coordinates"]:
        out[name] = getattr(module, name)(a, b, c)
    for name in ["axis_angle_to_matrix", "axis_angle_to_quaternion", "axis_angle_to_log_coordinates"]:
        out[name] = getattr(module, name)(axis, angle)
    q = module.angles_to_quaternion(a, b, c)  # (2, 3, 4)
    out["compose_quaternion"] = module.compose_quaternion(q, q[:, :1])  # (2, 3) with (2, 1)
    return out


def test_broadcasting_matches_e3nn():
    ours = jax.jit(lambda: _broadcasts(rotation))()
    theirs = jax.jit(lambda: _broadcasts(e3nn_jax))()
    for name in ours:
        _assert_tree_close(ours[name], theirs[name], 1e-12, name)
    assert ours["axis_angle_to_matrix"].shape == (3, 2, 3, 3)

    @jax.jit
    def relative_angles():
        R1 = rotation.rand_matrix(jax.random.PRNGKey(1), (3,), jnp.float64)
        R2 = rotation.rand_matrix(jax.random.PRNGKey(2), (2, 1), jnp.float64)
        a1, a2 = rotation.matrix_to_angles(R1), rotation.matrix_to_angles(R2)
        expected = rotation.rotation_angle_from_matrix(R1 @ jnp.swapaxes(R2, -1, -2))
        return rotation.rotation_angle_from_angles(*a1, *a2), expected

    actual, expected = relative_angles()
    assert actual.shape == (2, 3)
    np.testing.assert_allclose(actual, expected, atol=1e-12)


@jax.jit
def _round_trips():
    key = jax.random.PRNGKey(7)
    R = rotation.rand_matrix(key, (32,), jnp.float64)
    angles = rotation.rand_angles(key, (32,), jnp.float64)
    R_angles = rotation.angles_to_matrix(*angles)
    log = rotation.rand_log_coordinates(key, (32,), jnp.float64)
    xyz = jax.random.normal(key, (32, 3), jnp.float64)
    alpha, beta = rotation.xyz_to_angles(xyz)
    unit = xyz / jnp.linalg.norm(xyz, axis=-1, keepdims=True)
    q = rotation.angles_to_quaternion(*angles)
    # rotation angles near pi make the axis read from R - R^T less accurate: 1e-9
    return {
        "matrix->angles": (rotation.angles_to_matrix(*rotation.matrix_to_angles(R)), R, 1e-12),
        "matrix->quaternion": (rotation.quaternion_to_matrix(rotation.matrix_to_quaternion(R)), R, 1e-9),
        "matrix->axis_angle": (rotation.axis_angle_to_matrix(*rotation.matrix_to_axis_angle(R)), R, 1e-9),
        "matrix->log": (rotation.log_coordinates_to_matrix(rotation.matrix_to_log_coordinates(R)), R, 1e-9),
        "angles->quaternion": (rotation.quaternion_to_matrix(q), R_angles, 1e-12),
        "quaternion->angles": (rotation.angles_to_matrix(*rotation.quaternion_to_angles(q)), R_angles, 1e-12),
        "log->angles": (
            rotation.angles_to_matrix(*rotation.log_coordinates_to_angles(log)),
            rotation.log_coordinates_to_matrix(log),
            1e-12,
        ),
        "log->quaternion": (
            rotation.quaternion_to_log_coordinates(rotation.log_coordinates_to_quaternion(log)),
            log,
            1e-12,
        ),
        "log->axis_angle": (
            rotation.axis_angle_to_log_coordinates(*rotation.log_coordinates_to_axis_angle(log)),
            log,
            1e-14,
        ),
        # points on the sphere: R(alpha, beta, 0) e_y = angles_to_xyz(alpha, beta)
        "xyz->angles": (rotation.angles_to_xyz(alpha, beta), unit, 1e-14),
        "xyz->angles->matrix": (rotation.angles_to_matrix(alpha, beta, 0.0)[..., :, 1], unit, 1e-14),
    }


def test_round_trips():
    _assert_pairs_close(_round_trips())


@jax.jit
def _compositions():
    k1, k2 = jax.random.split(jax.random.PRNGKey(8))
    a1 = rotation.rand_angles(k1, (8,), jnp.float64)
    a2 = rotation.rand_angles(k2, (8,), jnp.float64)
    R1, R2 = rotation.angles_to_matrix(*a1), rotation.angles_to_matrix(*a2)
    R12 = R1 @ R2
    R1_inv = jnp.swapaxes(R1, -1, -2)
    eye = jnp.broadcast_to(jnp.eye(3), R1.shape)
    q1, q2 = rotation.angles_to_quaternion(*a1), rotation.angles_to_quaternion(*a2)
    aa1, aa2 = rotation.angles_to_axis_angle(*a1), rotation.angles_to_axis_angle(*a2)
    l1, l2 = rotation.matrix_to_log_coordinates(R1), rotation.matrix_to_log_coordinates(R2)
    # the relative rotation angle is the same in every parametrisation
    relative = rotation.rotation_angle_from_matrix(R1 @ jnp.swapaxes(R2, -1, -2))
    return {
        "compose_angles": (rotation.angles_to_matrix(*rotation.compose_angles(*a1, *a2)), R12, 1e-12),
        "inverse_angles": (rotation.angles_to_matrix(*rotation.inverse_angles(*a1)), R1_inv, 1e-12),
        "compose_quaternion": (rotation.quaternion_to_matrix(rotation.compose_quaternion(q1, q2)), R12, 1e-9),
        "inverse_quaternion": (
            rotation.compose_quaternion(q1, rotation.inverse_quaternion(q1)),
            rotation.identity_quaternion((8,), jnp.float64),
            1e-14,
        ),
        "compose_axis_angle": (rotation.axis_angle_to_matrix(*rotation.compose_axis_angle(*aa1, *aa2)), R12, 1e-9),
        "compose_log": (rotation.log_coordinates_to_matrix(rotation.compose_log_coordinates(l1, l2)), R12, 1e-9),
        "inverse_log": (rotation.log_coordinates_to_matrix(rotation.inverse_log_coordinates(l1)) @ R1, eye, 1e-9),
        "angle_from_angles": (rotation.rotation_angle_from_angles(*a1, *a2), relative, 1e-7),
        "angle_from_quaternion": (rotation.rotation_angle_from_quaternion(q1, q2), relative, 1e-7),
        "angle_from_axis_angle": (rotation.rotation_angle_from_axis_angle(*aa1, *aa2), relative, 1e-6),
        "angle_from_log": (rotation.rotation_angle_from_log_coordinates(l1, l2), relative, 1e-6),
        # rotations are orthogonal with determinant one
        "orthogonal": (R12 @ jnp.swapaxes(R12, -1, -2), eye, 1e-12),
        "det": (jnp.linalg.det(R12), jnp.ones(8), 1e-12),
    }


def test_compose_inverse_and_rotation_angle():
    _assert_pairs_close(_compositions())


def test_elementary_rotations_follow_the_right_hand_rule():
    t = 0.3
    e_x, e_y, e_z = np.eye(3)
    np.testing.assert_allclose(rotation.matrix_x(np.pi / 2) @ e_y, e_z, atol=1e-15)
    np.testing.assert_allclose(rotation.matrix_y(np.pi / 2) @ e_z, e_x, atol=1e-15)
    np.testing.assert_allclose(rotation.matrix_z(np.pi / 2) @ e_x, e_y, atol=1e-15)
    for i, f in enumerate([rotation.matrix_x, rotation.matrix_y, rotation.matrix_z]):
        np.testing.assert_allclose(f(t), rotation.log_coordinates_to_matrix(t * np.eye(3)[i]), atol=1e-15)


@jax.jit
def _derivatives():
    jac = jax.jacfwd(rotation.log_coordinates_to_matrix)
    # central differences (fp64) around a generic point, a tiny one (Taylor branch) and one near the threshold
    points = jnp.array([[0.3, -1.2, 2.0], [1e-5, 2e-5, -1e-5], [1e-9, 0.0, 0.0]])
    h = 1e-6
    steps = h * jnp.eye(3)
    f = rotation.log_coordinates_to_matrix
    finite = jnp.stack(
        [
            (f(points + steps[i]) - f(points - steps[i])) / (2 * h)
            for i in range(3)
        ],
        axis=-1,
    )
    return {
        "jacobian at 0": (jnp.moveaxis(jac(jnp.zeros(3)), -1, 0), jnp.asarray(so3_basis()), 1e-15),
        "jacobian": (jax.vmap(jac)(points), finite, 1e-8),
    }


def so3_basis():
    """Derivative of exp([w]_x) at w = 0 along x, y, z: the cross-product matrices."""
    return np.array(
        [[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]], [[0, -1, 0], [1, 0, 0], [0, 0, 0]]],
        np.float64,
    )


def test_gradients():
    # log_coordinates_to_matrix is smooth at the identity (where its derivative is the so(3) basis) and elsewhere
    _assert_pairs_close(_derivatives())
    # gradients stay finite at the poles and at the identity
    assert np.all(np.isfinite(jax.grad(lambda v: sum(rotation.xyz_to_angles(v)))(jnp.array([0.0, 1.0, 0.0]))))
    assert np.all(np.isfinite(jax.grad(lambda q: jnp.sum(rotation.log_coordinates_to_quaternion(q)))(jnp.zeros(3))))


def test_bad_shape_argument():
    key = jax.random.PRNGKey(0)
    with pytest.raises(TypeError, match="shape"):
        rotation.rand_angles(key, "abc")
    with pytest.raises(TypeError, match="shape"):
        rotation.identity_quaternion(None)
    with pytest.raises(TypeError, match="shape"):
        rotation.identity_angles((2.5,))
    # an int is accepted as a one-axis shape
    assert rotation.rand_matrix(key, 4).shape == (4, 3, 3)


# Every public function reading matrices, quaternions or 3-vectors by component, with inputs of a wrong trailing
# shape (which read the wrong numbers before, silently in most cases; e3nn-jax too) and the argument position.
_MATRIX, _QUATERNION, _VECTOR = (2, 3, 3), (2, 4), (2, 3)
_BAD = {_MATRIX: [(2, 3, 4), (2, 4, 3), (3,)], _QUATERNION: [(2, 3), (2, 5), ()], _VECTOR: [(2, 4), (2, 2), ()]}
_ARGUMENTS = {
    "matrix_to_angles": [_MATRIX], "matrix_to_quaternion": [_MATRIX], "matrix_to_axis_angle": [_MATRIX],
    "matrix_to_log_coordinates": [_MATRIX], "rotation_angle_from_matrix": [_MATRIX],
    "compose_quaternion": [_QUATERNION, _QUATERNION], "inverse_quaternion": [_QUATERNION],
    "rotation_angle_from_quaternion": [_QUATERNION, _QUATERNION], "quaternion_to_axis_angle": [_QUATERNION],
    "quaternion_to_matrix": [_QUATERNION], "quaternion_to_angles": [_QUATERNION],
    "quaternion_to_log_coordinates": [_QUATERNION],
    "axis_angle_to_quaternion": [_VECTOR, (2,)], "axis_angle_to_matrix": [_VECTOR, (2,)],
    "axis_angle_to_angles": [_VECTOR, (2,)], "axis_angle_to_log_coordinates": [_VECTOR, (2,)],
    "compose_axis_angle": [_VECTOR, (2,), _VECTOR, (2,)],
    "rotation_angle_from_axis_angle": [_VECTOR, (2,), _VECTOR, (2,)],
    "log_coordinates_to_matrix": [_VECTOR], "log_coordinates_to_axis_angle": [_VECTOR],
    "log_coordinates_to_quaternion": [_VECTOR], "log_coordinates_to_angles": [_VECTOR],
    "compose_log_coordinates": [_VECTOR, _VECTOR], "inverse_log_coordinates": [_VECTOR],
    "rotation_angle_from_log_coordinates": [_VECTOR, _VECTOR], "xyz_to_angles": [_VECTOR],
}


@pytest.mark.parametrize("name", sorted(_ARGUMENTS))
def test_wrong_trailing_shapes_raise_value_errors(name):
    rng = np.random.default_rng(0)
    shapes = _ARGUMENTS[name]
    good = [rng.standard_normal(shape) for shape in shapes]
    getattr(rotation, name)(*good)  # the right shapes work
    for position, shape in enumerate(shapes):
        for bad in _BAD.get(shape, []):
            arguments = list(good)
            arguments[position] = rng.standard_normal(bad)
            with pytest.raises(ValueError) as error:
                getattr(rotation, name)(*arguments)
            expected = "(..., 3, 3)" if shape == _MATRIX else f"(..., {shape[-1]})"
            assert str(error.value).startswith(f"{name}: ") and f"must have shape {expected}" in str(error.value)
