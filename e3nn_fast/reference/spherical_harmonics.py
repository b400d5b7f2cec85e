r"""Real spherical harmonics in e3nn's convention, as homogeneous polynomials evaluated with recurrences.

Convention (identical to e3nn-jax, sign for sign):

* ``y`` is the polar axis and the azimuth is measured in the ``z, x`` plane: for
  :math:`(x, y, z) = r(\sin\beta \sin\alpha,\ \cos\beta,\ \sin\beta \cos\alpha)` the component ``m`` of
  :math:`Y^l` (stored at index ``l + m``, ``m = -l..l``) is

  .. math::

      Y^l_m = K_{l|m|}\, P_l^{|m|}(\cos\beta)\ \times
      \begin{cases} \sin(|m|\alpha) & m < 0 \\ 1 & m = 0 \\ \cos(m\alpha) & m > 0 \end{cases}

  with :math:`P_l^m` the associated Legendre functions *without* the Condon-Shortley phase, and
  :math:`K_{lm} = \sqrt{(2l+1)(l-m)!/(l+m)!}` (times :math:`\sqrt2` when :math:`m > 0`).  With that choice
  :math:`Y^1 = \sqrt3\,(x, y, z)`: the ``l = 1`` basis is the Cartesian one.
* Normalisations: ``"component"`` (the one above): :math:`\|Y^l\|^2 = 2l+1` on the unit sphere; ``"norm"``:
  :math:`\|Y^l\| = 1`; ``"integral"``: :math:`\int_{S^2} (Y^l_m)^2 = 1`.

Evaluation.  Multiplying by :math:`r^l` turns each function into a homogeneous polynomial of degree ``l``:

* the azimuthal factor :math:`r^m \sin^m\beta\, (\cos m\alpha + i \sin m\alpha) = (z + i x)^m` is built by repeated
  complex multiplication;
* the remaining factor :math:`q_l^m = K_{lm} r^{l-m} P_l^m(\cos\beta) / \sin^m\beta` is a polynomial in ``y`` and
  :math:`r^2`, obtained with the classical three-term recurrence in ``l`` (vectorised over ``m``) whose coefficients
  are precomputed in numpy for the *normalised* functions, so intermediate values stay of order one.

The recurrences run as one ``lax.scan`` step per ``l`` (a handful of elementwise operations), so the program
traces and compiles quickly for any ``l`` and involves no symbolic algebra.  Derivatives do not go through the loop:
the derivative of a solid harmonic of degree ``l`` is a fixed combination of those of degree ``l - 1`` (ladder
relations, :func:`derivative_coefficients`), which a ``jax.custom_jvp`` applies to the harmonics themselves.  That
rule is again differentiable through itself, so ``grad``, ``jacfwd``, ``hessian``, ... work to any order at the cost
of a few elementwise operations per order.

``normalize=True`` first divides the input by its norm (the zero vector is left as is, so its value is ``Y^0`` and
zeros, with finite derivatives); the polynomials are then evaluated with the actual :math:`r^2` of the divided
vector, so the result is exactly the polynomial restricted to the sphere.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZATIONS = ("component", "norm", "integral")


# ----------------------------------------------------------------------------------------------------------------
# numpy-precomputed constants
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def legendre_recurrence_coefficients(lmax: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Coefficients of the normalised homogeneous Legendre recurrence, laid out over ``m = -lmax..lmax``.

    The step ``l - 1, l - 2 -> l`` reads, for every ``m`` at once (index ``lmax + m``),

    .. math:: q_l^m = a_{lm}\, y\, q_{l-1}^m - b_{lm}\, r^2 q_{l-2}^m + e_{lm},

    where :math:`a_{lm}, b_{lm}` are the classical three-term coefficients for :math:`|m| < l` and zero otherwise,
    and :math:`e_{lm}` is the constant diagonal term :math:`q_l^{\pm l}` (zero for :math:`|m| \neq l`).  Storing
    the factors mirrored in ``m`` means :math:`Y^l` is a contiguous slice: no gather, no concatenation per step.

    Returns:
        ``(a, b, e)``, float64 arrays of shape ``(lmax + 1, 2 lmax + 1)`` (row ``l``; row 0 is unused by the
        recurrence but ``e[0]`` holds :math:`q_0^0 = 1`).
    """
    m = np.abs(np.arange(-lmax, lmax + 1)).astype(np.float64)
    a = np.zeros((lmax + 1, 2 * lmax + 1))
    b = np.zeros((lmax + 1, 2 * lmax + 1))
    e = np.zeros((lmax + 1, 2 * lmax + 1))
    e[0, lmax] = 1.0
    diagonal = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for l in range(1, lmax + 1):
            a[l] = np.where(m < l, np.sqrt((2 * l + 1) * (2 * l - 1) / ((l - m) * (l + m))), 0.0)
            # b vanishes for |m| = l - 1 (q_{l-2}^{l-1} does not exist) and has a harmless 0/0 there at l = 1.
            b_lm = np.sqrt((2 * l + 1) * (l + m - 1) * (l - m - 1) / ((2 * l - 3) * (l - m) * (l + m)))
            b[l] = np.where(m < l - 1, b_lm, 0.0)
            # q_l^l / q_{l-1}^{l-1}; the sqrt(2) of every m != 0 (from the real combination) enters once, at l = 1.
            diagonal *= math.sqrt((2 * l + 1) / (2 * l)) * (math.sqrt(2.0) if l == 1 else 1.0)
            e[l] = np.where(m == l, diagonal, 0.0)
    return a, b, e


