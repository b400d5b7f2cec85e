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

Evaluation.  A homogeneous polynomial of degree ``l`` is :math:`r^l` times its value on the sphere, and the sphere
is where the values are computed, in factors that all stay of order one in any floating point format:

* the input is split into :math:`r`, :math:`\cos\beta`, :math:`\sin\beta` and :math:`e^{i\alpha}` after dividing it
  by its largest component (:func:`polar_form`), so neither :math:`|x|^2` nor :math:`x^2 + z^2` can overflow or
  underflow;
* the azimuthal factors :math:`\cos m\alpha, \sin m\alpha` are powers of the unit complex number :math:`e^{i\alpha}`;
* the fully normalised associated Legendre functions :math:`\bar P_l^m = K_{lm} P_l^m(\cos\beta)` follow the
  classical three-term recurrence in ``l`` (vectorised over ``m``, coefficients precomputed in numpy), started at
  :math:`\bar P_m^m \propto \sin^m\beta`.  That start is tiny for large ``m`` (:math:`0.5^{150}` is below the
  smallest float32) while :math:`\bar P_l^m` itself is of order one once ``l`` passes :math:`m / \sin\beta`, so each
  column ``m`` carries a mantissa and a power-of-two exponent (:func:`stacked_harmonics_by_recurrence`): exponents
  are exact, only mantissas are rounded, and no intermediate leaves the range of the format.

(Factoring :math:`\sin^m\beta` out of :math:`\bar P_l^m` instead, as a polynomial in ``y`` and :math:`r^2` times
:math:`(z + i x)^m`, is exact algebra but multiplies a factor that overflows by one that underflows: in float32 it
returns NaN from about ``l = 185`` near the poles and everywhere by ``l = 300``.)

The recurrences run as one ``lax.scan`` step per ``l`` (a handful of elementwise operations), so the program
traces and compiles quickly for any ``l`` and involves no symbolic algebra.  Derivatives do not go through the loop:
the derivative of a solid harmonic of degree ``l`` is a fixed combination of those of degree ``l - 1`` (ladder
relations, :func:`derivative_coefficients`), which a ``jax.custom_jvp`` applies to the harmonics themselves.  That
rule is again differentiable through itself, so ``grad``, ``jacfwd``, ``hessian``, ... work to any order at the cost
of a few elementwise operations per order.

