"""Pointwise activations for IrrepsArrays: on the scalars (``scalar_activation``) or on the norms (``norm_activation``).

Equivariance constrains what a nonlinearity may touch: even scalars (``0e``) accept any function; odd scalars (``0o``)
only functions with a definite parity (the output is ``0e`` for an even function, ``0o`` for an odd one); other
irreps can only be rescaled by a function of an invariant, such as their norm.

By default the functions are *normalised* (:func:`normalize_function`) so that the second moment of their output is 1
for a standard normal input, which keeps activations of order one through deep networks.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import jax.scipy.special

from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array, from_chunks
from e3nn_fast.irreps_only import accepts_bare_irreps
from e3nn_fast.radial import sus

__all__ = [
    "soft_odd",
    "normalize_function",
    "parity_function",
    "is_zero_in_zero",
    "scalar_activation",
    "norm_activation",
    "soft_normalization",
]

Activation = Callable[[jax.Array], jax.Array]

# Number of Gaussian quantiles used to estimate the second moment in ``normalize_function`` (e3nn-jax's value, so
# the normalisation constants, hence the outputs, agree to the last bits).
_NUM_QUANTILES = 1_000_001
# normalize_function evaluates phi on a million points: remember the answer per (function, default float width).
_NORMALIZED_CACHE_SIZE = 256
_normalized_cache: "collections.OrderedDict[Tuple[Activation, bool], Activation]" = collections.OrderedDict()


def soft_odd(x: jax.Array) -> jax.Array:
    r"""Smooth odd function :math:`x (1 - e^{-x^2})`, the default activation of odd scalars.

    It behaves like :math:`x^3` near zero and like :math:`x` far from it; being odd, it maps ``0o`` to ``0o``.
    """
    return (1 - jnp.exp(-(x**2))) * x


def _gaussian_quantiles(n: int) -> jax.Array:
    r"""The ``n`` points :math:`x_i` splitting the standard normal distribution into ``n + 1`` equal-mass intervals.

    :math:`\Phi(x_i) = i / (n + 1)`; averaging :math:`f(x_i)` is a deterministic estimate of :math:`E[f(X)]`.
    """
    u = jnp.linspace(-1.0, 1.0, n + 2)[1:-1]  # 2 Phi(x) - 1 at the quantiles, endpoints (+-inf) excluded
    return jnp.sqrt(2) * jax.scipy.special.erfinv(u)


def _second_moment_root(phi: Activation) -> float:
    """:math:`\\sqrt{E[\\phi(X)^2]}` for :math:`X \\sim N(0, 1)`, in the default float precision."""
    with jax.ensure_compile_time_eval():
        x = _gaussian_quantiles(_NUM_QUANTILES)
        return (jnp.mean(phi(x) ** 2) ** 0.5).item()


def _scaled(phi: Activation, c: float) -> Activation:
    def normalized(x):
        return phi(x) / c

    normalized.__name__ = f"normalized_{getattr(phi, '__name__', 'function')}"
    normalized.__wrapped__ = phi
    return normalized


def normalize_function(phi: Activation) -> Activation:
    r"""Rescale ``phi`` to unit second moment under a standard normal input.

    Returns :math:`\psi = \phi / c` with :math:`c^2 = E[\phi(X)^2]`, :math:`X \sim N(0,1)` (estimated on a million
    Gaussian quantiles, in the default float precision), or ``phi`` itself when :math:`c` is already 1.  The result is
    cached per function, so calling this repeatedly (e.g. in a module's ``__call__``) costs nothing after the first
    time and returns the same function object.

    Raises:
        TypeError: ``phi`` is not callable.
        ValueError: ``phi`` is identically zero on the Gaussian (it cannot be normalised).
    """
    if not callable(phi):
        raise TypeError(f"normalize_function: expected a callable, got {phi!r} of type {type(phi).__name__}")
    key = (phi, bool(jax.config.read("jax_enable_x64")))
    try:
        cached = _normalized_cache.get(key)
    except TypeError:  # unhashable callable: no caching
        key, cached = None, None
    if cached is not None:
        _normalized_cache.move_to_end(key)
        return cached

    c = _second_moment_root(phi)
    if c == 0.0:
        raise ValueError(f"normalize_function: {phi!r} is zero on the normal distribution, it cannot be normalized")
    with jax.ensure_compile_time_eval():
        already_normalized = bool(jnp.allclose(c, 1.0))
    result = phi if already_normalized else _scaled(phi, c)

    if key is not None:
        _normalized_cache[key] = result
        if len(_normalized_cache) > _NORMALIZED_CACHE_SIZE:
            _normalized_cache.popitem(last=False)
    return result


# Where a function's parity is checked: the even/odd test compares phi(x) and phi(-x) on 256 points of [0, 10] and
# accepts differences below 1e-5 (e3nn-jax's numbers, so the same functions are classified the same way).
_PARITY_SAMPLES = 256
_PARITY_RANGE = 10.0
_PARITY_TOLERANCE = 1e-5


def parity_function(phi: Activation) -> int:
    """The parity of a scalar function, found numerically: ``1`` if even, ``-1`` if odd, ``0`` if neither.

    ``phi`` is evaluated on a grid of ``[0, 10]`` and on its mirror image; it counts as even (odd) when
    ``phi(-x)`` and ``phi(x)`` (``-phi(x)``) agree to within ``1e-5`` everywhere on the grid.  The check runs eagerly
    even inside ``jax.jit``, so it can decide the output irreps of a traced function.  A function that is both (zero)
    is reported even.

    This decides what an activation may do to odd scalars (``0o``): an even function maps them to ``0e``, an odd one
    keeps them ``0o``, and any other function would break the parity symmetry.

    Raises:
        TypeError: ``phi`` is not callable.
    """
    if not callable(phi):
        raise TypeError(f"parity_function: expected a callable, got {phi!r} of type {type(phi).__name__}")
    with jax.ensure_compile_time_eval():
        grid = jnp.linspace(0.0, _PARITY_RANGE, _PARITY_SAMPLES)
        values, mirrored = phi(grid), phi(-grid)
        # phi(-x) = parity * phi(x); even is tried first, so a function that is both (zero) counts as even.
        for parity in (1, -1):
            if jnp.max(jnp.abs(mirrored - parity * values)) < _PARITY_TOLERANCE:
                return parity
    return 0


def is_zero_in_zero(phi: Activation) -> bool:
    """Whether ``phi(0) == 0`` (to ``allclose`` precision), checked eagerly even under ``jax.jit``.

    ``scalar_activation`` uses it to keep a block that is known to be zero marked as zero (no array is stored for it)
    when the function applied to it vanishes at zero.

    Raises:
        TypeError: ``phi`` is not callable.
    """
    if not callable(phi):
        raise TypeError(f"is_zero_in_zero: expected a callable, got {phi!r} of type {type(phi).__name__}")
    with jax.ensure_compile_time_eval():
        return bool(jnp.allclose(phi(jnp.array(0.0)), 0.0))


def _check_callable(value, what: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        expected = "a callable or None" if optional else "a callable"
        raise TypeError(f"{what} must be {expected}, got {value!r} of type {type(value).__name__}")


def _default_acts(irreps: Irreps, even_act: Activation, odd_act: Activation) -> List[Optional[Activation]]:
    """``even_act`` on ``0e`` blocks, ``odd_act`` on ``0o`` blocks, nothing on the others."""
    return [({1: even_act, -1: odd_act}[ir.p] if ir.l == 0 else None) for _, ir in irreps]


def _activated_block(
    mul: int, ir, act: Activation, irreps: Irreps, acts: Sequence[Optional[Activation]]
) -> Tuple[int, Tuple[int, int]]:
    """Output ``(mul, (0, p))`` of a scalar block under ``act``; errors if the block is not scalar or parity breaks."""
    if ir.l != 0:
        raise ValueError(
            f"scalar_activation: cannot apply an activation to the non-scalar block {mul}x{ir} of {irreps} "
            f"(acts={list(acts)}); use None for it"
        )
    if ir.p == 1:
        return mul, (0, 1)
    parity = parity_function(act)
    if parity == 0:
        raise ValueError(
            f"scalar_activation: the odd scalars {mul}x{ir} of {irreps} need an even or odd activation, "
            f"but {act!r} is neither (it would break the parity symmetry)"
        )
    return mul, (0, parity)


@accepts_bare_irreps(argnums=(0,))
def scalar_activation(
    input: IrrepsArray,
    acts: Optional[List[Optional[Activation]]] = None,
    *,
    even_act: Activation = jax.nn.gelu,
    odd_act: Activation = soft_odd,
    normalize_act: bool = True,
) -> IrrepsArray:
    r"""Apply a function to each scalar block of ``input``; other blocks pass through unchanged.

    Args:
        input: the IrrepsArray (a plain array ``(..., n)`` is read as ``n x 0e``).  Given bare irreps, the output
            irreps are returned.
        acts: one function (or ``None`` to leave the block alone) per block of ``input.irreps``.  Default:
            ``even_act`` for ``0e`` blocks, ``odd_act`` for ``0o`` blocks, ``None`` for the others.
        even_act: default function for ``0e`` blocks (:func:`jax.nn.gelu`).
        odd_act: default function for ``0o`` blocks (:func:`soft_odd`).
        normalize_act: rescale each function with :func:`normalize_function`.

    Returns:
        IrrepsArray with the same leading shape.  An odd block stays ``0o`` under an odd function and becomes ``0e``
        under an even one.

    Raises:
        TypeError: ``acts`` is not a list of callables/None, or an ``*_act`` is not callable.
        ValueError: ``acts`` has the wrong length, puts a function on a non-scalar block, or puts a function that is
            neither even nor odd on a ``0o`` block.
    """
    _check_callable(even_act, "scalar_activation: even_act")
    _check_callable(odd_act, "scalar_activation: odd_act")
    input = _as_irreps_array(input, "scalar_activation")

    if acts is None:
        acts = _default_acts(input.irreps, even_act, odd_act)
    if not isinstance(acts, (list, tuple)):
        raise TypeError(f"scalar_activation: acts must be a list (one entry per block) or None, got {acts!r}")
    for i, act in enumerate(acts):
        _check_callable(act, f"scalar_activation: acts[{i}]", optional=True)
    if len(acts) != len(input.irreps):  # e3nn-jax asserts here: the class is also an AssertionError
        raise InvalidValueError(
            f"scalar_activation: got {len(acts)} activations for the {len(input.irreps)} blocks of {input.irreps}; "
            "give one entry per block (None for a block to leave unchanged)"
        )

    if normalize_act:
        acts = [None if act is None else normalize_function(act) for act in acts]

    irreps_out = []
    chunks = []
    for (mul, ir), x, act in zip(input.irreps, input.chunks, acts):
        if act is None:
            irreps_out.append((mul, ir))
            chunks.append(x)
            continue
        irreps_out.append(_activated_block(mul, ir, act, input.irreps, acts))
        if x is not None:
            chunks.append(act(x))
        elif is_zero_in_zero(act):
            chunks.append(None)
        else:  # a block known to be zero maps to the constant act(0)
            chunks.append(act(jnp.zeros(input.shape[:-1] + (mul, 1), input.dtype)))
    irreps_out = Irreps(irreps_out)

    if len(acts) > 0 and all(act is acts[0] for act in acts):
        # One function everywhere (the common case): apply it to the contiguous array, no split and concatenate.
        array = input.array if acts[0] is None else acts[0](input.array)
        return IrrepsArray(irreps_out, array, zero_flags=[c is None for c in chunks])
    return from_chunks(irreps_out, chunks, input.shape[:-1], input.dtype)


def _as_irreps_array(input, what: str) -> IrrepsArray:
    """``input`` as an IrrepsArray (plain arrays are scalars); TypeError for anything else."""
    if isinstance(input, IrrepsArray):
        return input
    if isinstance(input, (jax.Array,)) or hasattr(input, "__array__"):
        return as_irreps_array(input)
    raise TypeError(f"{what}: expected an IrrepsArray, got {type(input).__name__}")


_NORMS: Dict[str, bool] = {"component": True, "norm": False}  # value: divide the squared norm by the dimension


def norm_activation(
    input: IrrepsArray,
    acts: List[Optional[Activation]],
    *,
    normalization: str = "component",
) -> IrrepsArray:
    r"""Multiply every irrep copy by a function of its norm: :math:`x \mapsto x \, \phi(\|x\|)`.

    Args:
        input: the IrrepsArray.
        acts: one function (or ``None`` for no change) per block of ``input.irreps``.
        normalization: ``"component"`` divides the squared norm by the dimension ``2l+1`` of the irrep (so the
            "norm" is the root mean square of the components); ``"norm"`` uses the plain Euclidean norm.

    A zero vector is multiplied by ``phi(1)`` (its direction is undefined anyway); the gradient stays finite there.

    Raises:
        TypeError: ``input`` is not an IrrepsArray/array, or an entry of ``acts`` is not callable/None.
        ValueError: unknown ``normalization``, or ``acts`` has the wrong length.
    """
    input = _as_irreps_array(input, "norm_activation")
    if normalization not in _NORMS:
        raise InvalidValueError(  # (e3nn-jax asserts on this)
            f"norm_activation: normalization must be 'component' or 'norm', got {normalization!r}"
        )
    if not isinstance(acts, (list, tuple)):
        raise TypeError(f"norm_activation: acts must be a list (one entry per block), got {acts!r}")
    for i, act in enumerate(acts):
        _check_callable(act, f"norm_activation: acts[{i}]", optional=True)
    if len(acts) != len(input.irreps):  # e3nn-jax asserts here: the class is also an AssertionError
        raise InvalidValueError(
            f"norm_activation: got {len(acts)} activations for the {len(input.irreps)} blocks of {input.irreps}; "
            "give one entry per block (None for a block to leave unchanged)"
        )

    chunks = []
    for x, act in zip(input.chunks, acts):
        if act is not None and x is not None:
            x = x * act(_safe_norm(x, per_component=_NORMS[normalization]))
        chunks.append(x)
    return from_chunks(input.irreps, chunks, input.shape[:-1], input.dtype)


def _safe_norm(x: jax.Array, per_component: bool) -> jax.Array:
    """Norm over the last axis (kept), 1 where it is 0: the double ``where`` keeps the gradient of sqrt finite."""
    n2 = jnp.sum(x**2, axis=-1, keepdims=True)
    if per_component:
        n2 = n2 / x.shape[-1]
    positive = n2 > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, n2, 1.0)), 1.0)


def soft_normalization(input: IrrepsArray, max_component: float) -> IrrepsArray:
    r"""Softly cap the size of every irrep copy: :math:`x \mapsto x / (1 + n\,\mathrm{sus}(n))`, :math:`n=|x|/m`.

    ``|x|`` is the component-normalised norm and ``m = max_component``.  Copies much smaller than ``m`` are unchanged
    (:func:`sus` vanishes to all orders at 0); large ones are brought back to a size of order ``m``.
    """
    input = _as_irreps_array(input, "soft_normalization")
    factor = functools.partial(_soft_cap_factor, max_component=max_component)
    return norm_activation(input, [factor for _ in input.irreps])


def _soft_cap_factor(norm: jax.Array, max_component: float) -> jax.Array:
    r"""Scale :math:`1 / (1 + r\,\mathrm{sus}(r))` with :math:`r` = ``norm / max_component``: 1 up to
    :math:`O(r^\infty)` for small norms, about :math:`1/r` (a size capped near ``max_component``) for large ones."""
    ratio = norm / max_component
    return 1.0 / (1.0 + ratio * sus(ratio))
