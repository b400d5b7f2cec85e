"""Parity of the legacy instruction-based tensor product and the haiku FullyConnectedTensorProduct with e3nn-jax."""

import math

import e3nn_jax as ej
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from e3nn_fast.configuration import config
from e3nn_fast.haiku.fully_connected_tensor_product import FullyConnectedTensorProduct
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct, FunctionalTensorProduct, Instruction

MODES = ["uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw"]
IRREPS_IN1 = "2x0e + 2x1o"
IRREPS_IN2 = "2x0e + 2x1o"


# -- helpers --------------------------------------------------------------------------------------------------------


def _output_mul(mode: str, has_weight: bool) -> int:
    """Output multiplicity a mode needs with both input multiplicities equal to 2."""
    return {"uvu": 2, "uvv": 2, "uuu": 2, "uvuv": 4, "uvu<v": 1, "uuw": 3 if has_weight else 1}.get(mode, 3)


def _all_instructions(irreps_in1, irreps_in2, irreps_out, mode, has_weight, path_weight=None):
    """Every allowed (i1, i2, i_out) triple in one mode."""
    irreps_in1, irreps_in2, irreps_out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
    return [
        (i1, i2, i_out, mode, has_weight) + (() if path_weight is None else (path_weight * (1 + i_out),))
        for i1, (_, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for i_out, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * ir2
    ]


def _random_weights(tp, key, dtype=jnp.float64) -> list:
    keys = jax.random.split(key, max(1, len(tp.instructions)))
    return [
        jax.random.normal(k, ins.path_shape, dtype) for k, ins in zip(keys, tp.instructions) if ins.has_weight
    ]


def _flat(weights: list, dtype=jnp.float64):
    return jnp.concatenate([w.reshape(-1) for w in weights] + [jnp.zeros((0,), dtype)])


def _random_input(irreps, key, shape=(), dtype=jnp.float64):
    return jax.random.normal(key, shape + (Irreps(irreps).dim,), dtype)


def _pair(args, **kwargs):
    """The same tensor product built by e3nn_fast and by e3nn-jax."""
    return FunctionalTensorProduct(*args, **kwargs), ej.legacy.FunctionalTensorProduct(*args, **kwargs)


def _assert_same_construction(ours, theirs):
    assert repr(ours) == repr(theirs)
    assert [repr(i) for i in ours.instructions] == [repr(i) for i in theirs.instructions]
    np.testing.assert_array_equal(np.asarray(ours.output_mask), np.asarray(theirs.output_mask))


def _outputs_ours(tp, weights, x1, x2, with_right):
    """left_right (and right) of our implementation, on plain arrays."""
    out = tp.left_right(weights, IrrepsArray(tp.irreps_in1, x1), IrrepsArray(tp.irreps_in2, x2))
    right = tp.right(weights, IrrepsArray(tp.irreps_in2, x2)) if with_right else None
    return out.array, out.zero_flags, right


def _outputs_theirs(tp, weights, x1, x2, with_right):
    """left_right (and right) of e3nn-jax; its right() lacks the triangular modes, which are read off left_right."""
    out = tp.left_right(weights, ej.IrrepsArray(tp.irreps_in1, x1), ej.IrrepsArray(tp.irreps_in2, x2))
    right = None
    if with_right and any(ins.connection_mode in ("uvu<v", "u<vw") for ins in tp.instructions):
        basis = ej.IrrepsArray(tp.irreps_in1, jnp.eye(tp.irreps_in1.dim, dtype=x1.dtype))
        right = jax.vmap(lambda e: tp.left_right(weights, e, ej.IrrepsArray(tp.irreps_in2, x2)).array)(basis)
    elif with_right:
        right = tp.right(weights, ej.IrrepsArray(tp.irreps_in2, x2))
    return out.array, out.zero_flags, right


def _assert_same_left_right(ours, theirs, key, dtype=jnp.float64, atol=1e-12, flat=False, with_right=False):
    """Compare left_right (list or flat weights) and optionally right() with e3nn-jax, under jit (compiling one
    program per implementation is much cheaper than running many small ops eagerly)."""
    k1, k2, k3 = jax.random.split(key, 3)
    weights = _random_weights(theirs, k1, dtype)
    x1 = _random_input(ours.irreps_in1, k2, dtype=dtype)
    x2 = _random_input(ours.irreps_in2, k3, dtype=dtype)
    if not weights:
        weights_ours, weights_theirs = [], []
    else:
        weights_ours, weights_theirs = (_flat(weights, dtype), _flat(weights, dtype)) if flat else (weights, weights)
    flags = {}

    def run(outputs, tp):
        def f(w, a, b):
            array, flags[outputs], right = outputs(tp, w, a, b, with_right)
            return array, right

        return jax.jit(f)

    out, right = run(_outputs_ours, ours)(weights_ours, x1, x2)
    expected, expected_right = run(_outputs_theirs, theirs)(weights_theirs, x1, x2)
    assert out.dtype == expected.dtype == dtype
    assert flags[_outputs_ours] == flags[_outputs_theirs]
    np.testing.assert_allclose(out, expected, atol=atol, rtol=atol)
    if with_right:
        assert right.shape == (ours.irreps_in1.dim, ours.irreps_out.dim)
        np.testing.assert_allclose(right, expected_right, atol=atol, rtol=atol)
    return weights, x1, x2


def _rotation(key, dtype=jnp.float64):
    """Random Euler angles and parity, and the e3nn-jax D matrix of ``irreps`` for them."""
    a, b, c = jax.random.uniform(key, (3,), dtype, 0.0, 2 * math.pi)
    return lambda irreps, k: np.asarray(ej.Irreps(str(irreps)).D_from_angles(a, b, c, k))


# -- Instruction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_instruction_fields_and_repr(mode):
    args = (0, 1, 2, mode, True, 0.5, None, 3, 3, 4)
    ours, theirs = Instruction(*args), ej.legacy.Instruction(*args)
    assert repr(ours) == repr(theirs)
    assert ours.path_shape == theirs.path_shape and ours.num_elements == theirs.num_elements
    replaced = ours.replace(path_weight=2.0, first_input_multiplicity=5)
    assert replaced.path_weight == 2.0 and replaced.path_shape == theirs.replace(first_input_multiplicity=5).path_shape
    assert ours == Instruction(*args) and hash(ours) == hash(Instruction(*args))


def test_instruction_unknown_mode():
    with pytest.raises(ValueError, match="connection_mode"):
        Instruction(0, 0, 0, "uvx", True, 1.0, None, 1, 1, 1)


# -- FunctionalTensorProduct: every mode ----------------------------------------------------------------------------


# "uvw" and "u<vw" only exist with weights (see test_mode_without_required_weights).
@pytest.mark.parametrize(
    "mode, has_weight", [(m, True) for m in MODES] + [(m, False) for m in MODES if m not in ("uvw", "u<vw")]
)
def test_modes_match_e3nn_jax(mode, has_weight):
    m = _output_mul(mode, has_weight)
    irreps_out = f"{m}x0e + {m}x1o + {m}x1e + {m}x2e"
    instructions = _all_instructions(IRREPS_IN1, IRREPS_IN2, irreps_out, mode, has_weight)
    ours, theirs = _pair((IRREPS_IN1, IRREPS_IN2, irreps_out, instructions))
    _assert_same_construction(ours, theirs)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(MODES.index(mode)), with_right=True)


