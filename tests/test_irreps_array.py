"""IrrepsArray and its helpers: parity with e3nn-jax 0.21 (numbers, irreps, zero flags, printing), pytree behaviour,
O(3) equivariance and bad input."""

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast.irreps_array as ia
from e3nn_fast.configuration import config
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.rotation import matrix_to_angles

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10, atol=1e-12)


def make_pair(irreps, leading_shape=(), dtype=np.float64, seed=0, zero=()):
    """The same data as an e3nn_fast and an e3nn_jax IrrepsArray; blocks listed in ``zero`` are ``None`` chunks."""
    rng = np.random.default_rng(seed)
    irreps_f = Irreps(irreps)
    chunks = [
        None if i in zero else rng.normal(size=tuple(leading_shape) + (mul, ir.dim)).astype(dtype)
        for i, (mul, ir) in enumerate(irreps_f)
    ]
    fast = ia.from_chunks(irreps_f, [None if c is None else jnp.asarray(c) for c in chunks], leading_shape, dtype)
    ref = e3nn_jax.from_chunks(
        str(irreps_f), [None if c is None else jnp.asarray(c) for c in chunks], leading_shape, dtype
    )
    return fast, ref


def assert_same(fast, ref, dtype=np.float64, check_flags=True):
    """Same irreps, shape, dtype, numbers, zero flags and zero chunks as the e3nn-jax result."""
    assert isinstance(fast, IrrepsArray), type(fast)
    assert str(fast.irreps) == str(ref.irreps)
    assert fast.shape == ref.shape
    assert fast.dtype == ref.dtype
    if fast.dtype == bool:
        np.testing.assert_array_equal(np.asarray(fast.array), np.asarray(ref.array))
    else:
        np.testing.assert_allclose(np.asarray(fast.array), np.asarray(ref.array), **tol(dtype))
    if check_flags:
        assert fast.zero_flags == ref.zero_flags
        assert [c is None for c in fast.chunks] == [c is None for c in ref.chunks]
    for a, b in zip(fast.chunks, ref.chunks):
        if a is not None and b is not None:
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol(dtype))


# ------------------------------------------------------------------------------------------------------------------
# construction, properties, printing
# ------------------------------------------------------------------------------------------------------------------


def test_properties_match_e3nn_jax():
    fast, ref = make_pair("2x0e + 1o + 0x2e + 2e", (3, 2), zero=(1,))
    assert fast.shape == ref.shape == (3, 2, 10)
    assert fast.ndim == 3 and len(fast) == 3 and fast.dtype == jnp.float64
    assert fast.zero_flags == (False, True, False, False)
    assert [None if c is None else c.shape for c in fast.chunks] == [None if c is None else c.shape for c in ref.chunks]
    plain = IrrepsArray("2x0e + 1o", jnp.arange(5.0))
    assert plain.zero_flags == (False, False)
    np.testing.assert_array_equal(plain.chunks[1], np.array([[2.0, 3.0, 4.0]]))
    assert isinstance(plain.irreps, Irreps)


def test_constructor_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 2\).*1x1o"):
        IrrepsArray("1o", jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="zero_flags"):
        IrrepsArray("1o", jnp.ones(3), zero_flags=(True, False))
    with pytest.raises(ValueError, match="chunk shape"):
        IrrepsArray("1o", jnp.ones((2, 3)), chunks=[jnp.ones((2, 1, 2))])
    with pytest.raises(ValueError, match="chunks has 2 entries"):
        IrrepsArray("1o", jnp.ones(3), chunks=[None, None])


def test_immutable_and_unhashable():
    x = IrrepsArray("1o", jnp.ones(3))
    with pytest.raises(AttributeError):
        x.array = jnp.zeros(3)
    with pytest.raises(TypeError):
        hash(x)


@pytest.mark.parametrize(
    "irreps, array",
    [
        ("1o", np.array([1.0, 2.0, 3.0])),
        ("2x0e + 1o", np.arange(10.0).reshape(2, 5)),
        ("0e + 1e", np.arange(24).reshape(3, 2, 4)),
        ("1o", np.array([1.0, 2.0, 3.0], np.float32) * 1e-9),
        ("0e", np.array([0.1234567891234])),
        ("", np.ones((2, 0))),
        ("3x0e", np.array([True, False, True])),
    ],
)
def test_printing_matches_e3nn_jax(irreps, array):
    fast = IrrepsArray(irreps, jnp.asarray(array))
    ref = e3nn_jax.IrrepsArray(irreps, jnp.asarray(array))
    assert str(fast) == str(ref)
    assert repr(fast) == repr(ref)


