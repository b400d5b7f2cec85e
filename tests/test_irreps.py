"""Parity of ``e3nn_fast.irreps`` (Irrep, MulIrrep, Irreps) with e3nn-jax 0.21, plus bad input and invariants."""

import contextlib
import copy
import importlib.util
import itertools
import pickle

import e3nn_jax as e3nn_ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast
from e3nn_fast.irreps import Irrep, Irreps, MulIrrep

HAS_ROTATION = importlib.util.find_spec("e3nn_fast.rotation") is not None
needs_rotation = pytest.mark.skipif(not HAS_ROTATION, reason="e3nn_fast.rotation (engineer B) not available yet")

IRREPS_STRINGS = [
    "",
    "  ",
    "0e",
    "1o",
    "1y",
    "2x0e + 3x1o",
    "5x0e+3x1o",
    "0e+1o",
    " 2 x 1e + 0x2o +3x0e ",
    "1e + 1e + 0e",
    "1e + 1e + 0e + 1e",
    "1e + 0x0e + 1e",
    "2o + 1e + 0e + 1e",
    "4x0e + 0x1o + 2x3e",
    "0x1e",
    "0x0e",
    "3x0e + 2x0e",
    "0o + 0e + 1o + 1e + 2e + 2o",
    "12x0e + 14x1e + 2x2y + 3x3y",
    "1x4o + 2x0o + 1x4o",
    "10x0e + 0x3o + 1x2e",
]

IRREP_STRINGS = ["0e", "0o", "1o", "1e", "2e", "2o", "3o", "3e", "0y", "1y", "2y", "3y", " 4o ", "11e", "1 o"]


def ref_irreps(s):
    return e3nn_ref.Irreps(s)


def slice_outcome(ours, ref, start, stop, length):
    """Outcomes of ``ours[start:stop]`` and ``ref[start:stop]``; where e3nn-jax fails on a reversed slice, the
    expected result is empty (our documented behaviour)."""
    expected = outcome(lambda: ref[start:stop])
    a, b, _ = slice(start, stop).indices(length)
    if expected[0] == "error" and b < a:
        expected = ("ok", "Irreps()")
    return outcome(lambda: ours[start:stop]), expected


def outcome(fn):
    """``("ok", repr(result))`` or ``("error", exception type)``, to compare behaviours including failures."""
    try:
        return ("ok", repr(fn()))
    except Exception as err:  # noqa: BLE001 - the type is what we compare
        return ("error", type(err))


# ---------------------------------------------------------------------------------------------------------------
# Irrep
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", IRREP_STRINGS)
def test_irrep_parsing_matches(s):
    ir, ref = Irrep(s), e3nn_ref.Irrep(s)
    assert (ir.l, ir.p, ir.dim, repr(ir), str(ir)) == (ref.l, ref.p, ref.dim, repr(ref), str(ref))
    assert ir.is_scalar() == ref.is_scalar()
    l, p = ir
    assert Irrep(l, p) == ir == Irrep((l, p)) == Irrep(ir) == Irrep(MulIrrep(3, ir))
    assert ir == s and ir == repr(ref) and ir == (l, p)
    assert hash(ir) == hash(Irrep(repr(ir))) == hash((l, p))
    assert isinstance(ir.l, int) and isinstance(ir.p, int)


def test_irrep_y_parity():
    for l in range(6):
        assert Irrep(f"{l}y") == Irrep(l, (-1) ** l)


def test_irrep_iterator_and_order():
    assert [repr(ir) for ir in Irrep.iterator(4)] == [repr(ir) for ir in e3nn_ref.Irrep.iterator(4)]
    assert [repr(ir) for ir in Irrep.iterator(0)] == ["0e", "0o"]
    first = list(itertools.islice(Irrep.iterator(), 7))
    assert first == ["0e", "0o", "1o", "1e", "2e", "2o", "3o"]
    assert first == sorted(first[::-1])
    irs = list(Irrep.iterator(3))
    refs = list(e3nn_ref.Irrep.iterator(3))
    for (a, ra), (b, rb) in itertools.product(zip(irs, refs), repeat=2):
        assert (a < b) == (ra < rb)
        assert (a > b) == (ra > rb)
        assert (a == b) == (ra == rb)
        assert (a <= b) == ((ra < rb) or ra == rb)
    assert Irrep("1o") < "1e"