def test_mixed_modes_and_path_weights_float32():
    irreps_out = "3x0e + 2x1o + 4x1e + 2x0e + 1x1e + 3x0e + 1x0e"
    instructions = [
        (0, 0, 0, "uvw", True),
        (1, 1, 0, "uvw", True, 0.5),
        (0, 1, 1, "uvu", True, 2.0),
        (1, 0, 1, "uvv", False),
        (1, 1, 2, "uvuv", True),
        (0, 0, 3, "uuu", False, 3.0),
        (1, 1, 4, "uvu<v", True),
        (1, 1, 5, "u<vw", True),
        (0, 0, 6, "uuw", False),
    ]
    ours, theirs = _pair(("2x0e + 2x1o", "2x0e + 2x1o", irreps_out, instructions))
    _assert_same_construction(ours, theirs)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(1), dtype=jnp.float32, atol=1e-5)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(2), dtype=jnp.float64, flat=True)


def test_flat_and_list_weights_agree():
    tp = FunctionalTensorProduct("2x0e + 1o", "0e + 1o", "0e + 2x1o", [(0, 1, 1, "uvw", True), (1, 1, 0, "uvu", True)])
    weights = _random_weights(tp, jax.random.PRNGKey(30))
    for a, b in zip(tp.split_weights(_flat(weights)), weights):
        np.testing.assert_array_equal(a, b)
    x1, x2 = IrrepsArray(tp.irreps_in1, jnp.arange(5.0)), IrrepsArray(tp.irreps_in2, jnp.arange(4.0))
    np.testing.assert_allclose(tp.left_right(_flat(weights), x1, x2).array, tp.left_right(weights, x1, x2).array)


