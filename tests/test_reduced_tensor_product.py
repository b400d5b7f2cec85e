"""Reduced tensor product bases: exact parity with e3nn-jax (deterministic construction), symmetry, orthonormality,
equivariance, span, bad input."""

import functools
import itertools
from fractions import Fraction

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

import e3nn_fast.reduced_tensor_product as rtp
from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reduced_tensor_product import (
    reduced_antisymmetric_tensor_product_basis,
    reduced_symmetric_tensor_product_basis,
    reduced_tensor_product_basis,
)
from e3nn_fast.rotation import rand_matrix
from e3nn_fast.so3 import generators

# (kind, first argument, keyword arguments); kind picks the function
CASES = [
    ("formula", "ij=ji", dict(i="1o")),
    ("formula", "ij=-ji", dict(i="1x1o")),
    ("formula", "ij=ji", dict(i="0e+1o")),
    ("formula", "ijk=jik=ikj", dict(i="1o")),
    ("formula", "ijk=-jik=-ikj", dict(i="1o+0e")),
    ("formula", "ijkl=jikl=klij", dict(i="1e")),
    ("formula", "ijk=jik", dict(i="1o", k="2e")),
    ("formula", "ij", dict(i="1o", j="0e+2e")),
    ("list", ["1o", "1o", "0e+1e"], {}),
    ("sym", "0e+1o+2e", dict(degree=2)),
    ("sym", "0e+1o", dict(degree=3)),
    ("sym", "2x0e+1o", dict(degree=2)),
    ("sym", "1o", dict(degree=3)),
    ("sym", "0e+1o+2e", dict(degree=3)),
    ("sym", "0e+1o+2e", dict(degree=4)),
    ("sym", "2x0e+1o", dict(degree=4)),
    ("antisym", "1o+2e", dict(degree=2)),
    ("antisym", "0e+1o", dict(degree=3)),
]
KEEPS = [None, "0e+1o"]


def _call(module, kind, arg, kwargs, keep_ir):
    if kind in ("formula", "list"):
        return module.reduced_tensor_product_basis(arg, keep_ir=keep_ir, **kwargs)
    fn = {
        "sym": module.reduced_symmetric_tensor_product_basis,
        "antisym": module.reduced_antisymmetric_tensor_product_basis,
    }[kind]
    return fn(arg, kwargs["degree"], keep_ir=keep_ir)


def _key(case, keep_ir):
    kind, arg, kwargs = case
    return kind, repr(arg), tuple(sorted(kwargs.items())), keep_ir


@functools.lru_cache(maxsize=None)
def _ours(key):
    kind, arg, kwargs, keep_ir = key
    return _call(rtp, kind, eval(arg), dict(kwargs), keep_ir)


@functools.lru_cache(maxsize=None)
def _oracle(key):
    kind, arg, kwargs, keep_ir = key
    return _call(e3nn_jax, kind, eval(arg), dict(kwargs), keep_ir)


CASE_IDS = [f"{c[0]}-{c[1]}-{'-'.join(f'{k}{v}' for k, v in c[2].items())}" for c in CASES]


def _flat(Q: IrrepsArray) -> np.ndarray:
    return np.asarray(Q.array).reshape(-1, Q.shape[-1])


@pytest.mark.parametrize("keep_ir", KEEPS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_same_numbers_as_e3nn_jax(case, keep_ir):
    ours, ref = _ours(_key(case, keep_ir)), _oracle(_key(case, keep_ir))
    assert isinstance(ours, IrrepsArray)
    assert str(ours.irreps) == str(ref.irreps)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_orthonormal(case):
    Q = _flat(_ours(_key(case, None)))
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-10)


def _group_of(case):
    """Signed permutations of the index axes under which the basis must be invariant."""
    kind, arg, kwargs = case
    if kind == "list" or (kind == "formula" and "=" not in arg):
        return []
    if kind in ("sym", "antisym"):
        n = kwargs["degree"]
        out = []
        for p in itertools.permutations(range(n)):
            inversions = sum(p[a] > p[b] for a in range(n) for b in range(a + 1, n))
            out.append((-1 if kind == "antisym" and inversions % 2 else 1, p))
        return out
    f0, *others = arg.split("=")
    return [(-1 if f.startswith("-") else 1, tuple(f.lstrip("-").index(c) for c in f0)) for f in others]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_index_symmetry(case):
    Q = np.asarray(_ours(_key(case, None)).array)
    n = Q.ndim - 1
    for sign, p in _group_of(case):
        np.testing.assert_allclose(np.transpose(Q, p + (n,)), sign * Q, atol=1e-10)


