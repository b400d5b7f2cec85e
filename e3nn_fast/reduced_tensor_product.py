"""Change of basis from a tensor product with index (anti)symmetries to irreps ("reduced tensor products").

A tensor ``T_{ij...}`` whose indices carry irreps and obey signed permutation symmetries (``"ij=ji"``,
``"ij=-ji"``, ...) lives in a subspace of the full tensor product. This module builds an orthonormal change of
basis ``Q`` of shape ``(d_i, d_j, ..., irreps_out.dim)`` from that subspace to a direct sum of irreps.

Construction (deterministic, so that the numbers agree with e3nn-jax 0.21):

1. Indices are coupled two groups at a time (greedily, the pair whose permutation-constrained subspace is the
   smallest first); each coupling contracts with Clebsch-Gordan coefficients scaled by ``sqrt(2l+1)``, which keeps
   the basis orthonormal.
2. Whenever a group of indices has a nontrivial permutation subgroup, the coupled basis is intersected with the
   subspace of tensors that obey those symmetries (one intersection per output irrep, using its first component).
3. Entries are snapped to the nearest ``±sqrt(p)/q`` (``q <= 2**20``), which removes round-off noise.

A fully symmetric power of several irreps is built faster: each irrep's own symmetric powers are multiplied
together and symmetrised over the positions of the factors; each product is computed once on its own small axes and
then copied to its positions, so the (mostly zero) full-size tensor is only ever written, never computed with.

All the work is plain ``numpy`` in float64. Results are cached per configuration, and the public functions return
the cached array itself, made read-only (a fourth power of ``0e+1o+2e+3o`` is already 2 GB).
"""

from __future__ import annotations

import functools
import itertools
from math import prod
from typing import Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.so3 import clebsch_gordan

__all__ = [
    "reduced_tensor_product_basis",
    "reduced_symmetric_tensor_product_basis",
    "reduced_antisymmetric_tensor_product_basis",
]

# A group of signed permutations: each element is (sign, p) where p[k] is the index placed at position k.
PermGroup = FrozenSet[Tuple[int, Tuple[int, ...]]]
KeepIr = Optional[FrozenSet[Irrep]]


class ReducedTensorProductError(ValueError, RuntimeError):
    """Bad formula or index irreps. A ValueError; also a RuntimeError, which is what e3nn-jax raised."""


# ----------------------------------------------------------------------------------------------------------------
# A "basis" here is a list of blocks (mul, ir, array) with array of shape (*index_dims, mul, ir.dim).
# Keeping blocks apart (instead of one flat IrrepsArray) makes coupling and grouping by irrep direct.
# ----------------------------------------------------------------------------------------------------------------
Block = Tuple[int, Irrep, np.ndarray]


def _regroup(blocks: List[Block]) -> List[Block]:
    """Stable-sort blocks by irrep and merge equal irreps (multiplicities stacked in order); drop empty ones."""
    order = sorted(range(len(blocks)), key=lambda k: (blocks[k][1], k))
    out: List[Block] = []
    for k in order:
        mul, ir, x = blocks[k]
        if mul == 0:
            continue
        if out and out[-1][1] == ir:
            m0, _, x0 = out[-1]
            out[-1] = (m0 + mul, ir, np.concatenate([x0, x], axis=-2))
        else:
            out.append((mul, ir, x))
    return out


def _filter(blocks: List[Block], keep_ir: KeepIr) -> List[Block]:
    if keep_ir is None:
        return blocks
    return [b for b in blocks if b[1] in keep_ir]


def _identity_blocks(irreps: Irreps, position: int, n_indices: int) -> List[Block]:
    """The trivial basis of one index, broadcastable against the other indices (size-1 axes elsewhere)."""
    eye = np.eye(irreps.dim)
    shape = (1,) * position + (irreps.dim,) + (1,) * (n_indices - position - 1)
    blocks = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        blocks.append((mul, ir, eye[:, sl].reshape(shape + (mul, ir.dim))))
    return blocks


class _Basis(NamedTuple):
    """A finished basis: ``array`` of shape ``(*index_dims, irreps.dim)``, read-only because it is cached and shared."""

    irreps: Irreps
    array: np.ndarray