# -- normalisation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "irrep_normalization, path_normalization, gradient_normalization",
    [
        ("component", "element", "element"),
        ("component", "path", "path"),
        ("norm", 0.3, 0.7),
        ("none", 0.8, "element"),
    ],
)
def test_normalizations_match_e3nn_jax(irrep_normalization, path_normalization, gradient_normalization):
    irreps_in1, irreps_in2, irreps_out = "3x0e + 2x1o", "2x0e + 2x1o + 1x2e", "2x0e + 3x1o + 2x1e + 2x2e"
    instructions = _all_instructions(irreps_in1, irreps_in2, irreps_out, "uvw", True, path_weight=0.7)
    instructions += [(1, 1, 0, "uvu", False), (1, 1, 2, "uvv", True)]
    kwargs = dict(
        in1_var=[1.5, 0.5],
        in2_var=[2.0, 1.0, 0.25],
        out_var=[1.0, 3.0, 0.5, 2.0],
        irrep_normalization=irrep_normalization,
        path_normalization=path_normalization,
        gradient_normalization=gradient_normalization,
    )
    ours, theirs = _pair((irreps_in1, irreps_in2, irreps_out, instructions), **kwargs)
    _assert_same_construction(ours, theirs)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(3))


def test_normalization_defaults_follow_config():
    args = ("2x0e + 1o", "0e + 1o", "0e + 2x1o", _all_instructions("2x0e + 1o", "0e + 1o", "0e + 2x1o", "uvw", True))
    saved = {name: config(name) for name in ("path_normalization", "gradient_normalization", "irrep_normalization")}
    saved_jax = {name: ej.config(name) for name in saved}
    try:
        new = {"path_normalization": "path", "gradient_normalization": 0.4, "irrep_normalization": "norm"}
        for name, value in new.items():
            config(name, value)
            ej.config(name, value)
        _assert_same_construction(*_pair(args))
    finally:
        for name, value in saved.items():
            config(name, value)
            ej.config(name, saved_jax[name])


# -- FunctionalFullyConnectedTensorProduct --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "irreps_in1, irreps_in2, irreps_out",
    [
        ("2x0e + 3x1o", "0e + 1o + 2e", "4x0e + 2x1o + 1e + 2e"),
        ("1o", "1o", "0e + 1e + 2e + 0o"),
        ("2x1e", "3x0e", "5x1e"),
    ],
)
def test_fully_connected_matches_e3nn_jax(irreps_in1, irreps_in2, irreps_out):
    args = (irreps_in1, irreps_in2, irreps_out)
    ours = FunctionalFullyConnectedTensorProduct(*args, path_normalization="path")
    theirs = ej.legacy.FunctionalFullyConnectedTensorProduct(*args, path_normalization="path")
    _assert_same_construction(ours, theirs)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(4))


# -- zero multiplicities, zero chunks, output mask -----------------------------------------------------------------