@pytest.mark.parametrize("a,b", [("0e", "1o"), ("1o", "1o"), ("1o", "2e"), ("2o", "3e"), ("3e", "1y"), ("2e", "2e")])
def test_irrep_product_and_sum(a, b):
    prod = Irrep(a) * Irrep(b)
    ref = e3nn_ref.Irrep(a) * e3nn_ref.Irrep(b)
    assert [repr(x) for x in prod] == [repr(x) for x in ref]
    assert [repr(x) for x in Irrep(a) * b] == [repr(x) for x in e3nn_ref.Irrep(a) * b]
    assert repr(Irrep(a) + Irrep(b)) == repr(e3nn_ref.Irrep(a) + e3nn_ref.Irrep(b))
    assert repr(Irrep(a) + b) == repr(e3nn_ref.Irrep(a) + b)
    assert repr(b + Irrep(a)) == repr(b + e3nn_ref.Irrep(a))
    assert isinstance(Irrep(a) + Irrep(b), Irreps)
    assert repr(3 * Irrep(a)) == repr(3 * e3nn_ref.Irrep(a))
    assert isinstance(3 * Irrep(a), Irreps)
    assert Irrep("2e") in Irreps(Irrep("1o") * Irrep("1o"))


def test_irrep_is_a_frozen_static_value():
    ir = Irrep("1o")
    with pytest.raises(AttributeError):
        ir.l = 3
    assert jax.tree_util.tree_leaves(ir) == []
    assert pickle.loads(pickle.dumps(ir)) == ir
    assert {Irrep("1o"): 1}[Irrep(1, -1)] == 1
    assert Irrep("1o") != "1e" and Irrep("1o") != 3 and Irrep("1o") != "garbage" and Irrep("1o") != None  # noqa: E711


def test_irrep_accepts_numpy_integers():
    ir = Irrep(np.int64(2), np.int32(-1))
    assert ir == "2o" and type(ir.l) is int and type(ir.p) is int


# ---------------------------------------------------------------------------------------------------------------
# MulIrrep
# ---------------------------------------------------------------------------------------------------------------


def test_mul_irrep():
    m = MulIrrep(5, Irrep("1o"))
    ref = e3nn_ref.MulIrrep(5, e3nn_ref.Irrep("1o"))
    assert (repr(m), str(m), m.dim, m.mul) == (repr(ref), str(ref), ref.dim, ref.mul)
    mul, ir = m
    assert (mul, ir) == (5, Irrep("1o"))
    assert MulIrrep((5, "1o")) == m == MulIrrep(m) == MulIrrep(5, (1, -1))
    assert isinstance(MulIrrep(5, "1o").ir, Irrep)
    assert hash(MulIrrep(5, "1o")) == hash(m)
    items = [(2, "1o"), (1, "1o"), (1, "0e"), (3, "2e"), (1, "2o")]
    ours = sorted(MulIrrep(mul, ir) for mul, ir in items)
    refs = sorted(e3nn_ref.MulIrrep(mul, e3nn_ref.Irrep(ir)) for mul, ir in items)
    assert [repr(x) for x in ours] == [repr(x) for x in refs]
    with pytest.raises(AttributeError):
        m.mul = 3


# ---------------------------------------------------------------------------------------------------------------
# Irreps: construction
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg",
    [
        None,
        [],
        [(100, (0, 1)), (50, (1, 1))],
        [(2, "1o"), (3, "0e")],
        ["1o", "2e", "0e"],
        [0, 1, 2],
        [(1, (2, -1)), "3y", 1],
        [[2, "1o"]],
    ],
)
def test_irreps_from_sequences(arg):
    assert repr(Irreps(arg)) == repr(e3nn_ref.Irreps(arg))


def test_irreps_from_objects():
    assert repr(Irreps()) == repr(e3nn_ref.Irreps()) == "Irreps()"
    assert repr(Irreps(Irrep("1o"))) == repr(e3nn_ref.Irreps(e3nn_ref.Irrep("1o")))
    assert repr(Irreps(MulIrrep(2, "1e"))) == "2x1e"
    assert repr(Irreps([MulIrrep(2, "1e"), Irrep("0o"), "1o"])) == "2x1e+1x0o+1x1o"
    assert repr(Irreps(Irrep("1o") * Irrep("1o"))) == "1x0e+1x1e+1x2e"
    x = Irreps("2x0e+1o")
    assert Irreps(x) is x and Irreps(x) == x
    assert isinstance(x, tuple) and isinstance(x[0], MulIrrep) and isinstance(x[1:], Irreps)
    assert repr(x[1:]) == "1x1o" and x[0] == MulIrrep(2, "0e") and x[-1].ir == "1o"
    assert [(mul, ir.l, ir.p) for mul, ir in x] == [(2, 0, 1), (1, 1, -1)]


@pytest.mark.parametrize("s", IRREPS_STRINGS)
def test_irreps_string_parsing_and_roundtrip(s):
    x, ref = Irreps(s), ref_irreps(s)
    assert repr(x) == repr(ref) and str(x) == str(ref)
    if len(x):
        assert Irreps(str(x)) == x and Irreps(repr(x)) == x
        assert x == repr(ref) and hash(x) == hash(Irreps(repr(ref)))
    assert x == s and s == x and not (x != s)
    assert hash(x) == hash(Irreps(s)) and Irreps(s) is not x  # same value, not a shared mutable object
    assert x != "this is not an irreps"


