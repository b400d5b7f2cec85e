r"""Representations of :math:`SO(3)` and :math:`SU(2)`: generators, Clebsch-Gordan coefficients, Wigner D.

Conventions (identical to e3nn-jax 0.21, so that numbers agree to rounding):

* **Real basis.** The irrep of degree :math:`l` acts on :math:`\mathbb{R}^{2l+1}`; the index ``i = 0..2l`` stands
  for the real spherical harmonic of order :math:`m = i - l`. For :math:`l = 1` this basis is the Cartesian
  basis :math:`(x, y, z)`, so :math:`D^1(R) = R`.
* **Axes.** :math:`y` is the polar axis. Euler angles are Y-X-Y:
  :math:`R(\alpha, \beta, \gamma) = R_y(\alpha) R_x(\beta) R_y(\gamma)` (:math:`\gamma` is applied first).
* **Complex basis.** :func:`change_basis_real_to_complex` is the unitary :math:`Q_l` with rows labelled by the
  complex (Condon-Shortley) :math:`m` and columns by the real index, i.e. the usual "real form" of the spherical
  harmonics multiplied by :math:`(-i)^l`; that extra phase makes the real Clebsch-Gordan coefficients real.
* **Generators.** ``generators(l)[a]`` is the real antisymmetric matrix :math:`X_a` with
  :math:`D^l(\exp(\theta\, L_a)) = \exp(\theta X_a)` where :math:`L_a` generates the rotation about axis
  :math:`a \in (x, y, z)`. ``su2_generators(j)`` are the complex ones, stacked as :math:`(-iJ_y, iJ_z, iJ_x)`
  in the basis :math:`m = -j..j`; ``generators(l) = Q^\dagger\, su2\_generators(l)\, Q``.
* **Clebsch-Gordan.** ``su2_clebsch_gordan(j1, j2, j3)[m1, m2, m3]`` is
  :math:`\langle j_1 m_1 j_2 m_2 | j_3 m_3\rangle / \sqrt{2 j_3 + 1}` (Condon-Shortley), so every non-zero block has
  unit Frobenius norm. ``clebsch_gordan(l1, l2, l3)`` is its image in the real basis; it is real, has unit
  Frobenius norm and satisfies :math:`(D^{l_1} \otimes D^{l_2})\, C = C\, D^{l_3}`. It is zero when the triangle rule
  fails.
* **Wigner D.** :func:`wigner_D` is :math:`D^l(R(\alpha, \beta, \gamma))`. Rotations about :math:`y` are sparse in
  the real basis (entry :math:`(m, m)` is :math:`\cos m\phi`, entry :math:`(m, -m)` is :math:`-\sin m\phi`), and
  :math:`D^l(R_x(\beta)) = K\, D^l(R_y(\beta))\, K` where :math:`K` is the (constant, symmetric, involutive)
  :math:`D^l` of the half-turn about :math:`(x + y)/\sqrt 2`, which swaps the :math:`x` and :math:`y` axes.
  :math:`K` is computed once per :math:`l` in numpy, so tracing only emits sines, cosines, flips and one matmul.
"""

import functools
import math
import numbers
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast._static_int import static_int
from e3nn_fast.errors import InvalidTypeError

__all__ = [
    "change_basis_real_to_complex",
    "clebsch_gordan",
    "generators",
    "su2_clebsch_gordan",
    "su2_generators",
    "wigner_D",
]


# ----------------------------------------------------------------------------------------------------------------
# input validation


