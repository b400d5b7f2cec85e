"""The forward join of an IrrepsArray's runs in one loop (``irreps_array._joined_in_one_loop``), used on a CPU for
outputs larger than the last-level cache: same values and derivatives as the plain join, chosen only where it
applies, and written as a concatenation along a major axis (the form XLA's CPU backend fuses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast import irreps_array
from jaxpr_equations import all_equations

IN1, IN2 = "8x0e+8x1o+8x2e", "0e+1o+2e"  # outputs of widths 8 * (2l + 1) in 5 runs: a common divisor of 8


def _join_in_one_loop_from_now(monkeypatch):
    """Take the one-loop join for every size from here on.  JAX caches the traces of custom-JVP functions (the join
    is one), so they are cleared here and after the test, or a trace made under the other setting would be reused."""
    monkeypatch.setattr(irreps_array, "ONE_LOOP_JOIN_MIN_BYTES", 0)
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _fresh_traces():
    yield
    jax.clear_caches()


def _inputs(rows=6):
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    return (e3nn.normal(IN1, key1, (rows,)), e3nn.normal(IN2, key2, (rows,)))


def _product(x1, x2):
    with e3nn.backend("jnp"):
        return e3nn.tensor_product(x1, x2)


def _concatenations(fn, *args):
    """``(output shape, dimension)`` of every ``concatenate`` in ``fn``'s jaxpr, nested jaxprs included."""
    return [(tuple(equation.outvars[0].aval.shape), equation.params["dimension"])
            for equation in all_equations(jax.make_jaxpr(fn)(*args)) if equation.primitive.name == "concatenate"]


def test_values_and_derivatives_match_the_plain_join(monkeypatch):
    x1, x2 = _inputs()

    def energy(a, b):
        out = _product(e3nn.IrrepsArray(IN1, a), e3nn.IrrepsArray(IN2, b)).array
        return jnp.sum(jnp.sin(out))

    plain = (_product(x1, x2).array, jax.grad(energy, (0, 1))(x1.array, x2.array),
             jax.jvp(energy, (x1.array, x2.array), (x1.array, x2.array)))
    _join_in_one_loop_from_now(monkeypatch)
    calls = []
    monkeypatch.setattr(irreps_array, "_joined_in_one_loop",
                        lambda *args, join=irreps_array._joined_in_one_loop: calls.append(1) or join(*args))
    one_loop = (_product(x1, x2).array, jax.grad(energy, (0, 1))(x1.array, x2.array),
                jax.jvp(energy, (x1.array, x2.array), (x1.array, x2.array)))
    assert calls  # the one-loop join was traced
    for ours, theirs in zip(jax.tree_util.tree_leaves(one_loop), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_the_join_is_a_major_axis_concatenation_only_when_it_applies(monkeypatch):
    irreps = e3nn.Irreps("8x0e+16x1o+8x1e+8x2e")  # runs of widths 8, 72 (1o and 1e together) and 40: divisor 8
    chunks = [jnp.ones((5, mul, ir.dim)) for mul, ir in irreps]
    join = lambda *c: e3nn.from_chunks(irreps, list(c), (5,)).array  # noqa: E731
    # a small output: the runs are joined along the flat minor axis, as before
    joins = _concatenations(join, *chunks)
    assert ((5, 120), 1) in joins and ((5, 15, 8), 1) not in joins
    _join_in_one_loop_from_now(monkeypatch)
    joins = _concatenations(join, *chunks)
    assert ((5, 15, 8), 1) in joins and ((5, 120), 1) not in joins  # (rows, width / 8, 8) joined along width / 8


def test_the_rule_refuses_what_xla_would_not_fuse_or_loop_well(monkeypatch):
    monkeypatch.setattr(irreps_array, "ONE_LOOP_JOIN_MIN_BYTES", 0)
    runs = lambda count, mul: [jnp.zeros((4, mul, 2 * l + 1)) for l in range(count)]  # noqa: E731
    assert irreps_array._joins_in_one_loop(runs(3, 8), (4,))
    assert not irreps_array._joins_in_one_loop(runs(1, 8), (4,))  # nothing to join
    assert not irreps_array._joins_in_one_loop(runs(irreps_array._MAX_RUN + 1, 8), (4,))  # XLA would not fuse it
    assert not irreps_array._joins_in_one_loop(runs(3, 4), (4,))  # widths 4, 12, 20: divisor 4 < 8
    monkeypatch.setattr(irreps_array, "ONE_LOOP_JOIN_MIN_BYTES", 32 * 2**20)
    assert not irreps_array._joins_in_one_loop(runs(3, 8), (4,))  # 288 bytes: below the cache-sized threshold
    assert irreps_array._joins_in_one_loop(runs(3, 8), (2**20 // 8,))  # 36 MiB
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not irreps_array._joins_in_one_loop(runs(3, 8), (2**20 // 8,))  # CPU only


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_from_chunks_with_the_one_loop_join(monkeypatch, dtype):
    _join_in_one_loop_from_now(monkeypatch)
    irreps = e3nn.Irreps("8x0e+16x1o+8x1e+8x2e")
    chunks = [jnp.arange(5 * mul * ir.dim, dtype=dtype).reshape(5, mul, ir.dim) + i for i, (mul, ir) in
              enumerate(irreps)]
    array = e3nn.from_chunks(irreps, chunks, (5,), dtype).array
    expected = jnp.concatenate([c.reshape(5, -1) for c in chunks], axis=-1)
    np.testing.assert_array_equal(np.asarray(array, np.float32), np.asarray(expected, np.float32))


def test_symbolic_sizes_keep_the_plain_join():
    # jax.export with a symbolic batch size: the byte count is unknown, so the rule must not compare it
    from jax import export

    (batch,) = export.symbolic_shape("batch")
    irreps = e3nn.Irreps("8x0e+16x1o+8x2e")
    join = lambda *c: e3nn.from_chunks(irreps, list(c), (c[0].shape[0],)).array  # noqa: E731
    specs = [jax.ShapeDtypeStruct((batch, mul, ir.dim), jnp.float32) for mul, ir in irreps]
    exported = export.export(jax.jit(join))(*specs)
    chunks = [jnp.full((3, mul, ir.dim), float(i), jnp.float32) for i, (mul, ir) in enumerate(irreps)]
    np.testing.assert_array_equal(exported.call(*chunks), join(*chunks))