def _index_irreps(case):
    kind, arg, kwargs = case
    if kind == "list":
        return [Irreps(x) for x in arg]
    if kind in ("sym", "antisym"):
        return [Irreps(arg)] * kwargs["degree"]
    f0 = arg.split("=")[0]
    given = {k: Irreps(v) for k, v in kwargs.items()}
    return [given.get(c, given.get("i")) for c in f0]  # the cases give i, or every index


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_equivariance(case):
    Q = _ours(_key(case, None))
    R = -rand_matrix(jax.random.PRNGKey(3), dtype=jnp.float64)  # improper rotation: parity is tested too
    rotated = np.asarray(Q.array)
    # Q maps inputs to outputs: sum_a D_in[a, a2] Q[a, ..., k] = sum_k2 Q[a2, ..., k2] D_out[k, k2]
    for axis, irreps in enumerate(_index_irreps(case)):
        D = np.asarray(irreps.D_from_matrix(R))
        rotated = np.moveaxis(np.tensordot(D, rotated, axes=([0], [axis])), 0, axis)
    D_out = np.asarray(Q.irreps.D_from_matrix(R))
    np.testing.assert_allclose(rotated, np.asarray(Q.array) @ D_out.T, atol=1e-9)


@pytest.mark.parametrize("irreps,degree", [("0e+1o+2e", 2), ("0e+1o", 3)])
def test_optimized_symmetric_path_spans_the_same_space(irreps, degree):
    fast = reduced_symmetric_tensor_product_basis(irreps, degree)
    slow = reduced_symmetric_tensor_product_basis(irreps, degree, _use_optimized_implementation=False)
    assert fast.irreps == slow.irreps
    for (_, ir), a, b in zip(fast.irreps, fast.chunks, slow.chunks):
        a = np.asarray(a).reshape(-1, a.shape[-2], ir.dim)[..., 0]
        b = np.asarray(b).reshape(-1, b.shape[-2], ir.dim)[..., 0]
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-10)  # same projector on each irrep's subspace


def test_docstring_example_and_keep_ir_forms():
    Q = reduced_tensor_product_basis("ij=ji", i="1o")
    assert Q.irreps == Irreps("0e+2e") and Q.shape == (3, 3, 6)
    a = reduced_tensor_product_basis("ij=ji", i="1o", keep_ir="2e")
    b = reduced_tensor_product_basis("ij=ji", i="1o", keep_ir=[Irreps("2e")[0].ir])
    assert a.irreps == b.irreps == Irreps("2e")
    np.testing.assert_allclose(np.asarray(a.array), np.asarray(Q.array)[..., 1:])


def test_irreps_propagate_through_the_formula():
    a = reduced_tensor_product_basis("ijk=jik", i="1o", k="0e")
    b = reduced_tensor_product_basis("ijk=jik", j="1o", k="0e")
    np.testing.assert_array_equal(np.asarray(a.array), np.asarray(b.array))


@pytest.mark.parametrize(
    "formula,kwargs,match",
    [
        ("ij=jk", dict(i="1o"), "not a permutation"),
        ("ij=j", dict(i="1o"), "not a permutation"),
        ("ii=ii", dict(i="1o"), "repeated index"),
        ("-ij=ji", dict(i="1o"), "cannot be negated"),
        ("i1=1i", dict(i="1o"), "malformed"),
        ("ij==ji", dict(i="1o"), "malformed"),
        ("ij=ji", dict(i="1o", j="2e"), "should be the same"),
        ("ijk=jik", dict(i="1o"), "no irreps given for index 'k'"),
        ("ij=ji", dict(i="1o", k="1o"), "does not appear"),
        ("ij", dict(i="1o", j="not irreps"), "invalid irreps"),
    ],
)
def test_bad_formula_raises_value_error(formula, kwargs, match):
    with pytest.raises(ValueError, match=match):
        reduced_tensor_product_basis(formula, **kwargs)


def test_bad_formula_is_also_a_runtime_error_like_e3nn_jax():
    with pytest.raises(RuntimeError):
        reduced_tensor_product_basis("ij=ji", i="1o", j="2e")


def test_other_bad_input():
    with pytest.raises(TypeError, match="unexpected keyword argument 'ab'"):
        reduced_tensor_product_basis("ij=ji", ab="1o")
    with pytest.raises(TypeError, match="formula string or a list"):
        reduced_tensor_product_basis(3)
    with pytest.raises(ValueError, match="positive integer"):
        reduced_symmetric_tensor_product_basis("1o", 0)
    with pytest.raises(ValueError, match="positive integer"):
        reduced_antisymmetric_tensor_product_basis("1o", 1.5)
    with pytest.raises(ValueError, match="keep_ir"):
        reduced_symmetric_tensor_product_basis("1o", 2, keep_ir=[object()])


