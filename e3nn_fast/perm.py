"""Helpers for permutations of ``n`` objects and groups of them (drop-in for ``e3nn_jax.perm``).

A permutation is a tuple ``p`` holding each of ``0 .. n-1`` once; it maps ``i`` to ``p[i]``.  Composition follows
function composition: ``compose(p1, p2)`` maps ``i`` to ``p1[p2[i]]``.

Permutations are numbered ``0 .. n! - 1`` in a mixed-radix code: the first entry is picked from the pool of unused
values by the least significant digit (base ``n``), the next one by the following digit (base ``n - 1``) and so on.
``from_int`` and ``to_int`` are inverse bijections for this code (the numbering is part of the API: e3nn-jax's
reduced tensor products use it, so it must not change).
"""

from __future__ import annotations

import math
import random
from typing import Iterable, Set, Tuple

TY_PERM = Tuple[int, ...]

__all__ = [
    "TY_PERM",
    "is_perm",
    "identity",
    "compose",
    "inverse",
    "rand",
    "from_int",
    "to_int",
    "group",
    "germinate",
    "is_group",
    "to_cycles",
    "sign",
]


def is_perm(p: TY_PERM) -> bool:
    """Whether ``p`` holds each of ``0 .. len(p)-1`` exactly once."""
    return sorted(set(p)) == list(range(len(p)))


def _check_perm(p, name: str = "p") -> TY_PERM:
    """``p`` as a tuple, or a ValueError saying why it is not a permutation."""
    try:
        p = tuple(p)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(p).__name__}") from None
    if not all(isinstance(i, int) for i in p):
        raise TypeError(f"{name} must contain ints only, got {p}")
    if len(p) != len(set(p)) or not is_perm(p):
        raise ValueError(f"{name}={p} is not a permutation of 0..{len(p) - 1}")
    return p


def _check_size(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be non-negative, got {n}")
    return n


def identity(n: int) -> TY_PERM:
    """The permutation leaving all of ``0 .. n-1`` in place."""
    return tuple(range(_check_size(n)))


def compose(p1: TY_PERM, p2: TY_PERM) -> TY_PERM:
    """``p1 . p2``: apply ``p2`` first, then ``p1``."""
    p1, p2 = _check_perm(p1, "p1"), _check_perm(p2, "p2")
    if len(p1) != len(p2):
        raise ValueError(f"cannot compose permutations of different sizes {len(p1)} and {len(p2)}")
    return tuple(p1[j] for j in p2)


def inverse(p: TY_PERM) -> TY_PERM:
    """The permutation ``q`` with ``q[p[i]] == i``."""
    p = _check_perm(p)
    q = [0] * len(p)
    for i, j in enumerate(p):
        q[j] = i
    return tuple(q)


def rand(n: int) -> TY_PERM:
    """A uniformly random permutation of ``n`` objects (drawn with Python's ``random`` module)."""
    n = _check_size(n)
    return from_int(random.randint(0, math.factorial(n) - 1), n)


def from_int(i: int, n: int) -> TY_PERM:
    """The ``i``-th permutation of ``n`` objects in the mixed-radix numbering described in the module docstring."""
    n = _check_size(n)
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"i must be an int, got {type(i).__name__}")
    if not 0 <= i < math.factorial(n):
        raise ValueError(f"i={i} is out of range for permutations of {n} objects (0 <= i < {math.factorial(n)})")
    pool = list(range(n))
    out = []
    for radix in range(n, 0, -1):
        i, digit = divmod(i, radix)
        out.append(pool.pop(digit))
    return tuple(out)


def to_int(p: TY_PERM) -> int:
    """The number of ``p`` in the mixed-radix numbering (inverse of :func:`from_int`)."""
    p = _check_perm(p)
    n = len(p)
    # digit k (radix n - k) is the rank of p[k] among the values not used yet: the number of later, smaller entries
    digits = [sum(later < value for later in p[k + 1 :]) for k, value in enumerate(p)]
    i = 0
    for k in reversed(range(n)):  # Horner's scheme: i = d_0 + n (d_1 + (n - 1) (d_2 + ...))
        i = i * (n - k) + digits[k]
    return i


def group(n: int) -> Set[TY_PERM]:
    """The symmetric group: all ``n!`` permutations of ``n`` objects."""
    n = _check_size(n)
    return {from_int(i, n) for i in range(math.factorial(n))}


def germinate(subset: Iterable[TY_PERM]) -> Set[TY_PERM]:
    """The smallest set containing ``subset`` that is closed under inverse and composition (the generated group)."""
    current = {_check_perm(p) for p in subset}
    while True:
        size = len(current)
        current |= {inverse(p) for p in current}
        current |= {compose(p1, p2) for p1 in current for p2 in current}
        if len(current) == size:
            return current


def is_group(g: Set[TY_PERM]) -> bool:
    """Whether the set of permutations ``g`` contains the identity and is closed under inverse and composition."""
    g = set(g)
    if not g:
        return False
    n = len(next(iter(g)))
    for p in g:
        _check_perm(p)
        if len(p) != n:
            raise ValueError(f"all permutations of a group must have the same size, got sizes {n} and {len(p)}")
    if identity(n) not in g:
        return False
    if any(inverse(p) not in g for p in g):
        return False
    return all(compose(p1, p2) in g for p1 in g for p2 in g)


def to_cycles(p: TY_PERM) -> Set[Tuple[int, ...]]:
    """The cycles of length >= 2 of ``p``, each as a tuple starting with its smallest element."""
    p = _check_perm(p)
    seen = [False] * len(p)
    cycles = set()
    for start in range(len(p)):
        if seen[start]:
            continue
        cycle = []
        i = start
        while not seen[i]:
            seen[i] = True
            cycle.append(i)
            i = p[i]
        # ``start`` is the smallest unseen index, hence the smallest element of its cycle
        if len(cycle) >= 2:
            cycles.add(tuple(cycle))
    return cycles


def sign(p: TY_PERM) -> int:
    """The signature of ``p``: ``+1`` for an even permutation, ``-1`` for an odd one."""
    s = 1
    for cycle in to_cycles(p):
        if len(cycle) % 2 == 0:
            s = -s
    return s
