"""Computing apart from consumers on XLA's CPU backend (e3nn_fast/xla/fusion_barrier.py), and where the jnp tensor
product uses it: the values are unchanged, and XLA keeps the conditional (were it folded, the flat-layout loops it
exists to avoid would come back without any test failing on values)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast.irreps import Irreps
from e3nn_fast.path_description import describe_full_tensor_product
from e3nn_fast.xla import stage_b
from e3nn_fast.xla.fusion_barrier import computed_apart, cotangent_apart, separates_on_this_backend
from e3nn_fast.xla.tensor_product import tensor_product


def _sum_of_products(x, y):
    return jnp.sum(x[:, :, :, None] * y[:, None, :, :], axis=2)


def _operands(rows):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal((rows, 6, 5))), jnp.asarray(rng.standard_normal((rows, 5, 3)))


def _apart_then_flat(x, y):
    together = computed_apart(lambda: _sum_of_products(x, y), x, (x.shape[0], 6, 3), x.dtype)
    return together.reshape(x.shape[0], 18) * 2.0


def test_the_compiled_program_keeps_the_conditional():
    """XLA's simplifier does not fold ``isnan(v) | ~isnan(v)``: the sum stays in its own branch, its loop writing
    ``(rows, 6, 3)``, and the consumer outside reads it (on jax 0.10.2's CPU backend)."""
    x, y = _operands(4)
    compiled = jax.jit(_apart_then_flat).lower(x, y).compile().as_text()
    assert "conditional(" in compiled
    np.testing.assert_allclose(jax.jit(_apart_then_flat)(x, y), 2.0 * _sum_of_products(x, y).reshape(4, 18),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.0, 1.0])
def test_every_probe_value_takes_the_computed_branch(value):
    """The predicate is true whatever the probed element holds: NaN and infinities included."""
    x, y = _operands(3)
    x = x.at[0, 0, 0].set(value)
    got = jax.jit(_apart_then_flat)(x, y)
    want = 2.0 * _sum_of_products(x, y).reshape(3, 18)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-12, atol=1e-12)


def test_no_conditional_for_empty_or_symbolic_operands():
    x, y = _operands(0)
    assert not separates_on_this_backend(x)
    assert _apart_then_flat(x, y).shape == (0, 18)
    from jax import export

    (rows,) = export.symbolic_shape("rows")
    assert not separates_on_this_backend(jax.ShapeDtypeStruct((rows, 6, 5), jnp.float32))
    specs = [jax.ShapeDtypeStruct((rows,) + a.shape[1:], a.dtype) for a in _operands(1)]
    exported = export.export(jax.jit(_apart_then_flat))(*specs)
    assert "stablehlo.case" not in exported.mlir_module()
    x, y = _operands(5)
    np.testing.assert_allclose(exported.call(x, y), _apart_then_flat(x, y), rtol=1e-12, atol=1e-12)


def test_under_vmap_and_grad():
    """Mapped (the predicate becomes a batched select: still the computed values) and differentiated."""
    x, y = _operands(4)
    stacked_x, stacked_y = jnp.stack([x, 2 * x]), jnp.stack([y, y])
    got = jax.jit(jax.vmap(_apart_then_flat))(stacked_x, stacked_y)
    np.testing.assert_allclose(got[1], 2.0 * _sum_of_products(2 * x, y).reshape(4, 18), rtol=1e-12, atol=1e-12)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(_apart_then_flat(x, y) ** 2)))(x)
    want = jax.grad(lambda x: jnp.sum((2.0 * _sum_of_products(x, y)) ** 2))(x)
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)


