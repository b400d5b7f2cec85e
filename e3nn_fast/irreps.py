"""Irreducible representations of O(3) and their direct sums.

* :class:`Irrep` -- one irreducible representation ``(l, p)``: degree ``l >= 0`` and parity ``p = +-1``.
* :class:`MulIrrep` -- an irrep repeated ``mul`` times.
* :class:`Irreps` -- a direct sum of ``MulIrrep``; a ``tuple`` subclass, as in e3nn-jax.

These objects carry no array data: they describe layouts and are passed as static arguments under ``jax.jit``,
so they are immutable, hashable and cheap to build (string parsing is memoised, derived values are cached).

Conventions (same as e3nn-jax):

* string form ``"<l><p>"`` with ``p`` one of ``e`` (even, +1), ``o`` (odd, -1) or ``y`` (parity of the spherical
  harmonics, ``(-1)**l``); a direct sum is written ``"5x0e+3x1o"`` (``mul x`` optional, whitespace ignored);
* irreps are ordered by ``l`` and, for equal ``l``, the parity of the spherical harmonics first:
  ``0e < 0o < 1o < 1e < 2e < 2o < ...``;
* the representation matrices are ``p**k D^l(alpha, beta, gamma)``, ``k`` counting applications of the inversion,
  with ``D^l`` the real Wigner matrices of :mod:`e3nn_fast.so3`; ``so3`` and ``rotation`` are imported inside the
  methods, so that importing this module never creates an import cycle.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import numbers
import re
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.errors import InvalidTypeError, InvalidValueError

__all__ = ["Irrep", "MulIrrep", "Irreps"]

IntoIrrep = Union[str, "Irrep", "MulIrrep", Tuple[int, int]]
IntoIrreps = Union[None, str, "Irrep", "MulIrrep", "Irreps", List[Union[str, "Irrep", "MulIrrep", Tuple[int, Any]]]]

# "<l><p>", whitespace tolerated around and between the two parts (e3nn-jax accepts "1 o").
_IRREP_PATTERN = re.compile(r"\s*([0-9]+)\s*([eoy])\s*")
# "[<mul> x] <l><p>" -- one term of an Irreps string.
_MUL_IRREP_PATTERN = re.compile(r"\s*(?:([0-9]+)\s*x\s*)?([0-9]+)\s*([eoy])\s*")


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------


def _is_integer(x: Any) -> bool:
    """True for Python/NumPy integers; ``bool`` is excluded because ``True`` as a degree is always a mistake."""
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


# e3nn-jax checks the degree and the parity of an Irrep with ``assert``: the errors below are AssertionErrors too.


def _check_degree(l: Any) -> int:
    """Return ``l`` as a Python int, or raise if it is not a non-negative integer."""
    if not _is_integer(l):
        raise InvalidTypeError(
            f"Irrep degree l must be a non-negative integer, got {l!r} of type {type(l).__name__}"
        )
    if l < 0:
        raise InvalidValueError(f"Irrep degree l must be non-negative, got {l}")
    return int(l)


def _check_parity(p: Any) -> int:
    """Return ``p`` as the Python int +1 or -1, or raise."""
    try:
        valid = not isinstance(p, (bool, str)) and (p == 1 or p == -1)
    except Exception:  # e.g. an array with several elements
        valid = False
    if not valid:
        raise InvalidValueError(f"Irrep parity p must be 1 (even) or -1 (odd), got {p!r}")
    return int(p)


def _check_multiplicity(mul: Any) -> int:
    """Return ``mul`` as a Python int, or raise if it is not a non-negative integer."""
    if not _is_integer(mul):
        raise TypeError(f"multiplicity must be a non-negative integer, got {mul!r} of type {type(mul).__name__}")
    if mul < 0:
        raise ValueError(f"multiplicity must be non-negative, got {mul}")
    return int(mul)


def _foreign_irrep_fields(obj: Any) -> Optional[Tuple[int, int]]:
    """``(l, p)`` of an irrep object of another library, ``None`` for anything else.

    Another library's irrep is recognised by its integer attributes ``l`` and ``p`` (torch-e3nn's ``Irrep``, a
    tuple subclass that refuses ``len()``; e3nn-jax's ``Irrep``; our own ``Irrep`` is handled before this is asked).
    Duck typing is used instead of importing those libraries, so that none of them is a dependency.
    """
    if isinstance(obj, str):
        return None
    l, p = getattr(obj, "l", None), getattr(obj, "p", None)
    if _is_integer(l) and _is_integer(p):
        return l, p
    return None


def _foreign_mul_irrep_fields(obj: Any) -> Optional[Tuple[Any, Any]]:
    """``(mul, ir)`` of a multiplicity-irrep pair of another library (attributes ``mul`` and ``ir``), else ``None``.

    Covers torch-e3nn's ``_MulIr`` and e3nn-jax's ``MulIrrep``, whatever their tuple behaviour.
    """
    if isinstance(obj, str) or not (hasattr(obj, "mul") and hasattr(obj, "ir")):
        return None
    return obj.mul, obj.ir


def _parity_from_letter(letter: str, l: int) -> int:
    """``e`` -> +1, ``o`` -> -1, ``y`` -> parity of the spherical harmonics of degree ``l``."""
    return {"e": 1, "o": -1, "y": (-1) ** l}[letter]


@functools.lru_cache(maxsize=1024)
def _parse_irrep_string(text: str) -> Tuple[int, int]:
    """``"2o"`` -> ``(2, -1)``."""
    match = _IRREP_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f'unable to convert string "{text}" into an Irrep (expected e.g. "0e", "1o" or "2y")')
    l = int(match.group(1))
    return l, _parity_from_letter(match.group(2), l)


@functools.lru_cache(maxsize=1024)
def _parse_irreps_string(text: str) -> Tuple["MulIrrep", ...]:
    """``"2x0e + 1o"`` -> ``(2x0e, 1x1o)``; the empty (or blank) string is the empty sum."""
    if text.strip() == "":
        return ()
    out = []
    for term in text.split("+"):
        match = _MUL_IRREP_PATTERN.fullmatch(term)
        if match is None:
            raise ValueError(
                f'Unable to convert string "{text}" into an Irreps: the term "{term.strip()}" is not of the form '
                '"<mul>x<l><p>" or "<l><p>" (e.g. "3x1o", "2e")'
            )
        mul = 1 if match.group(1) is None else int(match.group(1))
        l = int(match.group(2))
        out.append(MulIrrep(mul, Irrep(l, _parity_from_letter(match.group(3), l))))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# array helpers for the representation matrices
# ----------------------------------------------------------------------------------------------------------------


def _as_float_array(x: Any) -> jax.Array:
    """Angles as floating arrays (integer input gets the default float dtype, as e3nn-jax's angle arithmetic does)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_parity_count(k: Any) -> None:
    """``k`` counts inversions, so it must be a whole number; a fractional one would be read as even without notice.

    Only host values (Python numbers, NumPy arrays, lists) are checked: a JAX array may be traced, and reading it
    would force a device transfer (``D_from_matrix`` passes its own float ``k`` as a JAX array).
    """
    if isinstance(k, jax.Array):
        return
    try:
        values = np.asarray(k)
    except Exception:  # noqa: BLE001 - let jnp.asarray report what it cannot read
        return
    if values.dtype.kind == "c" or (values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0)):
        shown = k if values.ndim == 0 else values.tolist()
        raise ValueError(
            f"k counts how many times the inversion is applied and must be a whole number (0 or 1, say), got {shown!r}"
        )


