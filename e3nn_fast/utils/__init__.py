"""Testing and batching helpers (drop-in for ``e3nn_jax.utils``)."""

from e3nn_fast.utils.equivariance import assert_equivariant, equivariance_test
from e3nn_fast.utils.dtype import assert_output_dtype_matches_input_dtype
from e3nn_fast.utils.vmap import vmap

__all__ = [
    "assert_equivariant",
    "equivariance_test",
    "assert_output_dtype_matches_input_dtype",
    "vmap",
]
