r"""Associated Legendre functions, evaluated by stable recurrences (mirrors ``e3nn_jax.legendre``).

e3nn-jax evaluates these through ``jax.scipy.special.lpmn_values`` (deprecated, and its derivative is not finite at
:math:`x = \pm 1`).  Here they come from the classical three-term recurrence of the *normalised* functions

.. math::

    \bar P_m^m = d_m (1 - x^2)^{m/2}, \qquad
    \bar P_l^m = a_{lm} \left(x \bar P_{l-1}^m - \bar P_{l-2}^m / a_{l-1,m}\right), \qquad
    a_{lm} = \sqrt{\frac{4l^2 - 1}{l^2 - m^2}},

whose constants are numpy arrays computed once per ``lmax``.  :math:`\sqrt{1 - x^2}` is evaluated with a guarded
square root, so values and first derivatives stay finite on the poles (the derivative of the ``m = 1`` terms, which
is infinite there, is reported as 0 instead of ``inf``).

Layout and sign conventions are e3nn-jax's: arrays ``[l, m, ...]`` for ``0 <= m <= lmax`` (zero where ``m > l``),
and ``phase`` multiplies each function by ``phase**m`` relative to the functions *without* the Condon-Shortley
phase (so ``phase=-1`` gives scipy's ``lpmv`` convention).
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["legendre", "legendre_spherical_harmonics"]


@functools.lru_cache(maxsize=None)
def _recurrence_constants(lmax: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Float64 constants of the normalised recurrence, each of shape ``(lmax + 1, lmax + 1)`` indexed ``[l, m]``.

    Returns ``(a, b, d)``: ``a[l, m]`` multiplies :math:`x \bar P_{l-1}^m`, ``b[l, m]`` multiplies
    :math:`\bar P_{l-2}^m` (both zero unless the term exists), and ``d[l, m]`` is :math:`d_l` on the diagonal
    ``m == l`` (the seed :math:`\bar P_l^l / (1-x^2)^{l/2}`) and zero elsewhere.
    """
    l = np.arange(lmax + 1, dtype=np.float64)[:, None]
    m = np.arange(lmax + 1, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(m < l, np.sqrt((4 * l**2 - 1) / (l**2 - m**2)), 0.0)
        a_prev = np.sqrt((4 * (l - 1) ** 2 - 1) / ((l - 1) ** 2 - m**2))
        b = np.where(m < l - 1, a / a_prev, 0.0)
    diagonal = np.empty(lmax + 1)
    diagonal[0] = 1.0 / np.sqrt(4 * np.pi)
    for k in range(1, lmax + 1):
        diagonal[k] = diagonal[k - 1] * np.sqrt((2 * k + 1) / (2 * k))
    return a, b, np.diag(diagonal)


@functools.lru_cache(maxsize=None)
def _unnormalization(lmax: int) -> np.ndarray:
    r"""``[l, m]`` factors :math:`\sqrt{4\pi (l+m)! / ((2l+1)(l-m)!)}` turning :math:`\bar P_l^m` into :math:`P_l^m`."""
    out = np.zeros((lmax + 1, lmax + 1))
    for l in range(lmax + 1):
        for m in range(l + 1):
            # summing logs keeps the factorial ratio (l+m)!/(l-m)! finite for large l
            log_ratio = np.sum(np.log(np.arange(l - m + 1, l + m + 1, dtype=np.float64)))
            out[l, m] = np.sqrt(4 * np.pi / (2 * l + 1)) * np.exp(0.5 * log_ratio)
    return out


def _safe_sine(x, xp):
    r""":math:`\sqrt{1 - x^2}`, zero (with zero derivative) where ``|x| >= 1`` so autodiff never meets ``1/0``."""
    t = 1 - x * x
    positive = t > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, t, xp.ones_like(t))), xp.zeros_like(t))


def normalized_legendre_table(lmax: int, x, xp=jnp):
    r"""Normalised functions :math:`\bar P_l^m(x)` without Condon-Shortley phase, shape ``(lmax + 1, lmax + 1, *x.shape)``.

    ``xp`` is ``jax.numpy`` (traced, differentiable) or ``numpy`` (float64 constants, e.g. for fixed grids).
    Normalisation: :math:`\int_{-1}^1 (\bar P_l^m)^2 dx = (2 - \delta_{m0})^{-1} \cdot 1/(2\pi)`, i.e. the
    ``m``-part of a complex spherical harmonic with unit :math:`L^2` norm on the sphere.
    """
    a, b, d = (xp.asarray(c, dtype=x.dtype) for c in _recurrence_constants(lmax))
    expand = (slice(None),) + (None,) * x.ndim  # broadcast an ``m`` vector over x's shape
    sine = _safe_sine(x, xp)
    sine_power = xp.ones_like(x)  # (1 - x^2)^{l/2}, built up one factor per degree
    rows = [d[0][expand] * sine_power]
    for l in range(1, lmax + 1):
        sine_power = sine_power * sine
        row = a[l][expand] * x * rows[l - 1] + d[l][expand] * sine_power
        if l >= 2:
            row = row - b[l][expand] * rows[l - 2]
        rows.append(row)
    return xp.stack(rows, axis=0)


