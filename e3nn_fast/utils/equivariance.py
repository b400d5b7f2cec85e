"""Numerical equivariance checks: compare ``f(g x)`` with ``g f(x)`` for a random element ``g`` of O(3)."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array, normal
from e3nn_fast.rotation import rand_matrix
from e3nn_fast.utils.dtype import pytree_real_dtype

__all__ = ["equivariance_test", "assert_equivariant"]


def _as_test_argument(arg: Any, position: int):
    """Irreps (or a string) stay irreps, to be sampled; arrays become IrrepsArrays (plain arrays are scalars)."""
    if isinstance(arg, str):
        arg = Irreps(arg)
    if isinstance(arg, jax.Array):
        arg = as_irreps_array(arg)
    if not isinstance(arg, (Irreps, IrrepsArray)):
        raise TypeError(
            f"equivariance_test: argument {position} must be an IrrepsArray, Irreps or irreps string, "
            f"got {type(arg).__name__}"
        )
    return arg


def _transform_output(out: Any, R: jax.Array) -> Any:
    """Apply ``R`` to every IrrepsArray of the output pytree; anything else is an error (its symmetry is unknown)."""

    def transform(x):
        if not isinstance(x, IrrepsArray):
            raise TypeError(
                f"equivariance_test: the function must return IrrepsArrays (or a pytree of them), got "
                f"{type(x).__name__}"
            )
        return x.transform_by_matrix(R)

    return jax.tree_util.tree_map(transform, out, is_leaf=lambda x: isinstance(x, IrrepsArray))


def equivariance_test(fun: Callable[..., Any], rng_key: jax.Array, *args) -> Tuple[Any, Any]:
    r"""Evaluate ``fun`` on transformed inputs and transform its output, for one random element of O(3).

    Args:
        fun: function of IrrepsArrays returning an IrrepsArray (or a pytree of them).
        rng_key: PRNG key; draws the inputs given as irreps, then the transformation.
        *args: IrrepsArrays (plain arrays are scalars ``0e``), or irreps (also strings) for which a random normal
            input is drawn, in the dtype of the given arrays (float32 if none).

    Returns:
        ``(fun(R x), R fun(x))`` where ``R`` is a random rotation composed with the inversion; they are equal (up to
        rounding) when ``fun`` is equivariant.

    Raises:
        TypeError: an argument or an output is not of a supported kind.
    """
    args = [_as_test_argument(arg, i) for i, arg in enumerate(args)]

    arrays = [arg for arg in args if isinstance(arg, IrrepsArray)]
    dtype = pytree_real_dtype(arrays)
    if not jnp.issubdtype(dtype, jnp.floating):  # e.g. only integer or no arrays given
        dtype = jnp.dtype(jnp.float32)

    inputs = []
    for arg in args:
        if isinstance(arg, Irreps):
            key, rng_key = jax.random.split(rng_key)
            arg = normal(arg, key, dtype=dtype)
        inputs.append(arg)

    R = -rand_matrix(rng_key, (), dtype=dtype)  # a random rotation times the inversion: a generic element of O(3)

    out_of_transformed = fun(*[x.transform_by_matrix(R) for x in inputs])
    transformed_out = _transform_output(fun(*inputs), R)
    return out_of_transformed, transformed_out


def assert_equivariant(
    fun: Callable[..., Any],
    rng_key: jax.Array,
    *args,
    atol: float = 1e-6,
    rtol: float = 1e-6,
) -> None:
    r"""Assert that ``fun`` is O(3)-equivariant on the given (or randomly drawn) inputs.

    Arguments as in :func:`equivariance_test`; ``atol`` and ``rtol`` are the tolerances of the comparison.

    Raises:
        AssertionError: the outputs differ (irreps, shapes or values beyond the tolerances).
    """
    out1, out2 = equivariance_test(fun, rng_key, *args)

    def is_irreps_array(x):
        return isinstance(x, IrrepsArray)

    leaves1, tree1 = jax.tree_util.tree_flatten(out1, is_leaf=is_irreps_array)
    leaves2, tree2 = jax.tree_util.tree_flatten(out2, is_leaf=is_irreps_array)
    if tree1 != tree2:
        raise AssertionError(f"assert_equivariant: the outputs have different structures: {tree1} vs {tree2}")
    for i, (a, b) in enumerate(zip(leaves1, leaves2)):
        if a.irreps != b.irreps:
            raise AssertionError(f"assert_equivariant: output {i} has irreps {a.irreps} vs {b.irreps}")
        np.testing.assert_allclose(
            np.asarray(a.array),
            np.asarray(b.array),
            atol=atol,
            rtol=rtol,
            err_msg=f"assert_equivariant: output {i} ({a.irreps}) is not equivariant",
        )
