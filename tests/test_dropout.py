"""haiku Dropout: same masks as e3nn-jax for the same key, whole irrep copies dropped, zero flags, bad input."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

from e3nn_fast.haiku.dropout import Dropout
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.utils import assert_equivariant


def random_inputs(irreps, shape, dtype, seed=0):
    irreps = str(Irreps(irreps))
    array = jnp.asarray(np.random.default_rng(seed).normal(size=shape + (Irreps(irreps).dim,)).astype(dtype))
    return IrrepsArray(irreps, array), e3nn_jax.IrrepsArray(irreps, array)


def apply_both(p, x, x_ref, key, is_training=True, **kwargs):
    ours = hk.transform(lambda r, x: Dropout(p, **kwargs)(r, x, is_training))
    ref = hk.transform(lambda r, x: e3nn_jax.haiku.Dropout(p, **kwargs)(r, x, is_training))
    assert ours.init(None, key, x) == {} == ref.init(None, key, x_ref)  # no parameters
    return ours.apply({}, None, key, x), ref.apply({}, None, key, x_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.8, 1.0])
def test_dropout_matches_e3nn_jax(p, dtype):
    x, x_ref = random_inputs("3x0e + 2x1o + 0o + 2e", (4,), dtype)
    y, y_ref = apply_both(p, x, x_ref, jax.random.PRNGKey(7))
    assert y.irreps == x.irreps and y.dtype == dtype
    assert y.zero_flags == tuple(y_ref.zero_flags)
    np.testing.assert_allclose(y.array, y_ref.array, rtol=1e-6)


def test_dropout_drops_whole_copies_with_scaling():
    x = IrrepsArray("50x1o", jnp.ones((2, 150)))
    y, _ = apply_both(0.4, x, e3nn_jax.IrrepsArray("50x1o", x.array), jax.random.PRNGKey(0))
    copies = y.chunks[0]  # [batch, copy, component]
    # every copy is either dropped or scaled by 1/(1-p), all components together, the same for the whole batch
    assert bool(jnp.all((copies == 0.0) | jnp.isclose(copies, 1 / 0.6)))
    assert bool(jnp.all(copies == copies[:, :, :1])) and bool(jnp.all(copies[0] == copies[1]))
    assert 0 < int(jnp.sum(copies[0, :, 0] == 0)) < 50


def test_dropout_eval_mode_irreps_and_zero_chunks():
    x, x_ref = random_inputs("2x0e + 1e", (3,), np.float64)
    y, _ = apply_both(0.5, x, x_ref, jax.random.PRNGKey(0), is_training=False)
    assert y is x
    y, y_ref = apply_both(0.5, x, x_ref, jax.random.PRNGKey(1), irreps="0e + 0e + 1e")
    assert y.irreps == Irreps("0e + 0e + 1e")
    np.testing.assert_allclose(y.array, y_ref.array)
    z = from_chunks("0e + 1o", [None, jnp.ones((3, 1, 3))], (3,))
    z_ref = e3nn_jax.from_chunks("0e + 1o", [None, jnp.ones((3, 1, 3))], (3,))
    y, y_ref = apply_both(0.5, z, z_ref, jax.random.PRNGKey(2))
    assert y.zero_flags == tuple(y_ref.zero_flags) == (True, False)
    np.testing.assert_allclose(y.array, y_ref.array)


def test_dropout_equivariant_and_jit():
    model = hk.transform(lambda r, x: Dropout(0.5)(r, x))
    key = jax.random.PRNGKey(3)
    assert_equivariant(jax.jit(lambda x: model.apply({}, None, key, x)), jax.random.PRNGKey(0), "4x0e + 3x1o + 2e")
    x, _ = random_inputs("4x0e + 3x1o", (2,), np.float32)
    np.testing.assert_array_equal(jax.jit(model.apply)({}, None, key, x).array, model.apply({}, None, key, x).array)


def test_dropout_bad_input():
    model = hk.transform(lambda r, x: Dropout(0.5)(r, x))
    with pytest.raises(TypeError, match="IrrepsArray"):
        model.apply({}, None, jax.random.PRNGKey(0), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="p must be a number"):
        x = IrrepsArray("0e", jnp.ones(1))
        hk.transform(lambda r, x: Dropout("0.5")(r, x)).init(None, jax.random.PRNGKey(0), x)
