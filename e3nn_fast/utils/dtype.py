"""dtype bookkeeping for pytrees, and the check that a function keeps the float precision of its inputs."""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["pytree_real_dtype", "assert_output_dtype_matches_input_dtype"]


def pytree_real_dtype(*trees: Any, default=jnp.float32) -> jnp.dtype:
    """The dtype JAX gives to a sum over all the leaves' real parts (``default`` when there are no leaves).

    Python scalars are weakly typed and do not widen the result, exactly as in JAX arithmetic.
    """
    leaves = jax.tree_util.tree_leaves(trees)
    if not leaves:
        return jnp.dtype(default)

    def total(xs):
        return functools.reduce(operator.add, [jnp.sum(jnp.real(x)) for x in xs])

    return jax.eval_shape(total, leaves).dtype


def _cast_float(x: Any, dtype) -> Any:
    """Cast floating (and the parts of complex) leaves to ``dtype``; leave the others alone."""
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind == "f":
        return x.astype(dtype)
    if kind == "c":
        return x.real.astype(dtype) + 1j * x.imag.astype(dtype)
    return x


def assert_output_dtype_matches_input_dtype(fun: Callable, *args, **kwargs) -> None:
    """Check that ``fun(*args, **kwargs)`` computes in the float precision of its inputs.

    Checked abstractly (``jax.eval_shape``, nothing runs): for the given inputs, then with every float input cast to
    float32 and to float64, the (real) dtype of the outputs must equal that of the inputs.

    Raises:
        ValueError: ``jax_enable_x64`` is off (float64 cannot be tested).
        AssertionError: some precision is not preserved (the message shows the input and output dtypes).
    """
    if not jax.config.read("jax_enable_x64"):
        raise ValueError("assert_output_dtype_matches_input_dtype requires jax_enable_x64=True")

    def check(args, kwargs, expected):
        out = jax.eval_shape(fun, *args, **kwargs)
        got = pytree_real_dtype(out, default=expected)
        if got != expected:
            in_dtypes = jax.tree_util.tree_map(lambda x: getattr(x, "dtype", type(x)), (args, kwargs))
            out_dtypes = jax.tree_util.tree_map(lambda x: x.dtype, out)
            raise AssertionError(
                f"Expected {jnp.dtype(expected)} -> {jnp.dtype(expected)}. Got {in_dtypes} -> {out_dtypes}"
            )

    check(args, kwargs, pytree_real_dtype(args, kwargs))
    for dtype in (jnp.float32, jnp.float64):
        cast = functools.partial(_cast_float, dtype=dtype)
        check(jax.tree_util.tree_map(cast, args), jax.tree_util.tree_map(cast, kwargs), jnp.dtype(dtype))
