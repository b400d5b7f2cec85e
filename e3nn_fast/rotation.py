r"""Rotations of :math:`\mathbb{R}^3` in five parametrisations, with conversions between them.

Conventions (identical to e3nn-jax 0.21):

* Vectors are Cartesian :math:`(x, y, z)`; :math:`y` is the polar axis.
* **Matrix** ``R``: shape ``(..., 3, 3)``, acts on column vectors.
* **Euler angles** ``(alpha, beta, gamma)``: :math:`R = R_y(\alpha) R_x(\beta) R_y(\gamma)`, so :math:`\gamma` is
  applied first. A direction on the sphere is :math:`R(\alpha, \beta, 0)\, e_y` (see :func:`angles_to_xyz`).
* **Quaternion** ``q``: shape ``(..., 4)``, scalar part first :math:`(w, x, y, z)`, Hamilton product.
* **Axis-angle** ``(axis, angle)``: shapes ``(..., 3)`` and ``(...)``; counter-clockwise (right-hand rule).
* **Log coordinates**: shape ``(..., 3)``, ``axis * angle``.

All functions broadcast over leading axes. ``rand_*(key, shape, dtype)`` draw Haar-random rotations and consume the
PRNG key exactly like e3nn-jax, so the same key gives the same rotations. Conversions that go through
:func:`matrix_to_axis_angle` read the axis from :math:`R - R^T` (as e3nn-jax does), which is ill-conditioned for
rotation angles close to :math:`\pi`.
"""

import operator
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "angles_to_axis_angle", "angles_to_log_coordinates", "angles_to_matrix", "angles_to_quaternion",
    "angles_to_xyz", "axis_angle_to_angles", "axis_angle_to_log_coordinates", "axis_angle_to_matrix",
    "axis_angle_to_quaternion", "compose_angles", "compose_axis_angle", "compose_log_coordinates",
    "compose_quaternion", "identity_angles", "identity_log_coordinates", "identity_quaternion", "inverse_angles",
    "inverse_log_coordinates", "inverse_quaternion", "log_coordinates_to_angles", "log_coordinates_to_axis_angle",
    "log_coordinates_to_matrix", "log_coordinates_to_quaternion", "matrix_to_angles", "matrix_to_axis_angle",
    "matrix_to_log_coordinates", "matrix_to_quaternion", "matrix_x", "matrix_y", "matrix_z",
    "quaternion_to_angles", "quaternion_to_axis_angle", "quaternion_to_log_coordinates", "quaternion_to_matrix",
    "rand_angles", "rand_axis_angle", "rand_log_coordinates", "rand_matrix", "rand_quaternion",
    "rotation_angle_from_angles", "rotation_angle_from_axis_angle", "rotation_angle_from_log_coordinates",
    "rotation_angle_from_matrix", "rotation_angle_from_quaternion", "xyz_to_angles",
]

Angles = Tuple[jax.Array, jax.Array, jax.Array]
AxisAngle = Tuple[jax.Array, jax.Array]


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _as_shape(shape) -> Tuple[int, ...]:
    """Accept an int or a sequence of ints as a shape."""
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    try:
        return tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of non-negative integers, got {shape!r}") from None


