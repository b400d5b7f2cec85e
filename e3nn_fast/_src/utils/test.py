"""e3nn-jax's ``_src.utils.test`` path (compatibility only, see :mod:`e3nn_fast._src`).

e3nn-jax's own tests import ``assert_output_dtype_matches_input_dtype`` from here.
"""

from e3nn_fast.utils import assert_equivariant, assert_output_dtype_matches_input_dtype, equivariance_test

__all__ = ["assert_equivariant", "equivariance_test", "assert_output_dtype_matches_input_dtype"]
