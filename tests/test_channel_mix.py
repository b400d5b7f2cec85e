"""The weight mixing of ``uvw`` paths as a multilinear form (e3nn_fast/xla/channel_mix.py): per-row and shared
weights, the unrolled and ``dot`` forms, against a plain einsum, with gradients of first and second order, jax.jvp,
forward-over-reverse and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bilinear_derivatives import assert_derivatives_match

from e3nn_fast.xla.channel_mix import UNROLLED_MAX_PAIRS, channel_mix
from e3nn_fast.xla.stage_b import DOT_MIN_COMPONENTS

# (pairs q, components k, output channels w, weights per row): the unrolled forward (q <= UNROLLED_MAX_PAIRS) and
# its dot, the unrolled weight gradient (k < DOT_MIN_COMPONENTS) and its dot, and shared weights.
CASES = [
    (3, 5, 4, True),
    (1, 1, 7, True),
    (UNROLLED_MAX_PAIRS + 1, 3, 2, True),
    (4, DOT_MIN_COMPONENTS + 1, 3, True),
    (5, 3, 4, False),
    (2, DOT_MIN_COMPONENTS + 1, 3, False),
]


def reference(z, weight):
    return jnp.einsum("...qk,...qw->...wk", z, weight)


def operands(q, k, w, per_row, lead=(6,), seed=0):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.standard_normal(lead + (q, k)))
    weight = jnp.asarray(rng.standard_normal((lead if per_row else ()) + (q, w)))
    return z, weight


def test_the_cases_reach_every_form():
    per_row = [case for case in CASES if case[3]]
    assert {q > UNROLLED_MAX_PAIRS for q, *_ in per_row} == {True, False}
    assert {k >= DOT_MIN_COMPONENTS for _, k, *_ in per_row} == {True, False}
    assert any(not case[3] for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_first_and_second_derivatives(case):
    z, weight = operands(*case)
    np.testing.assert_allclose(jax.jit(channel_mix)(z, weight), reference(z, weight), rtol=1e-12, atol=1e-12)

    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(reference(z, weight).shape))
    assert_derivatives_match(channel_mix, reference, z, weight, cotangent)


@pytest.mark.parametrize("mapped_weights", [True, False])
def test_vmap_folds_into_rows(mapped_weights):
    """Under ``vmap`` the rows are the mapped axis: a weight matrix per element becomes per-row weights, a shared
    matrix stays shared; both, and their gradients, equal the einsum."""
    z, weight = operands(4, 3, 5, True, lead=(7,))
    if not mapped_weights:
        weight = weight[0]
    in_axes = (0, 0 if mapped_weights else None)
    got = jax.jit(jax.vmap(channel_mix, in_axes=in_axes))(z, weight)
    np.testing.assert_allclose(got, reference(z, weight), rtol=1e-12, atol=1e-12)
    grads = jax.grad(lambda z, w: jnp.sum(jax.vmap(channel_mix, in_axes=in_axes)(z, w) ** 3), argnums=(0, 1))(z, weight)
    want = jax.grad(lambda z, w: jnp.sum(reference(z, w) ** 3), argnums=(0, 1))(z, weight)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_per_element_gradients_of_shared_weights():
    """``vmap`` of the gradient w.r.t. one shared matrix (per-example gradients): each element's gradient is its
    rows' sum, folded into one call of the per-row form and summed per element."""
    z, weight = operands(4, 3, 5, False, lead=(6, 2))
    per_element = jax.vmap(jax.grad(lambda z, w: jnp.sum(channel_mix(z, w) ** 2), argnums=1), in_axes=(0, None))
    want = jax.vmap(jax.grad(lambda z, w: jnp.sum(reference(z, w) ** 2), argnums=1), in_axes=(0, None))(z, weight)
    np.testing.assert_allclose(jax.jit(per_element)(z, weight), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("k", "conditionals"), [(3, 1), (1, 0)])
def test_unrolled_forward_over_several_components_is_computed_apart(k, conditionals):
    """The per-row unrolled forward is written ``(k, w)`` in a conditional (what ``computed_apart`` inserts) when
    ``k > 1`` and inline when ``(k, w)`` is already the output's layout; both equal the einsum."""
    z, weight = operands(4, k, 5, True)
    text = jax.jit(channel_mix).lower(z, weight).as_text()
    assert text.count("stablehlo.case") + text.count("stablehlo.if") == conditionals
    np.testing.assert_allclose(jax.jit(channel_mix)(z, weight), reference(z, weight), rtol=1e-12, atol=1e-12)


def test_mismatched_shapes_are_errors():
    z, weight = operands(3, 5, 4, True)
    with pytest.raises(ValueError, match="channel pairs"):
        channel_mix(z, weight[:, :2])
    with pytest.raises(ValueError, match="leading axes"):
        channel_mix(z, weight[:3])


def test_16_bit_inputs_accumulate_in_float32():
    z, weight = (x.astype(jnp.bfloat16) for x in operands(40, 3, 6, True, lead=(32,), seed=2))
    got = np.asarray(channel_mix(z, weight).astype(jnp.float32))
    want = np.asarray(reference(z.astype(jnp.float32), weight.astype(jnp.float32)).astype(jnp.bfloat16), np.float32)
    assert channel_mix(z, weight).dtype == jnp.bfloat16
    np.testing.assert_allclose(got, want, rtol=2.0**-7, atol=2.0**-7 * np.abs(want).max())
    assert np.mean(got == want) > 0.97