def _conditionals_in_product(irreps1, irreps2, rows, argnums=None):
    """Conditionals in the lowered forward of the jnp product, or of its value and gradient with respect to the
    inputs in ``argnums``."""
    description = describe_full_tensor_product(Irreps(irreps1), Irreps(irreps2), None, "component")
    rng = np.random.default_rng(1)
    chunks = [[jnp.asarray(rng.standard_normal((rows, mul, ir.dim))) for mul, ir in Irreps(irreps)]
              for irreps in (irreps1, irreps2)]
    weights = [None] * len(description.paths)

    def forward(chunks1, chunks2):
        return tensor_product(description, weights, chunks1, chunks2)

    def energy(chunks1, chunks2):
        return sum(jnp.sum(jnp.sin(c)) for c in forward(chunks1, chunks2) if c is not None)

    fn = forward if argnums is None else jax.value_and_grad(energy, argnums=argnums)
    jax.clear_caches()
    text = jax.jit(fn).lower(*chunks).as_text()
    return text.count("stablehlo.case") + text.count("stablehlo.if")


def test_a_single_path_product_computes_its_forward_apart(monkeypatch):
    """The product's only path has no output join to fuse into: its stage B is computed apart; with several paths
    (joined per output), none is."""
    monkeypatch.setattr(stage_b, "APART_MIN_BYTES", 0)
    assert _conditionals_in_product("4x2e", "1x1o", 5) == 0  # 2e x 1o: three paths (1o, 2o, 3o)
    assert _conditionals_in_product("4x0e", "1x1o", 5) == 1  # one path
    monkeypatch.setattr(stage_b, "APART_MIN_BYTES", 2**30)
    assert _conditionals_in_product("4x0e", "1x1o", 5) == 0  # too small to matter


def test_a_differentiated_single_path_product_computes_its_key_gradient_apart(monkeypatch):
    """Differentiated, the forward's ``z`` also feeds the backward and stays inline; the gradient of the key (here
    input 1, ``4x0e``: its channels never meet the CG block) is computed apart, nothing else adding to it."""
    monkeypatch.setattr(stage_b, "APART_MIN_BYTES", 0)
    assert _conditionals_in_product("4x0e", "1x1o", 5, argnums=1) == 0  # z inline, no key gradient
    assert _conditionals_in_product("4x0e", "1x1o", 5, argnums=0) == 1  # the key's gradient
    assert _conditionals_in_product("4x0e", "1x1o", 5, argnums=(0, 1)) == 1


def test_no_conditional_with_several_devices(monkeypatch):
    """With several devices the probed element could sit on one of them only: no boundary then."""
    from e3nn_fast.xla import fusion_barrier

    x, y = _operands(4)
    assert separates_on_this_backend(x)
    monkeypatch.setattr(fusion_barrier.jax, "device_count", lambda *args: 8)
    assert not separates_on_this_backend(x)
    jax.clear_caches()
    assert "stablehlo.case" not in jax.jit(_apart_then_flat).lower(x, y).as_text()


def test_single_path_message_passing_with_its_forward_apart(monkeypatch):
    """The fused message passing's scan body runs the jnp product: a single-path convolution's forward goes through
    the conditional there too, with the same values and gradient as the composition it fuses (on the reference
    executor)."""
    import e3nn_fast as e3nn
    from e3nn_fast.message_passing import message_passing

    monkeypatch.setattr(stage_b, "APART_MIN_BYTES", 0)
    rng = np.random.default_rng(3)
    senders = jnp.asarray(rng.integers(0, 5, 13), jnp.int32)
    receivers = jnp.asarray(rng.integers(0, 5, 13), jnp.int32)
    x = e3nn.IrrepsArray("3x1o", jnp.asarray(rng.standard_normal((5, 9))))
    sh = e3nn.IrrepsArray("1x1o", jnp.asarray(rng.standard_normal((13, 3))))
    w = jnp.asarray(rng.standard_normal((13, 3)))

    def fused(x):
        return message_passing(e3nn.IrrepsArray("3x1o", x), sh, w, senders, receivers, 5, filter_ir_out=["1e"],
                               edge_chunk_size=4).array

    def composed(x):  # on the reference executor: no conditional on this side
        with e3nn.backend("reference"):
            messages = e3nn.tensor_product(e3nn.IrrepsArray("3x1o", x)[senders], sh, filter_ir_out=["1e"]) * w
        return e3nn.scatter_sum(messages, dst=receivers, output_size=5).array

    jax.clear_caches()
    assert "stablehlo.case" in jax.jit(fused).lower(x.array).as_text()
    np.testing.assert_allclose(jax.jit(fused)(x.array), composed(x.array), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(fused(x)))))(x.array),
                               jax.grad(lambda x: jnp.sum(jnp.sin(composed(x))))(x.array), rtol=1e-12, atol=1e-12)