def normalization_factor(l: int, normalization: str) -> float:
    """Scale turning ``component``-normalised :math:`Y^l` into the requested normalisation."""
    if normalization == "component":
        return 1.0
    if normalization == "norm":
        return 1.0 / math.sqrt(2 * l + 1)
    if normalization == "integral":
        return 1.0 / math.sqrt(4 * math.pi)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _solid_harmonic_scale(l: int, m: int) -> Fraction:
    r"""Square of :math:`A_{lm} = \sqrt{(2l+1)(l-m)!(l+m)!}` (times :math:`\sqrt 2` for :math:`m > 0`), exactly.

    With it, ``component``-normalised :math:`Y^l_{\pm m} = A_{lm}\,\{\operatorname{Re}, \operatorname{Im}\}\,
    S_l^m` where :math:`S_l^m = r^l P_l^m(\cos\beta) e^{i m \alpha} / (l+m)!` are the solid harmonics whose
    derivatives are the simple ladder relations used in :func:`derivative_coefficients`.
    """
    return Fraction((2 * l + 1) * math.factorial(l - m) * math.factorial(l + m) * (2 if m > 0 else 1))


def _ratio(l: int, m: int, m_in: int) -> float:
    """:math:`A_{lm} / A_{l-1, m_{in}}`, or 0 when :math:`Y^{l-1}` has no component :math:`m_{in}`."""
    if not 0 <= m_in <= l - 1:
        return 0.0
    return math.sqrt(_solid_harmonic_scale(l, m) / _solid_harmonic_scale(l - 1, m_in))


@functools.lru_cache(maxsize=None)
def derivative_coefficients(lmax: int, normalization: str) -> Tuple[np.ndarray, ...]:
    r"""Constants of :math:`\partial_k Y^l` as a combination of the neighbours of :math:`Y^{l-1}`.

    Derivatives of solid harmonics are again solid harmonics, one degree lower (with :math:`w = z + i x`, the
    polar axis ``y`` and no Condon-Shortley phase): :math:`\partial_y S_l^m = S_{l-1}^m`,
    :math:`(\partial_z - i \partial_x) S_l^m = S_{l-1}^{m-1}` and :math:`(\partial_z + i \partial_x) S_l^m =
    -S_{l-1}^{m+1}`.  Taking real and imaginary parts, in the padded layout (index ``j = lmax + m``) of
    :func:`stacked_harmonics`:

    * :math:`\partial_y Y^l[j] = c_y[l, j]\, Y^{l-1}[j]`;
    * :math:`\partial_z Y^l[j] = l_z[l, j]\, Y^{l-1}[j-1] + r_z[l, j]\, Y^{l-1}[j+1]`;
    * :math:`\partial_x Y^l[j] = l_x[l, j]\, \bar Y^{l-1}[j-1] + r_x[l, j]\, \bar Y^{l-1}[j+1]`, where
      :math:`\bar Y[j] = Y[2 l_{max} - j]` is mirrored in ``m`` (``x`` mixes the cosine and sine components).

    Returns:
        ``(c_y, l_z, r_z, l_x, r_x)``, float64 arrays of shape ``(lmax + 1, 2 lmax + 1)``; row 0 is zero.
    """
    c_y, l_z, r_z, l_x, r_x = (np.zeros((lmax + 1, 2 * lmax + 1)) for _ in range(5))
    for l in range(1, lmax + 1):
        # the stacked harmonics carry the normalisation of their own degree
        scale = normalization_factor(l, normalization) / normalization_factor(l - 1, normalization)
        for mu in range(-l, l + 1):
            j, m = lmax + mu, abs(mu)
            c_y[l, j] = scale * _ratio(l, m, m)
            if mu > 0:
                l_z[l, j] = scale * _ratio(l, m, m - 1) / 2
                r_z[l, j] = -scale * _ratio(l, m, m + 1) / 2
                r_x[l, j] = -scale * _ratio(l, m, m + 1) / 2
                l_x[l, j] = -scale * _ratio(l, m, m - 1) / 2 if m >= 2 else 0.0  # Im S^0 = 0
            elif mu < 0:
                r_z[l, j] = scale * _ratio(l, m, m - 1) / 2 if m >= 2 else 0.0  # Im S^0 = 0
                l_z[l, j] = -scale * _ratio(l, m, m + 1) / 2
                l_x[l, j] = scale * _ratio(l, m, m + 1) / 2
                r_x[l, j] = scale * _ratio(l, m, m - 1) / 2
            else:
                r_z[l, j] = -scale * _ratio(l, 0, 1)
                r_x[l, j] = -scale * _ratio(l, 0, 1)
    return c_y, l_z, r_z, l_x, r_x


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------