# ---------------------------------------------------------------------------------------------------------------
# Irreps: derived quantities and rearrangements
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", IRREPS_STRINGS)
def test_irreps_properties_match(s):
    x, ref = Irreps(s), ref_irreps(s)
    assert x.dim == ref.dim and x.num_irreps == ref.num_irreps and x.mul_gcd == ref.mul_gcd
    assert x.ls == ref.ls and x.slices() == ref.slices() and x.is_scalar() == ref.is_scalar()
    assert outcome(lambda: x.lmax) == outcome(lambda: ref.lmax)
    assert x.slices() is not x.slices()  # fresh list: callers may mutate it
    for ir in Irrep.iterator(4):
        assert x.count(ir) == ref.count(repr(ir)) and x.count(repr(ir)) == x.count(ir)
        assert (ir in x) == (repr(ir) in ref) and (repr(ir) in x) == (ir in x)


@pytest.mark.parametrize("s", IRREPS_STRINGS)
def test_irreps_rearrangements_match(s):
    x, ref = Irreps(s), ref_irreps(s)
    for name in ["simplify", "regroup", "unify", "remove_zero_multiplicities"]:
        out = getattr(x, name)()
        assert isinstance(out, Irreps) and repr(out) == repr(getattr(ref, name)()), name
    srt, rsrt = x.sort(), ref.sort()
    assert repr(srt) == repr(rsrt)
    assert repr(srt.irreps) == repr(rsrt.irreps) and srt.p == rsrt.p and srt.inv == rsrt.inv
    irreps_, p, inv = srt
    assert isinstance(irreps_, Irreps)
    for n in [0, 1, 3]:
        assert repr(x.repeat(n)) == repr(ref.repeat(n))
        assert repr(x.set_mul(n)) == repr(ref.set_mul(n))
        assert repr(x * n) == repr(ref * n) and repr(n * x) == repr(n * ref)
    assert repr(x // 2) == repr(ref // 2)
    for other in ["1o + 2x0e", Irreps("3e"), [(1, "0o")], None, Irrep("2e")]:
        other_ref = e3nn_ref.Irrep("2e") if isinstance(other, Irrep) else other
        other_ref = ref_irreps(str(other)) if isinstance(other, Irreps) else other_ref
        assert repr(x + other) == repr(ref + other_ref)
        assert isinstance(x + other, Irreps)
    assert repr("1o" + x) == repr("1o" + ref)


FILTERS = [
    dict(),
    dict(keep="0e + 1o"),
    dict(keep=["1e", "2e"]),
    dict(keep=""),
    dict(drop="0e"),
    dict(drop=["1o", "0e"]),
    dict(lmax=0),
    dict(lmax=1),
]


@pytest.mark.parametrize("s", IRREPS_STRINGS)
@pytest.mark.parametrize("kwargs", FILTERS, ids=[repr(f) for f in FILTERS])
def test_irreps_filter_matches(s, kwargs):
    assert repr(Irreps(s).filter(**kwargs)) == repr(ref_irreps(s).filter(**kwargs))


def test_irreps_filter_objects():
    x = Irreps("1e + 2e + 0e + 3x1e")
    ref = ref_irreps("1e + 2e + 0e + 3x1e")
    assert repr(x.filter(Irrep("1e"))) == repr(ref.filter(e3nn_ref.Irrep("1e")))
    assert repr(x.filter(Irreps("2e+1e"))) == repr(ref.filter(ref_irreps("2e+1e")))
    assert repr(x.filter(drop=MulIrrep(3, "1e"))) == "1x2e+1x0e"
    assert repr(x.filter(lambda mul_ir: mul_ir.mul > 1)) == repr(ref.filter(lambda mul_ir: mul_ir.mul > 1))
    assert repr(x.filter(drop=lambda mul_ir: mul_ir.ir.l == 1)) == repr(ref.filter(drop=lambda m: m.ir.l == 1))
    assert x.filter() is x
    for kwargs in [dict(keep="0e", drop="1e"), dict(keep="0e", lmax=1), dict(drop="0e", lmax=1)]:
        with pytest.raises(ValueError, match="Cannot specify both"):
            x.filter(**kwargs)


def test_spherical_harmonics():
    for lmax, p in itertools.product(range(-1, 5), [1, -1]):
        assert repr(Irreps.spherical_harmonics(lmax, p)) == repr(e3nn_ref.Irreps.spherical_harmonics(lmax, p))
    assert repr(Irreps.spherical_harmonics(3)) == "1x0e+1x1o+1x2e+1x3o"
    with pytest.raises(ValueError, match="parity"):
        Irreps.spherical_harmonics(2, p=2)


# ---------------------------------------------------------------------------------------------------------------
# Irreps: sub-sums
# ---------------------------------------------------------------------------------------------------------------

SLICE_STRINGS = ["1e + 2e + 3x0e", "2x1e + 2e", "1o + 0x2e + 3e", "2x0e + 0x1o", "", "3x0e + 2x1o + 0x0e + 1x2e"]


@pytest.mark.parametrize("s", SLICE_STRINGS)
def test_slice_by_mul_and_chunk_match(s):
    x, ref = Irreps(s), ref_irreps(s)
    bounds = [None] + list(range(-2, x.num_irreps + 2))
    for start, stop in itertools.product(bounds, repeat=2):
        ours, expected = slice_outcome(x.slice_by_mul, ref.slice_by_mul, start, stop, x.num_irreps)
        assert ours == expected, (start, stop)
    for start, stop in itertools.product([None] + list(range(-1, len(x) + 2)), repeat=2):
        assert outcome(lambda: x.slice_by_chunk[start:stop]) == outcome(lambda: ref.slice_by_chunk[start:stop])
    for bad in [0, slice(None, None, 2)]:
        for name in ["slice_by_mul", "slice_by_dim", "slice_by_chunk"]:
            expected = outcome(lambda: getattr(ref, name)[bad])
            assert outcome(lambda: getattr(x, name)[bad]) == expected
            assert expected[0] == "error" or (name == "slice_by_chunk" and isinstance(bad, slice))


@pytest.mark.parametrize("s", SLICE_STRINGS)
def test_slice_by_dim_matches(s):
    x, ref = Irreps(s), ref_irreps(s)
    bounds = [None] + list(range(-1, x.dim + 2))
    for start, stop in itertools.product(bounds, repeat=2):
        ours, expected = slice_outcome(x.slice_by_dim, ref.slice_by_dim, start, stop, x.dim)
        assert ours == expected, (start, stop)
    with pytest.raises(ValueError, match="equivariant"):
        Irreps("1e + 2e").slice_by_dim[1:3]


# ---------------------------------------------------------------------------------------------------------------
# Irreps: value semantics
# ---------------------------------------------------------------------------------------------------------------


def test_irreps_equality_hash_and_immutability():
    x = Irreps("2x0e + 1o")
    assert x == Irreps([(2, "0e"), (1, "1o")]) and hash(x) == hash(Irreps([(2, "0e"), (1, "1o")]))
    assert x == (MulIrrep(2, "0e"), MulIrrep(1, "1o"))  # tuple semantics, as in e3nn-jax
    assert x != [MulIrrep(2, "0e"), MulIrrep(1, "1o")] and x != 3 and x != "2x0e" and x != Irreps("1o + 2x0e")
    assert Irreps("1x1o") == Irreps("1o") and Irreps("2x1o") != Irreps("1o + 1o")
    with pytest.raises(AttributeError):
        x.foo = 1
    with pytest.raises(AttributeError):
        del x.dim
    assert x.dim == 5 and x.dim == 5  # cached value stays right
    for clone in [pickle.loads(pickle.dumps(x)), copy.deepcopy(x), copy.copy(x)]:
        assert clone == x and hash(clone) == hash(x) and clone.dim == x.dim and isinstance(clone, Irreps)
    assert jax.tree_util.tree_leaves(x) == []
    assert jax.tree_util.tree_structure({"a": x}) == jax.tree_util.tree_structure({"a": Irreps("2x0e+1o")})


def test_irreps_as_static_jit_argument():
    f = jax.jit(lambda v, irreps: v * irreps.dim, static_argnums=1)
    assert f(jnp.ones(()), Irreps("2x0e+1o")) == 5
    assert f(jnp.ones(()), Irreps("2x0e + 1x1o")) == 5
    assert f._cache_size() == 1  # equal irreps hit the same compiled function
    assert f(jnp.ones(()), Irreps("1o")) == 3
    assert f._cache_size() == 2


def test_irreps_index_and_product_are_not_defined():
    x = Irreps("2x0e + 1o")
    with pytest.raises(NotImplementedError):
        x.index(MulIrrep(1, "1o"))
    with pytest.raises(NotImplementedError):
        x * x


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


BAD_IRREP_STRINGS = ["1x", "2q", "-1x0e", "x1o", "", "o", "1", "1e1", "-1e", "1.5e", "1x1o", "1e+", "Irreps()", "1O"]


@pytest.mark.parametrize("s", BAD_IRREP_STRINGS)
def test_bad_irrep_strings(s):
    with pytest.raises(ValueError, match="Irrep"):
        Irrep(s)


@pytest.mark.parametrize(
    "s", ["1x", "2q", "-1x0e", "x1o", "0e+", "+0e", "0e++1o", "2x", "1.5x1o", "2x1o x", "1o 2e", "Irreps()", "2X1o"]
)
def test_bad_irreps_strings(s):
    with pytest.raises(ValueError, match="Irreps"):
        Irreps(s)
    assert Irreps("1o") != s


def test_bad_irrep_arguments():
    with pytest.raises(ValueError, match="-1"):
        Irrep(-1, 1)
    with pytest.raises(ValueError, match="parity"):
        Irrep(1, 0)
    with pytest.raises(ValueError, match="parity"):
        Irrep(1, 2)
    with pytest.raises(ValueError, match="parity"):
        Irrep(1, "e")
    with pytest.raises(TypeError, match="parity"):
        Irrep(1)
    with pytest.raises(TypeError):
        Irrep(1.0, 1)
    with pytest.raises(TypeError):
        Irrep(True, 1)
    with pytest.raises(TypeError):
        Irrep(None)
    with pytest.raises(ValueError):
        Irrep((1, -1, 0))
    with pytest.raises(TypeError):
        Irrep("1o") * 2
    with pytest.raises(TypeError):
        2.5 * Irrep("1o")
    with pytest.raises(ValueError):
        list(Irrep.iterator(-1))


def test_bad_irreps_arguments():
    with pytest.raises(TypeError, match="Irreps"):
        Irreps(3)
    with pytest.raises(ValueError, match="2x1o"):
        Irreps(["2x1o"])
    with pytest.raises(ValueError, match="interpret"):
        Irreps([(2, "1o", 3)])
    with pytest.raises(ValueError, match="interpret"):
        Irreps([None])
    with pytest.raises(ValueError, match="-1"):
        Irreps([(-1, "1o")])
    with pytest.raises(TypeError):
        Irreps([(1.5, "1o")])
    with pytest.raises(TypeError):
        Irreps([(1, 1)])  # an int irrep needs a parity inside a (mul, ir) pair
    with pytest.raises(ValueError):
        Irreps("1o") * -1
    with pytest.raises(TypeError):
        Irreps("1o") * 2.0
    with pytest.raises(TypeError):
        Irreps("1o") // 1.5
    with pytest.raises(ValueError, match="lmax"):
        Irreps("0x1e").lmax
    with pytest.raises(ValueError, match="lmax"):
        Irreps().lmax
    with pytest.raises(ValueError):
        "1x1o" in Irreps("1o")
    with pytest.raises(ValueError):
        MulIrrep(-1, "1o")
    with pytest.raises(TypeError):
        MulIrrep("3x1o")


# ---------------------------------------------------------------------------------------------------------------
# Representation matrices (each check is jitted: one compilation instead of hundreds of eager ops)
# ---------------------------------------------------------------------------------------------------------------

D_IRREPS = ["0e", "0o", "1o", "1e", "2o", "3e"]
D_SUMS = ["2x0e + 1o", "1e + 0x2e + 2o + 2x1o"]
DTYPES = [jnp.float32, jnp.float64]


# Random inputs come from NumPy: eager jax.random/qr calls would each compile, costing seconds per test.


def random_angles(seed, dtype, shape=()):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.uniform(-4.0, 4.0, shape), dtype) for _ in range(3))


