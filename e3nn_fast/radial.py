"""Radial bases and smooth cutoff envelopes for interatomic distances.

Public names (same signatures and numbers as e3nn-jax 0.21):

- :func:`sus`: the smooth unit step ``exp(-1/x)`` for ``x > 0``, else ``0``;
- :func:`soft_envelope`: a C-infinity envelope that vanishes at ``x_max``;
- :func:`poly_envelope`: a polynomial envelope with prescribed flat derivatives at both ends;
- :func:`soft_one_hot_linspace`: ``number`` bumps spread evenly over ``[start, end]``;
- :func:`bessel`: the DimeNet radial Bessel basis ``sqrt(2/c) sin(n pi x / c) / x``.

Everything here is plain ``jax.numpy``: safe under ``jit``, ``vmap`` and ``grad``. Functions that
divide by the input (``sus``, ``bessel``) use the "double where" trick so that the branch that is
not selected never produces an ``inf``/``nan`` that could leak into the gradient.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast._static_int import static_int
from e3nn_fast.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "sus",
    "soft_envelope",
    "poly_envelope",
    "soft_one_hot_linspace",
    "bessel",
]

#: Basis names accepted by :func:`soft_one_hot_linspace`.
SOFT_ONE_HOT_BASES = ("gaussian", "cosine", "smooth_finite", "fourier")

# Below this argument exp(-1/x) is exactly 0 in every float format (exp(-1000) underflows even in
# float64), so treating it as the zero branch changes no value. It keeps the gradient finite: for
# tiny x the chain rule would otherwise multiply exp(-1/x) = 0 by 1/x**2 = inf.
_SUS_ZERO_BELOW = 1e-3

# Empirical constants that make sum_i y_i(x)**2 average to about 1 over the interval (e3nn-jax).
_GAUSSIAN_NORM = 1.12
_SMOOTH_FINITE_NORM = 1.14136 * math.exp(2.0)


def _as_float_array(x, what: str = "x") -> jax.Array:
    """``jnp.asarray(x)``, promoting integer/bool input to the default float dtype.

    ``what`` names the function and argument in the error for an IrrepsArray.
    """
    if hasattr(x, "irreps") and hasattr(x, "array"):  # an IrrepsArray: jnp.asarray would try to iterate over it
        raise TypeError(
            f"{what} must be a plain array, got an IrrepsArray with irreps {x.irreps} and shape {x.shape}; "
            "pass its data, e.g. x.array[..., 0] for a single 0e (or e3nn.norm(vectors).array[..., 0])"
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _concrete_float(value, name: str) -> Optional[float]:
    """Python float of ``value`` when it is known at trace time, ``None`` when it is traced."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def _check_nonzero(value, name: str) -> None:
    v = _concrete_float(value, name)
    if v is not None and v == 0.0:
        raise ValueError(f"{name} must be nonzero, got {value!r}")


def _count(value, name: str, minimum: int, type_error: type = TypeError) -> int:
    """Validate an integer count (bool is refused: it is almost always a mistake).

    ``type_error`` is the class raised for a non-integer: :class:`InvalidTypeError` where e3nn-jax asserts on it.
    """
    size = static_int(value)
    if size is None:
        got = repr(value) if isinstance(value, bool) else f"{type(value).__name__} {value!r}"
        raise type_error(f"{name} must be an int, got {got}")
    if size < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {size}")
    return size


# --------------------------------------------------------------------------------------------
# Smooth step and envelopes
# --------------------------------------------------------------------------------------------


def sus(x: jax.Array) -> jax.Array:
    r"""Smooth unit step: :math:`0` for :math:`x \le 0` and :math:`e^{-1/x}` for :math:`x > 0`.

    It is :math:`C^\infty` (every derivative vanishes at 0) and tends to 1 as :math:`x \to \infty`;
    ``sus(2.0) ~ 0.61``. Values and gradients are finite everywhere, including at and near 0.

    Args:
        x: array of any shape.

    Returns:
        Array of the same shape as ``x`` (integer input is promoted to float).
    """
    x = _as_float_array(x, "sus: x")
    positive = x > _SUS_ZERO_BELOW
    # Inner where: evaluate exp(-1/x) only on a safe argument so the masked branch has no inf/nan.
    safe_x = jnp.where(positive, x, 1.0)
    return jnp.where(positive, jnp.exp(-1.0 / safe_x), 0.0)


def _sus_scalar(x: float) -> float:
    """:func:`sus` for a Python float, in float64 (for trace-time constants)."""
    return math.exp(-1.0 / x) if x > 0.0 else 0.0