def normalize_vectors(x: jax.Array) -> jax.Array:
    """Divide by the norm, leaving the zero vector unchanged (finite value and derivatives of every order there)."""
    r2 = jnp.sum(x**2, axis=-1, keepdims=True)
    r2 = jnp.where(r2 == 0.0, 1.0, r2)
    return x / jnp.sqrt(r2)


def stacked_harmonics_by_recurrence(lmax: int, x: jax.Array, normalization: str) -> jax.Array:
    r"""Every :math:`Y^l`, ``l = 0..lmax``, padded to ``2 lmax + 1`` components: shape ``(lmax + 1, ..., 2 lmax + 1)``.

    Row ``l``, index ``lmax + m`` holds :math:`Y^l_m` (zero for :math:`|m| > l`).  ``x`` is used as given (already
    divided by its norm if the caller wants the sphere).

    One ``lax.scan`` step per ``l`` carries

    * the Legendre factors :math:`q_{l-1}, q_{l-2}` (mirrored over ``m``, see
      :func:`legendre_recurrence_coefficients`);
    * the power :math:`(z + i x)^l` and the vector of azimuthal factors known so far (index ``lmax + m`` holds
      :math:`\operatorname{Re}(z + i x)^m` for ``m >= 0`` and :math:`\operatorname{Im}(z + i x)^{|m|}` for
      ``m < 0``; entries with :math:`|m| > l` are not needed yet and stay zero).

    A loop rather than unrolled code keeps the XLA program the same size for every ``lmax``: unrolled recurrences
    get their fused prefixes duplicated into every output, which makes compilation grow quickly with ``lmax``.

    This function is differentiable as it stands; :func:`stacked_harmonics` is the same values with cheaper
    derivatives.
    """
    dtype = x.dtype
    width = 2 * lmax + 1
    a, b, e = (np.asarray(c, dtype) for c in legendre_recurrence_coefficients(lmax))
    m = np.arange(-lmax, lmax + 1)
    ls = np.arange(lmax + 1)
    positive = (m[None, :] == ls[:, None]).astype(dtype)  # where Re (z + i x)^l goes
    negative = (m[None, :] == -ls[:, None]).astype(dtype)  # where Im (z + i x)^l goes (nowhere at l = 0)
    negative[0] = 0.0
    scale = np.array([normalization_factor(l, normalization) for l in ls], dtype)[:, None]

    px, pz = x[..., 0:1], x[..., 2:3]
    y = x[..., 1:2]
    r2 = jnp.sum(x**2, axis=-1, keepdims=True)  # the polynomial r^2 (not 1) keeps Y^l(0) = 0 for l > 0

    def step(carry, coefficients):
        q1, q2, re, im, phi = carry
        a_l, b_l, e_l, pos_l, neg_l, scale_l = coefficients
        q = a_l * y * q1 - b_l * r2 * q2 + e_l
        phi = phi + pos_l * re + neg_l * im
        # (re + i im)(z + i x): the next azimuthal power
        re, im = re * pz - im * px, re * px + im * pz
        return (q, q1, re, im, phi), scale_l * q * phi

    zeros = jnp.zeros(x.shape[:-1] + (width,), dtype)
    carry = (zeros, zeros, jnp.ones_like(px), jnp.zeros_like(px), zeros)
    _, stacked = jax.lax.scan(step, carry, (a, b, e, positive, negative, scale))
    return stacked


def _shift(array: jax.Array, offset: int) -> jax.Array:
    """``out[..., j] = array[..., j + offset]`` along the last axis, zero where that falls outside."""
    pad = [(0, 0)] * (array.ndim - 1)
    if offset > 0:
        return jnp.pad(array[..., offset:], pad + [(0, offset)])
    return jnp.pad(array[..., :offset], pad + [(-offset, 0)])