def random_rotation(seed, dtype, shape=()):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=shape + (3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    return jnp.asarray(q * np.sign(np.linalg.det(q))[..., None, None], dtype)


def random_unit_vector(rng, n, dtype):
    v = rng.normal(size=n)
    return jnp.asarray(v / np.linalg.norm(v), dtype)


def tol(dtype):
    return dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=1e-10, rtol=1e-10)


def assert_all_close(ours, refs, dtype):
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(refs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(refs)):
        assert a.shape == b.shape and a.dtype == dtype
        np.testing.assert_allclose(a, b, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_D_from_angles_matches(dtype):
    def evaluate(irrep_cls, irreps_cls, a, b, c):
        singles = {(s, k): irrep_cls(s).D_from_angles(a, b, c, k) for s in D_IRREPS for k in [0, 1]}
        sums = {(s, k): irreps_cls(s).D_from_angles(a, b, c, k) for s in D_SUMS for k in [0, 1]}
        return singles, sums

    angles = random_angles(0, dtype)
    ours = jax.jit(lambda *x: evaluate(Irrep, Irreps, *x))(*angles)
    refs = jax.jit(lambda *x: evaluate(e3nn_ref.Irrep, e3nn_ref.Irreps, *x))(*angles)
    assert_all_close(ours, refs, dtype)
    for s in D_SUMS:
        assert ours[1][(s, 0)].shape == (Irreps(s).dim, Irreps(s).dim)


def test_D_eager_python_scalars():
    D = Irrep("2o").D_from_angles(0.1, 0.2, 0.3, k=1)
    assert D.dtype == jnp.float64  # Python floats follow the default dtype (x64 in these tests)
    np.testing.assert_allclose(D, e3nn_ref.Irrep("2o").D_from_angles(0.1, 0.2, 0.3, k=1), atol=1e-12)
    np.testing.assert_allclose(Irrep("2o").D_from_angles(0.1, 0.2, 0.3, k=-1), D, atol=0)
    np.testing.assert_allclose(Irrep("2o").D_from_angles(0.1, 0.2, 0.3, k=2), -D, atol=0)
    np.testing.assert_allclose(Irrep("1o").D_from_angles(0, 0, 0), np.eye(3), atol=1e-12)


def test_D_broadcasting_and_batched_block_diagonal():
    dtype = jnp.float64
    a, b, c = random_angles(1, dtype, (4,))
    k = jnp.array([[0], [1]])

    @jax.jit
    def ours(a, b, c, k):
        return Irrep("2o").D_from_angles(a, b[0], c, k), Irreps(D_SUMS[1]).D_from_angles(a, b, c, k[:, 0, None])

    @jax.jit
    def refs(a, b, c):
        singles = jnp.stack([e3nn_ref.Irrep("2o").D_from_angles(a[i], b[0], c[i], 1) for i in range(4)])
        sums = jnp.stack([e3nn_ref.Irreps(D_SUMS[1]).D_from_angles(a[i], b[i], c[i], 1) for i in range(4)])
        return singles, sums

    D, Ds = ours(a, b, c, k)
    ref, ref_sum = refs(a, b, c)
    dim = Irreps(D_SUMS[1]).dim
    assert D.shape == (2, 4, 5, 5) and Ds.shape == (2, 4, dim, dim)
    np.testing.assert_allclose(D[1], ref, atol=1e-12)
    np.testing.assert_allclose(D[0], -ref, atol=1e-12)  # 2o is odd: k=0 vs k=1 flips the sign
    np.testing.assert_allclose(Ds[1], ref_sum, atol=1e-12)


def test_empty_irreps_matrices():
    assert Irreps().D_from_angles(0.1, 0.2, jnp.zeros(4)).shape == (4, 0, 0)
    assert Irreps("0x1o").D_from_angles(0.1, 0.2, 0.3).shape == (0, 0)
    assert Irreps().generators().shape == (3, 0, 0)


def test_generators_match():
    for s in ["1o", "2e", "2x0e + 1o + 0x1e + 2x2o"]:
        np.testing.assert_allclose(Irreps(s).generators(), ref_irreps(s).generators(), atol=1e-12)
    for s in ["0e", "1o", "3e"]:
        np.testing.assert_allclose(Irrep(s).generators(), e3nn_ref.Irrep(s).generators(), atol=1e-12)


@needs_rotation
@pytest.mark.parametrize("dtype", DTYPES)
def test_D_from_matrix(dtype):
    inversion = -jnp.eye(3, dtype=dtype)
    x = Irreps("2x0e + 0o + 1o + 1e + 2e + 2o")

    @jax.jit
    def ours(R, R1, R2):
        return dict(
            vector=Irrep("1o").D_from_matrix(R),
            pseudo_of_improper=Irrep("1e").D_from_matrix(-R),
            vector_of_improper=Irrep("1o").D_from_matrix(-R),
            inversion=x.D_from_matrix(inversion),
            sum=Irreps(D_SUMS[1]).D_from_matrix(R2),
            product=x.D_from_matrix(R1 @ R2),
            factors=x.D_from_matrix(R1) @ x.D_from_matrix(R2),
        )

    R = random_rotation(2, dtype, (3,))
    R1, R2 = random_rotation(3, dtype, (2,))
    R2 = -R2  # an improper element
    out = ours(R, R1, R2)
    np.testing.assert_allclose(out["vector"], R, **tol(dtype))
    np.testing.assert_allclose(out["pseudo_of_improper"], R, **tol(dtype))  # det < 0: a pseudovector ignores -1
    np.testing.assert_allclose(out["vector_of_improper"], -R, **tol(dtype))
    signs = [1.0, 1, -1, -1, -1, -1, 1, 1, 1] + [1] * 5 + [-1] * 5
    np.testing.assert_allclose(out["inversion"], np.diag(signs), **tol(dtype))
    np.testing.assert_allclose(out["product"], out["factors"], **tol(dtype))  # a representation of O(3)
    ref = jax.jit(ref_irreps(D_SUMS[1]).D_from_matrix)(R2)
    assert_all_close(out["sum"], ref, dtype)


@needs_rotation
@pytest.mark.parametrize("dtype", DTYPES)
def test_D_from_quaternion_axis_angle_log_coordinates_match(dtype):
    rng = np.random.default_rng(4)
    q = random_unit_vector(rng, 4, dtype)
    axis = random_unit_vector(rng, 3, dtype)
    angle = jnp.asarray(1.3, dtype)
    log = jnp.asarray(rng.normal(size=3), dtype)
    s = "2x0e + 1e + 3o"
    parity = jnp.array([1.0] * 5 + [-1.0] * 7, dtype)  # p of each component of s

    @jax.jit
    def ours(q, axis, angle, log):
        x = Irreps(s)
        with_parity = (x.D_from_quaternion(q, 1), x.D_from_axis_angle(axis, angle, 1), x.D_from_log_coordinates(log, 1))
        single = (  # an Irrep gives the corresponding diagonal block
            Irrep("3o").D_from_quaternion(q, 1),
            Irrep("3o").D_from_axis_angle(axis, angle, 1),
            Irrep("3o").D_from_log_coordinates(log, 1),
        )
        return x.D_from_quaternion(q), with_parity, single

    @jax.jit
    def refs(q, axis, angle, log):
        x = ref_irreps(s)
        if dtype == jnp.float64:  # e3nn-jax's own path: exponential of the generators (slow to compile)
            return x.D_from_quaternion(q), x.D_from_axis_angle(axis, angle), x.D_from_log_coordinates(log)
        return (
            x.D_from_quaternion(q),
            x.D_from_angles(*e3nn_ref.axis_angle_to_angles(axis, angle)),
            x.D_from_angles(*e3nn_ref.log_coordinates_to_angles(log)),
        )

    without_parity, with_parity, single = ours(q, axis, angle, log)
    ref = refs(q, axis, angle, log)
    assert_all_close(without_parity, ref[0], dtype)
    assert_all_close(with_parity, tuple(parity[:, None] * r for r in ref), dtype)
    assert_all_close(single, tuple(b[..., 5:, 5:] for b in with_parity), dtype)


@needs_rotation
def test_D_from_matrix_bad_shape():
    with pytest.raises(ValueError, match="3, 3"):
        Irrep("1o").D_from_matrix(jnp.eye(4))


# ---------------------------------------------------------------------------------------------------------------
# Irreps objects of other libraries: torch-e3nn (mimicked here, torch is not needed) and e3nn-jax
# ---------------------------------------------------------------------------------------------------------------


class TupleIrrepRefusingLen(tuple):
    """Shaped like torch-e3nn's ``o3.Irrep``: the tuple ``(l, p)`` with ``l``/``p`` properties and no ``len()``."""

    def __new__(cls, l, p):
        return super().__new__(cls, (l, p))

    @property
    def l(self):  # noqa: E743
        return self[0]

    @property
    def p(self):
        return self[1]

    def __len__(self):
        raise NotImplementedError

    def __contains__(self, _object):
        raise NotImplementedError


class TupleMulIrrep(tuple):
    """Shaped like torch-e3nn's ``_MulIr``: the tuple ``(mul, ir)`` with ``mul``/``ir`` properties."""

    def __new__(cls, mul, ir):
        return super().__new__(cls, (mul, ir))

    @property
    def mul(self):
        return self[0]

    @property
    def ir(self):
        return self[1]


class TupleIrreps(tuple):
    """Shaped like torch-e3nn's ``o3.Irreps``: a tuple of ``_MulIr``."""

    def __new__(cls, terms):
        return super().__new__(cls, [TupleMulIrrep(mul, TupleIrrepRefusingLen(l, p)) for mul, (l, p) in terms])


def test_irrep_from_a_tuple_that_refuses_len():
    foreign = TupleIrrepRefusingLen(2, -1)
    with pytest.raises(NotImplementedError):
        len(foreign)  # the mimic really refuses
    assert Irrep(foreign) == Irrep(2, -1)
    assert str(Irrep(foreign)) == str(e3nn_ref.Irrep(foreign))  # e3nn-jax reads it the same way
    assert Irrep("2o") == foreign  # comparisons convert too
    assert MulIrrep(3, foreign) == MulIrrep(3, "2o")


def test_irreps_from_torch_like_objects():
    terms = [(2, (0, 1)), (3, (1, -1)), (1, (2, 1))]
    foreign = TupleIrreps(terms)
    assert Irreps(foreign) == Irreps("2x0e + 3x1o + 1x2e")
    assert str(Irreps(foreign)) == str(e3nn_ref.Irreps(foreign))
    assert MulIrrep(foreign[1]) == MulIrrep(3, "1o")
    assert Irreps([foreign[1], "0o"]) == Irreps("3x1o + 0o")
    assert Irreps([(4, TupleIrrepRefusingLen(1, 1))]) == Irreps("4x1e")


def test_irreps_from_a_single_torch_like_irrep():
    """One irrep of another library is one term, as for our Irrep (e3nn-jax would unpack it as a sequence)."""
    assert Irreps(TupleIrrepRefusingLen(1, -1)) == Irreps("1o")
    assert Irreps([TupleIrrepRefusingLen(1, -1), TupleIrrepRefusingLen(0, 1)]) == Irreps("1o + 0e")


def test_irreps_from_e3nn_jax_objects():
    assert Irrep(e3nn_ref.Irrep("3o")) == Irrep("3o")
    assert Irreps(e3nn_ref.Irreps("2x0e + 1o")) == Irreps("2x0e + 1o")
    assert Irreps(e3nn_ref.MulIrrep(2, e3nn_ref.Irrep("1e"))) == Irreps("2x1e")
    assert Irreps(e3nn_ref.Irrep("2e")) == Irreps("2e")
    assert MulIrrep(e3nn_ref.MulIrrep(2, e3nn_ref.Irrep("1e"))) == MulIrrep(2, "1e")


def test_irrep_of_a_foreign_mul_irrep_and_filters_by_foreign_irreps():
    """Another library's (mul, ir) pair converts to its irrep, as our MulIrrep does: so ``filter`` and
    ``filter_ir_out`` take torch-e3nn's and e3nn-jax's Irreps (a torch-e3nn ``_MulIr`` once read as ``l=mul``)."""
    assert Irrep(e3nn_ref.MulIrrep(2, e3nn_ref.Irrep("1e"))) == Irrep("1e")  # as e3nn-jax's own Irrep does
    assert Irrep(TupleMulIrrep(3, TupleIrrepRefusingLen(1, -1))) == Irrep("1o")
    irreps = Irreps("2x0e + 1o + 2e")
    assert irreps.filter(keep=e3nn_ref.Irreps("0e + 2e")) == Irreps("2x0e + 2e")  # as e3nn-jax filters by its own
    assert irreps.filter(keep=TupleIrreps([(1, (0, 1)), (4, (1, -1))])) == Irreps("2x0e + 1o")
    assert irreps.filter(drop=TupleIrreps([(1, (0, 1))])) == Irreps("1o + 2e")
    x = e3nn_fast.IrrepsArray("1o", jnp.array([0.0, 0.0, 1.0]))
    keep = TupleIrreps([(1, (0, 1)), (1, (1, 1))])
    assert e3nn_fast.tensor_product(x, x, filter_ir_out=keep).irreps == Irreps("0e + 1e")
    with pytest.raises(ValueError, match="1q"):
        Irrep(TupleMulIrrep(2, "1q"))


def test_pairs_and_mul_irreps_as_before():
    """Plain ``(mul, (l, p))`` pairs and our MulIrrep keep working; bad tuples still fail with clear errors."""
    assert Irreps([(2, (1, -1)), MulIrrep(1, "0e")]) == Irreps("2x1o + 0e")
    assert Irreps(MulIrrep(5, "2e")) == Irreps("5x2e")
    assert MulIrrep((2, (1, -1))) == MulIrrep(2, "1o")
    assert Irrep([1, -1]) == Irrep("1o")
    with pytest.raises(ValueError, match=r"pair \(l, p\)"):
        Irrep(())
    with pytest.raises(ValueError, match=r"pair \(l, p\)"):
        Irrep((1, -1, 0))
    with pytest.raises(TypeError, match=r"pair \(mul, ir\)"):
        MulIrrep((1, 2, 3))
    with pytest.raises(TypeError, match="MulIrrep"):
        MulIrrep("ab")
    with pytest.raises(AssertionError):  # e3nn-jax asserts here; ours is also a TypeError
        Irreps([(32, 1)])
    with pytest.raises(TypeError, match="decode"):
        Irreps(b"1x0e")


def test_bad_torch_like_irreps_are_still_rejected():
    with pytest.raises(ValueError, match="parity"):
        Irrep(TupleIrrepRefusingLen(1, 0))
    with pytest.raises(ValueError, match="non-negative"):
        Irrep(TupleIrrepRefusingLen(-1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        Irreps([TupleMulIrrep(-2, TupleIrrepRefusingLen(1, 1))])


def _torch_e3nn_o3():
    """torch-e3nn's ``o3``, or a skip where torch-e3nn is not installed.

    torch-e3nn 0.4.x reads its constants with ``torch.load`` while being imported; since torch 2.6 that load refuses
    the ``slice`` objects in the file unless they are allowed (as mace-jax's test setup does), so allow them here.
    """
    torch = pytest.importorskip("torch")
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow([slice]) if allow is not None else contextlib.nullcontext():
        return pytest.importorskip("e3nn.o3")


def test_real_torch_e3nn_objects():
    o3 = _torch_e3nn_o3()  # torch-e3nn, only where it is installed
    assert Irrep(o3.Irrep("1o")) == Irrep("1o")
    assert Irreps(o3.Irreps("16x0e + 8x1o + 2x2e")) == Irreps("16x0e + 8x1o + 2x2e")
    assert Irreps(o3.Irrep("2e")) == Irreps("2e")
    assert Irreps([(4, o3.Irrep("1e"))]) == Irreps("4x1e")
    assert MulIrrep(o3.Irreps("3x1o")[0]) == MulIrrep(3, "1o")
    assert Irrep(o3.Irreps("3x1o")[0]) == Irrep("1o")
    assert Irreps("2x0e + 1o + 2e").filter(keep=o3.Irreps("0e + 1o")) == Irreps("2x0e + 1o")