def legendre(lmax: int, x: jax.Array, phase: float, is_normalized: bool = False) -> jax.Array:
    r"""Associated Legendre functions :math:`P_l^m(x)` for ``0 <= l, m <= lmax``.

    Args:
        lmax: largest degree.
        x: points in :math:`[-1, 1]`, any shape ``(...)``.
        phase: each :math:`P_l^m` is multiplied by ``phase**m`` relative to the functions without the
            Condon-Shortley phase (``-1`` gives the Condon-Shortley convention).
        is_normalized: ``True`` for :math:`\sqrt{\frac{2l+1}{4\pi}\frac{(l-m)!}{(l+m)!}} P_l^m`.

    Returns:
        Array ``P[l, m, ...]``: the two leading axes (each of length ``lmax + 1``) run over degree and order, the
        rest follows ``x``; entries with ``m > l`` are zero.
    """
    if not isinstance(lmax, (int, np.integer)) or lmax < 0:
        raise ValueError(f"legendre: lmax must be a non-negative integer, got {lmax!r}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return _legendre(int(lmax), x, phase, bool(is_normalized))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _legendre(lmax: int, x: jax.Array, phase, is_normalized: bool) -> jax.Array:
    """Jitted body of :func:`legendre` (one compilation per degree, shape and dtype instead of one per op)."""
    p = normalized_legendre_table(lmax, x)
    expand = (slice(None), slice(None)) + (None,) * x.ndim
    if not is_normalized:
        p = p * jnp.asarray(_unnormalization(lmax), x.dtype)[expand]
    phases = jnp.asarray(phase, x.dtype) ** jnp.arange(lmax + 1, dtype=x.dtype)
    return p * phases[None, :][expand]


def _sh_alpha(l: int, alpha: jax.Array) -> jax.Array:
    r"""Azimuthal factors of the real spherical harmonics, shape ``(..., 2l + 1)`` ordered ``m = -l..l``.

    :math:`\sqrt2 \sin(|m|\alpha)` for ``m < 0``, ``1`` for ``m = 0``, :math:`\sqrt2 \cos(m\alpha)` for ``m > 0``.
    """
    alpha = jnp.asarray(alpha)[..., None]
    m = jnp.arange(-l, l + 1, dtype=alpha.dtype)
    root2 = jnp.sqrt(2.0)
    factors = jnp.where(m < 0, root2 * jnp.sin(-m * alpha), jnp.where(m > 0, root2 * jnp.cos(m * alpha), 1.0))
    return factors.astype(alpha.dtype)


def _sh_beta(lmax: int, cos_betas: jax.Array) -> jax.Array:
    r"""Polar factors :math:`\bar P_l^{|m|}(\cos\beta)`, shape ``(..., lmax + 1, lmax + 1)`` indexed ``[..., l, m]``."""
    p = legendre(lmax, cos_betas, phase=1.0, is_normalized=True)
    return jnp.moveaxis(jnp.moveaxis(p, 0, -1), 0, -1)


@functools.lru_cache(maxsize=None)
def _flat_lm(lmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(l, m)`` of each entry of a flat ``(lmax + 1)**2`` spherical-harmonics vector (``m = -l..l`` per ``l``)."""
    ls = np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])
    ms = np.concatenate([np.arange(-l, l + 1) for l in range(lmax + 1)])
    return ls, ms


def legendre_spherical_harmonics(lmax: int, x: jax.Array, normalize: bool, normalization: str) -> jax.Array:
    """See :func:`_legendre_spherical_harmonics` (argument checks here, jitted body there)."""
    if normalization not in ("integral", "component", "norm"):
        raise ValueError(f"normalization must be 'integral', 'component' or 'norm', got {normalization!r}.")
    x = jnp.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"legendre_spherical_harmonics expects vectors of shape (..., 3), got {x.shape}.")
    return _legendre_spherical_harmonics(int(lmax), x, bool(normalize), normalization)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _legendre_spherical_harmonics(lmax: int, x: jax.Array, normalize: bool, normalization: str) -> jax.Array:
    r"""Real spherical harmonics of vectors ``x`` (``(..., 3)``) up to ``lmax``, built from Legendre functions.

    Same layout and conventions as the rest of the library (polar axis ``y``, azimuth ``atan2(x, z)``); returns a
    plain array ``(..., (lmax + 1)**2)``.  ``normalization`` is ``"integral"``, ``"component"`` or ``"norm"``; with
    ``normalize=False`` the degree-``l`` block is scaled by :math:`|x|^l`.
    """
    ls, ms = _flat_lm(lmax)
    alpha = jnp.arctan2(x[..., 0], x[..., 2])
    sh_alpha = _sh_alpha(lmax, alpha)[..., lmax + ms]  # [..., (lmax+1)^2]
    n = jnp.linalg.norm(x, axis=-1, keepdims=True)
    unit = x / jnp.where(n > 0, n, 1.0)
    sh_y = _sh_beta(lmax, unit[..., 1])[..., ls, np.abs(ms)]  # [..., (lmax+1)^2]
    scale = np.ones(len(ls))
    if normalization == "norm":
        scale = np.sqrt(4 * np.pi) / np.sqrt(2 * ls + 1)
    elif normalization == "component":
        scale = np.full(len(ls), np.sqrt(4 * np.pi))
    out = sh_y * sh_alpha * jnp.asarray(scale, x.dtype)
    if not normalize:
        out = out * n ** jnp.asarray(ls, x.dtype)
    return out