def _broadcast_angles(alpha, beta, gamma, k) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Broadcast the three Euler angles and the parity count ``k`` to one shape; angles share one float dtype."""
    _check_parity_count(k)
    alpha, beta, gamma = (_as_float_array(a) for a in (alpha, beta, gamma))
    dtype = jnp.result_type(alpha, beta, gamma)
    k = jnp.asarray(k)
    shape = jnp.broadcast_shapes(alpha.shape, beta.shape, gamma.shape, k.shape)
    alpha, beta, gamma = (jnp.broadcast_to(a.astype(dtype), shape) for a in (alpha, beta, gamma))
    return alpha, beta, gamma, jnp.broadcast_to(k, shape)


def _parity_factor(p: int, k: jax.Array, dtype) -> jax.Array:
    """``p**k`` for an integer-valued count ``k`` (float ``k`` comes from ``D_from_matrix``), shape ``(..., 1, 1)``."""
    odd = (k % 2) == 1
    return jnp.where(odd, float(p), 1.0).astype(dtype)[..., None, None]


def _block_diagonal(blocks: List[jax.Array], batch_shape: Tuple[int, ...], dtype) -> jax.Array:
    """Block-diagonal matrix ``(*batch, n, n)`` from square blocks ``(*batch, d_i, d_i)``."""
    n = sum(b.shape[-1] for b in blocks)
    if not blocks:
        return jnp.zeros(batch_shape + (0, 0), dtype=dtype)
    rows = []
    offset = 0
    for block in blocks:
        d = block.shape[-1]
        left = jnp.zeros(batch_shape + (d, offset), dtype=block.dtype)
        right = jnp.zeros(batch_shape + (d, n - offset - d), dtype=block.dtype)
        rows.append(jnp.concatenate([left, block, right], axis=-1))
        offset += d
    return jnp.concatenate(rows, axis=-2)


def _repeat_block(block: jax.Array, mul: int) -> jax.Array:
    """``mul`` copies of ``block`` (``(..., d, d)``) along the diagonal: ``(..., mul*d, mul*d)``."""
    if mul == 1:
        return block
    d = block.shape[-1]
    eye = jnp.eye(mul, dtype=block.dtype)
    out = jnp.einsum("uv,...ij->...uivj", eye, block)
    return out.reshape(block.shape[:-2] + (mul * d, mul * d))


def _angles_from_matrix(R) -> Tuple[Tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """Euler angles of the rotation part of ``R`` and ``k = 1`` where ``det R < 0`` (an inversion is included)."""
    from e3nn_fast.rotation import matrix_to_angles

    R = jnp.asarray(R)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"D_from_matrix expects matrices of shape (..., 3, 3), got shape {R.shape}")
    d = jnp.sign(jnp.linalg.det(R))
    k = (1 - d) / 2
    return matrix_to_angles(R * d[..., None, None]), k


def _angles_from_quaternion(q) -> Tuple[jax.Array, jax.Array, jax.Array]:
    from e3nn_fast.rotation import quaternion_to_angles

    return quaternion_to_angles(q)


def _angles_from_axis_angle(axis, angle) -> Tuple[jax.Array, jax.Array, jax.Array]:
    from e3nn_fast.rotation import axis_angle_to_angles

    return axis_angle_to_angles(axis, angle)


def _angles_from_log_coordinates(log_coordinates) -> Tuple[jax.Array, jax.Array, jax.Array]:
    from e3nn_fast.rotation import log_coordinates_to_angles

    return log_coordinates_to_angles(log_coordinates)


class _RepresentationFromAngles:
    """The ways of naming a rotation, all reduced to ``D_from_angles(alpha, beta, gamma, k)`` of the class that mixes
    this in (an irrep: its matrix; irreps: the block-diagonal sum of theirs)."""

    def D_from_matrix(self, R) -> jax.Array:
        """Representation of the O(3) matrix ``R`` (``(..., 3, 3)``); ``det R < 0`` applies the parity once."""
        angles, k = _angles_from_matrix(R)
        return self.D_from_angles(*angles, k)

    def D_from_quaternion(self, q, k=0) -> jax.Array:
        """Representation of the rotation of unit quaternion ``q`` (``(..., 4)``), the parity applied ``k`` times."""
        return self.D_from_angles(*_angles_from_quaternion(q), k)

    def D_from_axis_angle(self, axis, angle, k=0) -> jax.Array:
        """Representation of the rotation by ``angle`` around ``axis`` (``(..., 3)``), the parity applied ``k``
        times."""
        return self.D_from_angles(*_angles_from_axis_angle(axis, angle), k)

    def D_from_log_coordinates(self, log_coordinates, k=0) -> jax.Array:
        """Representation of the rotation ``exp(log_coordinates . J)`` (``(..., 3)``), the parity applied ``k``
        times."""
        return self.D_from_angles(*_angles_from_log_coordinates(log_coordinates), k)


# ----------------------------------------------------------------------------------------------------------------
# Irrep
# ----------------------------------------------------------------------------------------------------------------


@functools.total_ordering
@dataclasses.dataclass(init=False, frozen=True, eq=False, repr=False)
class Irrep(_RepresentationFromAngles):
    r"""An irreducible representation of :math:`O(3)`: degree ``l`` and parity ``p``.

    Accepted forms: ``Irrep(l, p)``, ``Irrep("1o")`` / ``"1e"`` / ``"1y"`` (``y``: parity :math:`(-1)^l`),
    ``Irrep((l, p))``, another ``Irrep`` or a ``MulIrrep`` (its irrep), or the irrep object of another library
    (torch-e3nn's or e3nn-jax's ``Irrep``: anything with integer attributes ``l`` and ``p``) or its (mul, irrep)
    pair (torch-e3nn's ``_MulIr``, e3nn-jax's ``MulIrrep``: attributes ``mul`` and ``ir``; its irrep).

    >>> Irrep(2, -1), Irrep("1y"), Irrep("2e").dim
    (2o, 1o, 5)
    >>> Irrep("1o") + Irrep("2o")
    1x1o+1x2o
    """

    l: int
    p: int

    def __init__(self, l: Union[int, IntoIrrep], p: Optional[int] = None):
        if p is None:
            l, p = self._fields_from(l)
        l = _check_degree(l)
        object.__setattr__(self, "l", l)
        object.__setattr__(self, "p", _check_parity(p))

    @staticmethod
    def _fields_from(obj: Any) -> Tuple[Any, Any]:
        """``(l, p)`` of a one-argument constructor input."""
        if isinstance(obj, Irrep):
            return obj.l, obj.p
        if isinstance(obj, MulIrrep):
            return obj.ir.l, obj.ir.p
        if isinstance(obj, str):
            return _parse_irrep_string(obj)
        foreign = _foreign_irrep_fields(obj)
        if foreign is not None:
            return foreign
        foreign_pair = _foreign_mul_irrep_fields(obj)
        if foreign_pair is not None:
            # Another library's (mul, ir) pair stands for its irrep, as our MulIrrep does (torch-e3nn's _MulIr is a
            # tuple: unpacking it below would read mul as l and the irrep as p).
            return Irrep._fields_from(foreign_pair[1])
        if isinstance(obj, (tuple, list)) and not isinstance(obj, Irreps):
            # Unpack rather than ``len()``: torch-e3nn's Irrep is a tuple subclass whose __len__ raises.
            try:
                l, p = obj
            except ValueError:
                raise ValueError(f"unable to convert {obj!r} into an Irrep: expected a pair (l, p)") from None
            return l, p
        if _is_integer(obj):
            raise InvalidTypeError(
                f"Irrep({obj!r}) needs a parity: use Irrep({obj}, p) or a string such as '{obj}e'"
            )
        if isinstance(obj, (bytes, bytearray)):
            raise TypeError(f"Irrep got bytes {obj!r}; decode them first, e.g. Irrep({obj!r}.decode())")
        raise InvalidTypeError(f"unable to convert {obj!r} of type {type(obj).__name__} into an Irrep")

    # -- basic properties -----------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Dimension ``2 l + 1``."""
        return 2 * self.l + 1

    def is_scalar(self) -> bool:
        """True for the trivial representation ``0e``."""
        return self.l == 0 and self.p == 1

    @classmethod
    def iterator(cls, lmax: Optional[int] = None) -> Iterator["Irrep"]:
        """All irreps in increasing order (``0e, 0o, 1o, 1e, ...``) up to degree ``lmax`` included; endless if None."""
        if lmax is not None:
            lmax = _check_degree(lmax)
        degrees = itertools.count() if lmax is None else range(lmax + 1)
        for l in degrees:
            yield cls(l, (-1) ** l)
            yield cls(l, -((-1) ** l))

    # -- printing, comparison, hashing ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    __str__ = __repr__

    def __iter__(self) -> Iterator[int]:
        """Unpack as ``l, p = ir``."""
        yield self.l
        yield self.p

    def __hash__(self) -> int:
        return hash((self.l, self.p))

    def __eq__(self, other: object) -> bool:
        """Equal to another irrep or anything that converts to the same one (``Irrep("1o") == "1o"``)."""
        if not isinstance(other, Irrep):
            try:
                other = Irrep(other)
            except (ValueError, TypeError):
                return NotImplemented
        return self.l == other.l and self.p == other.p

    def _sort_key(self) -> Tuple[int, int]:
        # Within one degree, the parity of the spherical harmonics (-1)**l comes first.
        return self.l, -self.p * (-1) ** self.l

    def __lt__(self, other: Any) -> bool:
        if not isinstance(other, Irrep):
            try:
                other = Irrep(other)
            except (ValueError, TypeError):
                return NotImplemented
        return self._sort_key() < other._sort_key()

    # -- algebra --------------------------------------------------------------------------------------------------

    def __mul__(self, other: IntoIrrep) -> Iterator["Irrep"]:
        """Irreps in the tensor product of two irreps: a generator of ``|l1-l2|..l1+l2`` with parity ``p1 p2``."""
        if _is_integer(other):
            raise InvalidTypeError(f"Irrep * int is not defined; write {other} * Irrep('{self}') to get Irreps")
        other = Irrep(other)
        p = self.p * other.p
        return (Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1))

    def __rmul__(self, mul: int) -> "Irreps":
        """``mul * ir`` is the Irreps ``mulxir``."""
        if not _is_integer(mul):  # e3nn-jax asserts here: AssertionError-compatible class
            raise InvalidTypeError(
                f"a multiplicity times an Irrep needs an integer multiplicity, got {mul!r} of type "
                f"{type(mul).__name__}"
            )
        return Irreps([(mul, self)])

    def __add__(self, other: IntoIrreps) -> "Irreps":
        return Irreps(self) + Irreps(other)

    def __radd__(self, other: IntoIrreps) -> "Irreps":
        return Irreps(other) + Irreps(self)

    # -- representation matrices ----------------------------------------------------------------------------------

    def D_from_angles(self, alpha, beta, gamma, k=0) -> jax.Array:
        r"""Matrix :math:`p^k D^l(\alpha, \beta, \gamma)`, shape ``(..., 2l+1, 2l+1)``.

        The rotation is :math:`Y(\alpha) X(\beta) Y(\gamma)` (``gamma`` applied first); ``k`` counts inversions.
        All arguments broadcast together.
        """
        from e3nn_fast.so3 import wigner_D

        alpha, beta, gamma, k = _broadcast_angles(alpha, beta, gamma, k)
        D = wigner_D(self.l, alpha, beta, gamma)
        return D * _parity_factor(self.p, k, D.dtype)

    def generators(self) -> jax.Array:
        """Generators of the SO(3) representation, shape ``(3, 2l+1, 2l+1)``."""
        from e3nn_fast.so3 import generators

        return generators(self.l)


