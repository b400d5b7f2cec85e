r"""Spherical harmonics: e3nn-jax 0.21's ``spherical_harmonics`` and ``sh``, same signatures and numbers.

:math:`Y^l : \mathbb{R}^3 \to \mathbb{R}^{2l+1}` are homogeneous polynomials of degree ``l`` in ``x, y, z``,
equivariant (:math:`Y^l(R x) = D^l(R) Y^l(x)`) and orthogonal on the sphere.  The conventions (``y`` polar axis,
:math:`Y^1 \propto (x, y, z)`, sign and order of every ``m``) and the maths live in
:mod:`e3nn_fast.reference.spherical_harmonics`; this module only turns e3nn-jax's flexible arguments into degrees
and parities, checks them, and packs the result.

Parity.  :math:`Y^l(-x) = (-1)^l Y^l(x)`, so even degrees are always even (``"2e"``), and odd degrees carry the
parity of the input vector: ``1o`` for a true vector, ``1e`` for a pseudo-vector.  An int or a list of ints for
``irreps_out`` therefore needs an ``IrrepsArray`` input to know that parity (``sh`` reads its plain array as ``1e``,
like e3nn-jax).

Executors.  The dispatcher's op ``"spherical_harmonics"`` has the ``reference`` executor (one ``lax.scan`` step per
degree, ladder-rule derivatives: compact for any ``l``) and the ``jnp`` executor of
:mod:`e3nn_fast.xla.spherical_harmonics` (straight-line code for ``l <= 8``, the default through ``auto``).

``algorithm``.  e3nn-jax offers several evaluation strategies (``"legendre"`` / ``"recursive"``, ``"dense"`` /
``"sparse"``, ``"custom_jvp"``).  They all give the same numbers up to rounding, so the argument (and the
``spherical_harmonics_algorithm`` configuration) is validated for compatibility and otherwise ignored: the executor
is the dispatcher's choice.
"""

from __future__ import annotations

import functools
import numbers
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from e3nn_fast import dispatch
from e3nn_fast.configuration import config
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.reference import spherical_harmonics as _reference
from e3nn_fast.reference.spherical_harmonics import NORMALIZATIONS
from e3nn_fast.xla import spherical_harmonics as _xla

dispatch.register("spherical_harmonics", "reference", _reference.spherical_harmonics_per_l)
dispatch.register("spherical_harmonics", "jnp", _xla.spherical_harmonics_per_l)

__all__ = ["spherical_harmonics", "sh"]

ALGORITHM_KEYWORDS = ("legendre", "recursive", "dense", "sparse", "custom_jvp")

IrrepsOut = Union[Irreps, str, int, Sequence[int]]


# ----------------------------------------------------------------------------------------------------------------
# argument handling
# ----------------------------------------------------------------------------------------------------------------


