"""Signals on SO(3) (e3nn_fast.so3grid.SO3Signal) against e3nn-jax 0.21, plus Haar-measure properties.

Every computation runs inside one ``jax.jit`` per implementation and case: eager dispatch compiles each small op
separately, which would make this file slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast.rotation import rand_matrix
from e3nn_fast.s2grid import SphericalSignal
from e3nn_fast.so3grid import SO3Signal

e3nn_jax = pytest.importorskip("e3nn_jax")

TOL = {jnp.float64: 1e-10, jnp.float32: 2e-5}
RES = (6, 7, 9)  # res_beta, res_alpha, res_theta: small, the parity tests compare grid by grid
NUM = 7  # batch size of _mixed

# generic (non-symmetric) so that the maximum of trace(A R) is a single rotation away from the grid's duplicates
_A = np.array([[0.4, 0.2, -0.1], [-0.3, 0.1, 0.5], [0.2, -0.6, 0.3]], np.float32)


def _scalar(R):
    return jnp.exp(jnp.trace(_A @ R))


def _mixed(R):  # batch shape (7,): one generic scalar (unique maximum) and entries of R (many ties)
    return jnp.concatenate([_scalar(R)[None], R[0], R[1] ** 2])


def _everything(cls, dtype, key, with_sample=True):
    """All the public computations of an SO3Signal class on the "soft" grid, as a dict of arrays."""
    s = cls.from_function(_mixed, *RES, "soft", dtype=dtype)
    rot, idx = s.argmax()
    pos = s.apply(jnp.exp)
    out = {
        "values": s.grid_values,
        "integral": s.integrate(),
        "over_angles": s.integrate_over_angles().grid_values,
        "argmax_rot": rot,
        "argmax_idx": jnp.stack(idx),
        "mul": (pos * 2.0).grid_values,
        "rmul": (3.0 * pos).grid_values,
        "neg": (-pos).grid_values,
        "div": (pos / 4.0).grid_values,
        "mul_signal": (pos * pos).grid_values,
        "div_signal": (pos / pos.apply(jnp.sqrt)).grid_values,
        "grid_theta": s.grid_theta,
        "batch_dims": jnp.array(s.batch_dims),
        "resolution": jnp.array(s.grid_resolution + (s.res_theta, s.res_beta, s.res_alpha)),
    }
    if with_sample:
        first = cls(pos.s2_signals[0])  # unbatched: e3nn-jax can only sample those
        out["sample"] = first.apply(lambda x: x**4).sample(key)
    return out


_KEY = jax.random.PRNGKey(3)


@pytest.fixture(scope="module")
def reference():
    # e3nn-jax evaluates func in float64 whatever `dtype` (under x64), so one float64 reference serves both cases
    return jax.jit(lambda k: _everything(e3nn_jax.SO3Signal, jnp.float64, k))(_KEY)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_matches_e3nn(reference, dtype):
    tol = TOL[dtype]
    ref = reference
    with_sample = dtype == jnp.float64  # a float32 density draws differently from a float64 one
    ours = jax.jit(lambda k: _everything(SO3Signal, dtype, k, with_sample))(_KEY)

    assert ours["values"].shape == (NUM,) + RES[2:] + RES[:2]
    for name in ("values", "integral", "over_angles", "argmax_rot", "mul", "div_signal"):
        assert ours[name].dtype == dtype, name
    for name in ("values", "integral", "mul", "rmul", "neg", "div", "mul_signal", "div_signal", "grid_theta"):
        assert ours[name].shape == ref[name].shape, name
        np.testing.assert_allclose(ours[name], ref[name], rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(ours["over_angles"], ref["over_angles"], rtol=tol, atol=10 * tol)
    for name in ("batch_dims", "resolution"):
        np.testing.assert_array_equal(ours[name], ref[name])

    # the generic scalar has a single maximum: same grid point and rotation
    np.testing.assert_array_equal(ours["argmax_idx"][:, 0], ref["argmax_idx"][:, 0])
    np.testing.assert_allclose(ours["argmax_rot"][0], ref["argmax_rot"][0], atol=tol)
    # the other entries tie on several grid points (theta = 0 and 2 pi, ...): any of them is a maximum
    values, batch = ours["values"], np.arange(NUM)
    np.testing.assert_allclose(
        values[(batch,) + tuple(ours["argmax_idx"])], values[(batch,) + tuple(ref["argmax_idx"])], rtol=tol
    )
    rot = ours["argmax_rot"]
    np.testing.assert_allclose(jnp.einsum("bij,bkj->bik", rot, rot), np.broadcast_to(np.eye(3), (NUM, 3, 3)), atol=tol)

    if with_sample:  # same key, same draw
        np.testing.assert_allclose(ours["sample"], ref["sample"], atol=tol)


@jax.jit
def _haar_checks():
    res = (10, 11, 20)

    def integrate(f):
        return SO3Signal.from_function(f, *res, "gausslegendre", dtype=jnp.float64).integrate()

    R0 = rand_matrix(jax.random.PRNGKey(1), (), dtype=jnp.float64)
    return {
        "one": integrate(lambda R: 1.0 + 0.0 * R[0, 0]),
        "chi1": integrate(jnp.trace),
        "chi1_squared": integrate(lambda R: jnp.trace(R) ** 2),
        "f": integrate(_scalar),
        "f_rotated": integrate(lambda R: _scalar(R0 @ R)),
    }


def test_haar_measure():
    out = _haar_checks()
    np.testing.assert_allclose(out["one"], 1.0, atol=1e-12)
    # characters of irreducible representations: <chi_1> = 0, <chi_1^2> = 1
    np.testing.assert_allclose(out["chi1"], 0.0, atol=1e-10)
    np.testing.assert_allclose(out["chi1_squared"], 1.0, atol=1e-10)
    # left invariance of the measure: int f(R0 R) dR = int f(R) dR
    np.testing.assert_allclose(out["f_rotated"], out["f"], rtol=1e-7)


def test_argmax_sample_batched_and_pytree():
    R0 = np.asarray(rand_matrix(jax.random.PRNGKey(2), (), dtype=jnp.float64))

    @jax.jit
    def run(key):
        sig = SO3Signal.from_function(lambda R: -jnp.sum((R - R0) ** 2), 8, 9, 16, "soft", dtype=jnp.float64)
        # batched signals (e3nn-jax only samples unbatched ones): each element from its own density
        density = sig.apply(jnp.exp)
        batched = density.replace_values(jnp.stack([density.grid_values, density.grid_values[::-1]]))
        return sig, sig.argmax(), batched.sample(key)

    # a jitted function can return SO3Signals (it is a pytree)
    peak, (R, idx), Rs = run(jax.random.PRNGKey(0))
    assert isinstance(peak, SO3Signal) and peak.shape == (16, 8, 9)
    values = np.asarray(peak.grid_values)
    np.testing.assert_allclose(values[tuple(np.asarray(i) for i in idx)], values.max())
    assert np.sum((np.asarray(R) - R0) ** 2) < 1.0  # the grid is coarse, but its best point is close to R0
    Rs = np.asarray(Rs)
    assert Rs.shape == (2, 3, 3)
    np.testing.assert_allclose(np.einsum("bij,bkj->bik", Rs, Rs), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-12)
    assert "SO3Signal" in repr(peak)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 3 axes"):
        SO3Signal(SphericalSignal(np.zeros((4, 5)), "soft"))
    with pytest.raises(TypeError, match="SphericalSignal"):
        SO3Signal(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="quadrature must be"):
        SO3Signal.from_function(_scalar, 4, 5, 6, "trapezoid")
    with pytest.raises(ValueError, match="res_theta must be positive"):
        SO3Signal.from_function(_scalar, 4, 5, 0, "soft")
    with pytest.raises(TypeError, match="res_beta must be an int"):
        SO3Signal.from_function(_scalar, 4.0, 5, 6, "soft")
    s = SO3Signal(SphericalSignal(np.zeros((3, 4, 5)), "soft"))
    t = SO3Signal(SphericalSignal(np.zeros((2, 3, 4, 5)), "soft"))
    with pytest.raises(ValueError, match="have different shapes"):
        s * t
    with pytest.raises(ValueError, match="have different shapes"):
        s / t
    with pytest.raises(ValueError, match="res_theta >= 2"):
        SO3Signal(SphericalSignal(np.zeros((1, 4, 5)), "soft")).integrate()