# ----------------------------------------------------------------------------------------------------------------
# MulIrrep
# ----------------------------------------------------------------------------------------------------------------


@functools.total_ordering
@dataclasses.dataclass(init=False, frozen=True, repr=False)
class MulIrrep:
    """An irrep with a multiplicity: ``MulIrrep(mul, ir)`` or ``MulIrrep((mul, ir))``; prints as ``"5x1o"``.

    The one-argument form also takes another library's pair (torch-e3nn's ``_MulIr``, e3nn-jax's ``MulIrrep``).
    """

    mul: int
    ir: Irrep

    def __init__(self, mul: Any, ir: Optional[IntoIrrep] = None):
        if ir is None:
            mul, ir = self._fields_from(mul)
        object.__setattr__(self, "mul", _check_multiplicity(mul))
        object.__setattr__(self, "ir", Irrep(ir))

    @staticmethod
    def _fields_from(obj: Any) -> Tuple[Any, Any]:
        """``(mul, ir)`` of a one-argument constructor input: a MulIrrep (ours or another library's) or a pair."""
        if isinstance(obj, MulIrrep):
            return obj.mul, obj.ir
        foreign = _foreign_mul_irrep_fields(obj)
        if foreign is not None:
            return foreign
        if isinstance(obj, (tuple, list)):
            try:
                mul, ir = obj  # unpacked, not len()-checked: tuple subclasses may refuse len()
            except ValueError:
                pass
            else:
                return mul, ir
        raise TypeError(f"unable to convert {obj!r} into a MulIrrep: expected MulIrrep(mul, ir) or a pair (mul, ir)")

    @property
    def dim(self) -> int:
        """Total dimension ``mul * (2 l + 1)``."""
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"

    __str__ = __repr__

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``mul, ir = mul_ir``."""
        yield self.mul
        yield self.ir

    def __lt__(self, other: Any) -> bool:
        """Order by irrep, then multiplicity."""
        if not isinstance(other, MulIrrep):
            return NotImplemented
        return (self.ir, self.mul) < (other.ir, other.mul)


# ----------------------------------------------------------------------------------------------------------------
# Irreps
# ----------------------------------------------------------------------------------------------------------------

# ``Irreps.sort()`` result; the type name matches e3nn-jax's printing ``sort(irreps=..., p=..., inv=...)``.
_Sort = collections.namedtuple("sort", ["irreps", "p", "inv"])


def _as_mul_irrep(item: Any) -> MulIrrep:
    """One element of a list given to ``Irreps``: ``"1o"``, ``Irrep``, ``MulIrrep``, ``l`` (even) or ``(mul, ir)``."""
    if isinstance(item, MulIrrep):
        return item
    if isinstance(item, Irrep):
        return MulIrrep(1, item)
    if isinstance(item, str):
        return MulIrrep(1, Irrep(item))
    if _is_integer(item):
        return MulIrrep(1, Irrep(item, 1))
    # Another library's irrep (torch-e3nn's is the tuple (l, p)): one copy, not a (mul, ir) pair.
    if _foreign_irrep_fields(item) is not None:
        return MulIrrep(1, Irrep(item))
    foreign = _foreign_mul_irrep_fields(item)
    try:
        mul, ir = item if foreign is None else foreign
    except (TypeError, ValueError):
        raise ValueError(f'Unable to interpret "{item!r}" as an irrep: expected "1o", an Irrep or (mul, ir)') from None
    try:
        return MulIrrep(mul, ir)
    except (ValueError, TypeError) as err:
        raise type(err)(f'Unable to interpret "{item!r}" as an irrep: {err}') from err


def _mul_irreps_from(irreps: IntoIrreps) -> Tuple[MulIrrep, ...]:
    """The ``MulIrrep`` sequence described by any accepted ``Irreps`` constructor input."""
    if irreps is None:
        return ()
    if isinstance(irreps, str):
        return _parse_irreps_string(irreps)
    if isinstance(irreps, Irrep):
        return (MulIrrep(1, irreps),)
    if isinstance(irreps, MulIrrep):
        return (irreps,)
    # A single irrep or (mul, ir) pair of another library (torch-e3nn, e3nn-jax): one term, not a sequence of terms.
    if _foreign_irrep_fields(irreps) is not None:
        return (MulIrrep(1, Irrep(irreps)),)
    if _foreign_mul_irrep_fields(irreps) is not None:
        return (MulIrrep(irreps),)
    if isinstance(irreps, (bytes, bytearray)):  # iterating would give one integer (an "l") per byte
        raise TypeError(f"Irreps got bytes {irreps!r}; decode them first, e.g. Irreps({irreps!r}.decode())")
    try:
        items = iter(irreps)
    except TypeError:
        raise TypeError(f"unable to convert {irreps!r} of type {type(irreps).__name__} into an Irreps") from None
    return tuple(_as_mul_irrep(item) for item in items)


class Irreps(_RepresentationFromAngles, tuple):
    r"""Direct sum of irreps of :math:`O(3)`, a tuple of :class:`MulIrrep`.

    Built from a string, ``None`` (empty), an ``Irrep`` or ``MulIrrep``, or a sequence whose items are strings,
    irreps, even degrees ``l`` or ``(mul, ir)`` pairs; the irreps objects of torch-e3nn and e3nn-jax (``Irreps``,
    ``Irrep``, ``MulIrrep``/``_MulIr``) convert too.

    >>> Irreps("100x0e + 50x1e")
    100x0e+50x1e
    >>> Irreps([(100, (0, 1)), (50, "1e")]).dim
    250
    >>> Irreps(), Irreps("")
    (Irreps(), Irreps())
    """

    def __new__(cls, irreps: IntoIrreps = None):
        if type(irreps) is cls:  # immutable: reuse
            return irreps
        return super().__new__(cls, _mul_irreps_from(irreps))

    # Immutability: only ``functools.cached_property`` (which writes ``__dict__`` directly) may store state.
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Irreps is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Irreps is immutable (cannot delete {name!r})")

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        """Irreps of the spherical harmonics ``Y^0 .. Y^lmax``: ``1x0e+1x1o+1x2e+...`` (parity ``p**l``)."""
        if not _is_integer(lmax):
            raise TypeError(f"lmax must be an integer, got {lmax!r}")
        p = _check_parity(p)
        return Irreps([(1, (l, p**l)) for l in range(lmax + 1)])

    # -- printing, comparison, hashing ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        if len(self) == 0:
            return "Irreps()"
        return "+".join(repr(mul_ir) for mul_ir in self)

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Tuple equality; a string is parsed first (an unparsable string is simply unequal)."""
        if isinstance(other, str):
            try:
                other = Irreps(other)
            except ValueError:
                return False
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    @functools.cached_property
    def _hash(self) -> int:
        return tuple.__hash__(self)

    def __hash__(self) -> int:
        # Cached: Irreps are hashed on every jit call where they are static arguments.
        return self._hash

    # -- tuple protocol -------------------------------------------------------------------------------------------

    def __getitem__(self, index):
        """An integer gives a ``MulIrrep``, a slice gives ``Irreps``."""
        item = tuple.__getitem__(self, index)
        return Irreps(item) if isinstance(index, slice) else item

    def __contains__(self, ir: IntoIrrep) -> bool:
        """Whether the irrep ``ir`` appears (with any multiplicity, zero included)."""
        ir = Irrep(ir)
        return any(mul_ir.ir == ir for mul_ir in self)

    def count(self, ir: IntoIrrep) -> int:
        """Total multiplicity of the irrep ``ir``."""
        ir = Irrep(ir)
        return sum(mul for mul, irrep in self if irrep == ir)

    def index(self, _object):  # noqa: D102
        # As in e3nn-jax: ambiguous (chunk position? irrep position?), so not provided.
        raise NotImplementedError(
            "Irreps.index is not supported (as in e3nn-jax); use slices() or enumerate over the MulIrreps"
        )

    def __add__(self, other: IntoIrreps) -> "Irreps":
        return Irreps(tuple.__add__(self, Irreps(other)))

    def __radd__(self, other: IntoIrreps) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, factor: int) -> "Irreps":
        """Multiply every multiplicity by the integer ``factor``."""
        if not _is_integer(factor):
            if isinstance(factor, Irreps):  # a plausible guess at a tensor product, which has its own function
                raise NotImplementedError(
                    "Irreps * Irreps is not defined: the irreps of a tensor product come from "
                    "e3nn.tensor_product(...).irreps (or e3nn.tensor_product on IrrepsArrays)"
                )
            return NotImplemented
        return Irreps(tuple(MulIrrep(mul_ir.mul * factor, mul_ir.ir) for mul_ir in self))

    __rmul__ = __mul__

    def __floordiv__(self, divisor: int) -> "Irreps":
        """Divide every multiplicity by the integer ``divisor`` (floor)."""
        if not _is_integer(divisor):
            return NotImplemented
        return Irreps([(mul // divisor, ir) for mul, ir in self])

    # -- derived quantities (cached) ------------------------------------------------------------------------------

    @functools.cached_property
    def dim(self) -> int:
        """Total dimension ``sum(mul * (2l + 1))``."""
        return sum(mul_ir.dim for mul_ir in self)

    @functools.cached_property
    def num_irreps(self) -> int:
        """Sum of the multiplicities."""
        return sum(mul for mul, _ in self)

    @property
    def ls(self) -> List[int]:
        """Degree of every irrep copy (``l`` repeated ``mul`` times)."""
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        """Largest degree among irreps of non-zero multiplicity."""
        ls = [ir.l for mul, ir in self if mul > 0]
        if not ls:
            raise ValueError(f"Cannot get lmax of empty Irreps ({self!r} has no irrep of non-zero multiplicity)")
        return max(ls)

    @property
    def mul_gcd(self) -> int:
        """Greatest common divisor of the multiplicities (0 for the empty sum)."""
        return math.gcd(*[mul for mul, _ in self])

    def is_scalar(self) -> bool:
        """True if every chunk is ``0e`` (and there is at least one)."""
        return len(self) > 0 and all(ir.is_scalar() for _, ir in self)

    @functools.cached_property
    def _slices(self) -> Tuple[slice, ...]:
        out = []
        start = 0
        for mul_ir in self:
            out.append(slice(start, start + mul_ir.dim))
            start += mul_ir.dim
        return tuple(out)

    def slices(self) -> List[slice]:
        """Position of each chunk in a flat array of size ``dim``."""
        return list(self._slices)

    # -- rearrangements -------------------------------------------------------------------------------------------

    def remove_zero_multiplicities(self) -> "Irreps":
        """Drop chunks of multiplicity zero."""
        return Irreps([mul_ir for mul_ir in self if mul_ir.mul > 0])

    def unify(self) -> "Irreps":
        """Merge neighbouring chunks of the same irrep (``0e+1e+1e`` -> ``1x0e+2x1e``); does not sort."""
        # itertools.groupby groups *consecutive* equal irreps, which is exactly the merge wanted (no sorting).
        runs = itertools.groupby(self, key=lambda mul_ir: mul_ir.ir)
        return Irreps(tuple(MulIrrep(sum(m.mul for m in run), ir) for ir, run in runs))

    def simplify(self) -> "Irreps":
        """``remove_zero_multiplicities`` then ``unify``; does not sort."""
        return self.remove_zero_multiplicities().unify()

    def sort(self) -> _Sort:
        """Stable sort of the chunks by irrep.

        Returns the named tuple ``(irreps, p, inv)``: ``inv[j]`` is the old position of the new chunk ``j`` and
        ``p`` its inverse (``p[i]`` is the new position of the old chunk ``i``).
        """
        inv = tuple(sorted(range(len(self)), key=lambda i: (self[i].ir._sort_key(), i)))
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return _Sort(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self) -> "Irreps":
        """``sort`` then ``simplify``: one chunk per irrep, in increasing order."""
        return self.sort().irreps.simplify()

    def repeat(self, n: int) -> "Irreps":
        """The whole sum repeated ``n`` times (``0e+1e`` -> ``0e+1e+0e+1e``)."""
        if not _is_integer(n):
            raise TypeError(f"Irreps.repeat expects an integer, got {n!r}")
        return Irreps(tuple(self) * n)

    def set_mul(self, mul: int) -> "Irreps":
        """Same irreps with every multiplicity set to ``mul``."""
        return Irreps([(mul, ir) for _, ir in self])

    def filter(
        self,
        keep: Union["Irreps", List[Irrep], Callable[[MulIrrep], bool], None] = None,
        *,
        drop: Union["Irreps", List[Irrep], Callable[[MulIrrep], bool], None] = None,
        lmax: Optional[int] = None,
    ) -> "Irreps":
        """Keep the chunks whose irrep is in ``keep``, drop those in ``drop``, or keep those with ``l <= lmax``.

        ``keep``/``drop`` may be irreps (string, ``Irreps``, ``Irrep``, list) or a predicate on ``MulIrrep``.
        At most one of the three may be given; with none, ``self`` is returned.
        """
        given = [name for name, value in (("keep", keep), ("drop", drop), ("lmax", lmax)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Cannot specify both {given[0]} and {given[1]}")
        if keep is not None:
            selected = self._selector(keep)
            return Irreps([mul_ir for mul_ir in self if selected(mul_ir)])
        if drop is not None:
            selected = self._selector(drop)
            return Irreps([mul_ir for mul_ir in self if not selected(mul_ir)])
        if lmax is not None:
            return Irreps([mul_ir for mul_ir in self if mul_ir.ir.l <= lmax])
        return self

    @staticmethod
    def _selector(which) -> Callable[[MulIrrep], bool]:
        """Predicate on ``MulIrrep`` for the ``keep``/``drop`` argument of ``filter``."""
        if isinstance(which, str):
            which = Irreps(which)
        if isinstance(which, (Irrep, MulIrrep)):
            which = [which]
        if callable(which):
            return which
        irreps = {Irrep(ir) for ir in which}
        return lambda mul_ir: mul_ir.ir in irreps

    # -- sub-sums -------------------------------------------------------------------------------------------------

    @property
    def slice_by_mul(self) -> "_SliceByMul":
        """``irreps.slice_by_mul[a:b]``: the irreps of the copies ``a..b`` (counting each irrep copy once)."""
        return _SliceByMul(self)

    @property
    def slice_by_dim(self) -> "_SliceByDim":
        """``irreps.slice_by_dim[a:b]``: the irreps of the components ``a..b`` of a flat array."""
        return _SliceByDim(self)

    @property
    def slice_by_chunk(self) -> "_SliceByChunk":
        """``irreps.slice_by_chunk[a:b]``: the chunks ``a..b`` (same as ``irreps[a:b]``)."""
        return _SliceByChunk(self)

    # -- representation matrices (block diagonal) -----------------------------------------------------------------

    def D_from_angles(self, alpha, beta, gamma, k=0) -> jax.Array:
        r"""Block-diagonal :math:`\bigoplus p^k D^l(\alpha, \beta, \gamma)`, shape ``(..., dim, dim)``."""
        alpha, beta, gamma, k = _broadcast_angles(alpha, beta, gamma, k)
        per_irrep = {}  # each distinct irrep is evaluated once
        blocks = []
        for mul, ir in self:
            if mul == 0:
                continue
            if ir not in per_irrep:
                per_irrep[ir] = ir.D_from_angles(alpha, beta, gamma, k)
            blocks.append(_repeat_block(per_irrep[ir], mul))
        return _block_diagonal(blocks, alpha.shape, alpha.dtype)

    def generators(self) -> jax.Array:
        """Block-diagonal generators of the SO(3) representation, shape ``(3, dim, dim)``."""
        blocks = [_repeat_block(ir.generators(), mul) for mul, ir in self if mul > 0]
        dtype = blocks[0].dtype if blocks else jnp.result_type(float)
        return _block_diagonal(blocks, (3,), dtype)


class _SliceByMul:
    """Helper behind ``Irreps.slice_by_mul[...]``."""

    def __init__(self, irreps: Irreps):
        self._irreps = irreps

    def __getitem__(self, index: slice) -> Irreps:
        start, stop = _unit_slice(index, self._irreps.num_irreps, "slice_by_mul")
        out = []
        position = 0
        for mul, ir in self._irreps:
            count = _overlap(position, position + mul, start, stop)
            if count is not None:
                out.append((count, ir))
            position += mul
        return Irreps(out)


class _SliceByDim:
    """Helper behind ``Irreps.slice_by_dim[...]``; a cut through the middle of an irrep is an error."""

    def __init__(self, irreps: Irreps):
        self._irreps = irreps

    def __getitem__(self, index: slice) -> Irreps:
        start, stop = _unit_slice(index, self._irreps.dim, "slice_by_dim")
        out = []
        position = 0
        for mul, ir in self._irreps:
            size = _overlap(position, position + mul * ir.dim, start, stop)
            if size is not None:
                if size % ir.dim != 0:
                    raise ValueError(
                        f"Irreps.slice_by_dim[{start}:{stop}] of {self._irreps} cuts through a copy of {ir} inside "
                        f"{mul}x{ir} (each copy has {ir.dim} components), and a partial irrep is not equivariant; "
                        "choose bounds on copy boundaries (see Irreps.slices())"
                    )
                out.append((size // ir.dim, ir))
            position += mul * ir.dim
        return Irreps(out)


class _SliceByChunk:
    """Helper behind ``Irreps.slice_by_chunk[...]``."""

    def __init__(self, irreps: Irreps):
        self._irreps = irreps

    def __getitem__(self, index: slice) -> Irreps:
        if not isinstance(index, slice):
            raise IndexError(f"Irreps.slice_by_chunk only supports slices, got {index!r}")
        return Irreps(self._irreps[index])


def _unit_slice(index: Any, length: int, name: str) -> Tuple[int, int]:
    """``(start, stop)`` of a step-1 slice over ``length`` items."""
    if not isinstance(index, slice):
        raise IndexError(f"Irreps.{name} only supports slices, got {index!r}")
    start, stop, step = index.indices(length)
    if step != 1:
        raise NotImplementedError(f"Irreps.{name} does not support strides (got step {step})")
    return start, stop


def _overlap(lo: int, hi: int, start: int, stop: int) -> Optional[int]:
    """How much of the chunk ``[lo, hi)`` the slice ``[start, stop)`` selects; None: not at all.

    As in e3nn-jax, a chunk lying inside ``[start, stop]`` is kept whole, even when empty (a ``0x`` chunk on the
    boundary), and an empty slice ``[a:a]`` strictly inside a chunk keeps that chunk with multiplicity 0.
    A reversed slice (``stop < start``) selects nothing (e3nn-jax raises when it falls inside one chunk).
    """
    if start <= lo and hi <= stop:
        return hi - lo
    if start < hi and lo < stop:
        size = min(stop, hi) - max(start, lo)
        return size if size >= 0 else None
    return None


# No array leaves: these objects travel through pytrees as static structure.
for _cls in (Irrep, MulIrrep, Irreps):
    jax.tree_util.register_pytree_node(_cls, lambda obj: ((), obj), lambda obj, _: obj)
del _cls
