"""gate: parity with e3nn-jax (irreps and values), equivariance, jit/grad and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

from e3nn_fast.activation import normalize_function, soft_odd
from e3nn_fast.gate import gate
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.utils import assert_equivariant
from oracle_cache import cached_e3nn_jax_normalize_function  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("cached_e3nn_jax_normalize_function")

DTYPES = [np.float32, np.float64]
# gates of both parities, scalars after the vectors, a gated-only input, scalars only, a mix needing block splits
IRREPS = [
    "12x0e + 3x0o + 2x1e + 1x2e",
    "2x1e + 3x0e + 1x0o",
    "2x0e + 0o + 1o + 1e + 2e",
    "3x0o + 2x1o + 0e",
    "4x0e + 2x0o",
]


from parity import random_inputs, tol  # noqa: E402,F401
from parity import assert_same as _assert_same  # noqa: E402


def assert_same(ours, ref, dtype):
    # gate parity compares irreps, shape, dtype and values (not zero flags), as it always has
    _assert_same(ours, ref, dtype, zero_flags=False)


@pytest.mark.parametrize("irreps", IRREPS + ["15x0e + 2x1e + 1x2e", "12x0e + 3x0o", "0e + 1o", "0o + 1o"])
def test_gate_output_irreps_match_e3nn_jax(irreps):
    assert gate(irreps) == Irreps(str(e3nn_jax.gate(irreps)))
    assert gate(Irreps(irreps)) == gate(irreps)


def test_gate_documented_examples():
    assert gate("15x0e + 2x1e + 1x2e") == Irreps("12x0e + 2x1e + 1x2e")
    assert gate("12x0e + 3x0o + 2x1e + 1x2e") == Irreps("12x0e + 2x1o + 1x2o")  # odd gates flip the parity
    assert gate("12x0e + 3x0o") == Irreps("12x0e + 3x0o")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("irreps", IRREPS)
def test_gate_matches_e3nn_jax(irreps, dtype):
    x, x_ref = random_inputs(irreps, (3, 2), dtype)
    assert_same(gate(x), e3nn_jax.gate(x_ref), dtype)


@pytest.mark.parametrize("normalize_act", [True, False])
def test_gate_custom_activations_match_e3nn_jax(normalize_act):
    acts = dict(even_act=jax.nn.silu, odd_act=jnp.tanh, even_gate_act=jnp.exp, odd_gate_act=jnp.cos)
    x, x_ref = random_inputs("3x0e + 2x0o + 1e + 2o", (4,), np.float64, seed=1)
    ours = gate(x, **acts, normalize_act=normalize_act)
    assert_same(ours, e3nn_jax.gate(x_ref, **acts, normalize_act=normalize_act), np.float64)
    # the 2 odd scalars are the gates; cos is even, so they gate without flipping the parity
    assert ours.irreps == Irreps("3x0e + 1e + 2o")
    # positional arguments in e3nn-jax's order
    same = gate(x, jax.nn.silu, jnp.tanh, jnp.exp, jnp.cos, normalize_act)
    np.testing.assert_array_equal(same.array, ours.array)


def test_gate_formula():
    """First scalars activated, last scalars gate the vectors (each gate multiplies one vector copy)."""
    gate_act = normalize_function(jax.nn.sigmoid)
    # 2 scalars, 2 vectors: both scalars are gates, nothing is activated directly
    x = IrrepsArray("2x0e + 2x1o", jnp.asarray(np.random.default_rng(2).normal(size=(8,))))
    y, a = gate(x), x.array
    assert y.irreps == Irreps("2x1o")
    np.testing.assert_allclose(y.array, jnp.concatenate([gate_act(a[0]) * a[2:5], gate_act(a[1]) * a[5:8]]))
    x = IrrepsArray("0o + 0e + 1e", jnp.array([0.5, -1.0, 1.0, 2.0, 3.0]))
    y = gate(x)
    np.testing.assert_allclose(
        y.array, jnp.concatenate([normalize_function(soft_odd)(jnp.array([0.5])), gate_act(-1.0) * x.array[2:]])
    )


def test_gate_equivariance_jit_grad():
    key = jax.random.PRNGKey(0)
    for irreps in ["12x0e + 3x0o + 2x1e + 1x2e", "2x1e + 3x0e + 1x0o"]:
        assert_equivariant(jax.jit(gate), key, irreps)
    x, _ = random_inputs("4x0e + 0o + 2x1o + 2e", (5,), np.float64)
    np.testing.assert_allclose(jax.jit(gate)(x).array, gate(x).array, rtol=1e-12)
    grad = jax.jit(jax.grad(lambda a: jnp.sum(gate(IrrepsArray(x.irreps, a)).array ** 2)))(x.array)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_gate_plain_array_is_scalars():
    a = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3)))
    np.testing.assert_allclose(gate(a).array, normalize_function(jax.nn.gelu)(a))


def test_gate_bad_input():
    with pytest.raises(ValueError, match="at least as many scalars"):
        gate("3x0e + 4x1e")
    x = IrrepsArray("0e + 0o + 2x1o", jnp.ones(8))
    with pytest.raises(ValueError, match="has 2 scalars"):
        gate(IrrepsArray("0e + 0o + 3x1o", jnp.ones(11)))
    with pytest.raises(TypeError, match="even_gate_act"):
        gate(x, even_gate_act="sigmoid")
    with pytest.raises(TypeError, match="odd_act"):
        gate(x, odd_act=None)
    with pytest.raises(TypeError, match="IrrepsArray"):
        gate([1.0, 2.0])