def test_documented_examples_print_like_e3nn_jax():
    def both(code):
        fast = eval(code, {"e3nn": ia, "IrrepsArray": IrrepsArray, "jnp": jnp})
        ref = eval(code, {"e3nn": e3nn_jax, "IrrepsArray": e3nn_jax.IrrepsArray, "jnp": jnp})
        assert repr(fast) == repr(ref), code

    setup = 'IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0]))'
    scalar = 'IrrepsArray("0e", jnp.array([2.0]))'
    both(f"{setup} + {setup}")
    both(f"{setup} / {scalar}")
    both(f"1.0 / {scalar}")
    both('IrrepsArray("0e + 1o + 2x0e", jnp.arange(6)).regroup()')
    both('IrrepsArray("0e + 1o", jnp.arange(8).reshape(2, 4))[1, "0e"]')
    both('IrrepsArray("5x0e", jnp.arange(5))[1:3]')
    both('e3nn.mean(IrrepsArray("3x0e + 2x0e", jnp.arange(10).reshape(2, 5)), axis=1)')
    both('e3nn.sum(IrrepsArray("3x0e + 2x0e", jnp.arange(10).reshape(2, 5)))')
    both('e3nn.norm(IrrepsArray("2x0e + 1e + 2e", jnp.arange(10.0)))')
    both('e3nn.concatenate([IrrepsArray("3x0e + 2x0o", jnp.arange(10).reshape(2, 5))] * 2, axis=1)')
    both('IrrepsArray("6x0e + 3x1e", jnp.arange(15)).mul_to_axis()')
    both('IrrepsArray("0e + 1o", jnp.array([1, 3, 3, 3])).extend_with_zeros("0e + 0e + 1o + 2x0e")')
    both('IrrepsArray("0e + 0x1e + 0e", jnp.ones(2)).unify()')


# ------------------------------------------------------------------------------------------------------------------
# arithmetic
# ------------------------------------------------------------------------------------------------------------------

BINARY_CASES = [
    ("x + x", "1o + 2x0e", "1o + 2x0e"),
    ("x - y", "2e + 0e", "2e + 0e"),
    ("-x", "1o + 0e", "1o"),
    ("x * 2.0", "1o + 2e", "0e"),
    ("3 * x", "1o + 2e", "0e"),
    ("x * np.arange(2.0)", "1o + 1e", "0e"),
    ("x * np.ones((4, 1))", "1o + 1e", "0e"),
    ("x / 2.0", "1o", "0e"),
    ("x * y", "2x0o + 1o", "3x0o"),
    ("y * x", "2x0o + 1o", "3x0e"),
    ("x * y", "0o + 1o", "1o + 0o"),
    ("x / y", "1o + 2x1e", "3x0e"),
    ("1.0 / y", "1o", "2x0e"),
    ("2.0 / y", "1o", "0o"),
    ("y ** 2", "1o", "2x0e"),
    ("y ** 0.5", "1o", "2x0e"),
    ("y ** 2", "1o", "0o + 0e"),
    ("y ** 3", "1o", "0o"),
    ("y + 1.0", "1o", "3x0e"),
    ("1.0 - y", "1o", "3x0e"),
    ("x == x", "1o + 0e", "0e"),
    ("y == 0.5", "1o", "2x0e"),
]


FP32_BINARY_CASES = [BINARY_CASES[i] for i in (0, 5, 11, 15)]


@pytest.mark.parametrize(
    "expr, irreps_x, irreps_y, dtype",
    [case + (np.float64,) for case in BINARY_CASES] + [case + (np.float32,) for case in FP32_BINARY_CASES],
)
def test_arithmetic_parity(expr, irreps_x, irreps_y, dtype):
    xf, xr = make_pair(irreps_x, (4,), dtype, seed=1)
    yf, yr = make_pair(irreps_y, (4,), dtype, seed=2)
    if "y **" in expr or "/ y" in expr:
        yf, yr = yf * yf + 0.5, yr * yr + 0.5  # positive scalars
        if "0o" in irreps_y:
            yf, yr = IrrepsArray(irreps_y, yf.array), e3nn_jax.IrrepsArray(irreps_y, yr.array)
    fast = eval(expr, {"x": xf, "y": yf, "np": np})
    ref = eval(expr, {"x": xr, "y": yr, "np": np})
    assert_same(fast, ref, dtype)


def test_arithmetic_keeps_zero_flags_like_e3nn_jax():
    zf, zr = make_pair("2x0e + 1o + 0e", (2,), zero=(0,))
    wf, wr = make_pair("2x0e + 1o + 0e", (2,), zero=(0, 1), seed=3)
    exprs = ["z + w", "z - w", "w - z", "-z", "z * 2.0", "z / 2.0", "z * np.ones((2, 1))", "z == w", "z + 0"]
    for expr in exprs + ["z.astype(np.float32)", "z.broadcast_to((3, 2, -1))"]:
        assert_same(eval(expr, {"z": zf, "w": wf, "np": np}), eval(expr, {"z": zr, "w": wr, "np": np}))


def test_integer_product_promotes_to_float_like_e3nn_jax():
    xf = IrrepsArray("0e + 1o", jnp.arange(4))
    xr = e3nn_jax.IrrepsArray("0e + 1o", jnp.arange(4))
    assert_same(xf * jnp.array([1, 2]), xr * jnp.array([1, 2]))
    assert_same(xf * 2, xr * 2)
    assert_same(1 / IrrepsArray("0e", jnp.array([2])), 1 / e3nn_jax.IrrepsArray("0e", jnp.array([2])))


def test_irrep_normalization_none_in_product():
    xf, xr = make_pair("0e + 1o + 2e", (2,))
    yf, yr = make_pair("3x0e", (2,), seed=1)
    try:
        config("irrep_normalization", "none")
        e3nn_jax.config("irrep_normalization", "none")
        assert_same(xf * yf, xr * yr)
    finally:
        config("irrep_normalization", "component")
        e3nn_jax.config("irrep_normalization", "component")


