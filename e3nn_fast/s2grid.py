r"""Signals on the sphere sampled on a (beta, alpha) grid, and the transforms to/from spherical harmonics.

Grid layout (e3nn-jax's): ``grid_values[..., beta, alpha]``.  The polar axis is ``y``; row ``b`` sits at
``y = grid_y[b]`` (increasing from -1 to 1) and column ``a`` at azimuth ``alpha = 2 pi a / res_alpha`` with the
point ``(sqrt(1-y^2) sin(alpha), y, sqrt(1-y^2) cos(alpha))``.  Two beta quadratures:

* ``"soft"``: ``beta`` uniform at mid-points (``res_beta`` even), weights of Kostelec & Rockmore;
* ``"gausslegendre"``: ``y`` at the Gauss-Legendre nodes.

Weights are normalised to ``sum(qw) = 1``.  A real spherical harmonic factorises as
:math:`Y_l^m = \sqrt{4\pi}\, \bar P_l^{|m|}(y)\, S_m(\alpha)` (see :mod:`e3nn_fast.legendre`), so both transforms
are a beta matrix (numpy, float64, cached per grid) times an azimuthal Fourier transform (FFT or dense).
"""

import functools
import math
from typing import Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast._static_int import static_int
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.harmonics import spherical_harmonics
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.legendre import normalized_legendre_table

__all__ = [
    "SphericalSignal",
    "s2_irreps",
    "s2_dirac",
    "to_s2grid",
    "from_s2grid",
    "to_s2point",
    "get_s2fft_grid_resolution",
    "legendre_transform_to_s2grid",
    "legendre_transform_from_s2grid",
    "betas_to_spherical_signal",
    "m0_values_to_irrepsarray",
]

QUADRATURES = ("soft", "gausslegendre")
NORMALIZATIONS = ("integral", "component", "norm")


# ----------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------


def _check_quadrature(quadrature: str) -> None:
    if quadrature not in QUADRATURES:
        raise ValueError(f"quadrature must be 'soft' or 'gausslegendre', got {quadrature!r}.")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be 'integral', 'component' or 'norm', got {normalization!r}.")


def _check_resolution(name: str, res) -> int:
    value = static_int(res)
    if value is None or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {res!r}.")
    return value


def _check_lmax(lmax, function: str) -> int:
    """``lmax`` as a non-negative int; a negative or non-integer degree would give an empty or nonsensical grid."""
    value = static_int(lmax)
    if value is None:
        raise TypeError(f"{function}: lmax must be a non-negative int, got {lmax!r} of type {type(lmax).__name__}")
    if value < 0:
        raise ValueError(f"{function}: lmax must be a non-negative int, got {value}")
    return value


def _check_parity_value(name: str, p) -> None:
    if p not in (-1, 1):
        raise ValueError(f"Parity {name} must be +1 (even) or -1 (odd), got {p!r}.")


def _parity_of_even_and_odd_degrees(irreps: Irreps) -> Tuple[Optional[int], Optional[int]]:
    r"""The common parity of the even-``l`` irreps and that of the odd-``l`` irreps (``None`` where there are none).

    A signal with parities ``(p_val, p_arg)`` has coefficients of parity :math:`p_{val} p_{arg}^l`, so all even
    degrees share one parity (``p_val``) and all odd degrees another (``p_val * p_arg``).
    """
    found = ({ir.p for _, ir in irreps if ir.l % 2 == 0}, {ir.p for _, ir in irreps if ir.l % 2 == 1})
    if any(len(parities) > 1 for parities in found):
        raise ValueError(
            f"The irreps {irreps} mix parities within the even or within the odd degrees, so they are not the "
            "coefficients of a signal on the sphere (degree l must have parity p_val * p_arg**l). "
            "Use irreps such as s2_irreps(lmax, p_val, p_arg)."
        )
    return tuple(next(iter(parities), None) for parities in found)


def _check_parities(irreps: Irreps, p_val: Optional[int] = None, p_arg: Optional[int] = None):
    r"""Reconcile the coefficient irreps with the given ``p_val`` / ``p_arg`` (either may be ``None``).

    Every known value (from the irreps or from the arguments) pins down part of the pattern
    :math:`p_l = p_{val} p_{arg}^l`; a contradiction raises ``ValueError``.  Returns ``(p_val, p_arg)``, with
    ``None`` for what neither the irreps nor the arguments determine.
    """
    p_even, p_odd = _parity_of_even_and_odd_degrees(irreps)

    def contradiction(expected_even, expected_odd):
        return ValueError(
            f"The irreps {irreps} have parities (even l: {p_even}, odd l: {p_odd}) that are not compatible with "
            f"p_val={p_val}, p_arg={p_arg}, which require (even l: {expected_even}, odd l: {expected_odd}). "
            "Change the irreps' parities or the given p_val / p_arg."
        )

    if p_val is not None:
        if p_even not in (None, p_val):
            raise contradiction(p_val, None if p_arg is None else p_val * p_arg)
        p_even = p_val
    if p_arg is not None:
        if p_even is not None:
            if p_odd not in (None, p_even * p_arg):
                raise contradiction(p_even, p_even * p_arg)
            p_odd = p_even * p_arg
        elif p_odd is not None:
            p_even = p_odd * p_arg
    if p_even is None or p_odd is None:
        return p_even, None
    return p_even, p_even * p_odd


