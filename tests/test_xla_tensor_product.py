"""The optimised jnp executor (``e3nn_fast.xla.tensor_product``) against the reference executor and e3nn-jax.

Forward values, zero chunks, broadcasting, per-sample weights, every connection mode, and first and second
derivatives (reverse-over-reverse and forward-over-reverse) must match the reference executor.
"""

import functools
import itertools

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3nn_fast import dispatch
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.path_description import (
    CONNECTION_MODES,
    TensorProductDescription,
    describe_elementwise_tensor_product,
    describe_full_tensor_product,
    describe_tensor_square,
    make_path,
    output_multiplicity,
)
from e3nn_fast.reference.tensor_product import tensor_product as reference
from e3nn_fast.xla.tensor_product import tensor_product as fast

TOLERANCE = {jnp.float32: 1e-5, jnp.float64: 1e-12}


# --------------------------------------------------------------------------------------------------------- helpers


def random_chunks(irreps, leading, dtype, seed, zero=()):
    """One ``leading + (mul, 2l+1)`` chunk per segment; segments in ``zero`` are None.  (NumPy draws the numbers:
    eager ``jax.random`` compiles once per new shape, which would dominate this file's run time.)"""
    rng = np.random.default_rng(seed)
    return [
        None if i in zero else jnp.asarray(rng.standard_normal(tuple(leading) + (mul, ir.dim)), dtype)
        for i, (mul, ir) in enumerate(irreps)
    ]


def random_weights(description, leading, dtype, seed):
    rng = np.random.default_rng(seed)
    return [
        jnp.asarray(rng.standard_normal(tuple(leading) + path.weight_shape), dtype) if path.has_weight else None
        for path in description.paths
    ]