def soft_envelope(
    x: jax.Array,
    x_max: float = 1.0,
    arg_multiplicator: float = 2.0,
    value_at_origin: float = 1.2,
) -> jax.Array:
    r"""Smooth (:math:`C^\infty`) envelope that decays to exactly 0 at ``x_max``.

    .. math::

        f(x) = v_0 \frac{\text{sus}(a (1 - x / x_{max}))}{\text{sus}(a)}

    with :math:`a` = ``arg_multiplicator`` and :math:`v_0` = ``value_at_origin`` = :math:`f(0)`.
    It is 0 (with all derivatives 0) for :math:`x \ge x_{max}`.

    Args:
        x: input of shape ``[...]``.
        x_max: cutoff where the envelope reaches 0.
        arg_multiplicator: steepness :math:`a > 0`; larger means a flatter start and a sharper end.
        value_at_origin: value of the envelope at ``x = 0``.

    Returns:
        Array of shape ``[...]``.
    """
    _check_nonzero(x_max, "soft_envelope: x_max")
    a = _concrete_float(arg_multiplicator, "soft_envelope: arg_multiplicator")
    if a is None:
        raise TypeError("soft_envelope: arg_multiplicator must be a concrete number, not a traced value")
    if a <= 0.0:
        raise ValueError(f"soft_envelope: arg_multiplicator must be > 0, got {arg_multiplicator!r}")
    # Normalising constant computed once in float64 on the host; a Python float keeps x's dtype.
    scale = value_at_origin / _sus_scalar(a)
    x = _as_float_array(x, "soft_envelope: x")
    return scale * sus(arg_multiplicator * (1.0 - x / x_max))


def _derivative_row(point: Fraction, order: int, num_coeffs: int) -> list:
    """Row ``[d^order/du^order u^k at u=point for k in range(num_coeffs)]`` (ascending powers)."""
    return [
        math.perm(k, order) * point ** (k - order) if k >= order else Fraction(0)
        for k in range(num_coeffs)
    ]