def _check_unit_multiplicities(irreps: Irreps) -> None:
    if not all(mul == 1 for mul, _ in irreps.regroup()):
        raise ValueError(
            f"Multiplicities should be ones: a signal has one coefficient block per degree l, got irreps {irreps}. "
            "Split repeated irreps into separate signals (an extra leading axis)."
        )


def _check_vector_irreps(name: str, x: IrrepsArray) -> None:
    """``x`` must hold 3d vectors: a single ``1o`` (ordinary points) or ``1e`` (pseudo-vector points)."""
    if x.irreps not in (Irreps("1o"), Irreps("1e")):
        raise ValueError(
            f"{name} must be a vector on the sphere with irreps 1o or 1e, but its irreps are {x.irreps}. "
            f"Wrap the xyz coordinates as IrrepsArray('1o', ...)."
        )


def _coefficient_parities(irreps: Irreps, p_val: Optional[int], p_arg: Optional[int]) -> Tuple[int, int]:
    """``(p_val, p_arg)`` of the signal described by coefficients with these irreps, for :func:`to_s2grid`."""
    if (p_val is None) != (p_arg is None):
        raise ValueError(
            f"Got p_val={p_val} and p_arg={p_arg}: give both of them, or leave both None to read them from the irreps."
        )
    p_val, p_arg = _check_parities(irreps, p_val, p_arg)
    if p_val is None or p_arg is None:
        raise ValueError(
            f"p_val and p_arg cannot be determined: the irreps {irreps} lack an even or an odd degree, which "
            "leaves the parity pattern open. Pass p_val= and p_arg= to to_s2grid."
        )
    return p_val, p_arg


# ----------------------------------------------------------------------------------------------------------------
# grid and quadrature (numpy, float64)
# ----------------------------------------------------------------------------------------------------------------