def _frozen_basis(irreps: Irreps, array: np.ndarray) -> _Basis:
    array.flags.writeable = False  # every caller gets this very array back from the caches
    return _Basis(irreps, array)


def _dense(blocks: List[Block], index_shape: Tuple[int, ...]) -> _Basis:
    """Concatenate blocks along the irreps axis."""
    irreps = Irreps([(mul, ir) for mul, ir, _ in blocks])
    if blocks:
        array = np.concatenate([x.reshape(x.shape[:-2] + (-1,)) for _, _, x in blocks], axis=-1)
    else:
        array = np.zeros(index_shape + (0,))
    return _frozen_basis(irreps, array)


def _blocks_of(basis: _Basis) -> List[Block]:
    """The blocks of a basis as views (no copy) of its array."""
    blocks = []
    for (mul, ir), sl in zip(basis.irreps, basis.irreps.slices()):
        if mul > 0:
            x = basis.array[..., sl]
            blocks.append((mul, ir, x.reshape(x.shape[:-1] + (mul, ir.dim))))
    return blocks


def _couple(blocks1: List[Block], blocks2: List[Block], keep_ir: KeepIr = None) -> List[Block]:
    """Couple two bases on disjoint indices into irreps (orthonormal: CG scaled by sqrt(2l+1))."""
    blocks1, blocks2 = _regroup(blocks1), _regroup(blocks2)
    out: List[Block] = []
    for mul1, ir1, x1 in blocks1:
        for mul2, ir2, x2 in blocks2:
            for ir in ir1 * ir2:
                if keep_ir is not None and ir not in keep_ir:
                    continue
                cg = np.sqrt(ir.dim) * clebsch_gordan(ir1.l, ir2.l, ir.l)
                x = np.einsum("...ui,...vj,ijk->...uvk", x1, x2, cg)
                out.append((mul1 * mul2, ir, x.reshape(x.shape[:-3] + (mul1 * mul2, ir.dim))))
    return _regroup(out)