def _solve_exact(rows: list, rhs: list) -> list:
    """Solve a small square linear system exactly over the rationals (Gauss-Jordan)."""
    n = len(rows)
    aug = [list(map(Fraction, row)) + [Fraction(b)] for row, b in zip(rows, rhs)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        inv = 1 / aug[col][col]
        aug[col] = [v * inv for v in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                factor = aug[r][col]
                aug[r] = [a - factor * b for a, b in zip(aug[r], aug[col])]
    return [row[n] for row in aug]


@lru_cache(maxsize=None)
def _poly_envelope_coefficients(n0: int, n1: int) -> np.ndarray:
    """Coefficients (highest power first) of the envelope polynomial in ``u = x / x_max - 1/2``.

    The polynomial has degree ``n0 + n1 + 1`` and satisfies ``p(-1/2) = 1``, ``p(1/2) = 0``,
    ``p^(k)(-1/2) = 0`` for ``k = 1..n0`` and ``p^(k)(1/2) = 0`` for ``k = 1..n1``. Centering the
    interval on 0 keeps the coefficients moderate; solving over the rationals makes them exact
    before the single rounding to float64 (the system is ill-conditioned for high degrees).
    """
    num_coeffs = n0 + n1 + 2
    left, right = Fraction(-1, 2), Fraction(1, 2)
    rows = [_derivative_row(left, 0, num_coeffs), _derivative_row(right, 0, num_coeffs)]
    rhs = [1, 0]
    for order in range(1, n0 + 1):
        rows.append(_derivative_row(left, order, num_coeffs))
        rhs.append(0)
    for order in range(1, n1 + 1):
        rows.append(_derivative_row(right, order, num_coeffs))
        rhs.append(0)
    ascending = _solve_exact(rows, rhs)
    coeffs = np.array([float(c) for c in reversed(ascending)])
    coeffs.setflags(write=False)
    return coeffs


def poly_envelope(n0: int, n1: int, x_max: float = 1.0) -> Callable[[jax.Array], jax.Array]:
    r"""Polynomial envelope: 1 at ``x = 0``, 0 for ``x >= x_max``, with flat ends.

    Returns the function :math:`f(x) = p(x / x_{max})` for :math:`x < x_{max}` and 0 beyond, where
    :math:`p` is the unique polynomial of degree ``n0 + n1 + 1`` with :math:`p(0) = 1`,
    :math:`p(1) = 0`, its first ``n0`` derivatives zero at 0 and its first ``n1`` derivatives zero
    at 1. With ``n0 = p - 1`` and ``n1 = 2`` it is the DimeNet envelope :math:`u_p`. For
    :math:`x < 0` the polynomial is simply extended.

    Args:
        n0: number of vanishing derivatives at ``x = 0``.
        n1: number of vanishing derivatives at ``x = x_max``.
        x_max: where the envelope reaches 0.

    Returns:
        A function mapping an array of shape ``[...]`` to an array of the same shape.
    """
    n0 = _count(n0, "poly_envelope: n0", 0)
    n1 = _count(n1, "poly_envelope: n1", 0)
    _check_nonzero(x_max, "poly_envelope: x_max")
    coeffs = _poly_envelope_coefficients(n0, n1)

    def envelope(x: jax.Array) -> jax.Array:
        x = _as_float_array(x, "poly_envelope: the envelope's x")
        inside = x < x_max
        # Clamp before evaluating so the discarded branch stays finite (and its gradient too).
        u = jnp.where(inside, x, x_max) / x_max - 0.5
        return jnp.where(inside, jnp.polyval(jnp.asarray(coeffs, dtype=x.dtype), u), 0.0)

    return envelope


# --------------------------------------------------------------------------------------------
# Radial bases
# --------------------------------------------------------------------------------------------


def _resolve_zero_ends(cutoff, start_zero, end_zero) -> tuple:
    """Turn ``cutoff`` (shorthand for both ends) into ``(start_zero, end_zero)`` and validate."""
    if cutoff is not None:
        if start_zero is not None or end_zero is not None:  # (e3nn-jax asserts on this)
            raise InvalidValueError(
                "soft_one_hot_linspace: pass either cutoff or start_zero/end_zero, not both "
                f"(got cutoff={cutoff!r}, start_zero={start_zero!r}, end_zero={end_zero!r})"
            )
        start_zero = end_zero = cutoff
    for name, flag in (("start_zero", start_zero), ("end_zero", end_zero)):
        if flag not in (True, False):
            raise ValueError(
                f"soft_one_hot_linspace: {name} must be specified as True or False "
                f"(or use cutoff=True/False), got {flag!r}"
            )
    return bool(start_zero), bool(end_zero)


def _centers_and_step(start, end, number: int, start_zero: bool, end_zero: bool, dtype):
    """Bump centers and spacing.

    The ``number`` centers are the points of an even grid over ``[start, end]`` from which the
    endpoints flagged ``start_zero``/``end_zero`` were removed, so that the corresponding bump is
    already (close to) zero there.
    """
    num_points = number + int(start_zero) + int(end_zero)
    if num_points < 2:
        raise ValueError(
            "soft_one_hot_linspace: number=1 with start_zero=end_zero=False leaves no grid spacing; "
            "use number >= 2 or zero at one end"
        )
    grid = jnp.linspace(start, end, num_points, dtype=dtype)
    step = grid[1] - grid[0]
    centers = grid[int(start_zero) : num_points - int(end_zero)]
    return centers, step


def _fourier_basis(input, start, end, number: int, start_zero: bool, end_zero: bool):
    """Sine series (zero at both ends) or cosine series (free ends) on ``[start, end]``."""
    t = (input[..., None] - start) / (end - start)
    norm = math.sqrt(0.25 + number / 2)
    if start_zero and end_zero:
        k = jnp.arange(1, number + 1)
        return jnp.where((0.0 < t) & (t < 1.0), jnp.sin(jnp.pi * k * t) / norm, 0.0)
    if not start_zero and not end_zero:
        k = jnp.arange(0, number)
        return jnp.cos(jnp.pi * k * t) / norm
    raise ValueError(
        "soft_one_hot_linspace: the fourier basis needs start_zero == end_zero "
        f"(got start_zero={start_zero}, end_zero={end_zero})"
    )


def soft_one_hot_linspace(
    input: jax.Array,
    *,
    start: float,
    end: float,
    number: int,
    basis: str = None,
    cutoff: bool = None,
    start_zero: bool = None,
    end_zero: bool = None,
) -> jax.Array:
    r"""Expand a scalar on ``number`` smooth basis functions spread evenly over ``[start, end]``.

    Returns :math:`y_i(x) = f_i(x) / Z` where the constant :math:`Z` is chosen so that
    :math:`\sum_i y_i(x)^2 \approx 1` on average over the interval.

    Bases (``d = (x - c_i) / \text{step}`` is the distance to the i-th center in grid steps):

    - ``"gaussian"``: :math:`e^{-d^2}`;
    - ``"cosine"``: :math:`\cos(\pi d / 2)` for :math:`|d| < 1`, else 0;
    - ``"smooth_finite"``: :math:`\text{sus}(1 + d)\,\text{sus}(1 - d)` (compact support, :math:`C^\infty`);
    - ``"fourier"``: :math:`\sin(\pi k t)`, :math:`k = 1..N` with both ends zero, or
      :math:`\cos(\pi k t)`, :math:`k = 0..N-1` with free ends, where
      :math:`t = (x - \text{start}) / (\text{end} - \text{start})`.

    Args:
        input: array of shape ``[...]``.
        start: lower end of the interval.
        end: upper end of the interval.
        number: number of basis functions :math:`N`.
        basis: one of ``"gaussian"``, ``"cosine"``, ``"smooth_finite"``, ``"fourier"``.
        cutoff: shorthand for ``start_zero = end_zero = cutoff``.
        start_zero: if ``True`` the basis vanishes at ``start`` (no center sits on it).
        end_zero: if ``True`` the basis vanishes at ``end``.

    Returns:
        Array of shape ``[..., number]`` (integer input is promoted to float).

    Raises:
        ValueError: unknown ``basis``, missing ``start_zero``/``end_zero``, ``cutoff`` together
            with ``start_zero``/``end_zero``, ``start == end``, or a grid with a single point.
    """
    if basis not in SOFT_ONE_HOT_BASES:
        raise ValueError(
            f"soft_one_hot_linspace: basis={basis!r} is not valid; "
            f"choose one of {', '.join(repr(b) for b in SOFT_ONE_HOT_BASES)}"
        )
    start_zero, end_zero = _resolve_zero_ends(cutoff, start_zero, end_zero)
    number = _count(number, "soft_one_hot_linspace: number", 1)
    lo = _concrete_float(start, "soft_one_hot_linspace: start")
    hi = _concrete_float(end, "soft_one_hot_linspace: end")
    if lo is not None and hi is not None and lo == hi:
        raise ValueError(f"soft_one_hot_linspace: start and end must differ, both are {lo}")

    input = _as_float_array(input, "soft_one_hot_linspace: input")

    if basis == "fourier":
        return _fourier_basis(input, start, end, number, start_zero, end_zero)

    centers, step = _centers_and_step(start, end, number, start_zero, end_zero, input.dtype)
    d = (input[..., None] - centers) / step

    if basis == "gaussian":
        return jnp.exp(-(d**2)) / _GAUSSIAN_NORM
    if basis == "cosine":
        return jnp.where((-1.0 < d) & (d < 1.0), jnp.cos(0.5 * jnp.pi * d), 0.0)
    # smooth_finite: a compact C-infinity bump supported on |d| < 1.
    return _SMOOTH_FINITE_NORM * sus(d + 1.0) * sus(1.0 - d)


def bessel(x: jax.Array, n: int, x_max: float = 1.0) -> jax.Array:
    r"""Radial Bessel basis of DimeNet (Klicpera, Groß, Günnemann, ICLR 2020, eq. 7).

    .. math::

        B_k(x) = \sqrt{\frac{2}{c}} \frac{\sin(k \pi x / c)}{x}, \qquad k = 1, \dots, n

    with :math:`c` = ``x_max``. They are orthonormal for the measure :math:`x^2 dx` on
    :math:`[0, c]`. At :math:`x = 0` the limit :math:`\sqrt{2/c}\, k \pi / c` is returned, and the
    gradient there is finite (it is 0, like the true derivative).

    Args:
        x: input of shape ``[...]``.
        n: number of basis functions.
        x_max: the cutoff :math:`c`.

    Returns:
        Array of shape ``[..., n]``.
    """
    n = _count(n, "bessel: n", 0, InvalidTypeError)  # e3nn-jax asserts isinstance(n, int)
    _check_nonzero(x_max, "bessel: x_max")
    x = _as_float_array(x, "bessel: x")[..., None]
    k = jnp.arange(1, n + 1, dtype=x.dtype)
    at_origin = x == 0.0
    # Double where: the masked branch never divides by zero, so no nan reaches the gradient.
    safe_x = jnp.where(at_origin, 1.0, x)
    frequency = k * jnp.pi / x_max
    values = jnp.where(at_origin, frequency, jnp.sin(frequency * safe_x) / safe_x)
    return jnp.sqrt(2.0 / x_max) * values