def assert_chunks_close(ours, theirs, dtype):
    assert len(ours) == len(theirs)
    assert [o is None for o in ours] == [t is None for t in theirs]
    present = [(o, t) for o, t in zip(ours, theirs) if t is not None]
    scale = max([float(jnp.max(jnp.abs(t))) for _, t in present if t.size] + [1.0])
    for o, t in present:
        assert o.shape == t.shape and o.dtype == t.dtype
        np.testing.assert_allclose(np.asarray(o), np.asarray(t), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


def assert_trees_close(ours, theirs, tolerance):
    for o, t in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        scale = max(float(jnp.max(jnp.abs(t))), 1.0) if t.size else 1.0
        np.testing.assert_allclose(np.asarray(o), np.asarray(t), rtol=tolerance, atol=tolerance * scale)


def mode_description(mode, weighted, mul1, mul2, free_mul=3, zero_coefficient=False, lmax1=2):
    """Every allowed path of ``mode`` between ``mul1x(0e+1o+2e)`` (up to ``lmax1``) and ``mul2x(0e+1o)`` into
    ``0e+1o+1e+2e``; several paths share an output segment.  Modes that pair channels force ``mul2 = mul1``."""
    if mode in ("uuw", "uuu", "uvu<v", "u<vw"):
        mul2 = mul1
    if mode == "uuw" and not weighted:
        free_mul = 1
    mul_out = output_multiplicity(mode, mul1, mul2, free_mul)
    irreps1 = Irreps("+".join(f"{mul1}x{ir}" for ir in ["0e", "1o", "2e"][: lmax1 + 1]))
    irreps2 = Irreps(f"{mul2}x0e+{mul2}x1o")
    irreps_out = Irreps("+".join(f"{mul_out}x{ir}" for ir in ["0e", "1o", "1e", "2e"]))
    rng = np.random.default_rng(len(mode) + 7 * mul1 + mul2)
    paths = []
    for i1, i2, o in itertools.product(range(len(irreps1)), range(len(irreps2)), range(len(irreps_out))):
        if irreps_out[o].ir in list(irreps1[i1].ir * irreps2[i2].ir):
            coefficient = 0.0 if zero_coefficient and not paths else rng.uniform(0.5, 1.5)
            paths.append(make_path(irreps1, irreps2, irreps_out, i1, i2, o, mode, coefficient, weighted))
    return TensorProductDescription(irreps1, irreps2, irreps_out, tuple(paths))


def compare(description, dtype, lead1=(3,), lead2=(3,), lead_w=(), zero1=(), zero2=(), seed=0):
    x1 = random_chunks(description.irreps_in1, lead1, dtype, seed, zero1)
    x2 = random_chunks(description.irreps_in2, lead2, dtype, seed + 1, zero2)
    w = random_weights(description, lead_w, dtype, seed + 2)
    # Under jit: one compilation per case rather than one per primitive in eager mode.
    ours = jax.jit(fast, static_argnums=0)(description, w, x1, x2)
    assert_chunks_close(ours, jax.jit(reference, static_argnums=0)(description, w, x1, x2), dtype)


# ------------------------------------------------------------------------------------------------------ forward


FILTER_1E = (Irreps("1e")[0].ir,)
PUBLIC_DESCRIPTIONS = [
    (describe_full_tensor_product(Irreps("4x0e+4x1o+4x2e"), Irreps("0e+1o+2e+3o"), None, "component"), jnp.float32),
    (describe_full_tensor_product(Irreps("0e+1o+2e"), Irreps("3x0e+2x1o+2x2e"), None, "component"), jnp.float64),
    (describe_full_tensor_product(Irreps("2x0e+3x1o"), Irreps("3x0e+2x1o+2x2o"), FILTER_1E, "norm"), jnp.float32),
    (describe_elementwise_tensor_product(Irreps("2x0e+3x1o+2e"), Irreps("2x1e+3x1o+2o"), None, "none"), jnp.float32),
    (describe_tensor_square(Irreps("3x0e+2x1o+2e"), "component", False), jnp.float64),
    (describe_tensor_square(Irreps("4x1e+2x2o"), "norm", True), jnp.float32),
]


@pytest.mark.parametrize("index", range(len(PUBLIC_DESCRIPTIONS)))
def test_public_descriptions_match_reference(index):
    compare(*PUBLIC_DESCRIPTIONS[index])


MODE_CASES = [(mode, weighted) for mode in CONNECTION_MODES for weighted in (False, True)]
MODE_CASES = [case for case in MODE_CASES if case[1] or case[0] not in ("uvw", "u<vw")]


@pytest.mark.parametrize("mode,weighted", MODE_CASES)
def test_every_connection_mode_matches_reference(mode, weighted):
    """Leading axes that broadcast ((2, 1) with (3,)), per-sample weights, a path with coefficient 0."""
    description = mode_description(mode, weighted, 3, 2, zero_coefficient=True, lmax1=1)
    compare(description, jnp.float64, lead1=(2, 1), lead2=(3,), lead_w=(3,) if weighted else ())


def _mixes_in_channel_mix(description, w, x1, x2) -> bool:
    """Whether the jnp executor evaluates some path with the channel-mix form (e3nn_fast/xla/channel_mix.py)."""
    jaxpr = jax.make_jaxpr(lambda *a: fast(description, *a))(w, x1, x2)
    return any(getattr(eqn.params.get("plan"), "family", None) == "jnp-channel-mix" for eqn in jaxpr.jaxpr.eqns)


@pytest.mark.parametrize("lead,lead_w,mixed", [((4,), (4,), True), ((), (), True), ((4,), (), True),
                                               ((2, 4), (4,), False)])
def test_uvw_weights_per_row_shared_or_by_the_reference(lead, lead_w, mixed):
    """``uvw`` through stages A and B and the channel mix for per-row weights and for one shared matrix (batched
    inputs or none), through the reference einsum for weights broadcast over some leading axes; 4 output channels
    against 1, 3 and 5 components, so that a transposed ``(w, k)`` block cannot pass."""
    description = mode_description("uvw", True, 3, 2, free_mul=4, lmax1=2)
    x1 = random_chunks(description.irreps_in1, lead, jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, lead, jnp.float64, 1)
    w = random_weights(description, lead_w, jnp.float64, 2)
    assert _mixes_in_channel_mix(description, w, x1, x2) == mixed
    compare(description, jnp.float64, lead1=lead, lead2=lead, lead_w=lead_w)


def test_uvw_per_sample_weights_under_vmap():
    """DiffDock's use: ``vmap`` over edges of a product with per-edge flat weights, values and gradients."""
    description = mode_description("uvw", True, 3, 2, free_mul=4, lmax1=2)
    x1 = random_chunks(description.irreps_in1, (5,), jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, (5,), jnp.float64, 1)
    w = random_weights(description, (5,), jnp.float64, 2)
    c = random_chunks(description.irreps_out, (5,), jnp.float64, 3)
    mapped = lambda w, x1, x2: jax.vmap(lambda *a: fast(description, *a))(w, x1, x2)
    assert_chunks_close(jax.jit(mapped)(w, x1, x2), reference(description, w, x1, x2), jnp.float64)
    loss = lambda executor: lambda *a: sum(jnp.sum(g * o**2) for g, o in zip(c, executor(*a)) if o is not None)
    ours = jax.jit(jax.grad(loss(mapped), (0, 1, 2)))(w, x1, x2)
    theirs = jax.grad(loss(lambda *a: reference(description, *a)), (0, 1, 2))(w, x1, x2)
    assert_trees_close(ours, theirs, 1e-12)


def test_uvw_weights_mapped_over_batched_inputs():
    """``vmap`` over per-element weight matrices of products whose inputs have rows of their own, more than fold
    into per-row weights: the channel mix's shared form is evaluated under ``vmap``; values and gradients."""
    from e3nn_fast.kernels.multilinear import FOLD_MAX_ROWS

    description = mode_description("uvw", True, 2, 2, free_mul=3, lmax1=1)
    rows = FOLD_MAX_ROWS + 1
    x1 = random_chunks(description.irreps_in1, (3, rows), jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, (3, rows), jnp.float64, 1)
    w = random_weights(description, (3,), jnp.float64, 2)
    mapped = jax.vmap(lambda *a: fast(description, *a))
    assert "scan" not in str(jax.make_jaxpr(mapped)(w, x1, x2))  # one batched evaluation, not a loop per element
    per_row = [None if a is None else jnp.broadcast_to(a[:, None], (3, rows) + a.shape[1:]) for a in w]
    assert_chunks_close(jax.jit(mapped)(w, x1, x2), reference(description, per_row, x1, x2), jnp.float64)
    loss = lambda executor: lambda w, x1: sum(jnp.sum(o**2) for o in executor(w, x1, x2) if o is not None)
    ours = jax.jit(jax.grad(loss(mapped), (0, 1)))(w, x1)
    theirs = jax.grad(loss(jax.vmap(lambda *a: reference(description, *a))), (0, 1))(w, x1)
    assert_trees_close(ours, theirs, 1e-12)


@pytest.mark.parametrize("mode", ["uvu", "uvu<v"])
def test_shared_weights_and_an_input_without_leading_axes(mode):
    compare(mode_description(mode, True, 2, 3), jnp.float32, lead1=(2,), lead2=(), lead_w=())


def test_zero_chunks_are_skipped():
    description = mode_description("uvuv", False, 2, 2)
    for zero1, zero2 in [((0,), (1,)), ((0, 2), ())]:
        compare(description, jnp.float64, zero1=zero1, zero2=zero2)
    x1 = random_chunks(description.irreps_in1, (2,), jnp.float64, 0, zero=(0, 1, 2))
    x2 = random_chunks(description.irreps_in2, (2,), jnp.float64, 1)
    assert fast(description, [None] * len(description.paths), x1, x2) == [None] * len(description.irreps_out)


def test_zero_multiplicities():
    irreps1, irreps2 = Irreps("0x0e+2x1o+1x2e"), Irreps("1x0e+0x1o+2x1e")
    compare(describe_full_tensor_product(irreps1, irreps2, None, "component"), jnp.float64)
    compare(mode_description("uvw", True, 2, 2, free_mul=0), jnp.float64)
    compare(mode_description("uvu<v", True, 1, 1), jnp.float64)  # one channel: no pairs u < v


def test_empty_batch_and_mixed_dtypes():
    description = PUBLIC_DESCRIPTIONS[2][0]
    compare(description, jnp.float32, lead1=(0,), lead2=(0,))
    x1 = random_chunks(description.irreps_in1, (2,), jnp.float32, 0)
    x2 = random_chunks(description.irreps_in2, (2,), jnp.float64, 1)  # promoted to float64, like the reference
    w = [None] * len(description.paths)
    ours = jax.jit(fast, static_argnums=0)(description, w, x1, x2)
    assert_chunks_close(ours, jax.jit(reference, static_argnums=0)(description, w, x1, x2), jnp.float32)


def test_under_vmap():
    description = mode_description("uvu", True, 3, 2, lmax1=1)
    x1 = random_chunks(description.irreps_in1, (5,), jnp.float32, 0)
    x2 = random_chunks(description.irreps_in2, (5,), jnp.float32, 1)
    w = random_weights(description, (5,), jnp.float32, 2)
    ours = jax.jit(jax.vmap(lambda *a: fast(description, *a)))(w, x1, x2)
    assert_chunks_close(ours, jax.jit(reference, static_argnums=0)(description, w, x1, x2), jnp.float32)


# -------------------------------------------------------------------------------------------------- derivatives


def _quadratic_loss(executor, description, cotangents):
    """A scalar that depends non-linearly on every output: sum_i c_i * out_i**2."""

    def loss(w, x1, x2):
        outs = executor(description, w, x1, x2)
        return sum(jnp.sum(c * o**2) for c, o in zip(cotangents, outs) if o is not None)

    return loss


def mixed_description():
    """One description mixing every stage-B layout and the reference fallback: outer (``uvuv``, weighted ``uvu``,
    ``uvv``), diagonal (weighted ``uuu``, ``uuw``), pairs (weighted ``uvu<v``) and ``uvw``."""
    irreps1, irreps2 = Irreps("2x0e+2x1o"), Irreps("2x0e+2x1o")
    irreps_out = Irreps("4x0e+4x1o+2x0e+2x1o+2x2e+1x1e+1x0e+3x1o")
    specs = [  # (in1, in2, out, mode, weighted)
        (1, 1, 0, "uvuv", False), (0, 1, 1, "uvuv", False), (1, 0, 3, "uvu", True), (0, 1, 3, "uvv", False),
        (0, 0, 2, "uuu", True), (1, 1, 4, "uuu", False), (1, 1, 6, "uuw", False), (1, 1, 5, "uvu<v", True),
        (1, 1, 5, "uvu<v", False), (1, 0, 7, "uvw", True),
    ]
    paths = [make_path(irreps1, irreps2, irreps_out, *spec[:4], 0.5 + n / 7, spec[4]) for n, spec in enumerate(specs)]
    return TensorProductDescription(irreps1, irreps2, irreps_out, tuple(paths))


def _derivative_case():
    description = mixed_description()
    x1 = random_chunks(description.irreps_in1, (2,), jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, (2,), jnp.float64, 1)
    w = random_weights(description, (2,), jnp.float64, 2)
    c = random_chunks(description.irreps_out, (2,), jnp.float64, 3)
    return description, w, x1, x2, c


def test_first_derivatives_match_reference():
    description, w, x1, x2, c = _derivative_case()
    ours = jax.jit(jax.grad(_quadratic_loss(fast, description, c), (0, 1, 2)))(w, x1, x2)
    theirs = jax.jit(jax.grad(_quadratic_loss(reference, description, c), (0, 1, 2)))(w, x1, x2)
    assert_trees_close(ours, theirs, 1e-12)


def test_second_derivatives_match_reference():
    description, w, x1, x2, c = _derivative_case()
    directions = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size).reshape(a.shape)), (w, x1, x2))

    def reverse_over_reverse(executor):  # forces-style: gradient of a squared gradient
        grad_x2 = jax.grad(_quadratic_loss(executor, description, c), 2)
        return jax.jit(jax.grad(lambda *a: sum(jnp.sum(g**2) for g in grad_x2(*a)), (0, 1, 2)))(w, x1, x2)

    def forward_over_reverse(executor):  # Hessian-vector product
        grad = jax.grad(_quadratic_loss(executor, description, c), (0, 1, 2))
        return jax.jit(lambda *a: jax.jvp(grad, a, directions)[1])(w, x1, x2)

    assert_trees_close(reverse_over_reverse(fast), reverse_over_reverse(reference), 1e-11)
    assert_trees_close(forward_over_reverse(fast), forward_over_reverse(reference), 1e-11)