def test_zero_multiplicity_segments_and_zero_chunks():
    irreps_in1, irreps_in2, irreps_out = "2x0e + 0x1o + 1x1o", "0x0e + 2x1o", "0x1o + 3x1o + 2x0e + 1x2e"
    instructions = _all_instructions(irreps_in1, irreps_in2, irreps_out, "uvw", True)
    # e3nn-jax mis-assigns outputs when an instruction on an empty segment comes before others (its block loop
    # skips them without keeping its list aligned), so the empty ones go last here; e3nn_fast does not care.
    def is_empty(ins):
        return Irreps(irreps_in1)[ins[0]].mul * Irreps(irreps_in2)[ins[1]].mul * Irreps(irreps_out)[ins[2]].mul == 0

    instructions.sort(key=is_empty)
    assert is_empty(instructions[-1]) and not is_empty(instructions[0])
    ours, theirs = _pair((irreps_in1, irreps_in2, irreps_out, instructions))
    _assert_same_construction(ours, theirs)
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(5))

    # Input blocks known to be zero (None chunks) give the same numbers, and untouched outputs stay flagged zero.
    weights = _random_weights(theirs, jax.random.PRNGKey(6))
    x2 = _random_input(irreps_in2, jax.random.PRNGKey(7))
    chunks = [jnp.ones((2, 1)), None, None]
    out = ours.left_right(weights, from_chunks(irreps_in1, chunks, (), jnp.float64), IrrepsArray(irreps_in2, x2))
    expected = theirs.left_right(
        weights, ej.from_chunks(irreps_in1, chunks, (), jnp.float64), ej.IrrepsArray(irreps_in2, x2)
    )
    np.testing.assert_allclose(out.array, expected.array, atol=1e-12)
    assert out.zero_flags == expected.zero_flags


def test_output_mask_with_zero_path_weight_and_unreached_output():
    instructions = [(0, 0, 0, "uvw", True, 0.0), (0, 1, 1, "uvw", True), (1, 1, 3, "uvu<v", False)]
    ours, theirs = _pair(("2x0e + 1x1o", "0e + 1o", "2x0e + 1o + 2e + 0x0e", instructions))
    _assert_same_construction(ours, theirs)
    assert not np.asarray(ours.output_mask)[:2].any() and np.asarray(ours.output_mask)[2:5].all()
    _assert_same_left_right(ours, theirs, jax.random.PRNGKey(8))


def test_empty_irreps_gives_zeros():
    ours, theirs = _pair(("0x0e", "1o", "1o", []))
    out = ours.left_right(IrrepsArray("0x0e", jnp.zeros((0,))), IrrepsArray("1o", jnp.ones(3)))
    expected = theirs.left_right(ej.IrrepsArray("0x0e", jnp.zeros((0,))), ej.IrrepsArray("1o", jnp.ones(3)))
    np.testing.assert_array_equal(out.array, expected.array)
    assert out.irreps == Irreps("1o") and ours.right(IrrepsArray("1o", jnp.ones(3))).shape == (0, 3)


# -- transformations: vmap, jit, dtypes, gradients, equivariance ----------------------------------------------------


def _fctp():
    return FunctionalFullyConnectedTensorProduct("2x0e + 1o + 1e", "0e + 1o", "0e + 2x1o + 1e + 2e")


def test_vmap_and_jit_over_left_right():
    tp = _fctp()
    weights = _random_weights(tp, jax.random.PRNGKey(9))
    x1 = IrrepsArray(tp.irreps_in1, _random_input(tp.irreps_in1, jax.random.PRNGKey(10), (3,)))
    x2 = IrrepsArray(tp.irreps_in2, _random_input(tp.irreps_in2, jax.random.PRNGKey(11), (3,)))
    batched = jax.jit(jax.vmap(tp.left_right, (None, 0, 0)))(weights, x1, x2)
    assert batched.irreps == tp.irreps_out and batched.shape == (3, tp.irreps_out.dim)
    single = jax.jit(tp.left_right)
    for i in range(3):
        expected = single(weights, IrrepsArray(tp.irreps_in1, x1.array[i]), IrrepsArray(tp.irreps_in2, x2.array[i]))
        np.testing.assert_allclose(batched.array[i], expected.array, atol=1e-12)
    # The batched evaluate() gives the same numbers; weights can be mapped over as well.
    np.testing.assert_allclose(jax.jit(tp.evaluate)(weights, x1, x2).array, batched.array, atol=1e-12)
    weights_batch = [jnp.stack([w, 2 * w]) for w in weights]
    doubled = jax.jit(jax.vmap(tp.left_right, (0, None, None)))(weights_batch, x1[0], x2[0])
    np.testing.assert_allclose(doubled.array[1], 2 * doubled.array[0], atol=1e-12)