def _resolve_normalization(normalization: Optional[str]) -> str:
    if normalization is None:
        normalization = config("spherical_harmonics_normalization")
    if normalization not in NORMALIZATIONS:
        raise InvalidValueError(f"spherical harmonics normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


def _check_algorithm(algorithm: Optional[Sequence[str]]) -> None:
    """Accept what e3nn-jax accepts (the value does not change the result here, see the module docstring)."""
    if algorithm is None:
        algorithm = config("spherical_harmonics_algorithm")
        if algorithm == "automatic":
            return
    if isinstance(algorithm, str) or not all(keyword in ALGORITHM_KEYWORDS for keyword in algorithm):
        raise InvalidValueError(  # (e3nn-jax asserts on this)
            f"spherical harmonics algorithm must be a tuple of keywords among {ALGORITHM_KEYWORDS}, got {algorithm!r}"
        )


def _vector_parity(irreps: Irreps) -> int:
    """Parity of an input that must be a single vector, ``1x1o`` (returns -1) or ``1x1e`` (returns +1)."""
    if irreps.num_irreps != 1:
        raise ValueError(
            f"spherical_harmonics: the input should hold a single vector per point, irreps 1x1o or 1x1e, "
            f"got irreps {irreps}; move several vectors to their own axis first (IrrepsArray.mul_to_axis)"
        )
    [(mul, ir)] = irreps
    if not (mul == 1 and ir.l == 1):
        raise ValueError(
            f"spherical_harmonics: the input should be a vector, irreps 1x1o or 1x1e, got irreps {irreps}"
        )
    return ir.p


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _resolve_irreps_out(irreps_out: IrrepsOut, vector_parity: Optional[int]) -> Irreps:
    """e3nn-jax's reading of ``irreps_out``: irreps as given; an int ``l`` or a list of ints gets parities ``p**l``.

    ``vector_parity`` is the input's parity, ``None`` for a plain array (then degrees alone are ambiguous).
    """
    if isinstance(irreps_out, str):
        return Irreps(irreps_out)
    if isinstance(irreps_out, Irreps):
        return irreps_out
    if isinstance(irreps_out, range):
        irreps_out = list(irreps_out)

    if _is_int(irreps_out):
        ls, kind = [irreps_out], "an int"
    elif isinstance(irreps_out, Iterable) and all(_is_int(l) for l in irreps_out):
        # (an Irrep iterates as (l, p) and so lands here, read as two degrees: e3nn-jax does the same)
        ls, kind = list(irreps_out), "a list of int"
    else:
        return Irreps(irreps_out)

    if vector_parity is None:
        raise ValueError(f"If irreps_out is {kind}, input must be an IrrepsArray (its irreps give the parity).")
    if any(l < 0 for l in ls):
        raise InvalidValueError(f"spherical harmonics degrees must be >= 0, got {ls}")
    return Irreps([(1, (int(l), vector_parity**l)) for l in ls])


def _check_output_parities(irreps_out: Irreps, vector_parity: Optional[int]) -> None:
    """Even degrees are even; odd degrees share one parity, the input's when it is known.

    The first two rules are asserts in e3nn-jax, hence :class:`InvalidValueError`; the third is its ValueError.
    """
    for _, ir in irreps_out:
        if ir.l % 2 == 0 and ir.p != 1:
            raise InvalidValueError(
                f"spherical harmonics of even degree are even: {ir} is not possible (irreps {irreps_out})"
            )
    odd_parities = {ir.p for _, ir in irreps_out if ir.l % 2 == 1}
    if len(odd_parities) > 1:
        raise InvalidValueError(
            f"spherical harmonics of odd degree all have the parity of the input: irreps {irreps_out} mixes both"
        )
    if vector_parity is not None and odd_parities and odd_parities != {vector_parity}:
        input_irreps = Irreps([(1, (1, vector_parity))])
        raise ValueError(
            f"spherical_harmonics: irreps_out {irreps_out} has no compatible parity with the input {input_irreps}: "
            f"its odd degrees must share the input's parity; give the degrees as ints to get the right parities"
        )


def _as_vectors(x) -> jax.Array:
    """``x`` as real vectors ``(..., 3)``: integer and boolean coordinates (lattice vectors, say) become the default
    float dtype, as in e3nn-jax; complex ones are refused."""
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise InvalidValueError(f"spherical harmonics take Cartesian vectors of shape (..., 3), got shape {x.shape}")
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        x = x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"spherical harmonics need real (float or integer) vectors, got dtype {x.dtype}")
    return x


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4), inline=True)
def _run_per_l(ls: Tuple[int, ...], x: jax.Array, normalize: bool, normalization: str, executor: str) -> List[jax.Array]:
    # jit: eager calls reuse one compiled program per (degrees, shape, dtype, executor); inside a caller's jit it is
    # inlined.  The executor is a static argument so that a backend switch is never served from the cache.
    return dispatch.implementation("spherical_harmonics", executor)(ls, x, normalize, normalization)


def _harmonics_per_l(ls: Tuple[int, ...], x: jax.Array, normalize: bool, normalization: str) -> List[jax.Array]:
    executor = dispatch.choose("spherical_harmonics", size=dispatch.problem_size(*x.shape))
    return dispatch.guard_forced_pallas("spherical_harmonics", executor, _run_per_l(ls, x, normalize, normalization,
                                                                                   executor))


def _chunks(irreps_out: Irreps, x: jax.Array, normalize: bool, normalization: str) -> List[jax.Array]:
    """One chunk ``(..., mul, 2l+1)`` per entry of ``irreps_out``; every degree is computed once."""
    ls = tuple(sorted({ir.l for _, ir in irreps_out}))
    per_l = dict(zip(ls, _harmonics_per_l(ls, x, bool(normalize), normalization)))
    leading_shape = x.shape[:-1]
    return [
        jnp.broadcast_to(per_l[ir.l][..., None, :], leading_shape + (mul, ir.dim)) for mul, ir in irreps_out
    ]


