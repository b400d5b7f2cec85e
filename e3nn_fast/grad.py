"""``grad``: the Jacobian of an equivariant function, reduced into irreps (drop-in for ``e3nn_jax.grad``).

The Jacobian block between an output segment ``mul_out x ir_out`` and an input segment ``mul_in x ir_in`` transforms
as ``ir_out (x) ir_in``; projecting it onto each ``ir`` of ``ir_out * ir_in`` with the Clebsch-Gordan block
``C[ir_out, ir_in, ir]`` scaled by ``sqrt(2 l + 1)`` gives ``mul_out * mul_in`` copies of ``ir`` (channels ordered
output-major).  The result has leading axes ``leading_out + leading_in``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.so3 import clebsch_gordan

__all__ = ["grad"]


def _reduce_block(block: jax.Array, mul_ir_out, mul_ir_in, leading_out, leading_in):
    """Project one Jacobian block ``(*leading_out, dim_out, *leading_in, dim_in)`` onto the irreps of
    ``ir_out * ir_in``; returns ``[(mul_ir, chunk), ...]`` with chunks ``(*leading_out, *leading_in, mul, 2l+1)``."""
    (mul_out, ir_out), (mul_in, ir_in) = mul_ir_out, mul_ir_in
    block = block.reshape(
        (math.prod(leading_out), mul_out, ir_out.dim, math.prod(leading_in), mul_in, ir_in.dim)
    )
    out = []
    for ir in ir_out * ir_in:
        cg = jnp.asarray(math.sqrt(ir.dim) * clebsch_gordan(ir_out.l, ir_in.l, ir.l), dtype=block.dtype)
        chunk = jnp.einsum("aUibVj,ijk->abUVk", block, cg)
        out.append(((mul_out * mul_in, ir), chunk.reshape(leading_out + leading_in + (mul_out * mul_in, ir.dim))))
    return out


def grad(
    fun: Callable[..., IrrepsArray],
    argnums: int = 0,
    has_aux: bool = False,
    regroup_output: bool = True,
) -> Callable[..., IrrepsArray]:
    r"""The equivariant gradient of ``fun`` with respect to its argument ``argnums``.

    Args:
        fun: an equivariant function whose argument ``argnums`` is an IrrepsArray and which returns an IrrepsArray
            (or ``(IrrepsArray, aux)`` with ``has_aux``).
        argnums: which positional argument to differentiate (a single int).
        has_aux: ``fun`` returns a pair ``(output, aux)``; the gradient function then returns ``(gradient, aux)``.
        regroup_output: sort the output irreps and merge equal ones.

    Returns:
        A function with the signature of ``fun`` returning the Jacobian as an IrrepsArray: for every output segment
        ``mul_out x ir_out`` and input segment ``mul_in x ir_in``, the irreps ``(mul_out * mul_in) x ir`` for each
        ``ir`` in ``ir_out * ir_in``, with leading axes ``output_leading + input_leading``.

    Example:
        >>> import jax.numpy as jnp
        >>> from e3nn_fast.irreps_array import IrrepsArray, norm
        >>> f = grad(lambda x: 0.5 * norm(x, squared=True))
        >>> f(IrrepsArray("1o", jnp.array([3.0, 0.0, 4.0])))
        1x1o [3. 0. 4.]
    """
    if not isinstance(argnums, int) or isinstance(argnums, bool):
        raise ValueError(f"grad: argnums must be an int, got {argnums!r}")

    def gradient(*args, **kwargs):
        if not -len(args) <= argnums < len(args):
            raise ValueError(f"grad: argnums={argnums} but the function was called with {len(args)} arguments")
        x = args[argnums]
        if not isinstance(x, IrrepsArray):
            raise TypeError(f"grad: argument {argnums} must be an IrrepsArray, got {type(x).__name__}")
        irreps_in, leading_in = x.irreps, x.shape[:-1]
        found = {}

        def flat_fun(array):
            # Differentiate with respect to the full array: blocks flagged zero are variables too.
            call_args = list(args)
            call_args[argnums] = IrrepsArray(irreps_in, array)
            result = fun(*call_args, **kwargs)
            y, aux = result if has_aux else (result, None)
            if not isinstance(y, IrrepsArray):
                raise TypeError(f"grad: the function must return an IrrepsArray, got {type(y).__name__}")
            found["irreps_out"], found["leading_out"] = y.irreps, y.shape[:-1]
            return y.array, aux

        jacobian, aux = jax.jacobian(flat_fun, has_aux=True)(x.array)
        irreps_out, leading_out = found["irreps_out"], found["leading_out"]

        irreps, chunks = [], []
        for mul_ir_out, slice_out in zip(irreps_out, irreps_out.slices()):
            for mul_ir_in, slice_in in zip(irreps_in, irreps_in.slices()):
                block = jacobian[(Ellipsis, slice_out) + (slice(None),) * len(leading_in) + (slice_in,)]
                for mul_ir, chunk in _reduce_block(block, mul_ir_out, mul_ir_in, leading_out, leading_in):
                    irreps.append(mul_ir)
                    chunks.append(chunk)
        output = from_chunks(Irreps(irreps), chunks, leading_out + leading_in, x.dtype)
        if regroup_output:
            output = output.regroup()
        return (output, aux) if has_aux else output

    return gradient