@pytest.mark.parametrize(
    "expr, match",
    [
        ("x + 1.0", "not equivariant"),
        ("x + IrrepsArray('1e', jnp.ones(3))", "not equivariant"),
        ("x - IrrepsArray('1e', jnp.ones(3))", "not equivariant"),
        ("x * x", "one of the two copies is a scalar"),
        ("x * IrrepsArray('2x0e', jnp.ones(2))", "number of irreps"),
        ("x * jnp.ones(2)", "not equivariant"),
        ("x / x", "not equivariant"),
        ("1.0 / x", "not equivariant"),
        ("x ** 2", "not equivariant"),
        ("IrrepsArray('0o', jnp.ones(1)) ** 0.5", "not equivariant"),
        ("x == 1.0", "not equivariant"),
        ("x == IrrepsArray('1e', jnp.ones(3))", "not equivariant"),
        ("x / ia.zeros('0e')", "division by zero"),
        ("1.0 / ia.zeros('0e')", "division by zero"),
    ],
)
def test_arithmetic_errors(expr, match):
    x = IrrepsArray("1o", jnp.ones(3))
    with pytest.raises(ValueError, match=match):
        eval(expr, {"x": x, "IrrepsArray": IrrepsArray, "jnp": jnp, "ia": ia})


# ------------------------------------------------------------------------------------------------------------------
# indexing
# ------------------------------------------------------------------------------------------------------------------

INDEXES = [
    "x[0]",
    "x[-1, :]",
    "x[1:3]",
    "x[:, 0]",
    "x[None]",
    "x[..., None, :]",
    "x[0, 1, ...]",
    "x[..., '2x1o']",
    "x[..., '2x0e + 2x1o']",
    "x[0, :, '1x0e + 2e']",
    "x[..., 1:5]",
    "x[..., 2:5]",
    "x[..., :2]",
    "x[..., 5:]",
    "x[:, :, 5:9]",
    "x[..., 8:]",
    "x[jnp.array([0, 2])]",
    "x.slice_by_dim[2:5]",
    "x.slice_by_mul[1:3]",
    "x.slice_by_mul[:4]",
    "x.slice_by_chunk[1:]",
    "x.slice_by_chunk[::2]",
]


@pytest.mark.parametrize("expr", INDEXES)
def test_indexing_parity(expr):
    xf, xr = make_pair("2x0e + 2x1o + 0e + 2e", (3, 2), zero=(3,))
    assert_same(eval(expr, {"x": xf, "jnp": jnp}), eval(expr, {"x": xr, "jnp": jnp}))


@pytest.mark.parametrize(
    "expr, match",
    [
        ("x[..., 3]", "would remove the irreps axis"),
        ("x[0, 1, 3]", "would remove the irreps axis"),
        ("x[..., None]", "would insert an axis after the irreps axis"),
        ("x[..., '0o']", "1x0o.*not found"),
        ("x[..., '1x1o']", "1x1o.*not found"),
        ("x['2e']", "must address the last"),
        ("x[..., 1:3]", "must fall between two irrep copies"),
        ("x[..., ::2]", "cannot index the irreps axis"),
        ("x.slice_by_mul[1]", "slices"),
        ("x.slice_by_chunk[0]", "slices"),
    ],
)
def test_indexing_errors(expr, match):
    x, _ = make_pair("2x0e + 2x1o + 0e + 2e", (3, 2))
    with pytest.raises(IndexError, match=match):
        eval(expr, {"x": x})


def test_index_with_new_axis_before_last_is_a_leading_index():
    # e3nn-jax counts ``None`` as consuming an axis and rejects this; numpy semantics say the last axis is untouched
    x, _ = make_pair("0e + 1o", (2,))
    np.testing.assert_allclose(x[None, 0].array, x.array[None, 0])


def test_at_set_and_add_parity():
    xf, xr = make_pair("2x0e + 1o", (3,), zero=(1,))
    vf, vr = make_pair("1x0e + 1x0e + 1o", (), seed=5)
    assert_same(xf.at[0].set(0), xr.at[0].set(0))
    assert_same(xf.at[1].set(vf), xr.at[1].set(vr))
    assert_same(xf.at[..., :].add(vf), xr.at[..., :].add(vr))
    assert_same(xf.at[jnp.array([0, 2])].add(vf), xr.at[jnp.array([0, 2])].add(vr))
    with pytest.raises(IndexError, match="irreps dimension"):
        xf.at[0, 1].set(0)
    with pytest.raises(NotImplementedError):
        xf.at[..., "1o"].set(0)
    with pytest.raises(NotImplementedError):
        xf.at[..., 2:5].add(vf)
    with pytest.raises(ValueError, match="must be the same"):
        xf.at[0].set(IrrepsArray("1e", jnp.ones(3)))


def test_len_and_iteration():
    xf, xr = make_pair("0e + 1o", (3, 2))
    assert len(xf) == 3
    items = list(xf)
    assert len(items) == 3
    for a, b in zip(items, xr):
        assert_same(a, b)
    with pytest.raises(ValueError, match="iterate"):
        list(xf[0, 0])


# ------------------------------------------------------------------------------------------------------------------
# shape and irreps manipulation
# ------------------------------------------------------------------------------------------------------------------

METHODS = [
    "x.reshape((6, -1))",
    "x.reshape((1, 3, 2, 10))",
    "x.broadcast_to((4, 3, 2, 10))",
    "x.astype(np.float32)",
    "x.simplify()",
    "x.unify()",
    "x.sort()",
    "x.regroup()",
    "x.filter(['1o'])",
    "x.filter(keep='0e + 2e')",
    "x.filter(drop='0e')",
    "x.filter(lmax=1)",
    "x.filter()",
    "x.remove_zero_chunks()",
    "x.extend_with_zeros('0o + 2x0e + 1e + 1o + 1o + 0e + 0x1e + 0e + 1e')",
    "x.rechunk('1x0e + 1x0e + 1o + 1o + 1x0e + 1x0e')",
    "x.rechunk('2x0e + 2x1o + 2x0e')",
    "x.mul_to_axis()",
    "x.mul_to_axis(1)",
    "x.axis_to_mul()",
    "x.axis_to_irreps()",
]