def _cotangent_apart_energy(x):
    return jnp.sum(jnp.sin(cotangent_apart(x) * 3.0).reshape(x.shape[0], -1) ** 2)


def test_cotangent_apart_is_the_identity_whose_gradient_is_computed_apart():
    """No boundary in the forward program; one in the gradient's, with the same gradient as without it, and the
    same values under jax.jvp, a second derivative and vmap of the gradient (the batched probe)."""
    x, _ = _operands(4)
    plain = lambda x: jnp.sum(jnp.sin(x * 3.0).reshape(x.shape[0], -1) ** 2)  # noqa: E731
    jax.clear_caches()
    assert "stablehlo.case" not in jax.jit(_cotangent_apart_energy).lower(x).as_text()
    gradient = jax.jit(jax.grad(_cotangent_apart_energy))
    assert "conditional(" in gradient.lower(x).compile().as_text()
    np.testing.assert_allclose(gradient(x), jax.grad(plain)(x), rtol=1e-12, atol=1e-12)

    tangent = jnp.cos(x)
    np.testing.assert_allclose(jax.jvp(jax.grad(_cotangent_apart_energy), (x,), (tangent,))[1],
                               jax.jvp(jax.grad(plain), (x,), (tangent,))[1], rtol=1e-10, atol=1e-10)
    stacked = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(_cotangent_apart_energy)))(stacked),
                               jax.vmap(jax.grad(plain))(stacked), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("irreps1", "irreps2", "apart"), [
    ("4x2e", "1x1o+1x2e", 1), ("4x0e+4x2e", "1x1o+1x2e", 1), ("4x1o+4x2e", "1x1o+1x2e", 2), ("4x1e", "1x0e", 0)])
def test_the_keys_of_several_paths_have_their_gradient_summed_apart(irreps1, irreps2, apart):
    """Each non-scalar input-1 chunk (the key: it has the channels) gets one boundary for its summed gradient; a
    scalar chunk's gradient is already flat and gets none, nor does a product of one path (which computes its key's
    gradient apart itself from ``APART_MIN_BYTES`` on); the forward has none."""
    assert _conditionals_in_product(irreps1, irreps2, 3) == 0
    assert _conditionals_in_product(irreps1, irreps2, 3, argnums=0) == apart


def test_the_keys_of_fully_connected_paths_are_not_wrapped():
    """``uvw`` paths (their ``z`` gradient is the channel mix's ``dot``) leave their keys' gradient inline."""
    from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct

    description = FunctionalFullyConnectedTensorProduct(Irreps("4x2e"), Irreps("2x1o+2x2e"), Irreps("3x1o+3x2e")
                                                        ).description
    assert {path.mode for path in description.paths} == {"uvw"}
    rng = np.random.default_rng(2)
    chunks1 = [jnp.asarray(rng.standard_normal((3, 4, 5)))]
    chunks2 = [jnp.asarray(rng.standard_normal((3, 2, d))) for d in (3, 5)]
    weights = [jnp.asarray(rng.standard_normal(path.weight_shape)) for path in description.paths]

    def energy(chunks1):
        return sum(jnp.sum(jnp.sin(c)) for c in tensor_product(description, weights, chunks1, chunks2)
                   if c is not None)

    jax.clear_caches()
    text = jax.jit(jax.grad(energy)).lower(chunks1).as_text()
    assert text.count("stablehlo.case") + text.count("stablehlo.if") == 0
