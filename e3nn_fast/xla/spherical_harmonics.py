r"""Spherical harmonics as straight-line code: the optimised jnp executor for small degrees.

Same maths as :mod:`e3nn_fast.reference.spherical_harmonics` (its recurrence and ladder coefficients are used as they
are, so conventions live there), laid out differently: every component :math:`Y^l_m` is its own array of the batch
shape, and the recurrence over ``l`` is unrolled at trace time.  XLA then fuses the whole evaluation (a few
multiply-adds per component) into one loop over the batch, whereas the reference's ``lax.scan`` runs a padded
``(2 lmax + 1)``-wide step per degree with loop overhead.  Constants (``q_l^l``, ``Re (z + i x)^0 = 1``) stay Python
floats, so no work is spent multiplying by one or adding zeros.  (This polynomial form splits
:math:`\sin^m\beta` out of the Legendre functions, which overflows at high degree in float32; up to ``l = 8`` its
factors stay far inside the float32 range, and ``normalize=True`` shares the reference's scaled
:func:`~e3nn_fast.reference.spherical_harmonics.normalize_vectors`, correct for any finite input.)

Derivatives are plain automatic differentiation of that straight-line code: unlike the reference's loop, it has
nothing to gain from the ladder-rule ``custom_jvp`` (measured: plain autodiff gave the faster backward and
double backward on CPU at ``lmax`` 3 and 8).  From ``l = 4`` on, the normalisation's derivative is taken through
the reference's vector form (:data:`VECTOR_FORM_DERIVATIVE_FROM_DEGREE`), so that XLA computes the harmonics'
cotangents once rather than once per Cartesian component.

The program grows like ``lmax^2`` and its higher derivatives faster still, so :data:`MAX_UNROLLED_DEGREE` bounds
where this executor is used: up to ``l = 8`` it compiles no slower than e3nn-jax's generated polynomials and runs
several times faster on CPU (measured in ``bench/``); above it the reference's loop keeps compile times short.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from e3nn_fast.reference import spherical_harmonics as reference
from e3nn_fast.reference.spherical_harmonics import legendre_recurrence_coefficients, normalization_factor

MAX_UNROLLED_DEGREE = 8

Value = Union[float, jax.Array]  # a component: an array of the batch shape, or a Python constant


def _mul(a: Optional[Value], b: Optional[Value]) -> Optional[Value]:
    """Product where ``None`` means an exact zero (skipped)."""
    if a is None or b is None:
        return None
    return a * b


def _add(a: Optional[Value], b: Optional[Value]) -> Optional[Value]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _azimuthal_powers(lmax: int, px: jax.Array, pz: jax.Array):
    """``Re`` and ``Im`` of :math:`(z + i x)^m`, ``m = 0..lmax`` (``Im`` of ``m = 0`` is ``None``: zero)."""
    re: List[Optional[Value]] = [1.0]
    im: List[Optional[Value]] = [None]
    for m in range(1, lmax + 1):
        # (re + i im)(z + i x)
        re.append(_add(_mul(re[m - 1], pz), _mul(-1.0, _mul(im[m - 1], px))))
        im.append(_add(_mul(re[m - 1], px), _mul(im[m - 1], pz)))
    return re, im


def _legendre_factors(lmax: int, y: jax.Array, r2: jax.Array) -> List[List[Optional[Value]]]:
    """:math:`q_l^m`, ``m = 0..l``, by the reference's normalised three-term recurrence (``q_l^l`` a constant)."""
    a, b, e = legendre_recurrence_coefficients(lmax)
    q: List[List[Optional[Value]]] = []
    for l in range(lmax + 1):
        row: List[Optional[Value]] = []
        for m in range(l + 1):
            j = lmax + m
            if m == l:
                row.append(float(e[l, j]))
                continue
            term = _mul(float(a[l, j]), _mul(y, q[l - 1][m]))
            if m <= l - 2 and b[l, j] != 0.0:
                term = _add(term, _mul(-float(b[l, j]), _mul(r2, q[l - 2][m])))
            row.append(term)
        q.append(row)
    return q


def _as_array(value: Optional[Value], shape, dtype) -> jax.Array:
    if value is None:
        return jnp.zeros(shape, dtype)
    if isinstance(value, float):
        return jnp.full(shape, value, dtype)
    return value


def _components_to_arrays(components: Sequence[Sequence[Optional[Value]]], shape, dtype) -> List[jax.Array]:
    return [jnp.stack([_as_array(c, shape, dtype) for c in row], axis=-1) for row in components]


# From this degree on the derivatives of the normalisation are taken through the reference's vector form.
#
# Each component of the normalised vector depends on all three input components.  Written component by component,
# XLA's CPU backend fuses the harmonics' whole derivative into the loop that writes the ``(..., 3)`` gradient and so
# evaluates it once per output column, three times over, in scalar code (sh-l8's force pass, one 1,800-instruction
# loop: 92 ms against e3nn-jax's 30 ms).  The reference's form has reductions over the length-3 axis, where XLA
# ends the fusion, so the harmonics' cotangents are computed once.  Those reductions cost a fixed few milliseconds,
# which only pay from l = 4 on (2 cores, jax 0.10.2, 20,000 vectors, forces pass: l = 3 6.2 -> 10.5 ms, l = 4
# 6.9 -> 4.8, l = 6 21.2 -> 9.7, l = 8 92 -> 16 ms; the forward unchanged).
VECTOR_FORM_DERIVATIVE_FROM_DEGREE = 4