@pytest.mark.parametrize("expr", METHODS)
def test_method_parity(expr):
    xf, xr = make_pair("2x0e + 1o + 1o + 0e + 0e", (3, 2), zero=(2, 4))
    assert_same(eval(expr, {"x": xf, "np": np}), eval(expr, {"x": xr, "np": np}))


def test_rechunk_with_cached_chunks_keeps_zero_blocks():
    xf, xr = make_pair("6x0e + 4x0e", (), zero=(0,))
    assert_same(xf.rechunk("5x0e + 5x0e"), xr.rechunk("5x0e + 5x0e"))
    assert_same(xf.rechunk("3x0e + 3x0e + 0x1o + 4x0e"), xr.rechunk("3x0e + 3x0e + 0x1o + 4x0e"))
    lazy_f = IrrepsArray("6x0e + 4x0e", xf.array, zero_flags=(True, False))  # chunks not cached yet
    lazy_r = e3nn_jax.IrrepsArray("6x0e + 4x0e", xr.array, zero_flags=(True, False))
    assert_same(lazy_f.rechunk("5x0e + 5x0e"), lazy_r.rechunk("5x0e + 5x0e"))


def _primitives(jaxpr) -> set:
    return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}


@pytest.mark.parametrize("pieces", [2, ia.SLICE_MAX_PIECES + 1, 9])
def test_split_by_sizes_backward(pieces):
    """Few pieces are slices (their gradient: summed pads, one fused loop); many pieces are one ``split``, whose
    gradient is one ``concatenate`` (summed pads would cost one select per piece and element)."""
    sizes = [1 + n % 3 for n in range(pieces)]
    f = lambda a: sum(jnp.sum(p * (n + 1)) for n, p in enumerate(ia.split_by_sizes(a, sizes, -1, jnp)))
    array = jnp.ones((2, sum(sizes)))
    primitives = _primitives(jax.make_jaxpr(jax.grad(f))(array))
    if pieces <= ia.SLICE_MAX_PIECES:
        assert "concatenate" not in primitives
    else:
        assert "concatenate" in primitives and "pad" not in primitives
    expected = np.concatenate([np.full(size, n + 1.0) for n, size in enumerate(sizes)])
    np.testing.assert_allclose(jax.grad(f)(array), np.broadcast_to(expected, array.shape))


@pytest.mark.parametrize("to", [None, "2x0e + 3x0e + 1x0e + 2x0e + 4x0e + 2x1o + 2x1o"])
def test_chunk_gradients(to):
    """Chunks and re-cut chunks (cut with :func:`split_by_sizes`) have the right gradients."""
    irreps = "12x0e + 4x1o"

    def f(array):
        x = IrrepsArray(irreps, array)
        x = x if to is None else x.rechunk(to)
        return sum(jnp.sum(c * (n + 1)) for n, c in enumerate(x.chunks))

    array = jnp.arange(24.0)
    expected = (
        np.concatenate([np.full(12, 1.0), np.full(12, 2.0)])
        if to is None
        else np.concatenate([np.full(m, n + 1.0) for n, m in enumerate([2, 3, 1, 2, 4, 6, 6])])
    )
    np.testing.assert_allclose(jax.grad(f)(array), expected)


def test_axis_to_mul_and_axis_to_irreps_on_inner_axes():
    # e3nn-jax mislays the data for ``axis != -2`` when the leading axes differ in size; these follow the definition
    x, _ = make_pair("2x0e + 1o", (2, 3, 4))
    a = x.axis_to_mul(axis=0)
    b = IrrepsArray(x.irreps, jnp.moveaxis(x.array, 0, -2)).axis_to_mul()
    assert str(a.irreps) == "4x0e+2x1o" and a.shape == (3, 4, 10)
    np.testing.assert_allclose(a.array, b.array)
    c = x.axis_to_irreps(axis=0)
    d = IrrepsArray(x.irreps, jnp.moveaxis(x.array, 0, -2)).axis_to_irreps()
    assert c.shape == (3, 4, 10)
    np.testing.assert_allclose(c.array, d.array)
    e = x.mul_to_axis(axis=0)  # e3nn-jax fails for axes other than -2
    assert e.shape == (1, 2, 3, 4, 5)
    np.testing.assert_allclose(e.array, jnp.moveaxis(x.mul_to_axis().array, -2, 0))
    # the round trip mul_to_axis <-> axis_to_mul is the identity
    y, _ = make_pair("4x0e + 2x1o", (3,))
    np.testing.assert_allclose(y.mul_to_axis(2).axis_to_mul().array, y.array)


def test_shape_method_errors():
    x, _ = make_pair("2x0e + 1o", (3,))
    with pytest.raises(ValueError, match="irreps.dim"):
        x.reshape((15,))
    with pytest.raises(ValueError, match="irreps.dim"):
        x.broadcast_to((2, 3, 4))
    with pytest.raises(ValueError, match="superset"):
        x.extend_with_zeros("1o + 2x0e")
    with pytest.raises(ValueError, match="factor 3"):
        x.mul_to_axis(3)
    with pytest.raises(ValueError, match="last axis"):
        x.mul_to_axis(axis=-1)
    with pytest.raises(ValueError, match="irreps dimension"):
        x.axis_to_mul(axis=-1)
    with pytest.raises(ValueError, match="rechunk"):
        x.rechunk("1o + 2x0e")
    with pytest.raises(NotImplementedError):
        x.irreps_to_axis()