def test_third_derivative_matches_reference():
    description, w, x1, x2, c = _derivative_case()
    scalar = lambda executor: lambda s: _quadratic_loss(executor, description, c)(w, [a * s for a in x1], x2) ** 2
    ours = jax.jit(jax.grad(jax.grad(jax.grad(scalar(fast)))))(1.3)
    theirs = jax.jit(jax.grad(jax.grad(jax.grad(scalar(reference)))))(1.3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def _stage_b_calls(description, w, x1, x2, **options) -> int:
    jaxpr = jax.make_jaxpr(lambda *a: fast(description, *a, **options))(w, x1, x2)
    return sum(getattr(eqn.params.get("plan"), "family", None) == "jnp-stage-b" for eqn in jaxpr.jaxpr.eqns)


@pytest.mark.parametrize("mode,weighted", [("uvu", True), ("uvuv", False), ("uuu", True)])
def test_grouped_input_pairs_match_reference(mode, weighted):
    """``group_input_pairs``: one stage A and B per pair of input segments (fewer calls than paths), with values and
    first and second derivatives equal to the reference's."""
    description = mode_description(mode, weighted, 2, 1)
    x1 = random_chunks(description.irreps_in1, (3,), jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, (3,), jnp.float64, 1)
    w = random_weights(description, (3,), jnp.float64, 2)
    c = random_chunks(description.irreps_out, (3,), jnp.float64, 3)
    grouped = functools.partial(fast, group_input_pairs=True)
    assert _stage_b_calls(description, w, x1, x2, group_input_pairs=True) < _stage_b_calls(description, w, x1, x2)
    assert_chunks_close(jax.jit(grouped, static_argnums=0)(description, w, x1, x2),
                        reference(description, w, x1, x2), jnp.float64)
    ours = jax.jit(jax.grad(_quadratic_loss(grouped, description, c), (0, 1, 2)))(w, x1, x2)
    theirs = jax.grad(_quadratic_loss(reference, description, c), (0, 1, 2))(w, x1, x2)
    assert_trees_close(ours, theirs, 1e-12)

    def forces(executor):  # reverse over reverse
        grad_x2 = jax.grad(_quadratic_loss(executor, description, c), 2)
        return jax.grad(lambda *a: sum(jnp.sum(g**2) for g in grad_x2(*a)), (0, 1))(w, x1, x2)

    assert_trees_close(jax.jit(lambda: forces(grouped))(), forces(reference), 1e-11)


def test_grouped_mixed_description_matches_reference():
    """Every mode in one description, grouped: ``uvw`` and ``uvu<v`` stay single, and a second ``uuu`` path of an
    input pair that already has one (``1o x 1o -> 0e`` beside ``-> 2e``) joins it."""
    mixed = mixed_description()
    extra = make_path(mixed.irreps_in1, mixed.irreps_in2, mixed.irreps_out, 1, 1, 2, "uuu", 0.9, False)
    description = TensorProductDescription(mixed.irreps_in1, mixed.irreps_in2, mixed.irreps_out,
                                           mixed.paths + (extra,))
    _, _, x1, x2, c = _derivative_case()
    w = random_weights(description, (2,), jnp.float64, 2)
    grouped = functools.partial(fast, group_input_pairs=True)
    assert _stage_b_calls(description, w, x1, x2, group_input_pairs=True) == _stage_b_calls(description, w, x1, x2) - 1
    assert_chunks_close(jax.jit(grouped, static_argnums=0)(description, w, x1, x2),
                        reference(description, w, x1, x2), jnp.float64)
    ours = jax.jit(jax.grad(_quadratic_loss(grouped, description, c), (0, 1, 2)))(w, x1, x2)
    theirs = jax.grad(_quadratic_loss(reference, description, c), (0, 1, 2))(w, x1, x2)
    assert_trees_close(ours, theirs, 1e-12)


def test_high_l_keys_use_the_dot_form_and_match_reference():
    """Keys with ``l >= 6`` run stage B as a ``dot`` forward too; values and first and second derivatives agree."""
    from e3nn_fast.xla.stage_b import DOT_MIN_COMPONENTS as DOT_STAGE_B_MIN_COMPONENTS

    description = describe_full_tensor_product(Irreps("3x6e+2x5o+2x1o"), Irreps("0e+1o+4e"), None, "component")
    assert Irreps("6e").dim >= DOT_STAGE_B_MIN_COMPONENTS > Irreps("5o").dim
    compare(description, jnp.float64, lead1=(2,), lead2=(2,))
    x1 = random_chunks(description.irreps_in1, (2,), jnp.float64, 0)
    x2 = random_chunks(description.irreps_in2, (2,), jnp.float64, 1)
    c = random_chunks(description.irreps_out, (2,), jnp.float64, 3)
    w = [None] * len(description.paths)

    def forces_style(executor):
        grad_x2 = jax.grad(_quadratic_loss(executor, description, c), 2)
        return jax.jit(jax.grad(lambda x1, x2: sum(jnp.sum(g**2) for g in grad_x2(w, x1, x2)), (0, 1)))(x1, x2)

    assert_trees_close(forces_style(fast), forces_style(reference), 1e-11)


def test_mixed_description_matches_reference():
    compare(mixed_description(), jnp.float32, lead1=(3, 1), lead2=(2,), lead_w=(2,))


# ------------------------------------------------------------------------------------------------ randomised


def _irreps_strategy(max_segments=2):
    segment = st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from(["e", "o"]))
    return st.lists(segment, min_size=1, max_size=max_segments).map(
        lambda segs: Irreps("+".join(f"{mul}x{l}{p}" for mul, l, p in segs))
    )


