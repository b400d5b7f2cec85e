"""``jax.export`` with a symbolic batch size, as e3nn-jax supports it: the exported function runs at any batch size
and gives the same numbers as the function itself (the dispatcher cannot compare a symbolic size with a measured
crossover, so it keeps the jnp executor; leading shapes broadcast by JAX's rule, which takes symbolic sizes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import e3nn_fast as e3nn
from e3nn_fast import dispatch


def _spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


CASES = {
    "tensor_product": (
        lambda a, b: e3nn.tensor_product(e3nn.IrrepsArray("4x0e+4x1o", a), e3nn.IrrepsArray("0e+1o", b)).array,
        (16, 4)),
    "tensor_product_filtered": (
        lambda a, b: e3nn.tensor_product(e3nn.IrrepsArray("4x0e+4x1o", a), e3nn.IrrepsArray("0e+1o+2e", b),
                                         filter_ir_out=["0e", "1o"]).array,
        (16, 9)),
    "elementwise_tensor_product": (
        lambda a, b: e3nn.elementwise_tensor_product(e3nn.IrrepsArray("4x0e+4x1o", a),
                                                     e3nn.IrrepsArray("4x1o+4x0e", b)).array,
        (16, 16)),
    "tensor_square": (lambda a: e3nn.tensor_square(e3nn.IrrepsArray("4x0e+4x1o", a)).array, (16,)),
    "gate": (lambda a: e3nn.gate(e3nn.IrrepsArray("8x0e+4x0e+4x1o", a)).array, (24,)),
    "irreps_array_product": (
        lambda a, b: (e3nn.IrrepsArray("4x0e", a) * e3nn.IrrepsArray("4x1o", b)).array, (4, 12)),
    "dot": (lambda a, b: e3nn.dot(e3nn.IrrepsArray("4x1o", a), e3nn.IrrepsArray("4x1o", b)).array, (12, 12)),
    "scalar_activation": (lambda a: e3nn.scalar_activation(e3nn.IrrepsArray("4x0e", a), [jax.nn.silu]).array, (4,)),
    "norm_activation": (lambda a: e3nn.norm_activation(e3nn.IrrepsArray("4x1o", a), [jax.nn.silu]).array, (12,)),
    "spherical_harmonics": (
        lambda v: e3nn.spherical_harmonics([0, 1, 2, 3], e3nn.IrrepsArray("1o", v), normalize=True).array, (3,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_with_a_symbolic_batch_size(name):
    fn, widths = CASES[name]
    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(fn))(*[_spec(batch, width) for width in widths])
    for rows in (1, 5):
        keys = jax.random.split(jax.random.PRNGKey(rows), len(widths))
        args = [jax.random.normal(key, (rows, width), jnp.float32) for key, width in zip(keys, widths)]
        np.testing.assert_allclose(exported.call(*args), fn(*args), rtol=1e-5, atol=1e-6)


def test_problem_size_of_symbolic_factors_is_unknown():
    assert dispatch.problem_size(3, 4, 5) == 60
    assert dispatch.problem_size() == 1
    (batch,) = export.symbolic_shape("batch")
    assert dispatch.problem_size(batch, 4) == 0  # no crossover is compared with it: auto keeps jnp
    assert dispatch.choose("tensor_product", size=dispatch.problem_size(batch, 4)) in ("jnp", "reference")


def test_export_of_the_symmetric_contraction_with_a_symbolic_node_count():
    # the jnp executor's row loop needs a concrete row count; a symbolic one runs the rows in one pass
    from e3nn_fast.symmetric_contraction import symmetric_contraction, symmetric_contraction_weight_shapes

    irreps, orders, channels = "0e+1o", (1, 2, 3), 4
    shapes = symmetric_contraction_weight_shapes(irreps, channels, 3, orders, "0e+1o")
    rng = np.random.default_rng(0)
    weights = {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in shapes.items()}

    def contract(x, species):
        return symmetric_contraction(e3nn.IrrepsArray(irreps, x), species, weights, orders, "0e+1o").array

    (nodes,) = export.symbolic_shape("nodes")
    exported = export.export(jax.jit(contract))(_spec(nodes, channels, 4),
                                                jax.ShapeDtypeStruct((nodes,), jnp.int32))
    for rows in (1, 7):
        x = jnp.asarray(rng.normal(size=(rows, channels, 4)), jnp.float32)
        species = jnp.asarray(rng.integers(0, 3, size=(rows,)), jnp.int32)
        np.testing.assert_allclose(exported.call(x, species), contract(x, species), rtol=1e-5, atol=1e-6)


def test_export_of_the_haiku_symmetric_tensor_product():
    import haiku as hk

    module = hk.without_apply_rng(hk.transform(
        lambda x: e3nn.haiku.SymmetricTensorProduct((1, 2, 3), keep_irrep_out="0e+1o")(
            e3nn.IrrepsArray("0e+1o", x.reshape(x.shape[0], 4, 4))).array))
    params = module.init(jax.random.PRNGKey(0), jnp.ones((2, 16), jnp.float32))
    apply = lambda x: module.apply(params, x)  # noqa: E731
    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(apply))(_spec(batch, 16))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16), jnp.float32)
    np.testing.assert_allclose(exported.call(x), apply(x), rtol=1e-5, atol=1e-6)


def test_message_passing_names_a_symbolic_edge_count_and_the_composition_exports():
    from e3nn_fast.message_passing import message_passing, message_passing_irreps_out

    irreps_in, irreps_sh = "4x0e+4x1o", "0e+1o"
    num_weights = message_passing_irreps_out(irreps_in, irreps_sh).num_irreps
    (edges,) = export.symbolic_shape("edges")
    specs = (_spec(5, 16), _spec(edges, 4), _spec(edges, num_weights),
             jax.ShapeDtypeStruct((edges,), jnp.int32), jax.ShapeDtypeStruct((edges,), jnp.int32))

    def fused(x, sh, w, senders, receivers):
        return message_passing(e3nn.IrrepsArray(irreps_in, x), e3nn.IrrepsArray(irreps_sh, sh), w, senders,
                               receivers, num_nodes=5).array

    def composed(x, sh, w, senders, receivers):
        messages = e3nn.tensor_product(e3nn.IrrepsArray(irreps_in, x)[senders], e3nn.IrrepsArray(irreps_sh, sh))
        return e3nn.scatter_sum(messages * w, dst=receivers, output_size=5).array

    with pytest.raises(TypeError, match="number of edges must be concrete"):
        export.export(jax.jit(fused))(*specs)
    exported = export.export(jax.jit(composed))(*specs)
    rng = np.random.default_rng(0)
    args = (jnp.asarray(rng.normal(size=(5, 16)), jnp.float32), jnp.asarray(rng.normal(size=(9, 4)), jnp.float32),
            jnp.asarray(rng.normal(size=(9, num_weights)), jnp.float32),
            jnp.asarray(rng.integers(0, 5, 9), jnp.int32), jnp.asarray(rng.integers(0, 5, 9), jnp.int32))
    np.testing.assert_allclose(exported.call(*args), fused(*args), rtol=1e-5, atol=1e-5)


def test_export_of_the_haiku_and_flax_linear_layers():
    import flax.linen as nn  # noqa: F401 - the linen module below needs flax
    import haiku as hk

    haiku_linear = hk.without_apply_rng(hk.transform(
        lambda x: e3nn.haiku.Linear("4x0e+2x1o")(e3nn.IrrepsArray("4x0e+4x1o", x)).array))
    haiku_params = haiku_linear.init(jax.random.PRNGKey(0), jnp.ones((2, 16), jnp.float32))
    flax_linear = e3nn.flax.Linear("4x0e+2x1o")
    flax_params = flax_linear.init(jax.random.PRNGKey(0), e3nn.IrrepsArray("4x0e+4x1o", jnp.ones((2, 16), jnp.float32)))
    layers = {
        "haiku": lambda x: haiku_linear.apply(haiku_params, x),
        "flax": lambda x: flax_linear.apply(flax_params, e3nn.IrrepsArray("4x0e+4x1o", x)).array,
    }
    (batch,) = export.symbolic_shape("batch")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16), jnp.float32)
    for name, apply in layers.items():
        exported = export.export(jax.jit(apply))(_spec(batch, 16))
        np.testing.assert_allclose(exported.call(x), apply(x), rtol=1e-5, atol=1e-6, err_msg=name)
