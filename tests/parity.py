"""Shared by the parity tests: the same random data for e3nn_fast and e3nn-jax, and the comparison of their outputs."""

import e3nn_jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray


def tol(dtype):
    # float32 results may differ from e3nn-jax's in the last bits (equivalent but differently ordered operations)
    return dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)


def random_inputs(irreps, leading_shape, dtype, seed=0):
    """The same random data as an e3nn_fast and an e3nn_jax IrrepsArray."""
    irreps = str(Irreps(irreps))
    array = np.random.default_rng(seed).normal(size=leading_shape + (Irreps(irreps).dim,)).astype(dtype)
    return IrrepsArray(irreps, jnp.asarray(array)), e3nn_jax.IrrepsArray(irreps, jnp.asarray(array))


def assert_same(ours, ref, dtype, *, zero_flags: bool = True):
    """Same irreps, shape, dtype and values (and zero flags, unless ``zero_flags=False``)."""
    assert str(ours.irreps) == str(ref.irreps)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == dtype
    if zero_flags:
        assert tuple(ours.zero_flags) == tuple(ref.zero_flags)
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), **tol(dtype))