# --- large symmetric powers (MACE's product basis), checked without ever forming a dense copy of the basis -----------


def _symmetric_power_multiplicities(irreps: Irreps, degree: int):
    """{irrep: multiplicity} of the symmetric ``degree``-th power of ``irreps``, from characters alone.

    Independent of any basis construction: the character of Sym^n V at g is the average over the permutations of n
    items of the product, over their cycles, of chi_V(g^(cycle length)).  For g a rotation by theta, possibly times
    the inversion, g^k is a rotation by k theta (times the inversion k times).  Multiplicities are then inner products
    with the characters of the irreps of O(3), integrated exactly on a uniform grid of angles (the integrands are
    trigonometric polynomials of low degree; the half-step offset keeps sin(k theta / 2) away from zero).
    """
    num = 512
    theta = 2 * np.pi * (np.arange(num) + 0.5) / num

    def chi_l(l, angle):
        return np.sin((2 * l + 1) * angle / 2) / np.sin(angle / 2)

    def chi_v(k, inversion):
        return sum(mul * (ir.p**k if inversion else 1) * chi_l(ir.l, k * theta) for mul, ir in irreps)

    def chi_sym(inversion):
        total = 0
        for perm in itertools.permutations(range(degree)):
            seen, term = set(), 1
            for start in range(degree):
                length = 0
                while start not in seen:
                    seen.add(start)
                    start = perm[start]
                    length += 1
                if length:
                    term = term * chi_v(length, inversion)
            total = total + term
        return total / len(list(itertools.permutations(range(degree))))

    haar = 1 - np.cos(theta)  # SO(3) measure of the rotations by theta, up to the grid's normalisation
    proper, improper = chi_sym(False), chi_sym(True)
    lmax = degree * max(ir.l for _, ir in irreps)
    out = {}
    for l in range(lmax + 1):
        for p in (1, -1):
            m = 0.5 * np.mean((proper + p * improper) * chi_l(l, theta) * haar)
            assert abs(m - round(m)) < 1e-8
            if round(m):
                out[Irrep(l, p)] = int(round(m))
    return out


def _improper_rotation(irreps: Irreps, axis_angle: np.ndarray) -> np.ndarray:
    """Block-diagonal representation of the rotation ``exp(axis_angle . generators)`` times the inversion.

    Built from the Lie algebra generators with ``scipy.linalg.expm``: cheap even for l = 12, unlike compiling
    Wigner D matrices, and any one fixed convention serves to test equivariance.
    """
    blocks = []
    for mul, ir in irreps:
        D = ir.p * scipy.linalg.expm(np.einsum("a,aij->ij", axis_angle, generators(ir.l)))
        blocks += [D] * mul
    return scipy.linalg.block_diag(*blocks)