def _soft_weights(res_beta: int) -> np.ndarray:
    r"""Kostelec-Rockmore quadrature weights for ``beta_j = pi (2j + 1) / (2 res_beta)`` (sum 2)."""
    if res_beta % 2 != 0:
        # (e3nn-jax asserts on this)
        raise InvalidValueError(
            f"res_beta must be even for the 'soft' quadrature, got {res_beta}; use an even res_beta."
        )
    j = np.arange(res_beta)[:, None]
    k = np.arange(res_beta // 2)[None, :]
    series = np.sum(np.sin((2 * j + 1) * (2 * k + 1) * np.pi / (2 * res_beta)) / (2 * k + 1), axis=1)
    return 4.0 / res_beta * np.sin(np.pi * (2 * np.arange(res_beta) + 1) / (2 * res_beta)) * series


@functools.lru_cache(maxsize=None)
def _quadrature(res_beta: int, quadrature: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(y, qw)``: polar nodes increasing in ``[-1, 1]`` and their weights normalised to sum 1."""
    _check_quadrature(quadrature)
    _check_resolution("res_beta", res_beta)
    if quadrature == "soft":
        betas = (np.arange(res_beta) + 0.5) / res_beta * np.pi
        y, qw = -np.cos(betas), _soft_weights(res_beta)  # minus: y runs from -1 to 1 as for Gauss-Legendre
    else:
        y, qw = np.polynomial.legendre.leggauss(res_beta)
    y.flags.writeable = False
    qw = qw / 2.0
    qw.flags.writeable = False
    return y, qw


def _quadrature_weights(res_beta: int, *, quadrature: str) -> Tuple[np.ndarray, np.ndarray]:
    return tuple(np.array(v) for v in _quadrature(res_beta, quadrature))


def _s2grid(res_beta: int, res_alpha: int, quadrature: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, alpha, qw)`` of the grid, numpy float64."""
    y, qw = _quadrature_weights(res_beta, quadrature=quadrature)
    alpha = np.arange(_check_resolution("res_alpha", res_alpha)) / res_alpha * 2 * np.pi
    return y, alpha, qw


def _s2grid_vectors(y, alpha):
    """Unit vectors of the grid points, shape ``(len(y), len(alpha), 3)``."""
    y = jnp.asarray(y)
    alpha = jnp.asarray(alpha)
    r = jnp.sqrt(1.0 - y[:, None] ** 2)
    return jnp.stack([r * jnp.sin(alpha), y[:, None] * jnp.ones_like(alpha), r * jnp.cos(alpha)], axis=2)


def _azimuthal_basis(lmax: int, alpha: np.ndarray) -> np.ndarray:
    r"""``S_m(alpha)``, shape ``(a, 2 lmax + 1)`` for ``m = -lmax..lmax``.

    :math:`\sqrt2\sin|m|\alpha` for ``m < 0``, 1 for ``m = 0``, :math:`\sqrt2\cos m\alpha` for ``m > 0``.
    """
    m = np.arange(-lmax, lmax + 1)
    a = np.asarray(alpha)[:, None]
    return np.where(m < 0, np.sqrt(2) * np.sin(-m * a), np.where(m > 0, np.sqrt(2) * np.cos(m * a), 1.0))


def _normalization(lmax: int, normalization: str, direction: str, lmax_in: Optional[int] = None) -> np.ndarray:
    r"""Per-``l`` factor between coefficients and grid values (``direction`` ``"to_s2"`` or ``"from_s2"``).

    ``"integral"``: grid values are :math:`\sum c_l^m \sqrt{4\pi} Y_l^m` with :math:`Y_l^m` orthonormal, so the
    coefficients are sphere *averages* of :math:`f \sqrt{4\pi} Y_l^m` (a constant 1 has :math:`c_0 = 1`).
    ``"component"``/``"norm"`` rescale per degree as e3nn-jax does (the ``from_s2`` factor inverts the ``to_s2``
    one, with ``lmax_in`` the degree the input signal was built with).
    """
    _check_normalization(normalization)
    l = np.arange(lmax + 1, dtype=np.float64)
    s4pi = np.sqrt(4 * np.pi)
    if normalization == "integral":
        return np.full(lmax + 1, s4pi)
    if normalization == "component":
        factor = np.sqrt(2 * l + 1) * np.sqrt(lmax + 1)
        return s4pi / factor if direction == "to_s2" else s4pi * factor
    if direction == "to_s2":
        return np.full(lmax + 1, s4pi / np.sqrt(lmax + 1))
    return np.full(lmax + 1, s4pi * np.sqrt((lmax if lmax_in is None else lmax_in) + 1))


@functools.lru_cache(maxsize=None)
def _beta_matrix(
    ls: Tuple[int, ...],
    res_beta: int,
    quadrature: str,
    normalization: str,
    direction: str,
    lmax_in: Optional[int],
) -> np.ndarray:
    r"""Float64 matrix ``[m, b, i]`` (``m = -lmax..lmax``) linking coefficient ``i`` to Fourier mode ``m`` of row ``b``.

    Entry ``(lmax + m_i, b, i)`` is :math:`\bar P_{l_i}^{|m_i|}(y_b)` times the normalisation of :math:`l_i`, and for
    ``"from_s2"`` also the quadrature weight ``qw_b``; all other entries are zero.
    """
    lmax = max(ls)
    y, qw = _quadrature(res_beta, quadrature)
    p = normalized_legendre_table(lmax, np.asarray(y, np.float64), xp=np)  # [l, m, b]
    n = _normalization(lmax, normalization, direction, lmax_in)
    l_i = np.concatenate([np.full(2 * l + 1, l) for l in ls])
    m_i = np.concatenate([np.arange(-l, l + 1) for l in ls])
    out = np.zeros((2 * lmax + 1, res_beta, len(l_i)))
    columns = np.arange(len(l_i))
    out[lmax + m_i, :, columns] = (p[l_i, np.abs(m_i), :] * n[l_i, None]).reshape(len(l_i), res_beta)
    if direction == "from_s2":
        out = out * qw[None, :, None]
    out.flags.writeable = False
    return out


# ----------------------------------------------------------------------------------------------------------------
# azimuthal transforms
# ----------------------------------------------------------------------------------------------------------------


def _rfft(x: jax.Array, lmax: int) -> jax.Array:
    r"""Real Fourier coefficients ``sum_a x[..., a] S_m(alpha_a)`` for ``m = -lmax..lmax``, shape ``(..., 2lmax+1)``."""
    c = jnp.fft.rfft(x, axis=-1)[..., : lmax + 1]
    root2 = np.sqrt(2.0)
    negative = -root2 * jnp.flip(jnp.imag(c[..., 1:]), -1)  # sum x sin(m alpha) = -Im X_m
    return jnp.concatenate([negative, jnp.real(c[..., :1]), root2 * jnp.real(c[..., 1:])], axis=-1).astype(x.dtype)


def _irfft(x: jax.Array, res_alpha: int) -> jax.Array:
    r"""Inverse of :func:`_rfft` up to scale: ``sum_m x[..., m] S_m(alpha_a)`` on ``res_alpha`` (odd) points."""
    lmax = (x.shape[-1] - 1) // 2
    root2 = np.sqrt(2.0)
    # complex c_m with c_0 + 2 Re sum_m c_m e^{i m alpha} = x_0 + sqrt2 sum_m (x_m cos + x_{-m} sin)
    c = jnp.concatenate(
        [x[..., lmax : lmax + 1], (x[..., lmax + 1 :] - 1j * jnp.flip(x[..., :lmax], -1)) / root2], axis=-1
    )
    return (jnp.fft.irfft(c, n=res_alpha, axis=-1) * res_alpha).astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# SphericalSignal
# ----------------------------------------------------------------------------------------------------------------


class SphericalSignal:
    r"""A real signal on the sphere sampled on a grid, ``grid_values`` of shape ``(..., res_beta, res_alpha)``.

    Args:
        grid_values: values on the grid (see the module docstring for the layout).
        quadrature: ``"soft"`` or ``"gausslegendre"``, the beta quadrature of the grid.
        p_val: parity of the values under inversion (``+1`` or ``-1``).
        p_arg: parity of the argument: inversion maps :math:`f` to :math:`p_{val} f(p_{arg} x)`.
    """

    grid_values: jax.Array
    quadrature: str
    p_val: int
    p_arg: int

    def __init__(
        self,
        grid_values: jax.Array,
        quadrature: str,
        *,
        p_val: int = 1,
        p_arg: int = -1,
        _perform_checks: bool = True,
    ) -> None:
        if _perform_checks:  # skipped when rebuilding from a pytree or from an already-checked signal
            if len(grid_values.shape) < 2:
                raise ValueError(
                    f"A SphericalSignal needs grid_values of shape (..., res_beta, res_alpha), i.e. at least 2 "
                    f"axes, but got shape {grid_values.shape}. Sample the signal on a 2d (beta, alpha) grid."
                )
            _check_quadrature(quadrature)
            _check_parity_value("p_val", p_val)
            _check_parity_value("p_arg", p_arg)
        self.grid_values = grid_values
        self.quadrature = quadrature
        self.p_val = p_val
        self.p_arg = p_arg

    @staticmethod
    def from_function(
        func: Callable[[jax.Array], float],
        res_beta: int,
        res_alpha: int,
        quadrature: str,
        *,
        p_val: int = 1,
        p_arg: int = -1,
        dtype: jnp.dtype = jnp.float32,
    ) -> "SphericalSignal":
        """Sample ``func`` (a function of a unit vector ``(3,)``) on the grid."""
        y, alpha, _ = _s2grid(res_beta, res_alpha, quadrature)
        points = _s2grid_vectors(y, alpha).reshape(-1, 3)  # one vmap over all grid points
        values = jnp.asarray(jax.vmap(func)(points), dtype)
        values = values.reshape((len(y), len(alpha)) + values.shape[1:])
        return SphericalSignal(values, quadrature, p_val=p_val, p_arg=p_arg)

    @staticmethod
    def zeros(
        res_beta: int,
        res_alpha: int,
        quadrature: str,
        *,
        p_val: int = 1,
        p_arg: int = -1,
        dtype: jnp.dtype = jnp.float32,
    ) -> "SphericalSignal":
        """The zero signal on a ``(res_beta, res_alpha)`` grid."""
        return SphericalSignal(jnp.zeros((res_beta, res_alpha), dtype), quadrature, p_val=p_val, p_arg=p_arg)

    def __repr__(self) -> str:
        values = self.grid_values
        if getattr(values, "ndim", 0) < 2:  # e.g. a placeholder leaf while jax rebuilds the pytree
            return f"SphericalSignal({values})"
        header = ", ".join(
            [
                f"shape={self.shape}",
                f"res_beta={self.res_beta}",
                f"res_alpha={self.res_alpha}",
                f"quadrature={self.quadrature}",
                f"p_val={self.p_val}",
                f"p_arg={self.p_arg}",
            ]
        )
        return f"SphericalSignal({header})\n{values}"

    def _new_values(self, grid_values: jax.Array, p_val: Optional[int] = None) -> "SphericalSignal":
        """A signal on this grid with other values (and optionally another ``p_val``), without re-checking."""
        return SphericalSignal(
            grid_values,
            self.quadrature,
            p_val=self.p_val if p_val is None else p_val,
            p_arg=self.p_arg,
            _perform_checks=False,
        )

    # -- arithmetic ----------------------------------------------------------------------------------------------

    def _check_combinable(self, other: "SphericalSignal", operation: str, *, same_p_val: bool) -> None:
        """A pointwise ``operation`` needs the same grid points and ``p_arg`` (and ``p_val`` if ``same_p_val``)."""
        if not isinstance(other, SphericalSignal):
            raise TypeError(f"{operation} expects another SphericalSignal, got {type(other).__name__}.")
        if self.quadrature != other.quadrature or self.grid_resolution != other.grid_resolution:
            raise ValueError(
                f"{operation} works point by point, so both signals must live on the same grid; got "
                f"{self.quadrature} {self.grid_resolution} and {other.quadrature} {other.grid_resolution} "
                "(quadrature, (res_beta, res_alpha)). Bring one onto the other's grid with .resample()."
            )
        if self.p_arg != other.p_arg:
            raise ValueError(
                f"{operation} of signals with p_arg={self.p_arg} and p_arg={other.p_arg} would not transform "
                "with a definite parity under inversion. Use signals with the same p_arg."
            )
        if same_p_val and self.p_val != other.p_val:
            raise ValueError(
                f"{operation} of signals with p_val={self.p_val} and p_val={other.p_val} has no definite parity. "
                "Use signals with the same p_val."
            )

    def __mul__(self, other) -> "SphericalSignal":
        """Pointwise product with a signal on the same grid, or scaling by scalars (array or ``0e`` IrrepsArray)."""
        if isinstance(other, SphericalSignal):
            self._check_combinable(other, "Multiplication", same_p_val=False)
            # parities multiply: (p f)(p' g) = (p p') f g
            return self._new_values(self.grid_values * other.grid_values, p_val=self.p_val * other.p_val)
        if isinstance(other, IrrepsArray):
            if other.irreps != Irreps("0e"):
                raise ValueError(
                    f"A SphericalSignal can only be scaled by even scalars (irreps 0e), got irreps {other.irreps}."
                )
            other = other.array[..., 0]
        # one factor per signal: the leading (batch) shape broadcasts against the signal's, the grid axes are added
        factor = jnp.expand_dims(jnp.asarray(other), (-2, -1))
        return self._new_values(self.grid_values * factor)

    def __rmul__(self, other) -> "SphericalSignal":
        return self * other

    def __truediv__(self, scalar) -> "SphericalSignal":
        return self * (1 / scalar)

    def __add__(self, other: "SphericalSignal") -> "SphericalSignal":
        """Sum of two signals on the same grid with the same parities."""
        self._check_combinable(other, "Addition", same_p_val=True)
        return self._new_values(self.grid_values + other.grid_values)

    def __sub__(self, other: "SphericalSignal") -> "SphericalSignal":
        return self + (-other)

    def __neg__(self) -> "SphericalSignal":
        return self._new_values(-self.grid_values)

    # -- shape and grid ------------------------------------------------------------------------------------------

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.grid_values.shape

    @property
    def dtype(self):
        return self.grid_values.dtype

    @property
    def ndim(self) -> int:
        return self.grid_values.ndim

    @property
    def res_beta(self) -> int:
        """Number of grid rows (polar direction)."""
        return self.grid_values.shape[-2]

    @property
    def res_alpha(self) -> int:
        """Number of grid columns (azimuthal direction)."""
        return self.grid_values.shape[-1]

    @property
    def grid_resolution(self) -> Tuple[int, int]:
        return (self.res_beta, self.res_alpha)

    @property
    def grid_y(self) -> np.ndarray:
        """``y`` (cosine of the polar angle) of each grid row, shape ``(res_beta,)``."""
        return _s2grid(self.res_beta, self.res_alpha, self.quadrature)[0]

    @property
    def grid_alpha(self) -> np.ndarray:
        """Azimuth of each grid column, shape ``(res_alpha,)``."""
        return _s2grid(self.res_beta, self.res_alpha, self.quadrature)[1]

    @property
    def grid_vectors(self) -> jax.Array:
        """Unit vectors of the grid points, shape ``(res_beta, res_alpha, 3)``."""
        y, alpha, _ = _s2grid(self.res_beta, self.res_alpha, self.quadrature)
        return _s2grid_vectors(y, alpha)

    @property
    def quadrature_weights(self) -> np.ndarray:
        """Weights of the grid rows, summing to 1, shape ``(res_beta,)``."""
        return _s2grid(self.res_beta, self.res_alpha, self.quadrature)[2]

    # -- transforms ----------------------------------------------------------------------------------------------

    def _coefficients(self, lmax: int) -> IrrepsArray:
        """Spherical harmonic coefficients of degree ``0 .. lmax`` (with this signal's parities)."""
        lmax = _check_lmax(lmax, "SphericalSignal (resample or transform_by_*)")
        return from_s2grid(self, s2_irreps(lmax, self.p_val, self.p_arg))

    def _synthesize(self, coeffs: IrrepsArray, grid: Tuple[int, int], quadrature: str) -> "SphericalSignal":
        """Signal of ``coeffs`` on a ``(res_beta, res_alpha)`` grid, keeping this signal's parities."""
        return to_s2grid(coeffs, *grid, quadrature=quadrature, p_val=self.p_val, p_arg=self.p_arg)

    def resample(
        self, res_beta: int, res_alpha: int, lmax: int, quadrature: Optional[str] = None
    ) -> "SphericalSignal":
        """Re-sample on another grid (and optionally quadrature) through the coefficients up to degree ``lmax``."""
        target_quadrature = self.quadrature if quadrature is None else quadrature
        return self._synthesize(self._coefficients(lmax), (res_beta, res_alpha), target_quadrature)

    def _rotate_coefficients(self, lmax: int, rotate: Callable[[IrrepsArray], IrrepsArray]) -> "SphericalSignal":
        """Rotate through the coefficients up to ``lmax`` (exact for signals band-limited to ``lmax``)."""
        return self._synthesize(rotate(self._coefficients(lmax)), self.grid_resolution, self.quadrature)

    def transform_by_angles(self, alpha: float, beta: float, gamma: float, lmax: int) -> "SphericalSignal":
        return self._rotate_coefficients(lmax, lambda c: c.transform_by_angles(alpha=alpha, beta=beta, gamma=gamma))

    def transform_by_matrix(self, R: jax.Array, lmax: int) -> "SphericalSignal":
        return self._rotate_coefficients(lmax, lambda c: c.transform_by_matrix(R=R))

    def transform_by_axis_angle(self, axis: jax.Array, angle: float, lmax: int) -> "SphericalSignal":
        return self._rotate_coefficients(lmax, lambda c: c.transform_by_axis_angle(axis=axis, angle=angle))

    def transform_by_quaternion(self, q: jax.Array, lmax: int) -> "SphericalSignal":
        return self._rotate_coefficients(lmax, lambda c: c.transform_by_quaternion(q=q))

    def apply(self, func: Callable[[jax.Array], jax.Array]) -> "SphericalSignal":
        """Apply ``func`` pointwise.  An odd-valued signal needs an even or odd ``func`` (else ``ValueError``).

        As in e3nn-jax the result keeps this signal's ``p_val``.
        """
        if self.p_val == -1:
            from e3nn_fast.activation import parity_function  # local: activation imports far more than we need here

            if parity_function(func) == 0:
                raise ValueError(
                    f"apply: this signal is odd (p_val=-1), so {func} must be an even or an odd function for the "
                    "result to keep a definite parity, but it is neither. Use an even or odd function, or apply "
                    "it to an even signal."
                )
        return self.replace_values(grid_values=func(self.grid_values))

    def replace_values(self, grid_values: jax.Array) -> "SphericalSignal":
        """Same grid and parities, new values."""
        return SphericalSignal(grid_values, self.quadrature, p_val=self.p_val, p_arg=self.p_arg)

    def integrate(self) -> IrrepsArray:
        r"""Integral over the sphere (a constant 1 integrates to :math:`4\pi`), an IrrepsArray ``0e`` or ``0o``."""
        qw = jnp.asarray(self.quadrature_weights, self.dtype)
        values = jnp.sum(qw[:, None] * self.grid_values, axis=-2)
        values = jnp.mean(values, axis=-1, keepdims=True) * 4 * jnp.pi
        return IrrepsArray({1: "0e", -1: "0o"}[self.p_val], values)

    def sample(self, key: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """Draw a grid point with probability proportional to (non-negative) values times the quadrature weights.

        Returns ``(beta_index, alpha_index)`` with the signal's leading shape.
        """
        batch_shape = self.shape[:-2]
        n_signals = math.prod(batch_shape)
        # one key per signal, in row-major order of the leading axes
        keys = jax.random.split(key, n_signals)
        values = self.grid_values.reshape((n_signals,) + self.grid_resolution)
        draw = functools.partial(_draw_grid_point, row_weights=jnp.asarray(self.quadrature_weights))
        beta_index, alpha_index = jax.vmap(draw)(keys, values)
        return beta_index.reshape(batch_shape), alpha_index.reshape(batch_shape)

    def __getitem__(self, index) -> "SphericalSignal":
        """Index the leading (batch) axes; the two grid axes must remain."""
        grid_values = self.grid_values[index]
        if grid_values.ndim < 2:
            raise ValueError(
                f"Indexing a SphericalSignal of shape {self.shape} with {index!r} gives shape {grid_values.shape}, "
                "which lost a grid axis (res_beta, res_alpha). Index only the leading axes, or index "
                "`.grid_values` to get a plain array."
            )
        return self._new_values(grid_values)


def _draw_grid_point(key: jax.Array, values: jax.Array, row_weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Sample ``(beta_index, alpha_index)`` from one ``(res_beta, res_alpha)`` density: the row first, by its
    weighted row sum (the marginal), then the column within that row (the conditional)."""
    row_key, column_key = jax.random.split(key)
    res_beta, res_alpha = values.shape
    row_probability = row_weights * values.sum(axis=1)
    beta_index = jax.random.choice(row_key, jnp.arange(res_beta), p=row_probability)
    alpha_index = jax.random.choice(column_key, jnp.arange(res_alpha), p=values[beta_index])
    return beta_index, alpha_index


jax.tree_util.register_pytree_node(
    SphericalSignal,
    lambda s: ((s.grid_values,), (s.quadrature, s.p_val, s.p_arg)),
    lambda aux, leaves: SphericalSignal(
        leaves[0], quadrature=aux[0], p_val=aux[1], p_arg=aux[2], _perform_checks=False
    ),
)


# ----------------------------------------------------------------------------------------------------------------
# coefficients <-> grid
# ----------------------------------------------------------------------------------------------------------------


def s2_irreps(lmax: int, p_val: int = 1, p_arg: int = -1) -> Irreps:
    r"""Irreps ``0 .. lmax`` (multiplicity 1) of the coefficients of a signal with parities ``(p_val, p_arg)``.

    Degree ``l`` has parity :math:`p_{val} p_{arg}^l`.
    """
    lmax = _check_lmax(lmax, "s2_irreps")
    return Irreps([(1, (l, p_val * p_arg**l)) for l in range(lmax + 1)])


def s2_dirac(
    position: Union[jax.Array, IrrepsArray], lmax: int, *, p_val: int = 1, p_arg: int = -1
) -> IrrepsArray:
    r"""Coefficients up to ``lmax`` of a Dirac delta at ``position`` (normalised to the unit sphere), integral 1."""
    lmax = _check_lmax(lmax, "s2_dirac")
    _check_parity_value("p_val", p_val)
    _check_parity_value("p_arg", p_arg)
    if isinstance(position, IrrepsArray):
        _check_vector_irreps("position", position)
        if position.irreps[0].ir.p != p_arg:
            raise ValueError(f"Input ({position.irreps}) and p_arg={p_arg} must have a compatible parity.")
        position = position.array
    # the values of Y_l^m do not depend on the parity labels: evaluate with the standard ones, then relabel
    # (this also covers odd p_val, which e3nn-jax rejects)
    values = spherical_harmonics(s2_irreps(lmax), position, normalize=True, normalization="integral").array
    return IrrepsArray(s2_irreps(lmax, p_val, p_arg), values / jnp.sqrt(4 * jnp.pi))


def get_s2fft_grid_resolution(lmax: int) -> Tuple[int, int]:
    """``(res_beta, res_alpha)`` of the grid S2FFT uses for degree ``lmax``."""
    lmax = _check_lmax(lmax, "get_s2fft_grid_resolution")
    return (2 * lmax + 2, 2 * lmax + 1)


def _reject_s2fft(use_s2fft: bool) -> None:
    if use_s2fft:
        raise NotImplementedError("use_s2fft=True is not supported by e3nn_fast; the built-in transform is exact.")


def to_s2grid(
    coeffs: IrrepsArray,
    res_beta: int,
    res_alpha: int,
    *,
    quadrature: str,
    normalization: str = "integral",
    fft: bool = True,
    p_val: Optional[int] = None,
    p_arg: Optional[int] = None,
    use_s2fft: bool = False,
) -> SphericalSignal:
    r"""Evaluate :math:`f(x) = \sum_{l,m} c_l^m Y_l^m(x)` on a grid (inverse of :func:`from_s2grid`).

    Args:
        coeffs: coefficients ``(..., irreps)``, multiplicity 1 per degree, parities ``p_val * p_arg**l``.
        res_beta, res_alpha: grid resolution (``res_alpha`` odd and at least ``2 lmax + 1`` with ``fft=True``).
        quadrature: ``"soft"`` or ``"gausslegendre"``.
        normalization: ``"integral"``, ``"component"`` or ``"norm"``: scaling of the basis.
        fft: azimuthal sum by FFT (``True``) or a dense matrix (``False``); same result.
        p_val, p_arg: parities, both or neither; needed when the irreps do not determine them.

    Returns:
        ``SphericalSignal`` of shape ``(..., res_beta, res_alpha)``.
    """
    _reject_s2fft(use_s2fft)
    if not isinstance(coeffs, IrrepsArray):
        raise TypeError(f"to_s2grid expects an IrrepsArray of coefficients, got {type(coeffs).__name__}.")
    _check_quadrature(quadrature)
    _check_normalization(normalization)
    res_beta = _check_resolution("res_beta", res_beta)
    res_alpha = _check_resolution("res_alpha", res_alpha)
    coeffs = coeffs.regroup()
    _check_unit_multiplicities(coeffs.irreps)
    p_val, p_arg = _coefficient_parities(coeffs.irreps, p_val, p_arg)
    ls = tuple(coeffs.irreps.ls)
    lmax = ls[-1]
    if fft:
        if res_alpha % 2 == 0:
            raise ValueError(
                f"to_s2grid with fft=True needs an odd res_alpha, got {res_alpha}; use an odd one or fft=False."
            )
        if res_alpha < 2 * lmax + 1:
            raise ValueError(f"res_alpha={res_alpha} is too small for lmax={lmax} with fft=True: need 2*lmax+1.")
    signal = _coefficients_to_grid(ls, res_beta, res_alpha, quadrature, normalization, bool(fft), coeffs.array)
    return SphericalSignal(signal, quadrature=quadrature, p_val=p_val, p_arg=p_arg)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _coefficients_to_grid(ls, res_beta, res_alpha, quadrature, normalization, fft, coeffs: jax.Array) -> jax.Array:
    """``(..., dim) -> (..., res_beta, res_alpha)``: beta matrix, then the azimuthal synthesis."""
    dtype = coeffs.dtype
    beta_matrix = jnp.asarray(_beta_matrix(ls, res_beta, quadrature, normalization, "to_s2", None), dtype)
    signal_b = jnp.einsum("mbi,...i->...bm", beta_matrix, coeffs)  # [..., beta, m]
    if fft:
        return _irfft(signal_b, res_alpha)
    _, alpha, _ = _s2grid(res_beta, res_alpha, quadrature)
    return jnp.einsum("...bm,am->...ba", signal_b, jnp.asarray(_azimuthal_basis(max(ls), alpha), dtype))


def from_s2grid(
    x: SphericalSignal,
    irreps: Irreps,
    *,
    normalization: str = "integral",
    lmax_in: Optional[int] = None,
    fft: bool = True,
    use_s2fft: bool = False,
) -> IrrepsArray:
    r"""Coefficients :math:`c_l^m = \int f\, Y_l^m` of a grid signal by quadrature (inverse of :func:`to_s2grid`).

    Exact for signals band-limited to ``L`` when the quadrature integrates degree ``L + lmax`` exactly.

    Args:
        x: the signal, shape ``(..., res_beta, res_alpha)``.
        irreps: irreps of the output (multiplicity 1 per degree, parities compatible with the signal's).
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.
        lmax_in: degree the signal was built with; only used by ``normalization="norm"``.
        fft: azimuthal integral by FFT (needs ``res_alpha >= 2 lmax``) or a dense matrix; same result.

    Returns:
        ``IrrepsArray`` ``(..., irreps.dim)``.
    """
    _reject_s2fft(use_s2fft)
    if not isinstance(x, SphericalSignal):
        raise TypeError(f"from_s2grid expects a SphericalSignal, got {type(x).__name__}.")
    _check_normalization(normalization)
    irreps = Irreps(irreps)
    _check_unit_multiplicities(irreps)
    _check_parities(irreps, x.p_val, x.p_arg)
    res_beta, res_alpha = x.grid_resolution
    ls = tuple(irreps.ls)
    lmax = max(ls)
    if lmax_in is None:
        lmax_in = lmax
    if fft and res_alpha // 2 < lmax:
        raise ValueError(f"res_alpha={res_alpha} is too small for lmax={lmax} with fft=True: need 2*lmax.")
    values = _grid_to_coefficients(ls, x.quadrature, normalization, int(lmax_in), bool(fft), x.grid_values)
    return IrrepsArray(irreps, values)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _grid_to_coefficients(ls, quadrature, normalization, lmax_in, fft, grid_values: jax.Array) -> jax.Array:
    """``(..., res_beta, res_alpha) -> (..., dim)``: azimuthal analysis, then the weighted beta matrix."""
    dtype = grid_values.dtype
    res_beta, res_alpha = grid_values.shape[-2:]
    lmax = max(ls)
    beta_matrix = jnp.asarray(_beta_matrix(ls, res_beta, quadrature, normalization, "from_s2", lmax_in), dtype)
    if fft:
        int_a = _rfft(grid_values, lmax) / res_alpha  # [..., beta, m]
    else:
        _, alpha, _ = _s2grid(res_beta, res_alpha, quadrature)
        int_a = jnp.einsum("...ba,am->...bm", grid_values, jnp.asarray(_azimuthal_basis(lmax, alpha), dtype))
        int_a = int_a / res_alpha
    return jnp.einsum("mbi,...bm->...i", beta_matrix, int_a)


def to_s2point(coeffs: IrrepsArray, point: IrrepsArray, *, normalization: str = "integral") -> IrrepsArray:
    r"""Evaluate the signal of ``coeffs`` (``(*shape1, irreps)``) at points (``(*shape2, 3)``, irreps ``1o``/``1e``).

    Returns an IrrepsArray ``0e``/``0o`` (after the signal's ``p_val``) of shape ``(*shape1, *shape2, 1)``.
    """
    _check_normalization(normalization)
    coeffs = coeffs.regroup()
    _check_unit_multiplicities(coeffs.irreps)
    if not isinstance(point, IrrepsArray):
        raise TypeError(
            f"point must be an IrrepsArray of 3d vectors (irreps 1o or 1e), got {type(point).__name__}. "
            "Wrap the coordinates as IrrepsArray('1o', ...)."
        )
    _check_vector_irreps("point", point)
    p_arg = point.irreps[0].ir.p
    p_val, _ = _check_parities(coeffs.irreps, None, p_arg)
    ls = list(coeffs.irreps.ls)
    sh = spherical_harmonics(ls, point, True, "integral").array  # [*shape2, dim]
    n = _normalization(max(ls), normalization, "to_s2")
    n_per_component = np.concatenate([np.full(2 * l + 1, n[l]) for l in ls])
    sh = sh * jnp.asarray(n_per_component, sh.dtype)
    shape1, shape2 = coeffs.shape[:-1], point.shape[:-1]
    values = jnp.einsum("ai,bi->ab", coeffs.array.reshape((-1, coeffs.shape[-1])), sh.reshape((-1, sh.shape[-1])))
    return IrrepsArray({1: "0e", -1: "0o"}[p_val], values.reshape(shape1 + shape2 + (1,)))


# ----------------------------------------------------------------------------------------------------------------
# m = 0 (axially symmetric) transforms
# ----------------------------------------------------------------------------------------------------------------


def _m0_matrix(lmax: int, res_beta: int, quadrature: str, normalization: str, direction: str) -> np.ndarray:
    r"""``[b, l]`` matrix of :math:`\bar P_l^0(y_b)` times the normalisation (and ``qw_b`` for ``from_s2``)."""
    _check_quadrature(quadrature)
    y, qw = _quadrature(res_beta, quadrature)
    p = normalized_legendre_table(lmax, np.asarray(y), xp=np)[:, 0, :].T  # [b, l]
    p = p * _normalization(lmax, normalization, direction, lmax)[None, :]
    return p * qw[:, None] if direction == "from_s2" else p


def legendre_transform_to_s2grid(
    coeffs: jax.Array, res_beta: int, *, quadrature: str, normalization: str = "integral"
) -> jax.Array:
    r"""Values along beta of an axially symmetric signal from its ``m = 0`` coefficients ``(..., lmax + 1)``.

    Returns ``(..., res_beta)``; inverse of :func:`legendre_transform_from_s2grid`.
    """
    coeffs = jnp.asarray(coeffs)
    lmax = coeffs.shape[-1] - 1
    if lmax < 0:
        raise ValueError("legendre_transform_to_s2grid: coeffs must have at least one entry on the last axis.")
    matrix = jnp.asarray(_m0_matrix(lmax, res_beta, quadrature, normalization, "to_s2"), coeffs.dtype)
    return jnp.einsum("bi,...i->...b", matrix, coeffs)


def legendre_transform_from_s2grid(
    x_beta: jax.Array, lmax: int, res_beta: int, *, quadrature: str, normalization: str = "integral"
) -> jax.Array:
    r"""``m = 0`` coefficients ``(..., lmax + 1)`` of an axially symmetric signal given along beta ``(..., res_beta)``."""
    lmax = _check_lmax(lmax, "legendre_transform_from_s2grid")
    x_beta = jnp.asarray(x_beta)
    if x_beta.shape[-1] != res_beta:
        raise ValueError(f"x_beta has {x_beta.shape[-1]} values along beta but res_beta={res_beta}.")
    matrix = jnp.asarray(_m0_matrix(lmax, res_beta, quadrature, normalization, "from_s2"), x_beta.dtype)
    return jnp.einsum("bi,...b->...i", matrix, x_beta)


def betas_to_spherical_signal(x_beta: jax.Array, res_alpha: int, *, quadrature: str) -> SphericalSignal:
    """Axially symmetric ``SphericalSignal`` ``(..., res_beta, res_alpha)`` from values along beta ``(..., res_beta)``."""
    x_beta = jnp.asarray(x_beta)
    return SphericalSignal(jnp.repeat(x_beta[..., None], res_alpha, axis=-1), quadrature)


def m0_values_to_irrepsarray(m0_values: jax.Array, lmax: int, p_val: int, p_arg: int) -> IrrepsArray:
    """Place ``m = 0`` coefficients ``(..., lmax + 1)`` into a full ``s2_irreps(lmax, p_val, p_arg)`` IrrepsArray."""
    lmax = _check_lmax(lmax, "m0_values_to_irrepsarray")
    m0_values = jnp.asarray(m0_values)
    if m0_values.shape[-1] != lmax + 1:
        raise ValueError(f"m0_values must have lmax + 1 = {lmax + 1} entries on the last axis, got {m0_values.shape}.")
    m0_indices = np.array([l * l + l for l in range(lmax + 1)])  # flat index of (l, m = 0)
    out = jnp.zeros(m0_values.shape[:-1] + ((lmax + 1) ** 2,), m0_values.dtype)
    return IrrepsArray(s2_irreps(lmax, p_val, p_arg), out.at[..., m0_indices].set(m0_values))
