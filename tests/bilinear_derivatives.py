"""Shared check for the jnp executor's bilinear forms (stage B, the channel mix): first and second derivatives of a
non-linear loss through the form against the same through a plain einsum."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_derivatives_match(ours, reference, a, b, cotangent, tolerance=1e-10):
    """Gradients w.r.t. each operand, forward over reverse (``jax.hessian``'s order) and reverse over reverse (what
    force training does) of ``sum(f(a, b) * cotangent) ** 2``, for ``f = ours`` against ``f = reference``."""

    def loss(f):
        return lambda a, b: jnp.sum(f(a, b) * cotangent) ** 2  # not linear: second order is non-zero

    for argnum in (0, 1):
        got = jax.jit(jax.grad(loss(ours), argnums=argnum))(a, b)
        want = jax.grad(loss(reference), argnums=argnum)(a, b)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    direction = (jnp.ones_like(a), jnp.full_like(b, 0.5))
    got = jax.jit(lambda *x: jax.jvp(jax.grad(loss(ours), argnums=(0, 1)), x, direction)[1])(a, b)
    want = jax.jvp(jax.grad(loss(reference), argnums=(0, 1)), (a, b), direction)[1]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance)
    got = jax.jit(jax.grad(lambda a, b: jnp.sum(jax.grad(loss(ours))(a, b) ** 2), argnums=1))(a, b)
    want = jax.grad(lambda a, b: jnp.sum(jax.grad(loss(reference))(a, b) ** 2), argnums=1)(a, b)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