def _compute(
    irreps_out: IrrepsOut,
    input: Union[IrrepsArray, jax.Array],
    normalize: bool,
    normalization: Optional[str],
    algorithm: Optional[Sequence[str]],
    vector_parity: Optional[int],
) -> Tuple[Irreps, List[jax.Array], jax.Array]:
    """Shared by both public functions: resolved irreps, chunks and the input array."""
    normalization = _resolve_normalization(normalization)
    _check_algorithm(algorithm)
    irreps_out = _resolve_irreps_out(irreps_out, vector_parity)
    _check_output_parities(irreps_out, vector_parity)
    x = _as_vectors(input)
    if irreps_out.num_irreps == 0:
        return irreps_out, [jnp.zeros(x.shape[:-1] + (mul, ir.dim), x.dtype) for mul, ir in irreps_out], x
    return irreps_out, _chunks(irreps_out, x, normalize, normalization), x


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------


def spherical_harmonics(
    irreps_out: IrrepsOut,
    input: Union[IrrepsArray, jax.Array],
    normalize: bool,
    normalization: Optional[str] = None,
    *,
    algorithm: Optional[Tuple[str, ...]] = None,
) -> IrrepsArray:
    r"""Spherical harmonics of Cartesian vectors.

    Args:
        irreps_out: which harmonics: irreps (``"0e+1o+2e"``, ``Irreps``; a multiplicity repeats the block), an int
            ``l`` (just :math:`Y^l`) or a list of ints; the last two need an ``IrrepsArray`` input, whose parity
            fixes the parity of the odd degrees.
        input: vectors of shape ``(..., 3)``, an ``IrrepsArray`` with irreps ``1o`` or ``1e`` or a plain
            floating point array.
        normalize: evaluate on the unit sphere (``x / |x|``; the zero vector gives :math:`Y^0` and zeros); with
            ``False`` the result is a homogeneous polynomial of degree ``l`` in ``x``.
        normalization: ``"component"`` (:math:`\|Y^l(x)\|^2 = 2l+1` on the sphere), ``"norm"``
            (:math:`\|Y^l(x)\| = 1`) or ``"integral"`` (:math:`\int_{S^2} (Y^l_m)^2 = 1`); default from
            ``config("spherical_harmonics_normalization")``.
        algorithm: accepted for compatibility with e3nn-jax and validated; it does not change the result.

    Returns:
        ``IrrepsArray`` with irreps ``irreps_out`` and leading shape ``input.shape[:-1]``.

    Raises:
        ValueError: wrong last dimension, input not a single vector, parities that spherical harmonics cannot have
            or that disagree with the input's, degrees without an ``IrrepsArray`` input, unknown normalization.
        TypeError: non floating point input.

    Examples:
        >>> spherical_harmonics("2e", IrrepsArray("1o", jnp.array([0.0, 0.0, 1.0])), normalize=True)
        1x2e [ 0.        0.       -1.118034  0.        1.9364917]
    """
    if isinstance(input, IrrepsArray):
        vector_parity = _vector_parity(input.irreps)
        array = input.array
    else:
        vector_parity, array = None, input
    irreps_out, chunks, x = _compute(irreps_out, array, normalize, normalization, algorithm, vector_parity)
    return from_chunks(irreps_out, chunks, x.shape[:-1], x.dtype)


def sh(
    irreps_out: IrrepsOut,
    input: jax.Array,
    normalize: bool,
    normalization: Optional[str] = None,
    *,
    algorithm: Optional[Tuple[str, ...]] = None,
) -> jax.Array:
    r"""Spherical harmonics of a plain array of vectors ``(..., 3)``, returned as a plain array ``(..., dim)``.

    Same as :func:`spherical_harmonics` with the input read as a ``1e`` vector (as e3nn-jax does): ints and lists
    of ints are accepted for ``irreps_out`` and give even parities, and odd irreps must be written ``"1e"``,
    ``"3e"``, ...
    """
    irreps_out, chunks, x = _compute(irreps_out, input, normalize, normalization, algorithm, vector_parity=1)
    leading_shape = x.shape[:-1]
    pieces = [chunk.reshape(leading_shape + (mul * ir.dim,)) for chunk, (mul, ir) in zip(chunks, irreps_out)]
    if not pieces:
        return jnp.zeros(leading_shape + (0,), x.dtype)
    return jnp.concatenate(pieces, axis=-1)
