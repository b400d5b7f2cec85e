"""Spherical harmonics at high degree: float32 accuracy per degree, and the cost of an l = 500 gradient.

Run from the repository root: ``python -m bench.spherical_harmonics_stability``.  Prints, for a few degrees ``l``,
the largest relative error :math:`\\|Y^l_{ours} - Y^l_{exact}\\| / \\|Y^l_{exact}\\|` over random directions and over
directions at and near the poles (``±y``), with the exact values from scipy's orthonormal harmonics in float64 at
the float32 inputs; then the time to jit-compile and run ``jax.grad`` of the sum of the ``l = 500`` harmonics of
four vectors (reference executor), and a second, cached run.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from e3nn_fast.reference.spherical_harmonics import spherical_harmonics_per_l

DEGREES = (1, 10, 50, 100, 150, 185, 200, 250, 300)


def exact_harmonics(l: int, u: np.ndarray) -> np.ndarray:
    """Our convention (``y`` polar, no Condon-Shortley phase, ``component``) from scipy, float64."""
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    beta = np.arctan2(np.hypot(u[:, 0], u[:, 2]), u[:, 1])
    alpha = np.arctan2(u[:, 0], u[:, 2])
    m = np.arange(l + 1)
    c = scipy.special.sph_harm_y(l, m[:, None], beta[None, :], alpha[None, :]) * (np.sqrt(4 * np.pi) * (-1.0) ** m)[:, None]
    out = np.empty((len(u), 2 * l + 1))
    out[:, l] = c[0].real
    out[:, l + 1 :] = np.sqrt(2) * c[1:].real.T
    out[:, :l] = np.sqrt(2) * c[1:].imag.T[:, ::-1]
    return out


def directions():
    """40 random directions, then the poles and directions 0.3 ... 1e-6 rad from them."""
    random = np.random.RandomState(0).randn(40, 3)
    polar = [[a * math.sin(1.1), pole, a * math.cos(1.1)] for a in (0.3, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0) for pole in (1, -1)]
    return np.concatenate([random, np.array(polar)]).astype(np.float32), 40


def accuracy_table():
    x, n_random = directions()
    ys = jax.jit(lambda v: spherical_harmonics_per_l(DEGREES, v, True, "component"))(x)
    print("   l  max rel. error (random)  max rel. error (at/near ±y)")
    for l, y in zip(DEGREES, ys):
        exact = exact_harmonics(l, x.astype(np.float64))
        error = np.linalg.norm(np.asarray(y, np.float64) - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
        error = np.where(np.isfinite(error), error, np.inf)
        print(f"{l:4d}  {error[:n_random].max():23.2e}  {error[n_random:].max():27.2e}")


def gradient_time(l: int = 500, n: int = 4):
    x = jnp.asarray(np.random.RandomState(1).randn(n, 3), jnp.float32)
    f = jax.jit(jax.grad(lambda v: jnp.sum(spherical_harmonics_per_l([l], v, True, "component")[0])))
    start = time.perf_counter()
    g = f(x).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    f(x).block_until_ready()
    again = time.perf_counter() - start
    print(f"grad of sum(Y^{l}) of {n} vectors: compile + run {first:.2f} s, cached run {again * 1e3:.1f} ms, "
          f"finite: {bool(np.isfinite(np.asarray(g)).all())}")


if __name__ == "__main__":
    accuracy_table()
    gradient_time()