def _stacked_tangent(lmax: int, normalization: str, stacked: jax.Array, x_dot: jax.Array) -> jax.Array:
    """Directional derivative of :func:`stacked_harmonics` along ``x_dot``, from the harmonics themselves.

    Linear in ``x_dot`` and built from ``stacked`` (itself differentiable through the same rule), so derivatives
    of every order cost a few elementwise operations each, never a differentiated loop.
    """
    c_y, l_z, r_z, l_x, r_x = (
        np.asarray(c, stacked.dtype)[(slice(None),) + (None,) * (stacked.ndim - 2) + (slice(None),)]
        for c in derivative_coefficients(lmax, normalization)
    )
    # Y^{l-1} for every row l (zero for l = 0), and its mirror image in m
    lower = jnp.concatenate([jnp.zeros_like(stacked[:1]), stacked[:-1]], axis=0)
    mirrored = lower[..., ::-1]
    d_x, d_y, d_z = (x_dot[..., k : k + 1] for k in range(3))
    d_dx = l_x * _shift(mirrored, -1) + r_x * _shift(mirrored, 1)
    d_dy = c_y * lower
    d_dz = l_z * _shift(lower, -1) + r_z * _shift(lower, 1)
    return d_x * d_dx + d_y * d_dy + d_z * d_dz


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 2))
def stacked_harmonics(lmax: int, x: jax.Array, normalization: str) -> jax.Array:
    r"""Every :math:`Y^l`, ``l = 0..lmax``, padded to ``2 lmax + 1`` components: shape ``(lmax + 1, ..., 2 lmax + 1)``.

    Row ``l``, index ``lmax + m`` holds :math:`Y^l_m` (zero for :math:`|m| > l`); ``x`` is used as given.  Values
    from :func:`stacked_harmonics_by_recurrence`; derivatives (any order, forward or reverse) from the ladder
    relations of :func:`derivative_coefficients` instead of differentiating the loop, which keeps the compiled
    gradients small.
    """
    return stacked_harmonics_by_recurrence(lmax, x, normalization)


@stacked_harmonics.defjvp
def _stacked_harmonics_jvp(lmax: int, normalization: str, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    stacked = stacked_harmonics(lmax, x, normalization)
    return stacked, _stacked_tangent(lmax, normalization, stacked, x_dot)


# ----------------------------------------------------------------------------------------------------------------
# public reference functions
# ----------------------------------------------------------------------------------------------------------------


def check_arguments(x: jax.Array, normalization: str) -> None:
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(f"spherical harmonics take Cartesian vectors of shape (..., 3), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"spherical harmonics need a floating point input, got dtype {x.dtype}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def spherical_harmonics_per_l(
    ls: Sequence[int],
    x: jax.Array,
    normalize: bool = True,
    normalization: str = "component",
) -> List[jax.Array]:
    """Spherical harmonics :math:`Y^l` of the vectors ``x`` for each ``l`` in ``ls``.

    Args:
        ls: the degrees wanted (any order, repeats allowed), each ``>= 0``.
        x: Cartesian vectors, floating point array of shape ``(..., 3)``.
        normalize: restrict to the unit sphere (divide ``x`` by its norm first); otherwise homogeneous polynomials.
        normalization: ``"component"``, ``"norm"`` or ``"integral"`` (see the module docstring).

    Returns:
        One array of shape ``(..., 2l + 1)`` per entry of ``ls``, dtype of ``x``.
    """
    x = jnp.asarray(x)
    check_arguments(x, normalization)
    ls = tuple(int(l) for l in ls)
    if any(l < 0 for l in ls):
        raise ValueError(f"degrees l must be >= 0, got {ls}")
    if not ls:
        return []
    if normalize:
        x = normalize_vectors(x)

    lmax = max(ls)
    stacked = stacked_harmonics(lmax, x, normalization)
    return [stacked[l, ..., lmax - l : lmax + l + 1] for l in ls]


def spherical_harmonics_concatenated(
    lmax: int,
    x: jax.Array,
    normalize: bool = True,
    normalization: str = "component",
) -> jax.Array:
    """All :math:`Y^0, \\dots, Y^{l_{max}}` concatenated along the last axis: shape ``(..., (lmax + 1)^2)``.

    Same arguments as :func:`spherical_harmonics_per_l`; one gather picks the ``(l, m)`` entries of the padded stack.
    """
    x = jnp.asarray(x)
    check_arguments(x, normalization)
    if lmax < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    if normalize:
        x = normalize_vectors(x)
    stacked = stacked_harmonics(lmax, x, normalization)
    width = 2 * lmax + 1
    flat = jnp.moveaxis(stacked, 0, -2).reshape(x.shape[:-1] + ((lmax + 1) * width,))
    index = np.concatenate([l * width + lmax + np.arange(-l, l + 1) for l in range(lmax + 1)])
    return flat[..., index]