def unit_components(x: jax.Array, lmax: int) -> tuple:
    """The three components of the normalised vectors ``x`` for harmonics up to degree ``lmax``: their values from
    :func:`_unit_components_fused`, their derivatives in the form that runs faster at that degree (see
    :data:`VECTOR_FORM_DERIVATIVE_FROM_DEGREE`)."""
    if lmax >= VECTOR_FORM_DERIVATIVE_FROM_DEGREE:
        return _unit_components_vector_form_derivative(x)
    return _unit_components_fused(x)


@jax.custom_jvp
def _unit_components_vector_form_derivative(x: jax.Array) -> tuple:
    return _unit_components_fused(x)


@_unit_components_vector_form_derivative.defjvp
def _unit_components_vector_form_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    # same function as the fused form (same operations, so the same derivatives); only its layout differs
    _, dv = jax.jvp(reference.normalize_vectors, (x,), (t,))
    return _unit_components_vector_form_derivative(x), (dv[..., 0], dv[..., 1], dv[..., 2])


def _unit_components_fused(x: jax.Array) -> tuple:
    """The three components of :func:`~e3nn_fast.reference.spherical_harmonics.normalize_vectors` ``(x)``, each of
    shape ``x.shape[:-1]``, computed component by component.

    Same operations as the reference (scaled by the largest ``|component|``, held constant; the zero vector left
    unchanged), so values and derivatives agree with it; written without reductions over the length-3 axis, which
    XLA's CPU backend runs as separate short loops (the reference form took 4.3 ms of an 8 ms ``l <= 3`` evaluation
    of 100,000 vectors, and 4 of its 19 kernels), so that the whole evaluation fuses into one loop over the batch.
    """
    px, py, pz = x[..., 0], x[..., 1], x[..., 2]
    s = jax.lax.stop_gradient(jnp.maximum(jnp.abs(px), jnp.maximum(jnp.abs(py), jnp.abs(pz))))
    s = jnp.where(s == 0.0, jnp.ones_like(s), s)
    vx, vy, vz = px / s, py / s, pz / s
    n2 = vx * vx + vy * vy + vz * vz
    zero = n2 == 0.0
    inverse = jax.lax.rsqrt(jnp.where(zero, 1.0, n2))
    return tuple(jnp.where(zero, p, v * inverse) for p, v in ((px, vx), (py, vy), (pz, vz)))


def _components(lmax: int, x, normalization: str) -> List[List[Optional[Value]]]:
    """``Y[l][l + m]`` for ``l = 0..lmax``, ``m = -l..l``, as arrays of the batch shape (or constants); ``x`` is an
    array ``(..., 3)`` or its three components."""
    px, y, pz = x if isinstance(x, tuple) else (x[..., 0], x[..., 1], x[..., 2])
    r2 = px * px + y * y + pz * pz  # the polynomial r^2 keeps Y^l(0) = 0 for l > 0
    re, im = _azimuthal_powers(lmax, px, pz)
    q = _legendre_factors(lmax, y, r2)
    out = []
    for l in range(lmax + 1):
        scale = normalization_factor(l, normalization)
        row = []
        for mu in range(-l, l + 1):
            azimuthal = re[mu] if mu >= 0 else im[-mu]
            row.append(_mul(scale, _mul(q[l][abs(mu)], azimuthal)))
        out.append(row)
    return out


def harmonics_up_to(lmax: int, x: jax.Array, normalization: str) -> List[jax.Array]:
    """:math:`Y^0, \\dots, Y^{l_{max}}` of ``x`` (used as given), one array ``(..., 2l + 1)`` per degree."""
    return _components_to_arrays(_components(lmax, x, normalization), x.shape[:-1], x.dtype)


def spherical_harmonics_per_l(ls: Sequence[int], x: jax.Array, normalize: bool, normalization: str) -> List[jax.Array]:
    """Drop-in for :func:`e3nn_fast.reference.spherical_harmonics.spherical_harmonics_per_l` (arguments checked
    there); straight-line code up to :data:`MAX_UNROLLED_DEGREE`, the reference's loop above it."""
    ls = tuple(int(l) for l in ls)
    if not ls or max(ls) > MAX_UNROLLED_DEGREE:
        return reference.spherical_harmonics_per_l(ls, x, normalize, normalization)
    reference.check_arguments(x, normalization)
    components = unit_components(x, max(ls)) if normalize else x
    per_l = _components_to_arrays(_components(max(ls), components, normalization), x.shape[:-1], x.dtype)
    return [per_l[l] for l in ls]