def test_integer_inputs_and_float32_dtypes():
    tp, theirs = _pair(("1o", "1o", "0e + 1e", [(0, 0, 0, "uuu", False), (0, 0, 1, "uuu", False)]))
    x = jnp.array([1, 2, 3], dtype=jnp.int32)
    out = tp.left_right(IrrepsArray("1o", x), IrrepsArray("1o", x))
    expected = theirs.left_right(ej.IrrepsArray("1o", x), ej.IrrepsArray("1o", x))
    assert out.dtype == expected.dtype == jnp.float32
    np.testing.assert_allclose(out.array, expected.array, atol=1e-6)
    # float32 weights with float64 inputs compute in float64, as in e3nn-jax.
    tp2 = _fctp()
    weights = _random_weights(tp2, jax.random.PRNGKey(12), jnp.float32)
    x1 = IrrepsArray(tp2.irreps_in1, jnp.ones(tp2.irreps_in1.dim))
    out = tp2.left_right(weights, x1, IrrepsArray("0e + 1o", jnp.ones(4)))
    assert out.dtype == jnp.float64


def test_check_grads_second_order():
    tp = FunctionalTensorProduct(
        "0e + 1o", "1o", "1o + 0e + 1e", [(0, 0, 0, "uvw", True), (1, 0, 1, "uvu", True), (1, 0, 2, "uuu", False)]
    )
    weights = _random_weights(tp, jax.random.PRNGKey(13))
    x1 = _random_input("0e + 1o", jax.random.PRNGKey(14))
    x2 = _random_input("1o", jax.random.PRNGKey(15))

    def f(w, a, b):
        return tp.left_right(w, IrrepsArray("0e + 1o", a), IrrepsArray("1o", b)).array

    check_grads(jax.jit(f), (weights, x1, x2), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_o3_equivariance():
    tp = _fctp()
    weights = _random_weights(tp, jax.random.PRNGKey(16))
    x1 = _random_input(tp.irreps_in1, jax.random.PRNGKey(17))
    x2 = _random_input(tp.irreps_in2, jax.random.PRNGKey(18))
    D = _rotation(jax.random.PRNGKey(19))
    f = jax.jit(lambda a, b: tp.left_right(weights, IrrepsArray(tp.irreps_in1, a), IrrepsArray(tp.irreps_in2, b)).array)
    for k in (0, 1):  # a rotation, then a rotation composed with the inversion
        rotated_inputs = f(D(tp.irreps_in1, k) @ x1, D(tp.irreps_in2, k) @ x2)
        np.testing.assert_allclose(rotated_inputs, D(tp.irreps_out, k) @ f(x1, x2), atol=1e-10)


# -- bad input ------------------------------------------------------------------------------------------------------


def test_bad_construction():
    with pytest.raises(ValueError, match="connection_mode"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvx", True)])
    with pytest.raises(ValueError, match="i_out"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 1, "uvw", True)])
    with pytest.raises(ValueError, match="not in"):
        FunctionalTensorProduct("1o", "1o", "0o", [(0, 0, 0, "uvw", True)])
    with pytest.raises(ValueError, match="tuple"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvw")])
    with pytest.raises(ValueError, match="in1_var"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvw", True)], in1_var=[1.0, 2.0])
    with pytest.raises(ValueError, match="path_normalization"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvw", True)], path_normalization="paths")
    with pytest.raises(ValueError, match="irrep_normalization"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvw", True)], irrep_normalization="unit")
    with pytest.raises(ValueError, match="writes 2 channels"):
        FunctionalTensorProduct("2x1o", "1o", "3x0e", [(0, 0, 0, "uvu", True)])


def test_mode_without_required_weights():
    with pytest.raises(ValueError, match="needs weights"):
        FunctionalTensorProduct("1o", "1o", "0e", [(0, 0, 0, "uvw", False)])


def test_bad_calls():
    tp = _fctp()
    weights = _random_weights(tp, jax.random.PRNGKey(20))
    x1 = IrrepsArray(tp.irreps_in1, jnp.ones(tp.irreps_in1.dim))
    x2 = IrrepsArray(tp.irreps_in2, jnp.ones(tp.irreps_in2.dim))
    with pytest.raises(ValueError, match="weight arrays"):
        tp.left_right(weights[:-1], x1, x2)
    with pytest.raises(ValueError, match=r"weights\[0\] has shape"):
        tp.left_right([jnp.zeros(weights[0].shape + (1,))] + weights[1:], x1, x2)
    with pytest.raises(ValueError, match="flat weights"):
        tp.left_right(_flat(weights)[:-1], x1, x2)
    with pytest.raises(ValueError, match="input1 has irreps"):
        tp.left_right(weights, IrrepsArray("7x0e", jnp.ones(7)), x2)
    with pytest.raises(ValueError, match="jax.vmap"):
        tp.left_right(weights, IrrepsArray(tp.irreps_in1, jnp.ones((2, tp.irreps_in1.dim))), x2)
    with pytest.raises(ValueError, match="input2 has shape"):
        tp.right(weights, jnp.ones(5))
    with pytest.raises(ValueError, match="weight arrays"):
        tp.left_right(x1, x2)  # weights omitted although the product is weighted


# -- haiku FullyConnectedTensorProduct ------------------------------------------------------------------------------


def _haiku_pair(irreps_out, **kwargs):
    ours = hk.without_apply_rng(hk.transform(lambda a, b: FullyConnectedTensorProduct(irreps_out, **kwargs)(a, b)))
    theirs = hk.without_apply_rng(
        hk.transform(lambda a, b: ej.haiku.FullyConnectedTensorProduct(irreps_out, **kwargs)(a, b))
    )
    return ours, theirs


@pytest.mark.parametrize(
    "irreps_out, irreps_in1, irreps_in2, shape1, shape2, dtype",
    [
        ("2x0e + 3x1o + 1x2e", "3x0e + 2x1o", "2x1o", (4,), (1,), jnp.float64),
        ("0e + 1e", "1o", "1o", (), (), jnp.float32),
        ("3x1o + 0x2e", "2x0e + 0x1e + 2x1o", "0e", (2, 3), (3,), jnp.float64),
        ("1o + 1o", "0e + 0e + 1o", "1o + 0e", (2,), (2,), jnp.float32),
    ],
)
def test_haiku_fctp_matches_e3nn_jax(irreps_out, irreps_in1, irreps_in2, shape1, shape2, dtype):
    x1 = _random_input(irreps_in1, jax.random.PRNGKey(21), shape1, dtype)
    x2 = _random_input(irreps_in2, jax.random.PRNGKey(22), shape2, dtype)
    ours, theirs = _haiku_pair(irreps_out)
    args_ours = (IrrepsArray(irreps_in1, x1), IrrepsArray(irreps_in2, x2))
    args_theirs = (ej.IrrepsArray(irreps_in1, x1), ej.IrrepsArray(irreps_in2, x2))
    params = jax.jit(ours.init)(jax.random.PRNGKey(23), *args_ours)
    expected_params = jax.jit(theirs.init)(jax.random.PRNGKey(23), *args_theirs)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected_params)
    assert list(params["fully_connected_tensor_product"]) == list(expected_params["fully_connected_tensor_product"])
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected_params)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    out = jax.jit(ours.apply)(params, *args_ours)
    expected = jax.jit(theirs.apply)(expected_params, *args_theirs)
    assert str(out.irreps) == str(expected.irreps) and out.shape == expected.shape and out.dtype == expected.dtype
    assert out.zero_flags == expected.zero_flags
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(out.array, expected.array, atol=tol, rtol=tol)


def test_haiku_fctp_parameter_names_and_zero_chunks():
    ours, theirs = _haiku_pair("2x1o + 0e", irreps_in1="0e + 1o + 1o")
    x1 = from_chunks("0e + 1o + 1o", [None, jnp.ones((1, 3)), jnp.full((1, 3), 2.0)], (), jnp.float64)
    x2 = IrrepsArray("0e + 1e", jnp.arange(4.0))
    params = ours.init(jax.random.PRNGKey(24), x1, x2)
    # The zero block of x1 gets no parameters and the two 1o blocks are merged (1o x 1e does not reach 0e).
    assert {k: v.shape for k, v in params["fully_connected_tensor_product"].items()} == {
        "w[0,0,0] 2x1o,1x0e,2x1o": (2, 1, 2),
        "w[0,1,0] 2x1o,1x1e,2x1o": (2, 1, 2),
    }
    expected_x1 = ej.from_chunks("0e + 1o + 1o", [None, jnp.ones((1, 3)), jnp.full((1, 3), 2.0)], (), jnp.float64)
    expected_params = theirs.init(jax.random.PRNGKey(24), expected_x1, ej.IrrepsArray("0e + 1e", jnp.arange(4.0)))
    leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected_params))
    assert all(np.array_equal(a, b) for a, b in leaves)
    assert list(params["fully_connected_tensor_product"]) == list(expected_params["fully_connected_tensor_product"])
    expected = theirs.apply(expected_params, expected_x1, ej.IrrepsArray("0e + 1e", jnp.arange(4.0)))
    np.testing.assert_allclose(ours.apply(params, x1, x2).array, expected.array)


