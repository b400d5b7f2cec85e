"""Stage B of the jnp tensor product as a multilinear form (e3nn_fast/xla/stage_b.py): every layout and every form
(unrolled sums, dots, outer products) against a plain einsum, with gradients of first and second order, jax.jvp,
forward-over-reverse and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bilinear_derivatives import assert_derivatives_match

from e3nn_fast.xla import stage_b as stage_b_module
from e3nn_fast.xla.stage_b import (
    APART_MIN_MULTIPLY_ADDS,
    DIAGONAL,
    DOT_MIN_COMPONENTS,
    KEY1,
    KEY2,
    UNROLLED_GROUP_CHANNELS,
    UNROLLED_MAX_CHANNELS,
    stage_b,
)


SPECS = {KEY1: "...am,...bmk->...abk", KEY2: "...am,...bmk->...bak", DIAGONAL: "...am,...amk->...ak"}

# (layout, key channels a, other channels b, key components m, output components k): one channel on either side
# (the outer-product and unrolled forms), several on both (the dot forms), and components from l = 6 on (dots).
CASES = [
    (KEY1, 4, 1, 3, 5),
    (KEY1, 1, 3, 5, 3),
    (KEY1, 3, 2, 3, 3),
    (KEY1, 2, 1, 13, 7),
    (KEY2, 4, 1, 5, 3),
    (KEY2, 1, 3, 3, 5),
    (KEY2, 2, 3, 1, 3),
    (DIAGONAL, 3, 3, 3, 5),
    (DIAGONAL, 2, 2, 13, 13),
    # one contraction fused, the other a dot: forward over m = 5 terms, key gradient over k = 13, and the reverse
    (KEY1, 4, 1, 5, 13),
    (DIAGONAL, 2, 2, 3, 13),
    (KEY2, 3, 1, 13, 5),
    # just below the dots: l = 4 and l = 5 (a 2e x 2e -> 4e path's key gradient, a 5e x 3e -> 5e path) stay fused
    (KEY1, 4, 1, 5, 9),
    (KEY1, 3, 1, 11, 11),
    # dF/dT with one channel on the other side: unrolled up to UNROLLED_MAX_CHANNELS key channels (in groups of
    # UNROLLED_GROUP_CHANNELS, the last one short here), a dot beyond
    (KEY1, UNROLLED_MAX_CHANNELS, 1, 3, 5),
    (KEY2, UNROLLED_GROUP_CHANNELS + 3, 1, 3, 7),
    (KEY2, UNROLLED_MAX_CHANNELS + 1, 1, 5, 3),
    (KEY1, 2 * UNROLLED_MAX_CHANNELS + 3, 1, 3, 5),  # wide: several groups when computed apart, the last one short
]


def reference(layout, key, t):
    return jnp.einsum(SPECS[layout], key, t)


def operands(layout, a, b, m, k, lead=(6,), seed=0):
    rng = np.random.default_rng(seed)
    t_channels = a if layout == DIAGONAL else b
    key = jnp.asarray(rng.standard_normal(lead + (a, m)))
    t = jnp.asarray(rng.standard_normal(lead + (t_channels, m, k)))
    return key, t


def test_the_cases_reach_every_form():
    forward_dot = {m >= DOT_MIN_COMPONENTS for _, _, _, m, _ in CASES}
    key_gradient_dot = {k >= DOT_MIN_COMPONENTS for _, _, _, _, k in CASES}
    assert forward_dot == key_gradient_dot == {True, False}
    assert any((m >= DOT_MIN_COMPONENTS) != (k >= DOT_MIN_COMPONENTS) for _, _, _, m, k in CASES)
    assert any(m == k == DOT_MIN_COMPONENTS - 1 for *_, m, k in CASES)  # the widest fused contractions
    t_gradient_forms = {
        "outer" if a == 1 or layout == DIAGONAL else "unrolled" if b == 1 and a <= UNROLLED_MAX_CHANNELS else "dot"
        for layout, a, b, _, _ in CASES
    }
    assert t_gradient_forms == {"outer", "unrolled", "dot"}
    assert any(b == 1 and a > UNROLLED_MAX_CHANNELS for layout, a, b, _, _ in CASES if layout != DIAGONAL)
    assert any(b == 1 and UNROLLED_GROUP_CHANNELS < a <= UNROLLED_MAX_CHANNELS and a % UNROLLED_GROUP_CHANNELS
               for layout, a, b, _, _ in CASES if layout != DIAGONAL)  # several groups, the last one short
    assert {layout for layout, *_ in CASES} == {KEY1, KEY2, DIAGONAL}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_first_and_second_derivatives(case):
    layout = case[0]
    key, t = operands(*case)
    ours = jax.jit(lambda key, t: stage_b(layout, key, t))
    np.testing.assert_allclose(ours(key, t), reference(layout, key, t), rtol=1e-12, atol=1e-12)

    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(reference(layout, key, t).shape))
    assert_derivatives_match(lambda key, t: stage_b(layout, key, t), lambda key, t: reference(layout, key, t),
                             key, t, cotangent)


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[7]], ids=str)
def test_vmap_and_broadcast_leading_axes(case):
    layout = case[0]
    key, t = operands(*case, lead=(3, 4))
    got = jax.jit(jax.vmap(lambda key, t: stage_b(layout, key, t)))(key, t)
    np.testing.assert_allclose(got, reference(layout, key, t), rtol=1e-12, atol=1e-12)
    shared_t = t[0, :1]  # one T for every row of the key: broadcast over the leading axes
    got = stage_b(layout, key, shared_t)
    np.testing.assert_allclose(got, reference(layout, key, shared_t), rtol=1e-12, atol=1e-12)
    grad = jax.grad(lambda t: jnp.sum(stage_b(layout, key, t) ** 2))(shared_t)
    want = jax.grad(lambda t: jnp.sum(reference(layout, key, t) ** 2))(shared_t)
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-10)


def test_no_rows():
    key, t = operands(KEY1, 3, 1, 3, 5, lead=(0,))
    assert stage_b(KEY1, key, t).shape == (0, 3, 1, 5)


def test_vmap_over_no_elements():
    """``vmap`` over an empty batch (a graph without edges in a batch of graphs) gives empty results and gradients;
    folding the mapped axis into the rows used to divide by zero."""
    key, t = operands(KEY1, 3, 1, 3, 5, lead=(0, 2))
    mapped = jax.vmap(lambda key, t: stage_b(KEY1, key, t))
    assert mapped(key, t).shape == (0, 2, 3, 1, 5)
    assert jax.grad(lambda key: jnp.sum(mapped(key, t) ** 2))(key).shape == key.shape


def test_unknown_layout_is_an_error():
    key, t = operands(KEY1, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="layout"):
        stage_b("sideways", key, t)


@pytest.mark.parametrize("case", [(KEY1, UNROLLED_MAX_CHANNELS, 1, 3, 5), (KEY2, 4, 1, 5, 9), (DIAGONAL, 3, 3, 7, 7)],
                         ids=str)
def test_16_bit_inputs_accumulate_in_float32(case):
    """bfloat16 operands give the float32 contraction of the same values rounded once, in every slot (the unrolled
    sums would otherwise round each partial sum to 8 mantissa bits)."""
    layout = case[0]
    key, t = (x.astype(jnp.bfloat16) for x in operands(*case, lead=(64,), seed=3))
    z = reference(layout, key, t).astype(jnp.bfloat16)  # a cotangent-shaped bfloat16 operand

    def exact(f):  # the float32 computation of the same bfloat16 values, rounded once
        return np.asarray(f(*(x.astype(jnp.float32) for x in (key, t, z))).astype(jnp.bfloat16), np.float32)

    _, pullback = jax.vjp(lambda key, t: stage_b(layout, key, t), key, t)
    got = [stage_b(layout, key, t), *pullback(z)]
    want = [
        exact(lambda key, t, z: reference(layout, key, t)),
        exact(lambda key, t, z: jax.vjp(lambda key: reference(layout, key, t), key)[1](z)[0]),
        exact(lambda key, t, z: jax.vjp(lambda t: reference(layout, key, t), t)[1](z)[0]),
    ]
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        g = np.asarray(g, np.float32)
        np.testing.assert_allclose(g, w, rtol=2.0**-7, atol=2.0**-7 * np.abs(w).max())  # within one unit
        # the same value wherever the float32 results do not straddle a rounding boundary (a few in a thousand)
        assert np.mean(g == w) > 0.97, np.mean(g == w)



# the cases with a dot of tiny matrices that a large contraction computes apart instead: the forward or the key
# gradient over 12 or more components, dF/dT over a wide key with one channel on the other side
WIDE_CASES = [case for case in CASES if case[3] >= DOT_MIN_COMPONENTS
              or (case[4] >= DOT_MIN_COMPONENTS and (case[0] == DIAGONAL or case[2] == 1))
              or (case[0] != DIAGONAL and case[2] == 1 and case[1] > UNROLLED_MAX_CHANNELS)]


def _conditionals(fn, *args):
    """How many conditionals (what ``computed_apart`` inserts) the lowered program of ``jax.jit(fn)`` has."""
    jax.clear_caches()  # the primitive's lowering is cached per shape: trace it again under the current threshold
    return _count_conditionals(jax.jit(fn).lower(*args).as_text())


def _count_conditionals(text):
    return text.count("stablehlo.case") + text.count("stablehlo.if")


@pytest.mark.parametrize(("case", "apart"), [(case, False) for case in WIDE_CASES]
                         + [(case, True) for case in WIDE_CASES + [CASES[0], CASES[4], CASES[7]]], ids=str)
def test_contractions_computed_apart_give_the_same_values_and_derivatives(case, apart, monkeypatch):
    """Above ``APART_MIN_BYTES`` and ``APART_MIN_MULTIPLY_ADDS`` (lowered to nothing here), the tiny dots, and an
    ``apart`` form's forward, become unrolled sums in a conditional: the same values and derivatives of every order."""
    monkeypatch.setattr(stage_b_module, "APART_MIN_BYTES", 0)
    monkeypatch.setattr(stage_b_module, "APART_MIN_MULTIPLY_ADDS", 0)
    layout = case[0]
    key, t = operands(*case, lead=(7,), seed=4)
    forward = lambda key, t: stage_b(layout, key, t, whole_product=apart)  # noqa: E731
    cotangent = jnp.asarray(np.random.default_rng(5).standard_normal(reference(layout, key, t).shape))
    pullback = lambda key, t: jax.vjp(forward, key, t)[1](cotangent)  # noqa: E731
    assert _conditionals(forward, key, t) + _conditionals(pullback, key, t) >= 1
    np.testing.assert_allclose(jax.jit(forward)(key, t), reference(layout, key, t), rtol=1e-12, atol=1e-12)
    assert_derivatives_match(forward, lambda key, t: reference(layout, key, t), key, t, cotangent)