def test_deprecated_aliases_warn_and_work():
    xf, xr = make_pair("0e + 1o + 0e", (2,))
    with pytest.warns(DeprecationWarning):
        assert_same(xf.sorted(), xr.sort())
    with pytest.warns(DeprecationWarning):
        assert_same(xf.filtered(lmax=0), xr.filter(lmax=0))
    with pytest.warns(DeprecationWarning):
        assert_same(xf.remove_nones(), xr.remove_zero_chunks())
    with pytest.warns(DeprecationWarning):
        assert_same(IrrepsArray.zeros("1o", (2,)), ia.zeros("1o", (2,)))
    with pytest.warns(DeprecationWarning):
        assert len(xf.list) == 3


def test_numpy_arrays_stay_numpy():
    x = IrrepsArray("0e + 1o", np.arange(8.0).reshape(2, 4))
    for y in [x + x, x * 2.0, x[0], x.regroup(), x[..., "1o"], ia.concatenate([x, x], 0), ia.norm(x)]:
        assert isinstance(y.array, np.ndarray), y
    ref = e3nn_jax.IrrepsArray("0e + 1o", np.arange(8.0).reshape(2, 4))
    assert repr(x[..., 1:]) == repr(ref[..., 1:])


def test_numpy_and_jax_operands_together_give_jax_arrays():
    """A numpy IrrepsArray meeting a JAX array gives a JAX array with e3nn-jax's values (computed there on JAX
    inputs: e3nn-jax itself raises for a mixed ``concatenate``).  Before, ``gate`` of a numpy IrrepsArray raised a
    ValueError that e3nn-jax does not (its activations return JAX gates), and a traced factor of a numpy
    IrrepsArray under ``jit`` was handed to numpy."""
    from e3nn_fast.gate import gate

    data = np.random.default_rng(0).standard_normal((3, 8))
    ours, jax_ours = IrrepsArray("2x0e + 2x1o", data), IrrepsArray("2x0e + 2x1o", jnp.asarray(data))
    theirs = e3nn_jax.IrrepsArray("2x0e + 2x1o", jnp.asarray(data))
    scale = jnp.arange(3.0)[:, None]
    cases = [
        (gate(ours), e3nn_jax.gate(theirs)),
        (ours + jax_ours, theirs + theirs),
        (ia.concatenate([ours, jax_ours]), e3nn_jax.concatenate([theirs, theirs])),
        (ours * scale, theirs * scale),
        (jax.jit(lambda s: ours * s)(scale), theirs * scale),
        (ours / (scale + 1), theirs / (scale + 1)),
    ]
    for mine, reference in cases:
        assert isinstance(mine.array, jax.Array) and str(mine.irreps) == str(reference.irreps)
        np.testing.assert_allclose(np.asarray(mine.array), np.asarray(reference.array), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# pytree behaviour
# ------------------------------------------------------------------------------------------------------------------


def test_pytree_structure_matches_e3nn_jax_and_ignores_zero_flags():
    x = ia.zeros("0e + 1o", (2,))
    leaves, treedef = jax.tree_util.tree_flatten(x)
    assert len(leaves) == 1 and leaves[0] is x.array
    assert treedef == jax.tree_util.tree_structure(ia.ones("0e + 1o", (3,)))
    assert treedef != jax.tree_util.tree_structure(ia.ones("0e + 1e", (3,)))
    y = jax.tree_util.tree_map(lambda a: a + 1.0, x)
    assert y.zero_flags == (False, False) and y.chunks[0] is not None
    np.testing.assert_allclose(y.array, np.ones((2, 4)))


def test_jit_vmap_grad():
    dtype = np.float32
    xf, xr = make_pair("0e + 1o + 2e", (5,), dtype)

    def f(e3nn, x):
        return e3nn.norm(x * 2.0 + x[..., "1o"].extend_with_zeros(x.irreps))

    eager = f(ia, xf)
    assert_same(eager, f(e3nn_jax, xr), dtype)
    assert_same(jax.jit(lambda x: f(ia, x))(xf), eager, dtype, check_flags=False)
    assert_same(jax.jit(jax.vmap(lambda x: f(ia, x)))(xf), eager, dtype, check_flags=False)
    grad = jax.jit(jax.grad(lambda x: f(ia, x).array.sum()))(xf)
    assert isinstance(grad, IrrepsArray) and grad.irreps == xf.irreps and grad.dtype == dtype
    # d/dx sum_blocks |c x| = c x / |x| with c = 3 for the vector, 2 for the others
    unit = ia.from_chunks(xf.irreps, [c / jnp.linalg.norm(c, axis=-1, keepdims=True) for c in xf.chunks], (5,))
    expected = unit.array * jnp.array([2.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0], dtype)
    np.testing.assert_allclose(grad.array, expected, **tol(dtype))
    # output IrrepsArrays keep their irreps through jit
    out = jax.jit(lambda x: ia.concatenate([x, ia.norm(x)]))(xf)
    assert str(out.irreps) == "1x0e+1x1o+1x2e+1x0e+1x0e+1x0e"


def test_scan_carry_with_zero_initial_value():
    def body(carry, _):
        return carry + ia.ones("1o", (2,)), None

    out, _ = jax.lax.scan(body, ia.zeros("1o", (2,)), None, length=3)
    np.testing.assert_allclose(out.array, 3 * np.ones((2, 3)))


# ------------------------------------------------------------------------------------------------------------------
# module-level helpers
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_constructors_parity(dtype):
    assert_same(ia.zeros("2x0e + 1o", (3,), dtype), e3nn_jax.zeros("2x0e + 1o", (3,), dtype), dtype)
    assert_same(ia.ones("2x0e + 1o", (3,), dtype), e3nn_jax.ones("2x0e + 1o", (3,), dtype), dtype)
    xf, xr = make_pair("0e + 2e", (2,), dtype, zero=(0,))
    assert_same(ia.zeros_like(xf), e3nn_jax.zeros_like(xr), dtype)
    assert_same(ia.ones_like(xf), e3nn_jax.ones_like(xr), dtype)
    arr = np.arange(6, dtype=dtype).reshape(2, 3)
    assert_same(ia.as_irreps_array(arr), e3nn_jax.as_irreps_array(arr), dtype)
    assert ia.as_irreps_array(xf) is xf


def test_constructor_errors():
    with pytest.raises(ValueError, match="rank 0"):
        ia.as_irreps_array(jnp.ones(()))
    with pytest.raises(ValueError, match="dtype"):
        ia.from_chunks("1o", [None], ())
    with pytest.raises(ValueError, match="got 1 chunks for the 2 blocks"):
        ia.from_chunks("1o + 1o", [jnp.ones((1, 3))], ())
    with pytest.raises(ValueError, match="expected"):
        ia.from_chunks("1o", [jnp.ones((2, 3))], ())
    with pytest.raises(ValueError, match="must be an array or None"):
        ia.from_chunks("1o", [3.0], ())


HELPER_CASES = [
    "e3nn.mean(x)",
    "e3nn.mean(x, axis=0)",
    "e3nn.mean(x, axis=-1)",
    "e3nn.sum(x)",
    "e3nn.sum(x, axis=(0, 2), keepdims=True)",
    "e3nn.sum(x, axis=1, keepdims=True)",
    "e3nn.sum(x, axis=())",
    "e3nn.concatenate([x, x2], axis=0)",
    "e3nn.concatenate([x, y])",
    "e3nn.concatenate([x, y.array])",
    "e3nn.stack([x, x, x], axis=1)",
    "e3nn.stack([x, x], axis=-2)",
    "e3nn.norm(x)",
    "e3nn.norm(x, squared=True)",
    "e3nn.norm(x, per_irrep=False)",
    "e3nn.dot(x, x2)",
    "e3nn.dot(x, x2, per_irrep=True)",
    "e3nn.dot(x.regroup(), x2.regroup(), per_irrep=True)",
    "e3nn.where(mask, x, x2)",
    "e3nn.cross(v, w)",
]


@pytest.mark.parametrize(
    "expr, dtype",
    [(e, np.float64) for e in HELPER_CASES]
    + [(HELPER_CASES[i], np.float32) for i in (5, 12, 16, 19)],
)
def test_helper_parity(expr, dtype):
    xf, xr = make_pair("0e + 2x1o + 2e", (2, 3), dtype, seed=1, zero=(0,))
    x2f, x2r = make_pair("0e + 2x1o + 2e", (2, 3), dtype, seed=2, zero=(2,))
    yf, yr = make_pair("3x0e", (2, 3), dtype, seed=3)
    vf, vr = make_pair("2x1o + 1e", (3,), dtype, seed=4)
    wf, wr = make_pair("1e + 2x1e", (3,), dtype, seed=5, zero=(0,))
    mask = jnp.array([[True], [False]])[:, None] | (jnp.arange(3)[:, None] == 1)
    env_f = dict(e3nn=ia, x=xf, x2=x2f, y=yf, v=vf, w=wf, mask=mask)
    env_r = dict(e3nn=e3nn_jax, x=xr, x2=x2r, y=yr, v=vr, w=wr, mask=mask)
    assert_same(eval(expr, env_f), eval(expr, env_r), dtype)


def test_helper_errors():
    x, _ = make_pair("0e + 1o", (2,))
    with pytest.raises(ValueError, match="empty"):
        ia.concatenate([])
    with pytest.raises(ValueError, match="same"):
        ia.concatenate([x, IrrepsArray("1o + 0e", x.array)], axis=0)
    with pytest.raises(ValueError, match="last axis"):
        ia.stack([x, x], axis=-1)
    with pytest.raises(ValueError, match="same irreps"):
        ia.dot(x, IrrepsArray("1o + 0e", x.array))
    with pytest.raises(ValueError, match="vectors"):
        ia.cross(x, x)
    with pytest.raises(ValueError, match="number of vectors"):
        ia.cross(IrrepsArray("1o", jnp.ones(3)), IrrepsArray("2x1o", jnp.ones(6)))
    with pytest.raises(ValueError, match="mask"):
        ia.where(jnp.ones((2, 3), bool), x, x)
    with pytest.raises(ValueError, match="out of range"):
        ia.sum(x, axis=2)


@pytest.mark.parametrize(
    "kwargs, dtype",
    [
        (dict(), np.float64),
        (dict(normalization="norm"), np.float64),
        (dict(normalize=True, normalization="norm"), np.float32),
    ],
)
def test_normal_same_numbers_as_e3nn_jax(kwargs, dtype):
    key = jax.random.PRNGKey(3)
    fast = ia.normal("0e + 2x1o + 2e", key, (2,), dtype=dtype, **kwargs)
    ref = e3nn_jax.normal("0e + 2x1o + 2e", key, (2,), dtype=dtype, **kwargs)
    assert_same(fast, ref, dtype)


def test_normal_default_reads_config_and_rejects_bad_input():
    key = jax.random.PRNGKey(0)
    try:
        config("irrep_normalization", "norm")
        fast = ia.normal("0e + 2x1o + 2e", key, (2,))
    finally:
        config("irrep_normalization", "component")
    assert_same(fast, e3nn_jax.normal("0e + 2x1o + 2e", key, (2,), normalization="norm"))
    reference = e3nn_jax.normal("0e + 2x1o + 2e", key, (2,), normalization="component")
    assert_same(ia.normal("0e + 2x1o + 2e", key, (2,)), reference)
    with pytest.raises(TypeError, match="int32"):
        ia.normal("1o", key, dtype=jnp.int32)
    with pytest.raises(ValueError, match="normalization="):
        ia.normal("1o", key, normalization="bad")
    with pytest.warns(UserWarning, match="key"):
        assert ia.normal("1o").shape == (3,)


# ------------------------------------------------------------------------------------------------------------------
# O(3) actions and equivariance
# ------------------------------------------------------------------------------------------------------------------


def scipy_rotation(log):
    """Rotation matrix exp([log]x) by Rodrigues' formula (independent of e3nn_fast.rotation)."""
    log = np.asarray(log)
    theta = np.linalg.norm(log)
    k = log / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def random_o3(seed, parity):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    return jnp.asarray(q * (-1.0 if parity else 1.0))


def test_transforms_parity():
    # e3nn-jax's Wigner matrices are slow to build: a few representative calls only
    xf, xr = make_pair("0e + 2x1o + 0o + 2e", (2,), zero=(1,))
    angles = (0.3, -1.2, 2.1)
    assert_same(xf.transform_by_angles(*angles, k=1), xr.transform_by_angles(*angles, k=1))
    assert_same(xf.transform_by_angles(*angles, inverse=True), xr.transform_by_angles(*angles, inverse=True))


@pytest.mark.slow
def test_transforms_parity_other_parametrisations():
    # the quaternion / axis-angle / log-coordinates path of e3nn-jax builds other (slow) matrices
    xf, xr = make_pair("0e + 2x1o + 0o + 2e", (2,), zero=(1,))
    q = jnp.asarray([0.4, -0.2, 0.5, 0.74])
    q = q / jnp.linalg.norm(q)
    assert_same(xf.transform_by_quaternion(q, k=1), xr.transform_by_quaternion(q, k=1))
    axis, angle = jnp.asarray([1.0, 2.0, -0.5]), jnp.asarray(0.7)
    assert_same(xf.transform_by_axis_angle(axis, angle), xr.transform_by_axis_angle(axis, angle))
    R = random_o3(0, parity=True)
    assert_same(xf.transform_by_matrix(R), xr.transform_by_matrix(R))


def test_transforms_are_consistent():
    x, _ = make_pair("0e + 1o + 2e + 0o", (3,))
    R = random_o3(1, parity=False)
    by_matrix = x.transform_by_matrix(R)
    np.testing.assert_allclose(by_matrix.array, x.transform_by_angles(*matrix_to_angles(R)).array, atol=1e-12)
    # a vector rotates by R itself, parity flips odd irreps
    np.testing.assert_allclose(by_matrix[..., "1o"].array, x[..., "1o"].array @ R.T, atol=1e-12)
    inverted = x.transform_by_matrix(-jnp.eye(3))
    np.testing.assert_allclose(inverted.array, (x * jnp.array([1.0, -1.0, 1.0, -1.0])).array, atol=1e-12)
    # inverse undoes the rotation
    back = x.transform_by_angles(0.1, 0.2, 0.3).transform_by_angles(0.1, 0.2, 0.3, inverse=True)
    np.testing.assert_allclose(back.array, x.array, atol=1e-12)
    # quaternion, axis-angle, log coordinates and matrix describe the same rotation
    axis, angle = jnp.array([1.0, 2.0, -0.5]) / jnp.sqrt(5.25), 0.7  # e3nn's axis-angle wants a unit axis
    log = axis * angle
    q = jnp.concatenate([jnp.cos(angle / 2)[None], jnp.sin(angle / 2) * axis])
    by_log = x.transform_by_log_coordinates(log, k=1)
    np.testing.assert_allclose(x.transform_by_axis_angle(axis, angle, k=1).array, by_log.array, atol=1e-12)
    np.testing.assert_allclose(x.transform_by_quaternion(q, k=1).array, by_log.array, atol=1e-12)
    R_log = jnp.asarray(-scipy_rotation(log))
    np.testing.assert_allclose(x.transform_by_matrix(R_log).array, by_log.array, atol=1e-12)
    # integers are rotated as floats
    xi = IrrepsArray("0e + 1o", jnp.arange(4))
    xf = IrrepsArray("0e + 1o", jnp.arange(4.0))
    np.testing.assert_allclose(xi.transform_by_matrix(R).array, xf.transform_by_matrix(R).array)


@pytest.mark.parametrize("parity", [False, True])
def test_equivariance_of_norm_dot_cross(parity):
    R = random_o3(2, parity)
    x, _ = make_pair("2x0e + 1o + 2x2e + 1e", (4,), seed=1)
    y, _ = make_pair("2x0e + 1o + 2x2e + 1e", (4,), seed=2)
    rot = lambda a: a.transform_by_matrix(R)  # noqa: E731
    np.testing.assert_allclose(ia.norm(rot(x)).array, ia.norm(x).array, atol=1e-12)
    np.testing.assert_allclose(ia.dot(rot(x), rot(y)).array, ia.dot(x, y).array, atol=1e-12)
    per_irrep = ia.dot(x, y, per_irrep=True).array
    np.testing.assert_allclose(ia.dot(rot(x), rot(y), per_irrep=True).array, per_irrep, atol=1e-12)
    v, _ = make_pair("1o + 1e", (4,), seed=3)
    w, _ = make_pair("2x1o", (4,), seed=4)
    out = ia.cross(v, w)
    assert str(out.irreps) == "1x1e+1x1o"
    np.testing.assert_allclose(ia.cross(rot(v), rot(w)).array, rot(out).array, atol=1e-12)
    s, _ = make_pair("0o + 1o", (4,), seed=5)
    t, _ = make_pair("1e + 0o", (4,), seed=6)
    np.testing.assert_allclose((rot(s) * rot(t)).array, rot(s * t).array, atol=1e-12)


def test_chunks_of_a_captured_array_do_not_leak_tracers():
    x = IrrepsArray("0e+1o", jnp.ones(4))
    assert float(jax.jit(lambda: x.chunks[1].sum())()) == 3.0  # chunks first computed while tracing
    np.testing.assert_allclose(x.chunks[1] + 1, 2.0)  # must not be the cached tracer


# --- from_chunks: the array built run by run, its derivative block by block ------------------------------------------

_RUNS_IRREPS = "2x0e + 0x1o + 3x1o + 1x1e + 4x2e + " + " + ".join(["1x3o"] * 10) + " + 2x0o"  # a run longer than 8


def _chunks_for(irreps, key, leading_shape=(4,), zero_at=(3,)):
    keys = jax.random.split(key, len(irreps))
    return [None if i in zero_at else jax.random.normal(k, leading_shape + (mul, ir.dim))
            for i, (k, (mul, ir)) in enumerate(zip(keys, irreps))]


def _by_blocks(irreps, chunks, leading_shape):
    """The flat array written the obvious way: each block reshaped, then one concatenation."""
    return jnp.concatenate([
        (jnp.zeros(leading_shape + (mul * ir.dim,)) if c is None else c.reshape(leading_shape + (mul * ir.dim,)))
        for (mul, ir), c in zip(irreps, chunks)], axis=-1)


def test_from_chunks_runs_give_the_block_layout_and_its_derivatives():
    irreps = Irreps(_RUNS_IRREPS)
    chunks = _chunks_for(irreps, jax.random.PRNGKey(0))
    present = [i for i, c in enumerate(chunks) if c is not None]
    expected = _by_blocks(irreps, chunks, (4,))
    np.testing.assert_array_equal(ia.from_chunks(irreps, chunks, (4,)).array, expected)
    np.testing.assert_array_equal(jax.jit(lambda cs: ia.from_chunks(irreps, cs, (4,)).array)(chunks), expected)

    weights = jax.random.normal(jax.random.PRNGKey(1), expected.shape)

    def energy(build, *present_chunks):
        cs = list(chunks)
        for i, c in zip(present, present_chunks):
            cs[i] = c
        return jnp.sum(jnp.sin(build(cs)) * weights)

    ours = lambda cs: ia.from_chunks(irreps, cs, (4,)).array  # noqa: E731
    plain = lambda cs: _by_blocks(irreps, cs, (4,))  # noqa: E731
    args = [chunks[i] for i in present]
    argnums = tuple(range(1, len(args) + 1))
    for a, b in zip(jax.grad(energy, argnums)(ours, *args), jax.grad(energy, argnums)(plain, *args)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    tangents = [jnp.cos(c) for c in args]
    (_, t_ours), (_, t_plain) = (jax.jvp(lambda *xs, f=f: energy(f, *xs), args, tangents) for f in (ours, plain))
    np.testing.assert_allclose(t_ours, t_plain, rtol=1e-5)
    h_ours = jax.hessian(lambda c: energy(ours, *args[:1], c, *args[2:]))(args[1])
    h_plain = jax.hessian(lambda c: energy(plain, *args[:1], c, *args[2:]))(args[1])
    np.testing.assert_allclose(h_ours, h_plain, rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda *cs: energy(ours, *cs))(*[jnp.stack([c, 2 * c]) for c in args])
    np.testing.assert_allclose(batched[1], energy(ours, *[2 * c for c in args]), rtol=1e-6)


def test_from_chunks_integer_and_numpy_chunks_keep_the_block_layout():
    irreps = Irreps("2x0e + 1x0e + 3x1o")
    ints = [jnp.arange(2).reshape(1, 2, 1), None, jnp.arange(9).reshape(1, 3, 3)]
    out = ia.from_chunks(irreps, ints, (1,))
    assert out.array.dtype == ints[0].dtype
    np.testing.assert_array_equal(out.array, [[0, 1, 0] + list(range(9))])
    as_numpy = ia.from_chunks(irreps, [np.asarray(c, np.float32) if c is not None else None for c in ints], (1,))
    np.testing.assert_array_equal(as_numpy.array, out.array)