def _length_and_direction(v: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """``(|v|, v / |v|)`` over the last axis; the zero vector gives ``(0, 0)``.

    The squared length is replaced by 1 where it vanishes before the square root, so that neither the value nor
    the gradient (of ``sqrt`` at 0) becomes ``nan``.
    """
    squared = jnp.sum(v * v, axis=-1)
    nonzero = squared > 0.0
    length = jnp.sqrt(jnp.where(nonzero, squared, 1.0))
    return jnp.where(nonzero, length, 0.0), v / length[..., None]


def _normalize(v: jax.Array) -> jax.Array:
    """Unit vectors along the last axis; the zero vector stays zero (and keeps finite gradients)."""
    return _length_and_direction(v)[1]


def _axial_vector(A: jax.Array) -> jax.Array:
    """The vector ``a`` with ``[a]_x = A - A^T`` (:func:`_cross_matrix` inverted on the antisymmetric part)."""
    antisymmetric = A - _transpose(A)
    return jnp.stack([antisymmetric[..., 2, 1], antisymmetric[..., 0, 2], antisymmetric[..., 1, 0]], axis=-1)


def _transpose(R: jax.Array) -> jax.Array:
    return jnp.swapaxes(R, -1, -2)


def _cross_matrix(v: jax.Array) -> jax.Array:
    """``[v]_x`` such that ``[v]_x u = v x u``; shape ``(..., 3, 3)``."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack(
        [jnp.stack([o, -z, y], -1), jnp.stack([z, o, -x], -1), jnp.stack([-y, x, o], -1)],
        axis=-2,
    )


def _rodrigues_coefficients(theta2: jax.Array) -> Tuple[jax.Array, jax.Array]:
    r""":math:`\sin\theta / \theta` and :math:`(1 - \cos\theta)/\theta^2` as smooth functions of :math:`\theta^2`.

    Near zero a Taylor series replaces the quotient; the double ``where`` keeps gradients finite at the identity.
    """
    threshold = float(np.sqrt(np.finfo(theta2.dtype).eps))
    small = theta2 < threshold
    safe = jnp.where(small, 1.0, theta2)
    theta = jnp.sqrt(safe)
    sinc = jnp.where(small, 1.0 - theta2 / 6.0 + theta2**2 / 120.0, jnp.sin(theta) / theta)
    # 2 sin^2(theta/2) rather than 1 - cos(theta): no cancellation for small angles
    versine = jnp.where(small, 0.5 - theta2 / 24.0 + theta2**2 / 720.0, 2.0 * jnp.sin(theta / 2) ** 2 / safe)
    return sinc, versine


def _float_array(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return x


def _trailing(x, shape: Tuple[int, ...], function: str, what: str) -> jax.Array:
    """``x`` as an array whose last axes are ``shape``; otherwise a ValueError naming the function and argument.

    Every function here reads components by index (``R[..., 0, 2]``, ``q[..., 1:]``), so a wrong trailing shape
    would not fail: it would give rotations of the wrong numbers.
    """
    x = jnp.asarray(x)
    if x.shape[-len(shape):] != shape:  # also for fewer axes than ``shape``: a shorter tuple differs
        expected = ", ".join(["..."] + [str(n) for n in shape])
        raise ValueError(f"{function}: {what} must have shape ({expected}), got an array of shape {x.shape}")
    return x


def _matrices(R, function: str) -> jax.Array:
    return _trailing(R, (3, 3), function, "rotation matrices")


def _quaternions(q, function: str, what: str = "quaternions") -> jax.Array:
    return _trailing(q, (4,), function, what)


def _vectors(v, function: str, what: str) -> jax.Array:
    return _trailing(v, (3,), function, what)


# ----------------------------------------------------------------------------------------------------------------
# matrix


def rand_matrix(key: jax.Array, shape=(), dtype=jnp.float32) -> jax.Array:
    r"""Haar-random rotation matrices of shape ``shape + (3, 3)`` (same draw as :func:`rand_angles`)."""
    return angles_to_matrix(*rand_angles(key, shape, dtype=dtype))


def rotation_angle_from_matrix(R: jax.Array) -> jax.Array:
    r"""Rotation angle in :math:`[0, \pi]` of matrices ``(..., 3, 3)``, from the trace; shape ``(...)``."""
    diagonal = jnp.diagonal(_matrices(R, "rotation_angle_from_matrix"), axis1=-2, axis2=-1)
    # tr R = 1 + 2 cos(angle); clip because rounding can push the cosine just outside [-1, 1]
    cos_angle = (diagonal[..., 0] + diagonal[..., 1] + diagonal[..., 2] - 1.0) / 2.0
    return jnp.arccos(jnp.clip(cos_angle, -1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# Euler angles


def identity_angles(shape=(), dtype=jnp.float32) -> Angles:
    r"""Euler angles ``(0, 0, 0)`` of shape ``shape``."""
    shape = _as_shape(shape)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def rand_angles(key: jax.Array, shape=(), dtype=jnp.float32) -> Angles:
    r"""Euler angles of Haar-random rotations, each of shape ``shape``.

    One uniform draw of shape ``(3,) + shape`` gives :math:`\alpha = 2\pi u_0`, :math:`\gamma = 2\pi u_1` and
    :math:`\beta = \arccos(2 u_2 - 1)` (uniform :math:`\cos\beta` makes the measure uniform on :math:`SO(3)`).
    """
    u = jax.random.uniform(key, (3,) + _as_shape(shape), dtype=dtype)
    alpha, gamma = 2 * jnp.pi * u[:2]  # uniform on the circle
    beta = jnp.arccos(2 * u[2] - 1)  # cos(beta) uniform in [-1, 1]: the Haar density is sin(beta) dbeta
    return alpha, beta, gamma


def compose_angles(a1, b1, c1, a2, b2, c2) -> Angles:
    r"""Euler angles of :math:`R(a_1, b_1, c_1)\, R(a_2, b_2, c_2)` (the second rotation is applied first)."""
    applied_second = angles_to_matrix(a1, b1, c1)
    applied_first = angles_to_matrix(a2, b2, c2)
    return matrix_to_angles(applied_second @ applied_first)  # matmul broadcasts the two batch shapes


def inverse_angles(a, b, c) -> Angles:
    r"""Euler angles of the inverse rotation: :math:`R(a, b, c)^{-1} = R(-c, -b, -a)`."""
    return -c, -b, -a


def rotation_angle_from_angles(a1, b1, c1, a2, b2, c2) -> jax.Array:
    r"""Angle in :math:`[0, \pi]` of the relative rotation :math:`R(a_1, b_1, c_1) R(a_2, b_2, c_2)^{-1}`."""
    R1, R2 = jnp.broadcast_arrays(angles_to_matrix(a1, b1, c1), angles_to_matrix(a2, b2, c2))
    return rotation_angle_from_matrix(R1 @ _transpose(R2))


# ----------------------------------------------------------------------------------------------------------------
# quaternions


def identity_quaternion(shape=(), dtype=jnp.float32) -> jax.Array:
    r"""The quaternion ``(1, 0, 0, 0)``, shape ``shape + (4,)``."""
    shape = _as_shape(shape)
    return jnp.broadcast_to(jnp.array([1, 0, 0, 0], dtype=dtype), shape + (4,))


def rand_quaternion(key: jax.Array, shape=(), dtype=jnp.float32) -> jax.Array:
    r"""Unit quaternions of Haar-random rotations, shape ``shape + (4,)`` (same draw as :func:`rand_angles`)."""
    return angles_to_quaternion(*rand_angles(key, shape, dtype))


def compose_quaternion(q1: jax.Array, q2: jax.Array) -> jax.Array:
    r"""Hamilton product :math:`q_1 q_2` of quaternions ``(..., 4)`` (the rotation :math:`q_2` is applied first)."""
    q1, q2 = _quaternions(q1, "compose_quaternion", "q1"), _quaternions(q2, "compose_quaternion", "q2")
    q1, q2 = jnp.broadcast_arrays(q1, q2)
    w1, v1 = q1[..., 0], q1[..., 1:]
    w2, v2 = q2[..., 0], q2[..., 1:]
    w = w1 * w2 - jnp.sum(v1 * v2, axis=-1)
    v = w1[..., None] * v2 + w2[..., None] * v1 + jnp.cross(v1, v2)
    return jnp.concatenate([w[..., None], v], axis=-1)


def inverse_quaternion(q: jax.Array) -> jax.Array:
    r"""Conjugate quaternion :math:`(w, -x, -y, -z)`, the inverse of a *unit* quaternion."""
    q = _quaternions(q, "inverse_quaternion")
    return jnp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def rotation_angle_from_quaternion(q1: jax.Array, q2: jax.Array) -> jax.Array:
    r"""Angle in :math:`[0, \pi]` of the rotation between unit quaternions ``q1`` and ``q2`` (sign-insensitive)."""
    function = "rotation_angle_from_quaternion"
    q1, q2 = jnp.broadcast_arrays(_quaternions(q1, function, "q1"), _quaternions(q2, function, "q2"))
    # <q1, q2> = +-cos(angle / 2) of the relative rotation; the sign is free since q and -q are the same rotation
    cos_half_angle = jnp.abs(jnp.sum(q1 * q2, axis=-1))
    return 2.0 * jnp.arccos(jnp.clip(cos_half_angle, -1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# axis-angle


def rand_axis_angle(key: jax.Array, shape=(), dtype=jnp.float32) -> AxisAngle:
    r"""Axis ``shape + (3,)`` and angle ``shape`` of Haar-random rotations (same draw as :func:`rand_angles`)."""
    return angles_to_axis_angle(*rand_angles(key, shape, dtype))


def compose_axis_angle(axis1, angle1, axis2, angle2) -> AxisAngle:
    r"""Axis-angle of the rotation ``(axis1, angle1)`` after ``(axis2, angle2)``; angle in :math:`[0, 2\pi]`."""
    axis1, axis2 = _vectors(axis1, "compose_axis_angle", "axis1"), _vectors(axis2, "compose_axis_angle", "axis2")
    return quaternion_to_axis_angle(
        compose_quaternion(axis_angle_to_quaternion(axis1, angle1), axis_angle_to_quaternion(axis2, angle2))
    )


def rotation_angle_from_axis_angle(axis1, angle1, axis2, angle2) -> jax.Array:
    r"""Angle in :math:`[0, \pi]` of the relative rotation between two axis-angle rotations."""
    function = "rotation_angle_from_axis_angle"
    axis1, axis2 = _vectors(axis1, function, "axis1"), _vectors(axis2, function, "axis2")
    return rotation_angle_from_quaternion(
        axis_angle_to_quaternion(axis1, angle1), axis_angle_to_quaternion(axis2, angle2)
    )


# ----------------------------------------------------------------------------------------------------------------
# log coordinates


def identity_log_coordinates(shape=(), dtype=jnp.float32) -> jax.Array:
    r"""Log coordinates ``(0, 0, 0)`` of the identity, shape ``shape + (3,)``."""
    return jnp.zeros(_as_shape(shape) + (3,), dtype=dtype)


def rand_log_coordinates(key: jax.Array, shape=(), dtype=jnp.float32) -> jax.Array:
    r"""Log coordinates ``shape + (3,)`` of Haar-random rotations (same draw as :func:`rand_angles`)."""
    return axis_angle_to_log_coordinates(*rand_axis_angle(key, shape, dtype))


def compose_log_coordinates(log1: jax.Array, log2: jax.Array) -> jax.Array:
    r"""Log coordinates of the rotation ``log1`` after ``log2`` (norm in :math:`[0, 2\pi]`)."""
    log1, log2 = _vectors(log1, "compose_log_coordinates", "log1"), _vectors(log2, "compose_log_coordinates", "log2")
    return quaternion_to_log_coordinates(
        compose_quaternion(log_coordinates_to_quaternion(log1), log_coordinates_to_quaternion(log2))
    )


def inverse_log_coordinates(log: jax.Array) -> jax.Array:
    r"""Log coordinates of the inverse rotation, ``-log``."""
    return -_vectors(log, "inverse_log_coordinates", "log coordinates")


def rotation_angle_from_log_coordinates(log1: jax.Array, log2: jax.Array) -> jax.Array:
    r"""Angle in :math:`[0, \pi]` of the relative rotation between two rotations in log coordinates."""
    function = "rotation_angle_from_log_coordinates"
    log1, log2 = _vectors(log1, function, "log1"), _vectors(log2, function, "log2")
    return rotation_angle_from_quaternion(log_coordinates_to_quaternion(log1), log_coordinates_to_quaternion(log2))


# ----------------------------------------------------------------------------------------------------------------
# conversions


def _elementary(angle, rows) -> jax.Array:
    """Stack a 3x3 matrix whose entries are picked from ``c = cos``, ``s = sin``, ``-s``, ``1`` and ``0``."""
    angle = jnp.asarray(angle)
    entries = {
        "c": jnp.cos(angle), "s": jnp.sin(angle), "-s": -jnp.sin(angle),
        "1": jnp.ones_like(angle), "0": jnp.zeros_like(angle),
    }
    return jnp.stack([jnp.stack([entries[e] for e in row], axis=-1) for row in rows], axis=-2)


def matrix_x(angle) -> jax.Array:
    r"""Rotation by ``angle`` about the x axis, shape ``(..., 3, 3)``."""
    return _elementary(angle, [["1", "0", "0"], ["0", "c", "-s"], ["0", "s", "c"]])


def matrix_y(angle) -> jax.Array:
    r"""Rotation by ``angle`` about the y axis, shape ``(..., 3, 3)``."""
    return _elementary(angle, [["c", "0", "s"], ["0", "1", "0"], ["-s", "0", "c"]])


def matrix_z(angle) -> jax.Array:
    r"""Rotation by ``angle`` about the z axis, shape ``(..., 3, 3)``."""
    return _elementary(angle, [["c", "-s", "0"], ["s", "c", "0"], ["0", "0", "1"]])


def angles_to_matrix(alpha, beta, gamma) -> jax.Array:
    r""":math:`R_y(\alpha) R_x(\beta) R_y(\gamma)`, shape ``(..., 3, 3)``."""
    alpha, beta, gamma = jnp.broadcast_arrays(alpha, beta, gamma)
    return matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)


def matrix_to_angles(R: jax.Array) -> Angles:
    r"""Euler angles of rotation matrices ``(..., 3, 3)``.

    :math:`(\alpha, \beta)` locate :math:`R e_y` on the sphere; :math:`\gamma` is read from the first row of
    :math:`R(\alpha, \beta, 0)^{-1} R = R_y(\gamma)`, which stays well conditioned at the poles
    (:math:`\beta = 0, \pi`).
    Not differentiable at rotation angle :math:`\pi` (nor at the poles, like any Euler-angle chart).
    """
    R = _matrices(R, "matrix_to_angles")
    alpha, beta = xyz_to_angles(R[..., :, 1])
    # First row of R(alpha, beta, 0)^T R: column 0 of R_y(alpha) R_x(beta) is (cos alpha, 0, -sin alpha).
    ca, sa = jnp.cos(alpha), jnp.sin(alpha)
    r00 = ca * R[..., 0, 0] - sa * R[..., 2, 0]
    r02 = ca * R[..., 0, 2] - sa * R[..., 2, 2]
    gamma = jnp.arctan2(r02, r00)
    return alpha, beta, gamma


def _axis_quaternion(angle: jax.Array, axis: int) -> jax.Array:
    """Quaternion of the rotation by ``angle`` about a coordinate axis (0, 1 or 2)."""
    zero = jnp.zeros_like(angle)
    vector = [zero, zero, zero]
    vector[axis] = jnp.sin(angle / 2)
    return jnp.stack([jnp.cos(angle / 2)] + vector, axis=-1)


def angles_to_quaternion(alpha, beta, gamma) -> jax.Array:
    r"""Unit quaternion ``(..., 4)`` of :math:`R_y(\alpha) R_x(\beta) R_y(\gamma)`."""
    alpha, beta, gamma = (_float_array(a) for a in jnp.broadcast_arrays(alpha, beta, gamma))
    qa = _axis_quaternion(alpha, 1)
    qb = _axis_quaternion(beta, 0)
    qc = _axis_quaternion(gamma, 1)
    return compose_quaternion(qa, compose_quaternion(qb, qc))


def matrix_to_quaternion(R: jax.Array) -> jax.Array:
    r"""Unit quaternion ``(..., 4)`` of rotation matrices, with non-negative scalar part."""
    return axis_angle_to_quaternion(*matrix_to_axis_angle(_matrices(R, "matrix_to_quaternion")))


def axis_angle_to_quaternion(xyz, angle) -> jax.Array:
    r"""Unit quaternion :math:`(\cos\frac\theta2, \hat n \sin\frac\theta2)`; the axis is normalised first."""
    xyz, angle = _vectors(xyz, "axis_angle_to_quaternion", "the axes"), jnp.asarray(angle)
    xyz, angle = jnp.broadcast_arrays(xyz, angle[..., None])
    return jnp.concatenate([jnp.cos(angle[..., :1] / 2), _normalize(xyz) * jnp.sin(angle / 2)], axis=-1)


def quaternion_to_axis_angle(q: jax.Array) -> AxisAngle:
    r"""Unit axis ``(..., 3)`` and angle in :math:`[0, 2\pi]` of quaternions; the identity has a zero axis."""
    q = _quaternions(q, "quaternion_to_axis_angle")
    # q = (cos(angle / 2), axis * sin(angle / 2))
    half_angle = jnp.arccos(jnp.clip(q[..., 0], -1, 1))
    return _normalize(q[..., 1:]), 2 * half_angle


def matrix_to_axis_angle(R: jax.Array) -> AxisAngle:
    r"""Unit axis ``(..., 3)`` and angle in :math:`[0, \pi]` of rotation matrices.

    The axis is the (normalised) vector of :math:`R - R^T`; it is inaccurate near angle :math:`\pi` and zero at
    exactly :math:`0` or :math:`\pi`. Not differentiable at angle :math:`\pi`.
    """
    R = _matrices(R, "matrix_to_axis_angle")
    # R - R^T = 2 sin(angle) [axis]_x, so its axial vector points along the axis (for 0 < angle < pi)
    return _normalize(_axial_vector(R)), rotation_angle_from_matrix(R)


def angles_to_axis_angle(alpha, beta, gamma) -> AxisAngle:
    r"""Axis-angle of :math:`R(\alpha, \beta, \gamma)` (through the matrix)."""
    return matrix_to_axis_angle(angles_to_matrix(alpha, beta, gamma))


def axis_angle_to_matrix(axis, angle) -> jax.Array:
    r"""Rotation matrix ``(..., 3, 3)`` by ``angle`` about ``axis`` (normalised first).

    Like e3nn-jax, a zero axis is read as the z axis.
    """
    axis, angle = _vectors(axis, "axis_angle_to_matrix", "the axes"), _float_array(angle)
    axis, angle = jnp.broadcast_arrays(axis, angle[..., None])
    axis = _normalize(axis)
    is_zero = jnp.all(axis == 0.0, axis=-1, keepdims=True)
    axis = jnp.where(is_zero, jnp.array([0.0, 0.0, 1.0], axis.dtype), axis)
    return log_coordinates_to_matrix(axis * angle)


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
    r"""Rotation matrix of quaternions ``(..., 4)``, through :func:`quaternion_to_axis_angle`."""
    return axis_angle_to_matrix(*quaternion_to_axis_angle(_quaternions(q, "quaternion_to_matrix")))


def quaternion_to_angles(q: jax.Array) -> Angles:
    r"""Euler angles of quaternions ``(..., 4)``."""
    return matrix_to_angles(quaternion_to_matrix(_quaternions(q, "quaternion_to_angles")))


def axis_angle_to_angles(axis, angle) -> Angles:
    r"""Euler angles of the rotation by ``angle`` about ``axis``."""
    return matrix_to_angles(axis_angle_to_matrix(_vectors(axis, "axis_angle_to_angles", "the axes"), angle))


def log_coordinates_to_matrix(log_coordinates: jax.Array) -> jax.Array:
    r""":math:`\exp([\omega]_\times)` for log coordinates :math:`\omega` of shape ``(..., 3)``; shape ``(..., 3, 3)``.

    Rodrigues' formula :math:`I + \frac{\sin\theta}{\theta} K + \frac{1 - \cos\theta}{\theta^2} K^2` with
    :math:`K = [\omega]_\times`, :math:`\theta = |\omega|`; smooth (with correct gradients) at :math:`\omega = 0`.
    """
    log_coordinates = _float_array(_vectors(log_coordinates, "log_coordinates_to_matrix", "log coordinates"))
    K = _cross_matrix(log_coordinates)
    sinc, versine = _rodrigues_coefficients(jnp.sum(log_coordinates**2, axis=-1))
    eye = jnp.eye(3, dtype=log_coordinates.dtype)
    return eye + sinc[..., None, None] * K + versine[..., None, None] * (K @ K)


def log_coordinates_to_axis_angle(log_coordinates: jax.Array) -> AxisAngle:
    r"""Unit axis ``(..., 3)`` (zero for the identity) and angle :math:`|\omega|` of log coordinates."""
    angle, axis = _length_and_direction(_vectors(log_coordinates, "log_coordinates_to_axis_angle", "log coordinates"))
    return axis, angle


def log_coordinates_to_quaternion(log_coordinates: jax.Array) -> jax.Array:
    r"""Unit quaternion :math:`(\cos\frac\theta2, \frac{\sin(\theta/2)}{\theta}\,\omega)` of log coordinates."""
    log_coordinates = _float_array(_vectors(log_coordinates, "log_coordinates_to_quaternion", "log coordinates"))
    half = log_coordinates / 2
    half_theta2 = jnp.sum(half**2, axis=-1)
    sinc, versine = _rodrigues_coefficients(half_theta2)
    # cos(t) = 1 - t^2 (1 - cos t) / t^2, exact also for small t
    cos = 1.0 - half_theta2 * versine
    return jnp.concatenate([cos[..., None], sinc[..., None] * half], axis=-1)


def log_coordinates_to_angles(log_coordinates: jax.Array) -> Angles:
    r"""Euler angles of log coordinates ``(..., 3)``."""
    return matrix_to_angles(log_coordinates_to_matrix(
        _vectors(log_coordinates, "log_coordinates_to_angles", "log coordinates")))


def axis_angle_to_log_coordinates(axis, angle) -> jax.Array:
    r"""``axis * angle`` (the axis is *not* normalised), shape ``(..., 3)``."""
    axis, angle = _vectors(axis, "axis_angle_to_log_coordinates", "the axes"), jnp.asarray(angle)
    axis, angle = jnp.broadcast_arrays(axis, angle[..., None])
    return axis * angle


def matrix_to_log_coordinates(R: jax.Array) -> jax.Array:
    r"""Log coordinates (norm in :math:`[0, \pi]`) of rotation matrices ``(..., 3, 3)``."""
    return axis_angle_to_log_coordinates(*matrix_to_axis_angle(_matrices(R, "matrix_to_log_coordinates")))


def angles_to_log_coordinates(alpha, beta, gamma) -> jax.Array:
    r"""Log coordinates of :math:`R(\alpha, \beta, \gamma)`."""
    return axis_angle_to_log_coordinates(*angles_to_axis_angle(alpha, beta, gamma))


def quaternion_to_log_coordinates(q: jax.Array) -> jax.Array:
    r"""Log coordinates (norm in :math:`[0, 2\pi]`) of quaternions ``(..., 4)``."""
    return axis_angle_to_log_coordinates(*quaternion_to_axis_angle(_quaternions(q, "quaternion_to_log_coordinates")))


# ----------------------------------------------------------------------------------------------------------------
# points on the sphere


def angles_to_xyz(alpha, beta) -> jax.Array:
    r"""Point :math:`R(\alpha, \beta, 0)\, e_y = (\sin\beta \sin\alpha, \cos\beta, \sin\beta \cos\alpha)`."""
    alpha, beta = jnp.broadcast_arrays(alpha, beta)
    sb = jnp.sin(beta)
    return jnp.stack([sb * jnp.sin(alpha), jnp.cos(beta), sb * jnp.cos(alpha)], axis=-1)


def xyz_to_angles(xyz: jax.Array) -> Tuple[jax.Array, jax.Array]:
    r""":math:`(\alpha, \beta)` such that :math:`\hat r = R(\alpha, \beta, 0)\, e_y`, for vectors ``(..., 3)``.

    :math:`\alpha = \operatorname{atan2}(x, z) \in (-\pi, \pi]` and :math:`\beta = \arccos y \in [0, \pi]` of the
    normalised vector. On the y axis :math:`\alpha = 0` and :math:`\beta` is exactly :math:`0` or :math:`\pi`; the
    zero vector gives :math:`(0, \pi/2)`. Singular inputs are masked so that gradients stay finite.
    """
    xyz = jnp.clip(_normalize(_vectors(xyz, "xyz_to_angles", "the vectors")), -1, 1)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    on_axis = (x == 0.0) & (z == 0.0)
    alpha = jnp.arctan2(jnp.where(on_axis, 0.0, x), jnp.where(on_axis, 1.0, z))
    beta = jnp.where(y == 1.0, 0.0, jnp.where(y == -1.0, jnp.pi, jnp.arccos(jnp.where(on_axis, 0.0, y))))
    return alpha, beta