@settings(max_examples=10, deadline=None)
@given(
    irreps1=_irreps_strategy(),
    irreps2=_irreps_strategy(),
    kind=st.sampled_from(["full", "elementwise", "square"]),
    lead=st.sampled_from([(), (2,), (1, 3)]),
    zero=st.integers(0, 7),
)
def test_random_configurations_match_reference(irreps1, irreps2, kind, lead, zero):
    if kind == "full":
        description = describe_full_tensor_product(irreps1, irreps2, None, "component")
    elif kind == "elementwise":
        irreps2 = Irreps([(mul, ir2) for (mul, _), (_, ir2) in zip(irreps1, itertools.cycle(irreps2))])
        description = describe_elementwise_tensor_product(irreps1, irreps2, None, "norm")
    else:
        description = describe_tensor_square(irreps1, "component", bool(zero % 2))
        irreps2 = irreps1
    zero1 = tuple(i for i in range(len(irreps1)) if (zero >> i) & 1 and i > 0)
    compare(description, jnp.float64, lead1=lead, lead2=lead[-1:], zero1=zero1, seed=zero)


# ------------------------------------------------------------------------------------------------ API and errors


def test_bad_arguments_raise_value_error():
    description = PUBLIC_DESCRIPTIONS[2][0]
    x1 = random_chunks(description.irreps_in1, (1,), jnp.float32, 0)
    x2 = random_chunks(description.irreps_in2, (1,), jnp.float32, 1)
    with pytest.raises(ValueError, match="weight entries"):
        fast(description, [], x1, x2)
    with pytest.raises(ValueError, match="chunks"):
        fast(description, [None] * len(description.paths), x1[:-1], x2)