def _check_symmetric_basis(Q: IrrepsArray, irreps: str, degree: int, keep_ir):
    """Irreps (from characters), index symmetry, orthonormality and equivariance of a symmetric power basis.

    Works on the nonzero entries only (a sparse matrix of shape (d**degree, irreps_out.dim)), so that the 2 GB basis
    of the fourth power of 0e+1o+2e+3o costs no dense copy.
    """
    irreps = Irreps(irreps)
    d = irreps.dim
    assert Q.shape == (d,) * degree + (Q.irreps.dim,)
    keep = None if keep_ir is None else {ir for _, ir in Irreps(keep_ir)}
    expected = {ir: m for ir, m in _symmetric_power_multiplicities(irreps, degree).items() if keep is None or ir in keep}
    assert Q.irreps == Irreps([(expected[ir], ir) for ir in sorted(expected)])

    array = np.asarray(Q.array)
    index = np.nonzero(array)
    values = array[index]
    for a, b in itertools.combinations(range(degree), 2):  # exchanging two input indices changes nothing
        swapped = list(index)
        swapped[a], swapped[b] = index[b], index[a]
        np.testing.assert_allclose(array[tuple(swapped)], values, rtol=0, atol=1e-12)

    rows = np.ravel_multi_index(index[:degree], (d,) * degree)
    S = scipy.sparse.csr_matrix((values, (rows, index[degree])), shape=(d**degree, Q.irreps.dim))
    np.testing.assert_allclose((S.T @ S).toarray(), np.eye(Q.irreps.dim), rtol=0, atol=1e-10)

    # S is symmetric, so testing it on the symmetric tensors x^(x)degree, which span them, is enough
    rng = np.random.default_rng(0)
    axis_angle = rng.normal(size=3)
    D_in, D_out = _improper_rotation(irreps, axis_angle), _improper_rotation(Q.irreps, axis_angle)
    for _ in range(3):
        x = rng.normal(size=d)
        x /= np.linalg.norm(x)

        def power(v):
            return functools.reduce(np.multiply.outer, [v] * degree).reshape(-1)

        np.testing.assert_allclose(S.T @ power(D_in @ x), D_out @ (S.T @ power(x)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("irreps,degree,keep_ir", [
    ("0e+1o+2e+3o", 4, "0e+1o"),
    ("0e+1o+2e+3o", 4, "0e+1o+2e+3o"),
    ("0e+1o+2e+3o", 3, None),
    ("2x0e+1o+1e", 4, None),
])
def test_symmetric_power_of_several_irreps(irreps, degree, keep_ir):
    _check_symmetric_basis(reduced_symmetric_tensor_product_basis(irreps, degree, keep_ir=keep_ir), irreps, degree,
                           keep_ir)


@pytest.mark.slow  # about 5-10 s to build (most of it writing the 2 GB result) and as much to check
def test_fourth_power_of_irreps_up_to_l3():
    """The basis of issue 16, (16,) * 4 + (3876,), all output irreps."""
    _check_symmetric_basis(reduced_symmetric_tensor_product_basis("0e+1o+2e+3o", 4), "0e+1o+2e+3o", 4, None)


@pytest.mark.slow  # e3nn-jax needs about 10 s for it (and more memory than a CI runner has without keep_ir)
def test_fourth_power_of_irreps_up_to_l3_same_numbers_as_e3nn_jax():
    ours = reduced_symmetric_tensor_product_basis("0e+1o+2e+3o", 4, keep_ir="0e+1o")
    ref = e3nn_jax.reduced_symmetric_tensor_product_basis("0e+1o+2e+3o", 4, keep_ir="0e+1o")
    assert str(ours.irreps) == str(ref.irreps)
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), rtol=0, atol=1e-12)


def test_bases_are_cached_and_read_only():
    a = reduced_symmetric_tensor_product_basis("0e+1o+2e", 3, keep_ir="0e+1o")
    b = reduced_symmetric_tensor_product_basis(Irreps("0e+1o+2e"), 3, keep_ir=[Irrep("1o"), Irrep("0e")])
    assert b.array is a.array  # the same configuration, however spelled, is built once
    with pytest.raises(ValueError, match="read-only"):
        a.array[(0,) * 4] = 1.0  # would otherwise corrupt what every later call returns
    c = reduced_tensor_product_basis("ij=ji", i="1o")
    assert reduced_tensor_product_basis("ij=ji", i="1o").array is c.array


def test_rounding_matches_the_fraction_definition():
    """Snapping to ±sqrt(p/q) agrees with rounding x² by ``Fraction.limit_denominator``, ties and edge values too."""
    rng = np.random.default_rng(1)
    exact = np.array([np.sqrt(p / q) for p in range(40) for q in range(1, 40)])
    noisy = np.nextafter(np.nextafter(exact, 2.0), 2.0)  # two ulps of round-off
    x = np.concatenate([rng.normal(size=3000), 1e-9 * rng.normal(size=300), exact, -noisy,
                        [0.0, 1.0, -1.0, 2.0**-40, 1e-300, 1e8]])
    bound = 2**40 + 1
    expected = [np.sign(v) * np.sqrt(float(Fraction(float(v * v)).limit_denominator(bound))) for v in x]
    np.testing.assert_array_equal(rtp._round_to_sqrt_rational(x), expected)
    np.testing.assert_array_equal(rtp._round_to_sqrt_rational(noisy), exact)  # noise is removed


@pytest.mark.parametrize("irreps, degree", [("1o", 4), ("0e+1o", 5), ("0e", 2)])
def test_vanishing_antisymmetric_powers_are_empty_bases_as_in_e3nn_jax(irreps, degree):
    """An antisymmetric power beyond the dimension has no element: an empty basis (no irreps, last axis 0), where
    the symmetry constraint used to fail on reshaping its empty subspace."""
    ours = rtp.reduced_antisymmetric_tensor_product_basis(irreps, degree)
    theirs = e3nn_jax.reduced_antisymmetric_tensor_product_basis(irreps, degree)
    assert ours.irreps == Irreps("") and str(ours.irreps) == str(theirs.irreps)
    assert ours.shape == theirs.shape == (Irreps(irreps).dim,) * degree + (0,)
    formula = "ijkl=-jikl=-ikjl=-ijlk"
    assert rtp.reduced_tensor_product_basis(formula, i="1o").shape == (3, 3, 3, 3, 0)
