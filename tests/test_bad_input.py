"""Bad input that used to give a silently wrong result or an obscure error: each now gives the documented result or
a named error, and a call that raised leaves no state behind."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast import batchnorm, dispatch
from e3nn_fast.errors import InvalidTypeError, InvalidValueError
from e3nn_fast.message_passing import message_passing
from e3nn_fast.symmetric_contraction import symmetric_contraction, symmetric_contraction_weight_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEGER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


# --- 1. symmetric_contraction: species outside [0, num_species) give zeros, in every executor ------------------------


def _contraction_inputs():
    x = e3nn.IrrepsArray("0e+1o", jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 4))))
    shapes = symmetric_contraction_weight_shapes("0e+1o", 2, 3, (1, 2))
    rng = np.random.default_rng(1)
    weights = {name: jnp.asarray(rng.standard_normal(shape)) for name, shape in shapes.items()}
    return x, weights


@pytest.mark.parametrize("executor", ["reference", "jnp", "pallas-interpret"])
def test_symmetric_contraction_species_outside_range_give_zeros(executor):
    x, weights = _contraction_inputs()
    with e3nn.backend(executor):
        out = symmetric_contraction(x, jnp.asarray([-1, 3, -4, 1]), weights, (1, 2)).array
        wide = symmetric_contraction(x, np.asarray([2**40, -(2**40), 2**32 + 1, 1], np.int64), weights, (1, 2)).array
        unsigned = symmetric_contraction(x, np.asarray([2**32 - 1, 7, 3, 1], np.uint32), weights, (1, 2)).array
    for result in (out, wide, unsigned):
        np.testing.assert_array_equal(np.asarray(result[:3]), 0.0)
        assert np.abs(np.asarray(result[3])).max() > 0


def test_symmetric_contraction_needs_a_species():
    x, weights = _contraction_inputs()
    empty = {name: w[:0] for name, w in weights.items()}
    with pytest.raises(ValueError, match="num_species = 0"):
        symmetric_contraction(x, jnp.zeros(4, jnp.int32), empty, (1, 2))
    with pytest.raises(ValueError, match="num_species must be at least 1"):
        symmetric_contraction_weight_shapes("0e+1o", 2, 0, (1, 2))


# --- 2. and 3. message_passing indices -----------------------------------------------------------------------------


def _graph():
    node_feats = e3nn.IrrepsArray("0e", jnp.asarray([[1.0], [10.0], [100.0]]))
    edge_sh = e3nn.IrrepsArray("0e", jnp.ones((2, 1)))
    return node_feats, edge_sh


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_message_passing_drops_out_of_range_receivers_of_every_dtype(dtype):
    node_feats, edge_sh = _graph()
    senders = np.asarray([0, 1], dtype)
    receivers = np.asarray([np.iinfo(dtype).max, 1], dtype)  # the maximum used to wrap to -1 (the last node)
    for r in (receivers, jnp.asarray(receivers) if np.dtype(dtype).itemsize < 8 else receivers):
        out = message_passing(node_feats, edge_sh, None, senders, r, 3, mode="drop").array
        np.testing.assert_array_equal(np.asarray(out).ravel(), [0.0, 10.0, 0.0])
        if isinstance(r, jax.Array):  # (64-bit NumPy input would be narrowed by jit itself before we see it)
            # Under jit nothing can be checked, and the default mode drops such an edge too (never wraps it).
            run = jax.jit(lambda r: message_passing(node_feats, edge_sh, None, senders, r, 3).array)
            np.testing.assert_array_equal(np.asarray(run(r)).ravel(), [0.0, 10.0, 0.0])


@pytest.mark.parametrize("receivers", [[3, 1], [0, -4], [2**32 - 1, 1]])
def test_message_passing_checks_concrete_receivers(receivers):
    """Outside jit an out-of-range receiver is a mistake unless mode='drop' says it is padding."""
    node_feats, edge_sh = _graph()
    receivers = np.asarray(receivers, np.uint32 if max(receivers) > 2**31 else np.int32)
    with pytest.raises(ValueError, match=r"receivers .*num_nodes=3.* must lie in \[-3, 3\).*mode='drop'"):
        message_passing(node_feats, edge_sh, None, jnp.asarray([0, 1]), receivers, 3)
    kept = [i for i, r in enumerate(receivers.astype(np.int64)) if -3 <= r < 3]
    out = message_passing(node_feats, edge_sh, None, jnp.asarray([0, 1]), receivers, 3, mode="drop").array
    assert float(np.sum(out)) == sum([1.0, 10.0][i] for i in kept)


def test_message_passing_mode_is_checked_and_reaches_the_layers():
    hk = pytest.importorskip("haiku")
    node_feats, edge_sh = _graph()
    args = (node_feats, edge_sh, None, jnp.asarray([0, 1]), jnp.asarray([5, 1]), 3)
    for bad in ("clip", "fill", None, "DROP"):
        with pytest.raises(ValueError, match=r"mode=.* is not supported; use 'promise_in_bounds'.* or 'drop'"):
            message_passing(*args, mode=bad)
    layer = hk.without_apply_rng(hk.transform(lambda *a, **k: e3nn.haiku.MessagePassing()(*a, **k)))
    params = layer.init(jax.random.PRNGKey(0), *args, mode="drop")
    with pytest.raises(ValueError, match="receivers"):
        layer.apply(params, *args)
    np.testing.assert_array_equal(np.asarray(layer.apply(params, *args, mode="drop").array).ravel(), [0, 10, 0])


def test_message_passing_checks_concrete_senders():
    node_feats, edge_sh = _graph()
    with pytest.raises(ValueError, match=r"senders .* must lie in \[-3, 3\).*max=100.*jax.jit"):
        message_passing(node_feats, edge_sh, None, jnp.asarray([100, 1]), jnp.asarray([0, 1]), 3)
    with pytest.raises(ValueError, match="senders"):
        message_passing(node_feats, edge_sh, None, np.asarray([2**32 - 1, 1], np.uint32), np.asarray([0, 1]), 3)
    # Under jit nothing can be checked: the documented clamp to the nearest row.
    run = jax.jit(lambda s: message_passing(node_feats, edge_sh, None, s, jnp.asarray([0, 1]), 3).array)
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray([100, 1]))).ravel(), [100.0, 10.0, 0.0])


def test_message_passing_edge_chunk_size():
    node_feats, edge_sh = _graph()
    args = (node_feats, edge_sh, None, jnp.asarray([0, 1]), jnp.asarray([0, 1]), 3)
    with pytest.raises(TypeError, match="edge_chunk_size must be a positive int.*2.5"):
        message_passing(*args, edge_chunk_size=2.5)
    with pytest.raises(ValueError, match="edge_chunk_size must be a positive int"):
        message_passing(*args, edge_chunk_size=0)


def test_haiku_linear_checks_concrete_indices():
    hk = pytest.importorskip("haiku")
    import e3nn_fast.haiku as fast_haiku

    x = e3nn.IrrepsArray("2x0e", jnp.ones((2, 2)))
    f = hk.without_apply_rng(hk.transform(lambda i, x: fast_haiku.Linear("0e", num_indexed_weights=3)(i, x)))
    with pytest.raises(ValueError, match=r"num_indexed_weights=3\) must lie in \[-3, 3\).*max=7"):
        f.init(jax.random.PRNGKey(0), jnp.asarray([0, 7]), x)
    params = f.init(jax.random.PRNGKey(0), jnp.asarray([0, 2]), x)
    with pytest.raises(ValueError, match="num_indexed_weights"):
        f.apply(params, jnp.asarray([0, 7]), x)


# --- 4. backend selection ------------------------------------------------------------------------------------------


def test_config_backend_is_checked_when_set_and_none_restores_the_default():
    default = e3nn.config("backend")
    with pytest.raises(ValueError, match="bogus.*pallas-interpret"):
        e3nn.config("backend", "bogus")
    assert e3nn.config("backend") == default  # nothing changed by the failed call
    try:
        e3nn.config("backend", "reference")
        assert dispatch.current_backend() == "reference"
        assert e3nn.config("backend", None) is None
        assert e3nn.config("backend") == default
    finally:
        e3nn.config("backend", None)
    with pytest.raises(ValueError, match="triton"):
        with e3nn.backend("triton"):
            pass


@pytest.mark.parametrize("value", ["bogus", ""])
def test_bad_environment_backend_fails_at_import(value):
    env = dict(os.environ, E3NN_FAST_BACKEND=value, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", "import e3nn_fast"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert "E3NN_FAST_BACKEND" in result.stderr and repr(value) in result.stderr


def _ops():
    x = e3nn.normal("4x0e+4x1o", jax.random.PRNGKey(0), (8,))
    sh = e3nn.normal("0e+1o", jax.random.PRNGKey(1), (8,))
    cx, weights = _contraction_inputs()
    return {
        "tensor_product": lambda: e3nn.tensor_product(x, sh),
        "full tensor_product": lambda: e3nn.tensor_product(x, x),
        "linear": lambda: e3nn.FunctionalLinear("4x0e+4x1o", "2x0e").apply(
            [jnp.ones((4, 2))], x),
        "message_passing": lambda: message_passing(x, sh, None, jnp.arange(8), jnp.arange(8), 8),
        "symmetric_contraction": lambda: symmetric_contraction(cx, jnp.asarray([0, 1, 2, 0]), weights, (1, 2)),
        "spherical_harmonics": lambda: e3nn.spherical_harmonics(3, e3nn.normal("1o", jax.random.PRNGKey(2), (8,)), True),
    }


@pytest.mark.parametrize("op", list(_ops()))
def test_pallas_on_cpu_fails_with_one_clear_error(op):
    assert jax.default_backend() == "cpu"
    run = _ops()[op]
    with e3nn.backend("pallas"):
        with pytest.raises(ValueError, match="'pallas' compiles Pallas kernels for a GPU or a TPU.*pallas-interpret"):
            jax.block_until_ready(jax.jit(run)())


# --- 5. named errors -------------------------------------------------------------------------------------------------


def test_functional_linear_weights_as_dict():
    lin = e3nn.FunctionalLinear("2x0e", "0e")
    with pytest.raises(TypeError, match="got a dict"):
        lin({"w[0,0] 2x0e,1x0e": jnp.ones((2, 1))}, e3nn.IrrepsArray("2x0e", jnp.ones(2)))


def test_irreps_from_bytes():
    with pytest.raises(TypeError, match="decode"):
        e3nn.Irreps(b"1x0e")
    with pytest.raises(TypeError, match="decode"):
        e3nn.Irrep(b"0e")


def test_radius_graph_under_jit_needs_size():
    pos = jnp.asarray([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match="size="):
        jax.jit(lambda p: e3nn.radius_graph(p, 1.0))(pos)
    src, dst = jax.jit(lambda p: e3nn.radius_graph(p, 1.0, size=4))(pos)
    assert src.shape == (4,)


def test_radius_graph_nan_position():
    pos = jnp.asarray([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"non-finite.*rows \[1\]"):
        e3nn.radius_graph(pos, 1.0)


# --- 6. AssertionError compatibility with e3nn-jax -----------------------------------------------------------------


def test_errors_are_assertion_errors_where_e3nn_jax_asserts():
    with pytest.raises(AssertionError):
        e3nn.Irreps([(32, 1)])  # e3nn-jax's test_fail1
    with pytest.raises(InvalidValueError):
        e3nn.Irrep(1, 0)
    with pytest.raises(InvalidTypeError):
        e3nn.Irrep(1)
    with pytest.raises(InvalidTypeError):
        _ = 2.5 * e3nn.Irrep("1o")
    with pytest.raises(InvalidValueError):
        e3nn.FunctionalLinear("2x0e + 1o", "0e + 1o", biases=[False, True])
    with pytest.raises(InvalidValueError):
        e3nn.FunctionalLinear("2x0e", "0e", biases=[True, True])
    with pytest.raises(InvalidValueError):
        e3nn.FunctionalLinear("2x0e", "0e", biases=True).matrix(jnp.ones(3))
    data = jnp.ones((3, 2))
    with pytest.raises(InvalidValueError):
        e3nn.scatter_sum(data, dst=jnp.zeros(3, jnp.int32), nel=jnp.asarray([3]))
    with pytest.raises(InvalidValueError):
        e3nn.scatter_mean(data, nel=jnp.asarray([3]), output_size=1, map_back=True)
    assert issubclass(InvalidValueError, ValueError) and issubclass(InvalidTypeError, TypeError)


# --- 7. more argument checks at the API entry points ----------------------------------------------------------------


@pytest.mark.parametrize("k", [0.5, 1.5, [0.0, 0.5], float("nan")])
def test_fractional_parity_count_is_refused(k):
    """k counts inversions; a fractional one used to be read as even and returned the rotation alone."""
    x = e3nn.IrrepsArray("1o", jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="k counts how many times the inversion is applied"):
        e3nn.Irrep("1o").D_from_angles(0.0, 0.0, 0.0, k=k)
    with pytest.raises(ValueError, match="whole number"):
        x.transform_by_angles(0.0, 0.0, 0.0, k=k)
    # whole numbers of any type keep working, and a (possibly traced) JAX k is not read back
    for good in (1, 1.0, np.int64(1), True):
        np.testing.assert_allclose(np.asarray(x.transform_by_angles(0.0, 0.0, 0.0, k=good).array), -1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(x.transform_by_matrix(-jnp.eye(3)).array), -1.0, atol=1e-6)


@pytest.mark.parametrize("name, value, error, message", [
    ("num_indexed_weights", 0, ValueError, r"num_indexed_weights must be a positive int.*got 0"),
    ("num_indexed_weights", -1, ValueError, r"num_indexed_weights must be a positive int.*got -1"),
    ("num_indexed_weights", 2.0, TypeError, r"num_indexed_weights must be None or a positive int, got float"),
    ("channel_out", 0, ValueError, r"channel_out must be a positive int, got 0"),
    ("channel_out", -2, ValueError, r"channel_out must be a positive int, got -2"),
])
def test_linear_counts_are_checked(name, value, error, message):
    """These used to fail with a garbled range '[--1, -1)', a mul_to_axis error or a bare multiplicity error."""
    hk = pytest.importorskip("haiku")
    x = e3nn.IrrepsArray("2x0e", jnp.ones((3, 2)))
    args = (jnp.asarray([0, 0, 0]), x) if name == "num_indexed_weights" else (x,)
    f = hk.without_apply_rng(hk.transform(lambda *a: e3nn.haiku.Linear("0e", **{name: value})(*a)))
    with pytest.raises(error, match=message):
        f.init(jax.random.PRNGKey(0), *args)


def test_mlp_with_an_empty_layer():
    """A hidden layer of width 0 (or an input without features) used to raise ZeroDivisionError."""
    hk = pytest.importorskip("haiku")

    def init(neurons, x):
        f = hk.transform(lambda x: e3nn.haiku.MultiLayerPerceptron(neurons, jax.nn.relu)(x))
        return f.init(jax.random.PRNGKey(0), x)

    with pytest.raises(ValueError, match=r"hidden layer of width 0.*list_neurons=\[0, 2\]"):
        init([0, 2], jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"the input has no features \(shape \(3, 0\)\)"):
        init([2], jnp.ones((3, 0)))
    init([4, 0], jnp.ones((3, 4)))  # an empty output layer is fine


def test_tensor_product_filter_ir_out_of_the_wrong_type():
    x = e3nn.IrrepsArray("1o", jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"filter_ir_out must be None, irreps .* got int 1"):
        e3nn.tensor_product(x, x, filter_ir_out=1)
    assert e3nn.tensor_product(x, x, filter_ir_out=["0e", "2e"]).irreps == e3nn.Irreps("0e+2e")


def test_broadcast_to_names_the_user_shapes():
    """The error used to come from the internal chunk layout: 'input type=float32[3,2,1] ... float32[4,2,1]'."""
    x = e3nn.IrrepsArray("2x0e+1o", jnp.ones((3, 5)))
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast an IrrepsArray of shape \(3, 5\) to \(4, 5\)"):
        x.broadcast_to((4, 5))
    with pytest.raises(ValueError, match=r"leading shape \(3,\)"):
        x.broadcast_to((2, 2, 5))
    assert x.broadcast_to((2, 3, -1)).shape == (2, 3, 5)
    assert x[None].broadcast_to((4, 3, 5)).shape == (4, 3, 5)


@pytest.mark.parametrize("call", [
    lambda x: e3nn.bessel(x, 2),
    lambda x: e3nn.sus(x),
    lambda x: e3nn.soft_envelope(x),
    lambda x: e3nn.poly_envelope(2, 2)(x),
    lambda x: e3nn.soft_one_hot_linspace(x, start=0.0, end=1.0, number=2, basis="gaussian", cutoff=True),
])
def test_radial_functions_name_an_irreps_array_input(call):
    """Used to fail with 'cannot iterate over an IrrepsArray of shape (1,)' from inside jnp.asarray."""
    x = e3nn.IrrepsArray("0e", jnp.full((3, 1), 0.5))
    with pytest.raises(TypeError, match=r"must be a plain array, got an IrrepsArray with irreps 1x0e.*x\.array"):
        call(x)
    assert call(x.array[..., 0]).shape[0] == 3


@pytest.mark.parametrize("make", [
    lambda: e3nn.zeros("1o", 3),
    lambda: e3nn.ones("1o", 3),
    lambda: e3nn.normal("1o", jax.random.PRNGKey(0), 3),
    lambda: e3nn.from_chunks("1o", [None], 3),
])
def test_leading_shape_given_as_a_number(make):
    """Used to be TypeError: 'int' object is not iterable."""
    with pytest.raises(TypeError, match=r"leading_shape must be a tuple of ints.*got int 3; for one axis write \(3,\)"):
        make()


def test_more_errors_are_assertion_errors_where_e3nn_jax_asserts():
    x = e3nn.IrrepsArray("2x0e+1o", jnp.ones((3, 5)))
    vectors = e3nn.IrrepsArray("1o", jnp.ones((3, 3)))
    cases = [
        (lambda: x.rechunk("1o+2x0e"), "not a re-cut"),
        (lambda: x.reshape((15,)), "irreps.dim=5"),
        (lambda: x.broadcast_to((3, 6)), "irreps.dim=5"),
        (lambda: e3nn.scalar_activation(x, [jax.nn.relu]), "one entry per block"),
        (lambda: e3nn.norm_activation(x, [None]), "one entry per block"),
        (lambda: e3nn.spherical_harmonics(2, vectors, True, normalization="foo"), "normalization must be one of"),
        (lambda: e3nn.spherical_harmonics(-1, vectors, True), "degrees must be >= 0"),
        (lambda: e3nn.spherical_harmonics("1o", jnp.ones((3, 2)), True), r"shape \(\.\.\., 3\)"),
        (lambda: e3nn.tensor_square(vectors, irrep_normalization="foo"), "irrep_normalization='foo'"),
        (lambda: e3nn.FunctionalLinear("2x0e+1o", "0e")([jnp.ones((2, 1))], e3nn.IrrepsArray("1o+2x0e", jnp.ones(5))),
         "incompatible with irreps_in"),
        (lambda: batchnorm.check_batch_norm_options("foo", "mean", 1e-4), "normalization must be"),
        (lambda: batchnorm.check_batch_norm_options("norm", "sum", 1e-4), "reduce must be"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidValueError, match=message):
            call()
    with pytest.raises(InvalidTypeError, match="reduce must be a string"):
        batchnorm.check_batch_norm_options("norm", None, 1e-4)


# --- 8. silently wrong results and AssertionError compatibility found in a later review -----------------------------


def test_irreps_array_from_a_list_of_numbers_is_an_array():
    """A list used to be stored as is: no shape check, and ``x + x`` concatenated the lists (6 numbers for a 1o)."""
    x = e3nn.IrrepsArray("1o", [1.0, 2.0, 3.0])
    assert x.shape == (3,)
    np.testing.assert_array_equal(np.asarray((x + x).array), [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(np.asarray(e3nn.IrrepsArray("1o", (1.0, 2.0, 3.0)).array), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"array of shape \(2,\) does not fit irreps 1x1o"):
        e3nn.IrrepsArray("1o", [1.0, 2.0])
    # pytree leaves stay as JAX gives them: a list from tree_map, placeholders of a pytree prefix
    pair = jax.tree_util.tree_map(lambda *leaves: list(leaves), x, x)
    assert isinstance(pair.array, list) and len(pair.array) == 2
    spec = jax.sharding.PartitionSpec("batch")
    assert e3nn.IrrepsArray("1o", spec).array is spec
    assert e3nn.IrrepsArray("1o", ("batch", None)).array == ("batch", None)


@pytest.mark.parametrize("make, name", [
    (lambda shape: e3nn.zeros("1o", shape), "zeros"),
    (lambda shape: e3nn.ones("1o", shape), "ones"),
    (lambda shape: e3nn.normal("1o", jax.random.PRNGKey(0), shape), "normal"),
])
def test_negative_leading_shape(make, name):
    """Used to fail inside JAX: a broadcast_in_dim TypeError, or an MLIRError 'invalid tensor dimension size'."""
    with pytest.raises(ValueError, match=rf"e3nn.{name}: leading_shape=\(2, -1\) has a negative size"):
        make((2, -1))
    assert make((2, np.int64(0))).shape == (2, 0, 3)


def _legacy_product(irreps_in1="2x1o", irreps_in2="2x1o", irreps_out="2x0e", mode="uuu", has_weight=True):
    return e3nn.legacy.FunctionalTensorProduct(irreps_in1, irreps_in2, irreps_out, [(0, 0, 0, mode, has_weight)])


def test_legacy_tensor_product_errors_are_assertion_errors_where_e3nn_jax_asserts():
    """These were plain ValueErrors, which code written for e3nn-jax (that asserts on them) does not catch."""
    import e3nn_fast.legacy  # noqa: F401  (the subpackage is not imported by e3nn_fast itself)

    tp = _legacy_product()
    x = e3nn.IrrepsArray("2x1o", jnp.ones(6))
    cases = [
        (lambda: tp.left_right([jnp.ones(2), jnp.ones(2)], x, x), "got 2 weight arrays, expected 1"),
        (lambda: tp.left_right([jnp.ones(3)], x, x), r"weights\[0\] has shape \(3,\), expected \(2,\)"),
        (lambda: tp.left_right(jnp.ones(3), x, x), r"flat weights must have shape \(2,\), got \(3,\)"),
        (lambda: tp.left_right(jnp.ones(2), e3nn.IrrepsArray("6x0e", jnp.ones(6)), x), "input1 has irreps 6x0e"),
        (lambda: tp.left_right(jnp.ones(2), x[None], x), r"input1 has shape \(1, 6\), expected a 1-D array"),
        (lambda: tp.right(jnp.ones(2), x[None]), r"input2 has shape \(1, 6\), expected a 1-D array"),
        (lambda: _legacy_product(irreps_out="2x1o"), "1o is not in 1o x 1o"),
        (lambda: _legacy_product(irreps_in2="3x1o"), "'uuu' needs equal input multiplicities, got 2 and 3"),
        (lambda: _legacy_product(irreps_out="3x0e", mode="uvu"), "writes 2 channels, but output segment 0 has 3"),
        (lambda: _legacy_product(mode="uvw", has_weight=False), "'uvw' needs weights"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidValueError, match=message):
            call()
    np.testing.assert_allclose(np.asarray(tp.left_right(jnp.ones(2), x, x).array), np.asarray(tp.left_right(
        [jnp.ones(2)], x, x).array))  # the valid forms keep working


def test_even_more_errors_are_assertion_errors_where_e3nn_jax_asserts():
    vectors = e3nn.IrrepsArray("1o", jnp.ones((2, 3)))
    value_cases = [
        (lambda: e3nn.spherical_harmonics("0o", vectors, True), "even degree are even: 0o"),
        (lambda: e3nn.spherical_harmonics("1o+3e", jnp.ones((2, 3)), True), "mixes both"),
        (lambda: e3nn.spherical_harmonics(2, vectors, True, algorithm=("foo",)), "algorithm must be a tuple"),
        (lambda: e3nn.norm_activation(vectors, [None], normalization="foo"), "normalization must be 'component'"),
        (lambda: e3nn.IrrepsArray("1o", jnp.ones(3)).axis_to_mul(), r"needs a leading axis.*shape \(3,\)"),
        (lambda: e3nn.soft_one_hot_linspace(jnp.ones(2), start=0.0, end=1.0, number=3, basis="gaussian",
                                            cutoff=True, start_zero=True), "either cutoff or start_zero/end_zero"),
        (lambda: e3nn.to_s2grid(e3nn.s2_dirac(jnp.asarray([0.0, 0.0, 1.0]), 2, p_val=1, p_arg=-1), 5, 7,
                                quadrature="soft"), "res_beta must be even"),
    ]
    for call, message in value_cases:
        with pytest.raises(InvalidValueError, match=message):
            call()
    type_cases = [
        (lambda: e3nn.bessel(jnp.ones(2), 2.0), "bessel: n must be an int, got float 2.0"),
        (lambda: e3nn.clebsch_gordan("1", 1, 1), "l1 must be a non-negative integer, got '1'"),
        (lambda: e3nn.su2_clebsch_gordan(1, "1", 1), "j2 must be a non-negative integer or half-integer"),
    ]
    for call, message in type_cases:
        with pytest.raises(InvalidTypeError, match=message):
            call()
    # where e3nn-jax raises a plain TypeError, so does e3nn_fast
    with pytest.raises(TypeError) as info:
        e3nn.poly_envelope(1.5, 2)
    assert not isinstance(info.value, AssertionError)