def test_haiku_fctp_equivariance_and_bad_input():
    module = hk.without_apply_rng(hk.transform(lambda a, b: FullyConnectedTensorProduct("0e + 1o + 2e")(a, b)))
    x1 = _random_input("2x0e + 1o", jax.random.PRNGKey(25))
    x2 = _random_input("1o + 1e", jax.random.PRNGKey(26))
    params = module.init(jax.random.PRNGKey(27), IrrepsArray("2x0e + 1o", x1), IrrepsArray("1o + 1e", x2))
    D = _rotation(jax.random.PRNGKey(28))
    for k in (0, 1):
        out_rotated = module.apply(
            params, IrrepsArray("2x0e + 1o", D("2x0e + 1o", k) @ x1), IrrepsArray("1o + 1e", D("1o + 1e", k) @ x2)
        )
        out = module.apply(params, IrrepsArray("2x0e + 1o", x1), IrrepsArray("1o + 1e", x2))
        np.testing.assert_allclose(out_rotated.array, D("0e + 1o + 2e", k) @ out.array, atol=1e-10)

    wrong = hk.without_apply_rng(hk.transform(lambda a, b: FullyConnectedTensorProduct("1o", irreps_in1="1e")(a, b)))
    with pytest.raises(ValueError):
        wrong.init(jax.random.PRNGKey(0), IrrepsArray("1o", jnp.ones(3)), IrrepsArray("0e", jnp.ones(1)))
    unknown = hk.without_apply_rng(hk.transform(lambda a, b: FullyConnectedTensorProduct("1o")(a, b, fast=True)))
    with pytest.raises(TypeError, match="fast"):
        unknown.init(jax.random.PRNGKey(0), IrrepsArray("1o", jnp.ones(3)), IrrepsArray("0e", jnp.ones(1)))
    not_broadcast = hk.without_apply_rng(hk.transform(lambda a, b: FullyConnectedTensorProduct("1o")(a, b)))
    with pytest.raises(ValueError, match="broadcast"):
        x1, x2 = IrrepsArray("1o", jnp.ones((2, 3))), IrrepsArray("0e", jnp.ones((3, 1)))
        not_broadcast.init(jax.random.PRNGKey(0), x1, x2)