# ----------------------------------------------------------------------------------------------------------------
# Signed permutation groups
# ----------------------------------------------------------------------------------------------------------------
def _perm_compose(p1: Tuple[int, ...], p2: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(p1[p2[k]] for k in range(len(p1)))


def _perm_inverse(p: Tuple[int, ...]) -> Tuple[int, ...]:
    inv = [0] * len(p)
    for k, pk in enumerate(p):
        inv[pk] = k
    return tuple(inv)


def _perm_sign(p: Tuple[int, ...]) -> int:
    """(-1)^(number of inversions)."""
    inversions = sum(1 for a in range(len(p)) for b in range(a + 1, len(p)) if p[a] > p[b])
    return -1 if inversions % 2 else 1


def _symmetric_group(n: int) -> PermGroup:
    return frozenset((1, p) for p in itertools.permutations(range(n)))


def _antisymmetric_group(n: int) -> PermGroup:
    return frozenset((_perm_sign(p), p) for p in itertools.permutations(range(n)))


def _trivial_group(n: int) -> PermGroup:
    return frozenset({(1, tuple(range(n)))})


@functools.lru_cache(maxsize=None)
def _parse_formula(formula: str) -> Tuple[str, PermGroup]:
    """``"ijk=jik=-kji"`` -> ("ijk", group generated by the signed permutations it lists)."""
    if not isinstance(formula, str) or formula.strip() == "":
        raise ReducedTensorProductError(f"reduced_tensor_product_basis: empty formula {formula!r}")
    terms = []
    for term in formula.split("="):
        term = term.strip()
        sign = -1 if term.startswith("-") else 1
        indices = term[1:] if sign == -1 else term
        if indices == "" or not all(c.isalpha() for c in indices):
            raise ReducedTensorProductError(
                f"reduced_tensor_product_basis: malformed term {term!r} in formula {formula!r}; expected letters "
                "optionally preceded by '-', e.g. 'ij=-ji'"
            )
        terms.append((sign, indices))
    sign0, f0 = terms[0]
    if sign0 != 1:
        raise ReducedTensorProductError(
            f"reduced_tensor_product_basis: the first term of {formula!r} cannot be negated"
        )
    if len(set(f0)) != len(f0):
        raise ReducedTensorProductError(f"reduced_tensor_product_basis: repeated index in {f0!r} ({formula!r})")
    for _, f in terms:
        if len(f) != len(f0) or set(f) != set(f0) or len(set(f)) != len(f):
            raise ReducedTensorProductError(
                f"reduced_tensor_product_basis: {f!r} is not a permutation of {f0!r} in formula {formula!r}"
            )

    # term f says T[f0] = s T[f]; as a permutation of positions: p[k] = position in f of the k-th index of f0.
    group = {(s, tuple(f.index(c) for c in f0)) for s, f in terms}
    while True:  # close under inverse and composition
        size = len(group)
        group |= {(s, _perm_inverse(p)) for s, p in group}
        group |= {(s1 * s2, _perm_compose(p1, p2)) for s1, p1 in group for s2, p2 in group}
        if len(group) == size:
            return f0, frozenset(group)


def _subgroup(indices: FrozenSet[int], group: PermGroup) -> PermGroup:
    """Elements acting only on ``indices`` (fixing the others), relabelled onto ``0..len(indices)-1``."""
    sub = sorted(indices)
    return frozenset(
        (s, tuple(sub.index(i) for i in p if i in indices))
        for s, p in group
        if all(i in indices or i == k for k, i in enumerate(p))
    )


@functools.lru_cache(maxsize=None)
def _orbits(group: PermGroup, dims: Tuple[int, ...]) -> FrozenSet:
    """Independent entries of a tensor with that symmetry: one (orbit, -orbit) pair per free coefficient.

    An orbit is the set of (sign, multi-index) related to one entry; entries equal to minus themselves vanish.
    """
    out = set()
    for x in itertools.product(*(range(d) for d in dims)):
        orbit = {(s, tuple(x[i] for i in p)) for s, p in group}
        if (-1, x) not in orbit:
            out.add(frozenset({frozenset(orbit), frozenset((-s, y) for s, y in orbit)}))
    return frozenset(out)


@functools.lru_cache(maxsize=None)
def _symmetric_subspace(orbits: FrozenSet, dims: Tuple[int, ...]) -> np.ndarray:
    """Orthonormal rows spanning the tensors with the symmetry, shape (n_free, *dims)."""
    ordered = sorted(sorted(sorted(o) for o in pair) for pair in orbits)
    Q = np.zeros((len(ordered), prod(dims)))
    for row, pair in enumerate(ordered):
        orbit = max(pair, key=lambda o: sum(s for s, _ in o))  # sign convention: most entries positive
        for s, x in orbit:
            Q[row, np.ravel_multi_index(x, dims)] = s / len(orbit) ** 0.5
    return Q.reshape((len(ordered),) + dims)


def _symmetric_subspace_of(indices: FrozenSet[int], group: PermGroup, dims: Tuple[int, ...]) -> np.ndarray:
    """Like :func:`_symmetric_subspace` for a subset of the indices, broadcastable over all of them."""
    sub_dims = tuple(dims[i] for i in sorted(indices))
    sub_group = _subgroup(indices, group)
    if len(sub_group) == 1:
        Q = np.eye(prod(sub_dims))
    else:
        Q = _symmetric_subspace(_orbits(sub_group, sub_dims), sub_dims)
    return Q.reshape((-1,) + tuple(dims[i] if i in indices else 1 for i in range(len(dims))))


def _free_dimension(indices: FrozenSet[int], group: PermGroup, dims: Tuple[int, ...]) -> int:
    sub_dims = tuple(dims[i] for i in sorted(indices))
    sub_group = _subgroup(indices, group)
    if len(sub_group) == 1:
        return prod(sub_dims)
    return len(_orbits(sub_group, sub_dims))


# ----------------------------------------------------------------------------------------------------------------
# Linear algebra helpers
# ----------------------------------------------------------------------------------------------------------------
def _gram_schmidt(A: np.ndarray, epsilon: float) -> np.ndarray:
    """Orthonormalise the rows of A in order, dropping those (nearly) in the span of the previous ones."""
    rows: List[np.ndarray] = []
    for v in A:
        v = v.copy()
        for w in rows:
            v -= np.dot(w, v) * w
        norm = np.linalg.norm(v)
        if norm > epsilon:
            rows.append(v / norm)
    return np.stack(rows) if rows else np.zeros((0, A.shape[1]))


def _intersection_in_first(basis1: np.ndarray, basis2: np.ndarray, epsilon: float) -> np.ndarray:
    """Coefficients (rows, orthonormal) over the rows of ``basis1`` of an orthonormal basis of span1 ∩ span2.

    ``a @ basis1 = b @ basis2`` iff (a, -b) is in the kernel of the Gram matrix of [basis1; -basis2].
    """
    stacked = np.concatenate([basis1, -basis2], axis=0)
    gram = stacked @ stacked.T
    w, v = np.linalg.eigh(gram)
    v = v[:, w < epsilon]
    a = v[: basis1.shape[0]]
    return _gram_schmidt(a @ a.T, epsilon)


def _constrain_by_symmetry(blocks: List[Block], subspace: np.ndarray, epsilon: float) -> List[Block]:
    """Keep, within each irrep's multiplicity space, the combinations lying in the symmetric ``subspace``.

    Equivariance makes it enough to test the first component of each irrep.
    """
    # explicit width: an empty subspace (e.g. the antisymmetric 4th power of a 3-dimensional irrep) has no row to
    # infer it from, and then leaves every block with multiplicity 0
    S = subspace.reshape(subspace.shape[0], int(np.prod(subspace.shape[1:])))
    out: List[Block] = []
    for ir in sorted({ir for _, ir, _ in blocks}):
        x = np.concatenate([b[2] for b in blocks if b[1] == ir], axis=-2)
        mul = x.shape[-2]
        R = x[..., 0].reshape(-1, mul).T  # (mul, prod(dims))
        # rows of S have disjoint supports, so those vanishing on R's support cannot contribute
        support = ~np.all(R == 0, axis=0)
        S_relevant = S[~np.all(S[:, support] == 0, axis=1)]
        P = _intersection_in_first(R, S_relevant, epsilon)
        out.append((len(P), ir, np.einsum("vu,...ui->...vi", P, x)))
    return out


def _closest_fraction(numerator: int, denominator: int, bound: int) -> Tuple[int, int]:
    """The fraction nearest to ``numerator / denominator`` among those with a denominator at most ``bound``.

    Walks the continued fraction expansion: the answer is either the last convergent whose denominator fits, or the
    largest semiconvergent past it that still fits, whichever is nearer (the convergent when both are as near).
    Plain integers throughout, which is much cheaper than ``Fraction`` objects and exact all the same.
    """
    p_prev, q_prev, p, q = 0, 1, 1, 0  # the two latest convergents, p / q the newest
    n, d = numerator, denominator
    while d != 0:
        a = n // d
        if q_prev + a * q > bound:
            break
        p_prev, q_prev, p, q = p, q, p_prev + a * p, q_prev + a * q
        n, d = d, n - a * d
    else:
        return p, q  # the expansion ended within the bound: the value itself
    t = (bound - q_prev) // q
    p_semi, q_semi = p_prev + t * p, q_prev + t * q
    # compare the distances of p / q and p_semi / q_semi to numerator / denominator without dividing
    error = abs(p * denominator - numerator * q) * q_semi
    error_semi = abs(p_semi * denominator - numerator * q_semi) * q
    return (p, q) if error <= error_semi else (p_semi, q_semi)


def _round_to_sqrt_rational(x: np.ndarray, max_denominator: int = 2**20) -> np.ndarray:
    """Snap each entry to the closest ``±sqrt(p/q²)``, i.e. round x² to a fraction with denominator <= q²."""
    x = np.asarray(x, dtype=np.float64)
    values, inverse = np.unique(x, return_inverse=True)
    if not values.size:
        return x
    bound = max_denominator**2 + 1
    squares = [_closest_fraction(*float(v).as_integer_ratio(), bound) for v in values * values]
    snapped = np.sign(values) * np.sqrt(np.array([p / q for p, q in squares]))
    return snapped[inverse.reshape(x.shape)]


def _round_blocks(blocks: List[Block]) -> List[Block]:
    return [(mul, ir, _round_to_sqrt_rational(x)) for mul, ir, x in blocks]


# ----------------------------------------------------------------------------------------------------------------
# Irrep selection through intermediate couplings
# ----------------------------------------------------------------------------------------------------------------
def _irreps_set(irreps) -> FrozenSet[Irrep]:
    return frozenset(ir for _, ir in Irreps(irreps))


def _product_set(set1: KeepIr, irreps) -> KeepIr:
    """Irreps reachable by multiplying an irrep of set1 with one of irreps (None = no restriction)."""
    if set1 is None or irreps is None:
        return None
    set2 = irreps if isinstance(irreps, frozenset) else _irreps_set(irreps)
    return frozenset(ir for ir1 in set1 for ir2 in set2 for ir in ir1 * ir2)


def _power_set(irreps: Irreps, n: int) -> FrozenSet[Irrep]:
    out: FrozenSet[Irrep] = frozenset({Irrep("0e")})
    for _ in range(n):
        out = _product_set(out, irreps)
    return out


def _needed_before_coupling(keep_ir: KeepIr, irreps: Irreps, remaining: int) -> KeepIr:
    """Irreps worth keeping in a partial product that will still be multiplied by ``remaining`` copies of irreps."""
    if keep_ir is None:
        return None
    return _product_set(keep_ir, _power_set(irreps, remaining))


# ----------------------------------------------------------------------------------------------------------------
# The reduction
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _reduce(
    irreps_tuple: Tuple[Irreps, ...], group: PermGroup, keep_ir: KeepIr, epsilon: float, optimized: bool
) -> _Basis:
    n = len(irreps_tuple)
    if n == 0:
        raise ReducedTensorProductError("reduced_tensor_product_basis: the tensor product of zero indices is undefined")
    if optimized and n > 1 and group == _symmetric_group(n) and irreps_tuple[0].num_irreps > 1:
        return _symmetric_power(irreps_tuple[0], n, epsilon, keep_ir)

    dims = tuple(irreps.dim for irreps in irreps_tuple)
    parts: List[Tuple[FrozenSet[int], List[Block]]] = [
        (frozenset({i}), _identity_blocks(irreps, i, n)) for i, irreps in enumerate(irreps_tuple)
    ]
    if n == 1:
        return _dense(_regroup(_filter(parts[0][1], keep_ir)), dims)

    while len(parts) > 2:
        # greedy: merge first the pair of index groups with the fewest symmetric degrees of freedom
        best = None
        for i, j in itertools.combinations(range(len(parts)), 2):
            merged = parts[i][0] | parts[j][0]
            size = _free_dimension(merged, group, dims)
            if best is None or size < best[0]:
                best = (size, i, j, merged)
        _, i, j, merged = best
        del parts[j]
        del parts[i]
        keep = keep_ir
        for k, irreps in enumerate(irreps_tuple):
            if k not in merged:
                keep = _product_set(keep, irreps)
        sub = _reduce(
            tuple(irreps_tuple[k] for k in sorted(merged)), _subgroup(merged, group), keep, epsilon, optimized
        )
        shape = tuple(dims[k] if k in merged else 1 for k in range(n))
        parts.insert(0, (merged, [(mul, ir, x.reshape(shape + x.shape[-2:])) for mul, ir, x in _blocks_of(sub)]))

    (fa, a), (fb, b) = parts
    blocks = _couple(a, b, keep_ir)
    everything = fa | fb
    if len(_subgroup(everything, group)) == 1:
        return _dense(blocks, dims)
    subspace = _symmetric_subspace_of(everything, group, dims)
    blocks = _constrain_by_symmetry(blocks, subspace, epsilon)
    return _dense(_round_blocks(_regroup(blocks)), dims)


def _compositions(length: int, total: int) -> Iterator[Tuple[int, ...]]:
    """Non-negative integer tuples of given length and sum, first entry descending (lexicographically last first)."""
    if length == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(length - 1, total - first):
            yield (first,) + rest


def _distinct_arrangements(labels: Tuple[int, ...]) -> Dict[Tuple[int, ...], Tuple[int, ...]]:
    """Every distinct reordering of ``labels``, mapped to the first axis permutation (itertools order) giving it."""
    first: Dict[Tuple[int, ...], Tuple[int, ...]] = {}
    for axes in itertools.permutations(range(len(labels))):
        first.setdefault(tuple(labels[a] for a in axes), axes)
    return first


def _round_all(arrays: List[np.ndarray]) -> List[np.ndarray]:
    """:func:`_round_to_sqrt_rational` of several arrays at once, so that a value shared by many is snapped once."""
    if not arrays:
        return []
    snapped = _round_to_sqrt_rational(np.concatenate([a.ravel() for a in arrays]))
    ends = np.cumsum([a.size for a in arrays])
    return [piece.reshape(a.shape) for a, piece in zip(arrays, np.split(snapped, ends[:-1]))]


def _symmetric_power(irreps: Irreps, degree: int, epsilon: float, keep_ir: KeepIr) -> _Basis:
    """Symmetric power of a sum of irreps, assembled from the symmetric powers of each irrep.

    Sym^n(V_1 + ... + V_m) = sum over n_1 + ... + n_m = n of Sym^{n_1} V_1 x ... x Sym^{n_m} V_m, each term placed at
    every arrangement of its factors among the n positions (normalised by the square root of their count).

    Each term is computed once, on its own small axes; the (d,) * n result, by far the largest array involved (it is
    mostly zeros), is then written exactly once: every arrangement fills its own disjoint window. So the entries of
    the result are those of the small terms, which is why rounding them beforehand is the same as rounding the result.
    """
    singles = [Irreps([(1, ir)]) for mul, ir in irreps for _ in range(mul)]
    offsets = np.cumsum([0] + [s.dim for s in singles])
    total_dim = int(offsets[-1])

    powers: Dict[Tuple[int, int], List[Block]] = {}
    for i, single in enumerate(singles):
        for k in range(1, degree + 1):
            keep = _needed_before_coupling(keep_ir, irreps, degree - k)
            powers[i, k] = _blocks_of(_reduce((single,) * k, _symmetric_group(k), keep, epsilon, True))

    # 1. the terms: a product of single-irrep powers, one per composition of the degree
    terms_found: List[Tuple[Dict[Tuple[int, ...], Tuple[int, ...]], List[Block]]] = []
    for exponents in _compositions(len(singles), degree):
        factors = [(i, k) for i, k in enumerate(exponents) if k > 0]
        # put each factor on its own consecutive axes
        terms = []
        start = 0
        for i, k in factors:
            shape_pre, shape_post = (1,) * start, (1,) * (degree - start - k)
            terms.append([(m, ir, x.reshape(shape_pre + x.shape[:-2] + shape_post + x.shape[-2:]))
                          for m, ir, x in powers[i, k]])
            start += k
        if len(terms) == 1:
            product = _filter(terms[0], keep_ir)
        else:
            product = terms[0]
            for t in terms[1:-1]:
                product = _couple(product, t)
            product = _couple(product, terms[-1], keep_ir)
        product = _regroup(product)
        if not product:
            continue
        arrangements = _distinct_arrangements(tuple(i for i, k in factors for _ in range(k)))
        norm = np.sqrt(len(arrangements))
        terms_found.append((arrangements, [(mul, ir, x / norm) for mul, ir, x in product]))

    # 2. snap the values (see the docstring)
    rounded = iter(_round_all([x for _, product in terms_found for _, _, x in product]))
    terms_found = [(arr, [(mul, ir, next(rounded)) for mul, ir, _ in product]) for arr, product in terms_found]

    # 3. columns: irreps in increasing order, each irrep's copies in the order of the terms (as _regroup would do)
    irs = sorted({ir for _, product in terms_found for _, ir, _ in product})
    columns: Dict[Tuple[int, Irrep], int] = {}
    irreps_out = []
    start = 0
    for ir in irs:
        total_mul = 0
        for t, (_, product) in enumerate(terms_found):
            for mul, ir_t, _ in product:
                if ir_t == ir:
                    columns[t, ir] = start + total_mul * ir.dim
                    total_mul += mul
        irreps_out.append((total_mul, ir))
        start += total_mul * ir.dim

    # 4. write each term at every arrangement of its factors
    out = np.zeros((total_dim,) * degree + (start,))
    for t, (arrangements, product) in enumerate(terms_found):
        for arrangement, axes in arrangements.items():
            window = tuple(slice(offsets[lab], offsets[lab + 1]) for lab in arrangement)
            for mul, ir, x in product:
                x = np.transpose(x, axes + (degree, degree + 1))
                c0 = columns[t, ir]
                out[window + (slice(c0, c0 + mul * ir.dim),)] = x.reshape(x.shape[:-2] + (-1,))
    return _frozen_basis(Irreps(irreps_out), out)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------
def _parse_keep_ir(keep_ir) -> KeepIr:
    if keep_ir is None:
        return None
    if isinstance(keep_ir, Irrep):
        return frozenset({keep_ir})
    if isinstance(keep_ir, str):
        return _irreps_set(keep_ir)
    try:
        return frozenset(Irrep(ir) for ir in keep_ir)
    except (TypeError, ValueError) as e:
        raise ValueError(f"keep_ir should be irreps or a list of irreps, got {keep_ir!r}") from e


def _as_irreps(irreps, what: str) -> Irreps:
    try:
        return Irreps(irreps)
    except (TypeError, ValueError) as e:
        raise ValueError(f"reduced_tensor_product_basis: invalid irreps for {what}: {irreps!r}") from e


def _finish(basis: _Basis) -> IrrepsArray:
    # no copy: the cached (read-only) array itself, so asking again for the same basis costs nothing
    return IrrepsArray(basis.irreps, basis.array)


def _check_degree(degree) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ValueError(f"degree should be a positive integer, got {degree!r}")
    return int(degree)


def reduced_tensor_product_basis(
    formula_or_irreps_list: Union[str, List[Irreps]],
    *,
    epsilon: float = 1e-5,
    keep_ir: Optional[Union[Irreps, List[Irrep]]] = None,
    _use_optimized_implementation: bool = True,
    **irreps_dict,
) -> IrrepsArray:
    r"""Orthonormal change of basis from a tensor with index symmetries to irreps.

    Args:
        formula_or_irreps_list: either a formula such as ``"ij=ji"``, ``"ij=-ji"`` or ``"ijk=jik=ikj"`` (the first
            term names the indices; each other term, optionally negated, is a permutation under which the tensor is
            equal, or opposite), or a list of irreps, one per index, for a tensor without index symmetry.
        epsilon: tolerance used when intersecting subspaces.
        keep_ir: if given, only these output irreps are kept.
        **irreps_dict: the irreps of each index of the formula, e.g. ``i="1o"``; indices related by the formula
            share their irreps, so giving one of them is enough.

    Returns:
        IrrepsArray of shape ``(d_1, ..., d_n, irreps_out.dim)`` (``d_k`` the dimension of the k-th index); its
        irreps axis is orthonormal and each output irrep transforms equivariantly. Its array is a read-only numpy
        array, shared by every call with the same arguments (copy it to modify it).

    Example:
        >>> Q = reduced_tensor_product_basis("ij=ji", i="1o")  # symmetric 3x3 matrices
        >>> Q.irreps
        1x0e+1x2e
    """
    keep = _parse_keep_ir(keep_ir)

    if isinstance(formula_or_irreps_list, (tuple, list)):
        if irreps_dict:
            raise ValueError("reduced_tensor_product_basis: index irreps keywords are only allowed with a formula")
        irreps_tuple = tuple(_as_irreps(irreps, f"index {k}") for k, irreps in enumerate(formula_or_irreps_list))
        basis = _reduce(irreps_tuple, _trivial_group(len(irreps_tuple)), keep, epsilon, _use_optimized_implementation)
        return _finish(basis)

    if not isinstance(formula_or_irreps_list, str):
        raise TypeError(
            f"reduced_tensor_product_basis: expected a formula string or a list of irreps, "
            f"got {type(formula_or_irreps_list).__name__}"
        )
    f0, group = _parse_formula(formula_or_irreps_list)

    for name in irreps_dict:
        if len(name) != 1:
            raise TypeError(f"reduced_tensor_product_basis() got an unexpected keyword argument '{name}'")
    index_irreps = {name: _as_irreps(irs, f"index {name!r}") for name, irs in irreps_dict.items()}
    for name in index_irreps:
        if name not in f0:
            raise ReducedTensorProductError(
                f"reduced_tensor_product_basis: index {name!r} has irreps but does not appear in the formula {f0!r}"
            )

    # indices exchanged by the symmetry must carry the same irreps; propagate them along the group
    for _, p in group:
        for a, b in zip(f0, (f0[k] for k in p)):
            if a in index_irreps and b in index_irreps and index_irreps[a] != index_irreps[b]:
                raise ReducedTensorProductError(
                    f"reduced_tensor_product_basis: indices {a!r} and {b!r} are exchanged by the formula, so their "
                    f"irreps should be the same, got {index_irreps[a]} and {index_irreps[b]}"
                )
            if a in index_irreps:
                index_irreps[b] = index_irreps[a]
            if b in index_irreps:
                index_irreps[a] = index_irreps[b]
    missing = [c for c in f0 if c not in index_irreps]
    if missing:
        raise ReducedTensorProductError(
            f"reduced_tensor_product_basis: no irreps given for index {missing[0]!r} of formula {f0!r}"
        )

    irreps_tuple = tuple(index_irreps[c] for c in f0)
    basis = _reduce(irreps_tuple, group, keep, epsilon, _use_optimized_implementation)
    return _finish(basis)


def reduced_symmetric_tensor_product_basis(
    irreps: Irreps,
    degree: int,
    *,
    epsilon: float = 1e-5,
    keep_ir: Optional[Union[Irreps, List[Irrep]]] = None,
    _use_optimized_implementation: bool = True,
) -> IrrepsArray:
    r"""Change of basis of the fully symmetric ``degree``-th tensor power of ``irreps``.

    Returns an IrrepsArray of shape ``(d, ..., d, irreps_out.dim)`` with ``degree`` axes of size ``d = irreps.dim``,
    symmetric under any exchange of those axes. ``keep_ir`` restricts the output irreps. As for
    :func:`reduced_tensor_product_basis`, the array is read-only and shared by the calls with the same arguments.
    """
    irreps = _as_irreps(irreps, "irreps")
    degree = _check_degree(degree)
    irreps_tuple = (irreps,) * degree
    basis = _reduce(irreps_tuple, _symmetric_group(degree), _parse_keep_ir(keep_ir), epsilon,
                     _use_optimized_implementation)
    return _finish(basis)


def reduced_antisymmetric_tensor_product_basis(
    irreps: Irreps,
    degree: int,
    *,
    epsilon: float = 1e-5,
    keep_ir: Optional[Union[Irreps, List[Irrep]]] = None,
    _use_optimized_implementation: bool = True,
) -> IrrepsArray:
    r"""Change of basis of the fully antisymmetric ``degree``-th tensor power of ``irreps``.

    Returns an IrrepsArray of shape ``(d, ..., d, irreps_out.dim)``, changing sign under any odd permutation of its
    first ``degree`` axes. ``keep_ir`` restricts the output irreps. The array is read-only and shared, as above.
    """
    irreps = _as_irreps(irreps, "irreps")
    degree = _check_degree(degree)
    irreps_tuple = (irreps,) * degree
    basis = _reduce(irreps_tuple, _antisymmetric_group(degree), _parse_keep_ir(keep_ir), epsilon,
                     _use_optimized_implementation)
    return _finish(basis)
