"""Let functions of IrrepsArrays also answer "what irreps would come out?" when given bare irreps.

``e3nn.tensor_product("2x1e + 2e", "2e")`` returns the output irreps without data, as in e3nn-jax: the function is
traced abstractly (``jax.eval_shape``) on zero-filled inputs of those irreps, so no arithmetic runs.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irrep, Irreps


def _is_bare_irreps(x) -> bool:
    return isinstance(x, (Irreps, Irrep, str))


def accepts_bare_irreps(argnums: Sequence[int]) -> Callable:
    """Decorator: when every argument at ``argnums`` is an ``Irreps``/``Irrep``/string, return the output irreps."""

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not all(i < len(args) and _is_bare_irreps(args[i]) for i in argnums):
                return fn(*args, **kwargs)
            from e3nn_fast.irreps_array import IrrepsArray

            def on_zeros(*arrays):
                filled = list(args)
                for i, array in zip(argnums, arrays):
                    filled[i] = IrrepsArray(Irreps(args[i]), array)
                return fn(*filled, **kwargs)

            shapes = [jax.ShapeDtypeStruct((Irreps(args[i]).dim,), jnp.float32) for i in argnums]
            out_irreps = []

            def capture(*arrays):
                output = on_zeros(*arrays)
                out_irreps.append(output.irreps)
                return output.array

            jax.eval_shape(capture, *shapes)
            return out_irreps[0]

        return wrapper

    return decorator