def _check_l(l, name: str = "l", type_error: type = TypeError) -> int:
    """Return ``l`` as a Python int, or raise if it is not a non-negative integer.

    ``type_error`` is the class raised for a non-integer: :class:`InvalidTypeError` where e3nn-jax asserts on it.
    """
    value = static_int(l)
    if value is None:
        if isinstance(l, bool):
            raise type_error(f"{name} must be a non-negative integer, got the bool {l!r}")
        raise type_error(f"{name} must be a non-negative integer, got {l!r} of type {type(l).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return value


def _check_j(j, name: str = "j", type_error: type = TypeError) -> int:
    """Return ``2 j`` as a Python int, or raise if ``j`` is not a non-negative (half-)integer (``type_error`` as in
    :func:`_check_l`)."""
    if isinstance(j, bool) or not isinstance(j, numbers.Real):
        raise type_error(f"{name} must be a non-negative integer or half-integer, got {j!r}")
    two_j = 2 * j
    if two_j != round(two_j):
        raise ValueError(f"{name} must be a non-negative integer or half-integer, got {j!r}")
    two_j = int(round(two_j))
    if two_j < 0:
        raise ValueError(f"{name} must be a non-negative integer or half-integer, got {j!r}")
    return two_j


# ----------------------------------------------------------------------------------------------------------------
# SU(2)


def su2_generators(j: float) -> np.ndarray:
    r"""Generators of the spin-:math:`j` representation of :math:`SU(2)`.

    Args:
        j: non-negative integer or half-integer.

    Returns:
        complex array of shape ``(3, 2j+1, 2j+1)``: :math:`(-iJ_y, iJ_z, iJ_x)` in the basis :math:`m = -j, \dots, j`.
        These are anti-Hermitian and satisfy :math:`[X_a, X_b] = \epsilon_{abc} X_c` for the order (x, y, z) of the
        real basis (see :func:`generators`).
    """
    two_j = _check_j(j)
    half = two_j / 2
    m = np.arange(-two_j, two_j + 1, 2) / 2  # m = -j..j
    # <m+1| J+ |m> = sqrt(j(j+1) - m(m+1)); J+ sits below the diagonal since index = j + m.
    j_plus = np.diag(np.sqrt(half * (half + 1) - m[:-1] * (m[:-1] + 1)), k=-1)
    j_minus = j_plus.T
    jx = (j_plus + j_minus) / 2
    jy = (j_plus - j_minus) / 2j
    jz = np.diag(m)
    return np.stack([-1j * jy, 1j * jz, 1j * jx], axis=0)


def _su2_cg_coefficient(tj1: int, tm1: int, tj2: int, tm2: int, tj3: int) -> float:
    r""":math:`\langle j_1 m_1 j_2 m_2 | j_3, m_1 + m_2\rangle / \sqrt{2 j_3 + 1}` from Racah's formula.

    All spins are passed doubled so that half-integers stay integers. Racah's alternating sum is rewritten with
    binomials, :math:`\sum_k (-1)^k \binom{a}{k}\binom{b+d}{b-k}\binom{c+e}{c-k} / (a!\,(b+d)!\,(c+e)!)`, so its
    numerator is an exact integer: the large cancellations of the sum never touch floating point.
    """
    tm3 = tm1 + tm2
    f = lambda n2: math.factorial(n2 // 2)  # noqa: E731 - factorial of a doubled argument
    a = (tj1 + tj2 - tj3) // 2
    b = (tj1 - tm1) // 2
    c = (tj2 + tm2) // 2
    d = (tj3 - tj2 + tm1) // 2
    e = (tj3 - tj1 - tm2) // 2
    numerator = sum(
        (-1) ** k * math.comb(a, k) * math.comb(b + d, b - k) * math.comb(c + e, c - k)
        for k in range(max(0, -d, -e), min(a, b, c) + 1)
    )
    if numerator == 0:
        return 0.0
    sum_value = numerator / (math.factorial(a) * math.factorial(b + d) * math.factorial(c + e))
    # Squared prefactor, already divided by (2 j3 + 1).
    prefactor = (
        f(tj3 + tj1 - tj2) * f(tj3 - tj1 + tj2) * f(tj1 + tj2 - tj3) * f(tj3 + tm3) * f(tj3 - tm3)
        * f(tj1 - tm1) * f(tj1 + tm1) * f(tj2 - tm2) * f(tj2 + tm2)
    ) / f(tj1 + tj2 + tj3 + 2)
    return math.sqrt(prefactor) * sum_value


def _triangle(tj1: int, tj2: int, tj3: int) -> bool:
    """Whether ``j3`` appears in ``j1 x j2`` (triangle rule and integer ``j1 + j2 + j3``), spins doubled."""
    return abs(tj1 - tj2) <= tj3 <= tj1 + tj2 and (tj1 + tj2 + tj3) % 2 == 0


@functools.lru_cache(maxsize=None)
def _su2_clebsch_gordan_cached(tj1: int, tj2: int, tj3: int) -> np.ndarray:
    out = np.zeros((tj1 + 1, tj2 + 1, tj3 + 1))
    if _triangle(tj1, tj2, tj3):
        for i1 in range(tj1 + 1):
            for i2 in range(tj2 + 1):
                tm1, tm2 = 2 * i1 - tj1, 2 * i2 - tj2
                if abs(tm1 + tm2) <= tj3:
                    i3 = (tm1 + tm2 + tj3) // 2
                    out[i1, i2, i3] = _su2_cg_coefficient(tj1, tm1, tj2, tm2, tj3)
    out.setflags(write=False)
    return out


def su2_clebsch_gordan(j1: float, j2: float, j3: float) -> np.ndarray:
    r"""Clebsch-Gordan coefficients of :math:`SU(2)` in the complex basis, normalised per block.

    Args:
        j1, j2, j3: non-negative integers or half-integers.

    Returns:
        float64 array of shape ``(2j1+1, 2j2+1, 2j3+1)`` whose entry ``[j1+m1, j2+m2, j3+m3]`` is
        :math:`\langle j_1 m_1 j_2 m_2 | j_3 m_3 \rangle / \sqrt{2j_3+1}`; all zeros when :math:`j_3` is not in
        :math:`j_1 \otimes j_2`.
    """
    # e3nn-jax asserts that each spin is an int or a float
    tj1, tj2, tj3 = (_check_j(j, name, InvalidTypeError) for j, name in ((j1, "j1"), (j2, "j2"), (j3, "j3")))
    return _su2_clebsch_gordan_cached(tj1, tj2, tj3).copy()


# ----------------------------------------------------------------------------------------------------------------
# SO(3) in the real basis


@functools.lru_cache(maxsize=None)
def _change_basis_cached(l: int) -> np.ndarray:
    q = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1 / np.sqrt(2)
    q[l, l] = 1.0
    for m in range(1, l + 1):
        # complex m < 0 combines the real cos-type (+m) and sin-type (-m) harmonics
        q[l - m, l + m] = s
        q[l - m, l - m] = -1j * s
        # complex m > 0 carries the Condon-Shortley phase (-1)^m
        q[l + m, l + m] = (-1) ** m * s
        q[l + m, l - m] = 1j * (-1) ** m * s
    q = (-1j) ** l * q  # global phase that makes the real Clebsch-Gordan coefficients real
    q.setflags(write=False)
    return q


def change_basis_real_to_complex(l: int) -> np.ndarray:
    r"""Unitary change of basis :math:`Q_l` from the real basis to the complex (Condon-Shortley) basis.

    A real-basis vector :math:`x` has complex-basis coordinates :math:`Q_l x`, and
    :math:`D_\text{real} = Q_l^\dagger D_\text{complex} Q_l`.

    Args:
        l: non-negative integer.

    Returns:
        complex128 array of shape ``(2l+1, 2l+1)``, rows indexed by complex :math:`m`, columns by real index.
    """
    return _change_basis_cached(_check_l(l)).copy()


@functools.lru_cache(maxsize=None)
def _generators_cached(l: int) -> np.ndarray:
    q = _change_basis_cached(l)
    x = np.conj(q.T) @ su2_generators(l) @ q
    if np.abs(x.imag).max(initial=0.0) > 1e-10:  # pragma: no cover - guards the convention, never expected
        raise RuntimeError(f"generators({l}) are not real; the change of basis is inconsistent")
    out = np.ascontiguousarray(x.real)
    out.setflags(write=False)
    return out


def generators(l: int) -> np.ndarray:
    r"""Generators of the real irrep of degree :math:`l` of :math:`SO(3)`.

    Args:
        l: non-negative integer.

    Returns:
        float64 array of shape ``(3, 2l+1, 2l+1)``: antisymmetric :math:`X_x, X_y, X_z` such that
        :math:`D^l(\text{rotation by } \theta \text{ about axis } a) = \exp(\theta X_a)`. For :math:`l = 1` these
        are the usual cross-product matrices in the basis :math:`(x, y, z)`.
    """
    return _generators_cached(_check_l(l)).copy()


@functools.lru_cache(maxsize=None)
def _clebsch_gordan_cached(l1: int, l2: int, l3: int) -> np.ndarray:
    c = _su2_clebsch_gordan_cached(2 * l1, 2 * l2, 2 * l3)
    if not _triangle(2 * l1, 2 * l2, 2 * l3):
        out = np.zeros_like(c)
    else:
        q1, q2, q3 = _change_basis_cached(l1), _change_basis_cached(l2), _change_basis_cached(l3)
        # Real-basis coefficients: the first two indices transform with Q, the output one with Q^dagger.
        x = np.einsum("ia,kb,nc,ikn->abc", q1, q2, np.conj(q3), c, optimize="optimal")
        if np.abs(x.imag).max(initial=0.0) > 1e-10:  # pragma: no cover - guards the convention
            raise RuntimeError(f"clebsch_gordan({l1}, {l2}, {l3}) is not real; the change of basis is inconsistent")
        out = np.ascontiguousarray(x.real)
    out.setflags(write=False)
    return out


def clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    r"""Clebsch-Gordan coefficients of the real irreps of :math:`SO(3)`.

    Args:
        l1, l2, l3: non-negative integers.

    Returns:
        float64 array ``C`` of shape ``(2l1+1, 2l2+1, 2l3+1)`` with unit Frobenius norm and
        :math:`\sum_{ij} D^{l_1}_{ai} D^{l_2}_{bj} C_{ijk} = \sum_c C_{abc} D^{l_3}_{ck}`; zeros when
        :math:`|l_1 - l_2| \le l_3 \le l_1 + l_2` fails. Results are cached; a fresh copy is returned.
    """
    # e3nn-jax asserts that each degree is an int or a float (it computes them as SU(2) spins)
    l1, l2, l3 = (_check_l(l, name, InvalidTypeError) for l, name in ((l1, "l1"), (l2, "l2"), (l3, "l3")))
    return _clebsch_gordan_cached(l1, l2, l3).copy()


# ----------------------------------------------------------------------------------------------------------------
# Wigner D


@functools.lru_cache(maxsize=None)
def _wigner_constants(l: int):
    """Frequencies of the y-rotation and the x<->y swap matrix ``K`` for degree ``l`` (numpy float64).

    ``K = exp(pi (X_x + X_y) / sqrt 2)`` is computed by diagonalising the Hermitian ``i (X_x + X_y) / sqrt 2``,
    whose eigenvalues are the integers ``-l..l``; ``exp(i pi m) = (-1)^m`` then makes ``K`` exactly real.
    """
    freq = np.arange(l, -l - 1, -1, dtype=np.float64)  # row i of D(R_y(phi)) oscillates at frequency l - i
    x = _generators_cached(l)
    hermitian = 1j * (x[0] + x[1]) / np.sqrt(2)
    eigenvalues, vectors = np.linalg.eigh(hermitian)
    signs = (-1.0) ** np.rint(eigenvalues)
    k = ((vectors * signs) @ np.conj(vectors.T)).real
    k = (k + k.T) / 2
    freq.setflags(write=False)
    k.setflags(write=False)
    return freq, k


def _cos_sin(angle: jax.Array, freq: np.ndarray):
    """``cos`` and ``sin`` of ``freq * angle``, shape ``(..., 2l+1)``."""
    phase = angle[..., None] * jnp.asarray(freq, angle.dtype)
    return jnp.cos(phase), jnp.sin(phase)


def _rot_y_times(cos: jax.Array, sin: jax.Array, m: jax.Array) -> jax.Array:
    """``D(R_y(phi)) @ m``; ``D(R_y) = diag(cos) + diag(sin) F`` with ``F`` the index reversal."""
    return cos[..., :, None] * m + sin[..., :, None] * m[..., ::-1, :]


def _times_rot_y(m: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``m @ D(R_y(phi))``."""
    return m * cos[..., None, :] + (m * sin[..., None, :])[..., :, ::-1]


AngleLike = Union[jax.Array, np.ndarray, float]


def _as_float_angle(x: AngleLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return x


def wigner_D(l: int, alpha: AngleLike, beta: AngleLike, gamma: AngleLike) -> jax.Array:
    r"""Wigner D matrix :math:`D^l(R_y(\alpha) R_x(\beta) R_y(\gamma))` of the real irrep of degree :math:`l`.

    Equal (to rounding) to e3nn-jax's ``Irrep(l, 1).D_from_angles(alpha, beta, gamma)``. Angles are first reduced
    modulo :math:`2\pi` (as e3nn-jax does, which matters for large angles in low precision).

    Args:
        l: non-negative integer.
        alpha, beta, gamma: angles of shapes broadcastable to a common shape ``(...)``.

    Returns:
        array of shape ``(..., 2l+1, 2l+1)``, orthogonal, in the dtype of the (promoted) angles; differentiable.
    """
    l = _check_l(l)
    alpha, beta, gamma = (_as_float_angle(a) for a in (alpha, beta, gamma))
    dtype = jnp.result_type(alpha, beta, gamma)
    shape = jnp.broadcast_shapes(alpha.shape, beta.shape, gamma.shape)
    alpha, beta, gamma = (jnp.broadcast_to(a.astype(dtype), shape) for a in (alpha, beta, gamma))
    return _wigner_D(l, alpha, beta, gamma)


# One XLA computation per (l, shape, dtype): eager callers avoid dispatching a dozen small ops; under an outer jit
# this is simply inlined.
@functools.partial(jax.jit, static_argnums=0)
def _wigner_D(l: int, alpha: jax.Array, beta: jax.Array, gamma: jax.Array) -> jax.Array:
    dtype = alpha.dtype
    alpha, beta, gamma = (a % (2 * jnp.pi) for a in (alpha, beta, gamma))
    freq, k = _wigner_constants(l)
    k = jnp.asarray(k, dtype)
    ca, sa = _cos_sin(alpha, freq)
    cb, sb = _cos_sin(beta, freq)
    cc, sc = _cos_sin(gamma, freq)

    d_x = _times_rot_y(k, cb, sb) @ k  # D(R_x(beta)) = K D(R_y(beta)) K
    return _times_rot_y(_rot_y_times(ca, sa, d_x), cc, sc)