``normalize=True`` first divides the input by its norm (:func:`normalize_vectors`: scaled by the largest component
first, so any finite nonzero vector works; the zero vector is left as is, so its value is ``Y^0`` and zeros, with
finite derivatives).
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
    r"""Coefficients of the normalised Legendre recurrence, laid out over ``m = -lmax..lmax``.

    On the sphere, the normalised functions :math:`\bar P_l^m = K_{lm} P_l^m(\cos\beta)` (with the :math:`\sqrt 2`
    of ``m != 0``) obey, for every ``m`` at once (index ``lmax + m``),

    .. math:: \bar P_l^m = a_{lm} \cos\beta\, \bar P_{l-1}^m - b_{lm} \bar P_{l-2}^m, \qquad
              \bar P_l^l = e_{ll} \sin^l\beta,

    where :math:`a_{lm}, b_{lm}` are the classical three-term coefficients for :math:`|m| < l` and zero otherwise,
    and :math:`e_{lm}` is zero for :math:`|m| \neq l`.  The same numbers give the homogeneous polynomials
    :math:`q_l^m = r^{l-m} \bar P_l^m / \sin^m\beta` of ``y`` and :math:`r^2`:
    :math:`q_l^m = a_{lm}\, y\, q_{l-1}^m - b_{lm}\, r^2 q_{l-2}^m + e_{lm}` (the straight-line executor's form).
    Storing the factors mirrored in ``m`` means :math:`Y^l` is a contiguous slice: no gather, no concatenation per
    step.

    Returns:
        ``(a, b, e)``, float64 arrays of shape ``(lmax + 1, 2 lmax + 1)`` (row ``l``; row 0 is unused by the
        recurrence but ``e[0]`` holds :math:`\bar P_0^0 = 1`).
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


@functools.lru_cache(maxsize=None)
def difference_recurrence_coefficients(lmax: int) -> Tuple[np.ndarray, ...]:
    r"""Coefficients of the recurrence that :func:`stacked_harmonics_by_recurrence` runs, over ``m = -lmax..lmax``.

    It works with the Schmidt semi-normalised functions :math:`\tilde P_l^m = \sqrt{(l-m)!/(l+m)!}\, P_l^m(c)`,
    :math:`c = |\cos\beta|`, which obey :math:`\tilde P_l^m = \alpha_{lm} c \tilde P_{l-1}^m - \beta_{lm} \tilde
    P_{l-2}^m` with :math:`\alpha_{lm} = (2l-1)/s_l`, :math:`\beta_{lm} = s_{l-1}/s_l`, :math:`s_l = \sqrt{l^2-m^2}`.
    Near the poles that form loses accuracy quickly: at :math:`c = 1` the two solutions of the recurrence nearly
    coincide and a rounding error made at degree ``k`` grows like ``k log(l / k)``, about 2e-4 relative by
    ``l = 300`` in float32.  Carrying the difference :math:`D_l = \tilde P_l - \tilde P_{l-1}` instead,

    .. math:: D_l = \beta_{lm} D_{l-1} + (\gamma_{lm} - \alpha_{lm} t)\, \tilde P_{l-1}, \qquad
              \tilde P_l = \tilde P_{l-1} + D_l, \qquad t = 1 - c = \sin^2\beta / (1 + c),

    with :math:`\gamma_{lm} = \alpha_{lm} - 1 - \beta_{lm} = \big(m^2 / (l + s_l) + m^2 / (l - 1 + s_{l-1})\big)
    / s_l` (written without cancellation; zero for ``m = 0``): near the poles every term of :math:`D_l` is small,
    so are its rounding errors, and the ``D`` recurrence itself is contracting (:math:`\beta_{lm} < 1`).

    Returns:
        ``(alpha, beta, gamma, start, scale_lm)``, float64 arrays of shape ``(lmax + 1, 2 lmax + 1)``,
        row ``l``, index ``lmax + m``: the three coefficients (zero unless :math:`|m| < l`); ``start`` holds
        :math:`\tilde P_l^l / \sin^l\beta = \sqrt{(2l)!} / (2^l l!)` at :math:`|m| = l` (the first value of the
        new columns); ``scale_lm`` turns :math:`\tilde P` into the ``component`` normalisation
        (:math:`\sqrt{2l+1}`, times :math:`\sqrt 2` for ``m != 0``; zero for :math:`|m| > l`).  The southern
        hemisphere follows from :math:`P_l^m(-c) = (-1)^{l+m} P_l^m(c)`.
    """
    m = np.abs(np.arange(-lmax, lmax + 1)).astype(np.float64)[None, :]
    l = np.arange(lmax + 1, dtype=np.float64)[:, None]
    inside = m < l
    with np.errstate(divide="ignore", invalid="ignore"):
        s_l = np.sqrt(np.maximum(l * l - m * m, 0.0))
        s_prev = np.sqrt(np.maximum((l - 1) ** 2 - m * m, 0.0))
        alpha = np.where(inside, (2 * l - 1) / s_l, 0.0)
        beta = np.where(inside, s_prev / s_l, 0.0)
        gamma = np.where(inside & (m > 0), (m * m / (l + s_l) + m * m / (l - 1 + s_prev)) / s_l, 0.0)  # 0/0 at l=1
    diagonal = np.cumprod([1.0] + [math.sqrt((2 * k - 1) / (2 * k)) for k in range(1, lmax + 1)])
    start = np.where(m == l, diagonal[:, None], 0.0)
    scale_lm = np.where(m <= l, np.sqrt(2 * l + 1) * np.where(m > 0, math.sqrt(2.0), 1.0), 0.0)
    return alpha, beta, gamma, start, scale_lm


def normalization_factor(l: int, normalization: str) -> float:
    """Scale turning ``component``-normalised :math:`Y^l` into the requested normalisation."""
    if normalization == "component":
        return 1.0
    if normalization == "norm":
        return 1.0 / math.sqrt(2 * l + 1)
    if normalization == "integral":
        return 1.0 / math.sqrt(4 * math.pi)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _ladder_ratios(lmax: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Ratios :math:`A_{lm} / A_{l-1, m'}` for :math:`m' = m, m - 1, m + 1`, on the grid ``l = 0..lmax``, ``m = 0..lmax``.

    :math:`A_{lm} = \sqrt{(2l+1)(l-m)!(l+m)!}` (times :math:`\sqrt 2` for :math:`m > 0`) is the factor with which
    ``component``-normalised :math:`Y^l_{\pm m} = A_{lm}\,\{\operatorname{Re}, \operatorname{Im}\}\, S_l^m`, where
    :math:`S_l^m = r^l P_l^m(\cos\beta) e^{i m \alpha} / (l+m)!` are the solid harmonics whose derivatives are the
    ladder relations of :func:`derivative_coefficients`.  The factorials cancel down to a few factors, written out
    here so that large ``lmax`` costs a few array operations:

    * :math:`A_{lm}^2 / A_{l-1,m}^2 = \frac{2l+1}{2l-1} (l-m)(l+m)`;
    * :math:`A_{lm}^2 / A_{l-1,m-1}^2 = \frac{2l+1}{2l-1} (l+m)(l+m-1)`, times 2 when ``m = 1`` (the
      :math:`\sqrt 2` of ``m > 0`` appears);
    * :math:`A_{lm}^2 / A_{l-1,m+1}^2 = \frac{2l+1}{2l-1} (l-m)(l-m-1)`, halved when ``m = 0``.

    Each ratio is 0 where :math:`Y^{l-1}` has no component :math:`m'` (:math:`m' < 0` or :math:`m' > l - 1`).
    """
    l = np.arange(lmax + 1, dtype=np.float64)[:, None]
    m = np.arange(lmax + 1, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        degree = (2 * l + 1) / (2 * l - 1)
        same = np.where(m <= l - 1, np.sqrt(degree * (l - m) * (l + m)), 0.0)
        lower = np.where((m >= 1) & (m <= l), np.sqrt(degree * (l + m) * (l + m - 1) * np.where(m == 1, 2.0, 1.0)), 0.0)
        upper = np.where(m + 1 <= l - 1, np.sqrt(degree * (l - m) * (l - m - 1) * np.where(m == 0, 0.5, 1.0)), 0.0)
    return same, lower, upper


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
    same, lower, upper = _ladder_ratios(lmax)
    # the stacked harmonics carry the normalisation of their own degree
    scale = np.array([0.0] + [
        normalization_factor(l, normalization) / normalization_factor(l - 1, normalization) for l in range(1, lmax + 1)
    ])[:, None]
    same, lower, upper = scale * same, scale * lower / 2, scale * upper / 2
    # Im S^0 = 0: Y^{l-1} at m' = 0 has no sine partner, so the m = 1 sine terms that would use it vanish
    lower_sine = np.where(np.arange(lmax + 1) >= 2, lower, 0.0)

    def mirrored(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Lay out ``positive[l, m]`` at ``j = lmax + m`` (``m > 0``) and ``negative[l, m]`` at ``lmax - m``."""
        out = np.zeros((lmax + 1, 2 * lmax + 1))
        out[:, lmax + 1 :] = positive[:, 1:]
        out[:, :lmax] = negative[:, 1:][:, ::-1]
        return out

    c_y = mirrored(same, same)
    c_y[:, lmax] = same[:, 0]
    l_z = mirrored(lower, -upper)
    r_z = mirrored(-upper, lower_sine)
    r_z[:, lmax] = -2 * upper[:, 0]
    l_x = mirrored(-lower_sine, upper)
    r_x = mirrored(-upper, lower)
    r_x[:, lmax] = -2 * upper[:, 0]
    return c_y, l_z, r_z, l_x, r_x


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------


def _scale_free(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """``(s, x / s)`` with ``s`` the largest ``|component|`` of each vector (1 for the zero vector), held constant.

    Every component of ``x / s`` lies in ``[-1, 1]`` and one is ``±1``, so its squared norm lies in ``[1, 3]``:
    neither overflows nor underflows, whatever the magnitude of ``x``.  ``s`` is excluded from differentiation:
    the functions built on ``x / s`` here (a direction, a norm) are homogeneous in ``x``, so holding ``s``
    constant gives exactly their derivatives, of every order, and spares differentiating a maximum.
    """
    s = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    s = jnp.where(s == 0.0, jnp.ones_like(s), s)
    return s, x / s


def _safe_norm(v: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """``(|v|, |v| == 0)`` along the last axis, with finite derivatives at zero (the sqrt never sees a zero)."""
    n2 = jnp.sum(v * v, axis=-1, keepdims=True)
    zero = n2 == 0.0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, n2))), zero


def normalize_vectors(x: jax.Array) -> jax.Array:
    """Divide by the norm, leaving the zero vector unchanged (finite value and derivatives of every order there).

    The norm is taken after scaling by the largest component (:func:`_scale_free`): in float32 ``|x|^2``
    overflows for ``|x| ~ 1e20`` and underflows for ``|x| ~ 1e-20``, which would give zeros, not a direction.
    """
    _, v = _scale_free(x)
    n, zero = _safe_norm(v)
    return jnp.where(zero, x, v / jnp.where(zero, 1.0, n))


def polar_form(x: jax.Array) -> Tuple[jax.Array, ...]:
    r"""``(r, cos β, sin β, cos α, sin α)`` of ``x = r (sin β sin α, cos β, sin β cos α)``, each of shape ``(..., 1)``.

    Computed from ``x / s`` (:func:`_scale_free`) and, for the azimuth, from ``(x, z)`` scaled by their own larger
    component, so that :math:`\sin\beta` is accurate (no :math:`\sqrt{1 - \cos^2\beta}` cancellation) and
    :math:`e^{i\alpha}` is a unit complex number even at :math:`\sin\beta \sim 10^{-30}`.  Conventions where the
    angles are undefined: on the ``y`` axis :math:`\alpha = 0`; at the origin ``r = 0`` and :math:`\cos\beta =
    \sin\beta = 0` (every degree but ``l = 0`` is then zeroed by :math:`r^l`).
    """
    s, v = _scale_free(x)
    n, zero = _safe_norm(v)
    n = jnp.where(zero, 1.0, n)
    r = jnp.where(zero, 0.0, s * n)
    vx, vy, vz = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    t, w = _scale_free(jnp.concatenate([vx, vz], axis=-1))
    rho, on_axis = _safe_norm(w)
    rho = t * rho  # |(x, z)| / s
    rho_safe = jnp.where(on_axis, 1.0, rho)
    cos_alpha = jnp.where(on_axis, 1.0, vz / rho_safe)
    sin_alpha = jnp.where(on_axis, 0.0, vx / rho_safe)
    return r, vy / n, rho / n, cos_alpha, sin_alpha


def _exponent_step(dtype) -> int:
    r"""``K``: mantissas are kept below :math:`2^K` (and the diagonal above :math:`2^{-K}`), ``K`` = half the
    exponent range of ``dtype`` (64 for float32): one recurrence step multiplies by at most :math:`\sqrt{2l+1}`, so
    a mantissa never gets near the largest finite number before it is rescaled."""
    return int(jnp.finfo(dtype).maxexp) // 2


def _needs_exponents(lmax: int, dtype) -> bool:
    r"""Whether degrees up to ``lmax`` need the per-column exponents, or plain ``dtype`` arithmetic is as good.

    :math:`|\tilde P_l^m| \le 1` never overflows, and a column grows by less than :math:`2^l` from its start
    (:math:`\tilde P_l^m / \tilde P_m^m` is largest at the pole, :math:`\sqrt{\binom{l+m}{2m}}`).  A start that
    underflows (below the smallest normal number) therefore stays below :math:`\epsilon^2` up to degree
    :math:`\log_2(\epsilon^2 / \text{tiny})`: 80 in float32, 918 in float64.  Below that, dropping it changes
    nothing at the precision of ``dtype``, and the cheaper loop without exponents is used.
    """
    info = jnp.finfo(dtype)
    return lmax > math.log2(float(info.eps) ** 2 / float(info.tiny))


def _power_of_two(exponent: jax.Array, k: int, dtype) -> jax.Array:
    r""":math:`2^E` for the column exponents ``E`` (multiples of ``k``, never positive), exactly, as ``dtype``.

    Only ``E = 0`` and ``E = -k`` can hold values that matter: a mantissa is below :math:`2^k`, so with
    :math:`E \le -2k` the value is below :math:`2^{-k}` (:math:`5 \cdot 10^{-20}` in float32), negligible next to
    :math:`\|Y^l\| \ge 1 / \sqrt{4\pi}` and flushed to zero.  (``E > 0`` would need :math:`|\bar P_l^m| > 2^k`.)
    """
    return jnp.where(exponent == 0, 1.0, jnp.where(exponent == -k, 2.0**-k, 0.0)).astype(dtype)


def stacked_harmonics_by_recurrence(lmax: int, x: jax.Array, normalization: str) -> jax.Array:
    r"""Every :math:`Y^l`, ``l = 0..lmax``, padded to ``2 lmax + 1`` components: shape ``(lmax + 1, ..., 2 lmax + 1)``.

    Row ``l``, index ``lmax + m`` holds :math:`Y^l_m` (zero for :math:`|m| > l`), the homogeneous polynomial:
    :math:`r^l` times the value on the sphere.  ``x`` is used as given (already divided by its norm if the caller
    wants the sphere).

    One ``lax.scan`` step per ``l`` carries

    * the semi-normalised Legendre values :math:`\tilde P_{l-1}` and their differences :math:`D_{l-1}` (mirrored
      over ``m``, see :func:`difference_recurrence_coefficients`), evaluated at :math:`|\cos\beta|` (the southern
      hemisphere's signs :math:`(-1)^{l+m}` ride on :math:`r^l` and :math:`e^{i m \alpha}`).  For large ``lmax``
      (:func:`_needs_exponents`) they are mantissas with one integer exponent per column: the true value is
      ``mantissa * 2**exponent``.  Column ``m`` starts at ``l = m`` with :math:`\tilde P_m^m \propto \sin^m\beta`,
      which can be far below the smallest float, then grows with ``l``; it never shrinks by more than the
      oscillations of :math:`\tilde P_l^m`, so the only rescaling needed is by :math:`2^{-K}` when a mantissa passes
      :math:`2^K` (:func:`_exponent_step`), exact in binary floating point;
    * :math:`\sin^l\beta` in the same form, rescaled by :math:`2^K` when it drops below :math:`2^{-K}`: the start
      of the next column;
    * the power :math:`e^{i l \alpha}` and the vector of azimuthal factors known so far (index ``lmax + m`` holds
      :math:`\cos m\alpha` for ``m >= 0`` and :math:`\sin |m|\alpha` for ``m < 0``; entries with :math:`|m| > l`
      are not needed yet and stay zero);
    * :math:`r^l`.

    A loop rather than unrolled code keeps the XLA program the same size for every ``lmax``: unrolled recurrences
    get their fused prefixes duplicated into every output, which makes compilation grow quickly with ``lmax``.

    This function is differentiable as it stands (away from the origin and the ``y`` axis); :func:`stacked_harmonics`
    is the same values with cheaper derivatives, everywhere.
    """
    dtype = x.dtype
    width = 2 * lmax + 1
    k = _exponent_step(dtype)
    big, small = 2.0**k, 2.0**-k
    alpha, beta, gamma, start, scale_lm = difference_recurrence_coefficients(lmax)
    m = np.arange(-lmax, lmax + 1)
    ls = np.arange(lmax + 1)
    starts = np.abs(m)[None, :] == ls[:, None]  # the columns that begin at row l
    positive = m[None, :] == ls[:, None]  # where cos(l alpha) goes
    negative = (m[None, :] == -ls[:, None]) & (ls[:, None] > 0)  # where sin(l alpha) goes (nowhere at l = 0)
    norms = np.array([normalization_factor(l, normalization) for l in ls])[:, None]
    rows = (alpha, beta, gamma, start, norms * scale_lm, starts, positive, negative)
    rows = tuple(np.asarray(row, dtype if row.dtype == np.float64 else row.dtype) for row in rows)

    r, cos_beta, sin_beta, cos_alpha, sin_alpha = polar_form(x)
    c = jnp.abs(cos_beta)
    t = sin_beta * sin_beta / (1.0 + c)  # 1 - |cos beta|, accurate near the poles
    # evaluated at |cos beta|; then P(-c) = (-1)^l (-1)^m P(c), signs that ride for free on r^l and on e^{i m alpha}
    south = jnp.where(cos_beta < 0, -1.0, 1.0).astype(dtype)
    r, cos_alpha, sin_alpha = south * r, south * cos_alpha, south * sin_alpha

    track_exponents = _needs_exponents(lmax, dtype)

    def step(carry, coefficients):
        p1, d1, exponent, sin_power, sin_exponent, re, im, phi, r_power = carry
        alpha_l, beta_l, gamma_l, start_l, scale_l, starts_l, pos_l, neg_l = coefficients
        d = beta_l * d1 + (gamma_l - alpha_l * t) * p1 + start_l * sin_power
        p = p1 + d
        legendre = p
        sin_power = sin_power * sin_beta
        if track_exponents:
            exponent = jnp.where(starts_l, sin_exponent, exponent)
            # a growing column is scaled down, with its difference (both share the column's exponent)
            grown = jnp.abs(p) > big
            p = jnp.where(grown, p * small, p)
            d = jnp.where(grown, d * small, d)
            exponent = exponent + jnp.where(grown, k, 0)
            legendre = p * _power_of_two(exponent, k, dtype)
            tiny = sin_power < small
            sin_power = jnp.where(tiny, sin_power * big, sin_power)
            sin_exponent = sin_exponent - jnp.where(tiny, k, 0)
        phi = jnp.where(pos_l, re, jnp.where(neg_l, im, phi))
        y_l = (scale_l * r_power) * legendre * phi
        re, im = re * cos_alpha - im * sin_alpha, re * sin_alpha + im * cos_alpha  # times e^{i alpha}
        return (p, d, exponent, sin_power, sin_exponent, re, im, phi, r_power * r), y_l

    zeros = jnp.zeros(x.shape[:-1] + (width,), dtype)
    ones = jnp.ones_like(r)
    exponents = jnp.zeros(x.shape[:-1] + (width,), jnp.int32)
    carry = (zeros, zeros, exponents, ones, jnp.zeros(r.shape, jnp.int32), ones, jnp.zeros_like(r), zeros, ones)
    _, stacked = jax.lax.scan(step, carry, rows)
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
