"""Framework-free parameter plumbing shared by the haiku, flax.linen and flax.nnx modules.

Every module of e3nn_fast asks for its parameters through a callback ``get_parameter(name, shape, init_std, dtype)``
while its forward pass runs.  haiku and linen create parameters lazily, on that first call, so their callback simply
forwards to ``hk.get_parameter`` / ``Module.param``.  nnx creates parameters eagerly in the constructor, before any
input exists: :func:`record_parameters` runs the *same* forward pass abstractly (``jax.eval_shape``, so no FLOPs) on
an example input with a recording callback, and returns the :class:`ParameterSpec` list the module will ask for, in
order.  Names, shapes and initialisation scales are therefore identical in all three frameworks by construction; no
framework restates them.

Also here: :func:`fully_connected_module_call`, the forward pass of a ``FullyConnectedTensorProduct`` module (the
analogue of :func:`e3nn_fast.linear.linear_module_call`), shared by the haiku and nnx modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array
from e3nn_fast.legacy.fully_connected import FunctionalFullyConnectedTensorProduct

__all__ = [
    "ParameterSpec",
    "record_parameters",
    "fully_connected_parameter_name",
    "fully_connected_module_call",
]

# ``get_parameter(name, shape, init_std, dtype)`` returns the (possibly freshly initialised) parameter array.
GetParameter = Callable[[str, Tuple[int, ...], Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One parameter a module asks for.

    Attributes:
        name: the parameter's name, e.g. ``'w[0,0] 5x0e,1x0e'``.
        shape: its shape.
        dtype: the dtype the module asked for (the dtype of the example input).
        init_std: standard deviation of the default normal initialiser (0: the parameter starts at zero).
    """

    name: str
    shape: Tuple[int, ...]
    dtype: jnp.dtype
    init_std: float


def record_parameters(forward: Callable[..., Any], *example_args: Any) -> List[ParameterSpec]:
    """List the parameters that ``forward(get_parameter, *example_args)`` asks for, in the order it asks.

    ``example_args`` are pytrees of arrays or ``jax.ShapeDtypeStruct``; the pass is only traced, never run.
    A name asked for twice must have the same shape both times and is listed once (haiku and linen would also hand
    back the same parameter).
    """
    specs: Dict[str, ParameterSpec] = {}

    def run(zero: jax.Array, *args: Any) -> None:
        def get_parameter(name: str, shape: Tuple[int, ...], init_std: Any, dtype: Any) -> jax.Array:
            shape = tuple(int(s) for s in shape)
            # init_std is built from Python numbers only; compile-time evaluation (below) keeps it concrete.
            spec = ParameterSpec(str(name), shape, jnp.dtype(dtype), float(init_std))
            known = specs.setdefault(spec.name, spec)
            if known.shape != spec.shape:
                raise ValueError(f"parameter {name!r} requested with shapes {known.shape} and {spec.shape}")
            # A traced zero (not a constant) so that no maths on the parameters runs eagerly during recording.
            return jnp.broadcast_to(zero.astype(dtype), shape)

        # ensure_compile_time_eval: expressions of constants only (the initialisation scales) stay concrete, while
        # everything touching the example input remains abstract.
        with jax.ensure_compile_time_eval():
            forward(get_parameter, *args)

    jax.eval_shape(run, jax.ShapeDtypeStruct((), jnp.float32), *example_args)
    return list(specs.values())


def fully_connected_parameter_name(tp: Any, ins: Any) -> str:
    """e3nn's parameter name, e.g. ``'w[0,1,2] 4x0e,2x1o,8x1o'``: segment indices then the segments themselves."""
    return (
        f"w[{ins.i_in1},{ins.i_in2},{ins.i_out}] "
        f"{tp.irreps_in1[ins.i_in1]},{tp.irreps_in2[ins.i_in2]},{tp.irreps_out[ins.i_out]}"
    )


def fully_connected_module_call(
    irreps_out: Irreps,
    irreps_in1: Optional[Irreps],
    irreps_in2: Optional[Irreps],
    get_parameter: GetParameter,
    x1: Any,
    x2: Any,
    **kwargs: Any,
) -> IrrepsArray:
    """Forward pass of a ``FullyConnectedTensorProduct`` module; the framework only supplies ``get_parameter``.

    The leading axes of ``x1`` and ``x2`` broadcast; inputs are re-cut into ``irreps_in1`` / ``irreps_in2`` when
    given; segments known to be zero get no parameters (as in e3nn-jax).  One ``uvw`` weight of shape
    ``(mul1, mul2, mul_out)`` per allowed coupling, requested in instruction order with its ``weight_std`` and the
    dtype of ``x1``.  ``kwargs`` (``custom_einsum_jvp``, ``fused``, ``sparse``) are accepted for compatibility.
    """
    unknown = set(kwargs) - {"custom_einsum_jvp", "fused", "sparse"}
    if unknown:
        raise TypeError(f"FullyConnectedTensorProduct got unexpected keyword arguments {sorted(unknown)}")
    x1, x2 = as_irreps_array(x1), as_irreps_array(x2)
    try:
        leading_shape = jnp.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except ValueError as error:
        raise ValueError(
            f"FullyConnectedTensorProduct: leading shapes {x1.shape[:-1]} and {x2.shape[:-1]} do not broadcast"
        ) from error
    x1 = x1.broadcast_to(leading_shape + (-1,))
    x2 = x2.broadcast_to(leading_shape + (-1,))
    if irreps_in1 is not None:
        x1 = x1.rechunk(irreps_in1)
    if irreps_in2 is not None:
        x2 = x2.rechunk(irreps_in2)
    x1 = x1.remove_zero_chunks().simplify()
    x2 = x2.remove_zero_chunks().simplify()

    tp = FunctionalFullyConnectedTensorProduct(x1.irreps, x2.irreps, Irreps(irreps_out).simplify())
    weights = [
        get_parameter(fully_connected_parameter_name(tp, ins), tuple(ins.path_shape), ins.weight_std, x1.dtype)
        for ins in tp.instructions
    ]
    # Batched directly (rather than vmapping left_right): same numbers, one executor call for the whole batch.
    return tp.evaluate(weights, x1, x2).rechunk(irreps_out)