def test_registered_as_the_jnp_executor():
    import e3nn_fast.tensor_products  # noqa: F401  (registers the executors)

    assert dispatch.executor("tensor_product", requested="jnp") is fast


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA's CPU compilation")
def test_stage_a_stays_a_dot_with_harmonics_computed_in_the_same_jit():
    """Stage A must compile to matrix products even when the other input is built from single components (spherical
    harmonics of vectors computed in the same jit): otherwise XLA fuses the harmonics and the CG products into the
    wide output loop and recomputes them once per channel (the ``sh-tp`` forward was 2x slower)."""
    import e3nn_fast as e3nn

    def f(x, vectors):
        sh = e3nn.spherical_harmonics([0, 1, 2, 3], IrrepsArray("1o", vectors), normalize=True)
        with dispatch.backend("jnp"):
            return e3nn.tensor_product(IrrepsArray("4x0e+4x1o+4x2e", x), sh).array

    rng = np.random.default_rng(0)
    x, vectors = jnp.asarray(rng.standard_normal((16, 36))), jnp.asarray(rng.standard_normal((16, 3)))
    hlo = jax.jit(f).lower(x, vectors).compile().as_text()
    matmuls = hlo.count(" dot(") + hlo.count('"kind":"__ynn_fusion"')
    assert matmuls >= 3, "stage A was rewritten into fused broadcasts"
    with dispatch.backend("reference"):
        expected = e3nn.tensor_product(
            IrrepsArray("4x0e+4x1o+4x2e", x),
            e3nn.spherical_harmonics([0, 1, 2, 3], IrrepsArray("1o", vectors), normalize=True),
        ).array
    np.testing.assert_allclose(jax.jit(f)(x, vectors), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_public_api_with_jnp_backend_matches_e3nn_jax(dtype):
    import e3nn_fast.tensor_products as tp

    a = jax.random.normal(jax.random.PRNGKey(0), (4, Irreps("4x0e+4x1o+2x2e").dim), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (4, 16), dtype)

    def ours(a, b):
        with dispatch.backend("jnp"):
            x, y = IrrepsArray("4x0e+4x1o+2x2e", a), IrrepsArray("0e+1o+2e+3o", b)
            return tp.tensor_product(x, y).array, tp.tensor_square(x).array, tp.elementwise_tensor_product(x, x).array

    def theirs(a, b):
        x, y = e3nn_jax.IrrepsArray("4x0e+4x1o+2x2e", a), e3nn_jax.IrrepsArray("0e+1o+2e+3o", b)
        products = e3nn_jax.tensor_product(x, y), e3nn_jax.tensor_square(x), e3nn_jax.elementwise_tensor_product(x, x)
        return tuple(p.array for p in products)

    for x, y in zip(jax.jit(ours)(a, b), jax.jit(theirs)(a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        scale = float(jnp.max(jnp.abs(y)))
        np.testing.assert_allclose(x, y, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)