def test_apart_only_for_large_concrete_outputs(monkeypatch):
    """Below the threshold, for no rows, and for a symbolic row count (``jax.export``), the contraction stays
    inline."""
    key, t = operands(KEY1, 2, 1, 13, 13, lead=(6,))
    forward = lambda key, t: stage_b(KEY1, key, t)  # noqa: E731
    assert _conditionals(forward, key, t) == 0  # 6 rows of 26 columns: far below the threshold
    monkeypatch.setattr(stage_b_module, "APART_MIN_BYTES", 0)
    assert _conditionals(forward, key, t) == 1
    none_key, none_t = operands(KEY1, 2, 1, 13, 13, lead=(0,))
    assert _conditionals(forward, none_key, none_t) == 0
    from jax import export

    (rows,) = export.symbolic_shape("rows")
    specs = [jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype) for x in (key, t)]
    exported = export.export(jax.jit(forward))(*specs)
    assert _count_conditionals(exported.mlir_module()) == 0
    np.testing.assert_allclose(exported.call(key, t), reference(KEY1, key, t), rtol=1e-12, atol=1e-12)


def test_wide_key_t_gradient_apart_only_from_enough_work(monkeypatch):
    """dF/dT over a wide key (one channel on the other side) leaves its dot for the conditional from
    ``APART_MIN_MULTIPLY_ADDS`` multiply-adds (rows * a * m * k) on: the same gradient either way."""
    layout, a, b, m, k = KEY1, 2 * UNROLLED_MAX_CHANNELS + 3, 1, 3, 5
    rows = -(-APART_MIN_MULTIPLY_ADDS // (a * m * k))  # just enough rows
    key, t = operands(layout, a, b, m, k, lead=(rows,), seed=6)
    cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(reference(layout, key, t).shape))
    t_gradient = lambda key, t, z: jax.vjp(lambda t: stage_b(layout, key, t), t)[1](z)[0]  # noqa: E731
    assert _conditionals(t_gradient, key, t, cotangent) == 1
    np.testing.assert_allclose(jax.jit(t_gradient)(key, t, cotangent),
                               jax.vjp(lambda t: reference(layout, key, t), t)[1](cotangent)[0],
                               rtol=1e-10, atol=1e-10)
    assert _conditionals(t_gradient, key[:-1], t[:-1], cotangent[:-1]) == 0  # one row short of the threshold
