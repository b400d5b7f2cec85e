"""flax.nnx module of the fully connected tensor product; the forward pass is
:func:`e3nn_fast._parameters.fully_connected_module_call`, shared with the haiku module."""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from e3nn_fast._parameters import fully_connected_module_call, record_parameters
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.nnx._params import check_rngs, create_parameters, densify, parameter_value, to_irreps

__all__ = ["FullyConnectedTensorProduct"]


class FullyConnectedTensorProduct(nnx.Module):
    r"""Fully connected tensor product with learned weights (flax.nnx).

    Same layer as :class:`e3nn_fast.haiku.FullyConnectedTensorProduct`: every allowed coupling
    ``ir1 x ir2 -> ir_out`` between the (simplified) segments of the inputs and of ``irreps_out`` has a weight of
    shape ``(mul1, mul2, mul_out)``, initialised from a normal distribution with the path's ``weight_std``.

    Args:
        irreps_in1, irreps_in2: irreps of the two inputs (inputs must match them up to regrouping).
        irreps_out: output irreps.
        rngs: ``nnx.Rngs``; one key is drawn from ``rngs.params()``.
        param_dtype: dtype of the parameters (default float32, as haiku's module).

    Parameters live in ``self.params`` (an ``nnx.Dict``) under e3nn-jax's names ``'w[i1,i2,iout] <s1>,<s2>,<sout>'``,
    so a haiku module's parameter dict loads with ``nnx.update(module, {"params": haiku_params[module_name]})``.
    The initial values use linen's key derivation (there is no linen module to compare with; haiku draws its keys
    differently, so the same seed gives different, equally distributed, values).  Blocks of the input flagged as
    zero are treated as explicit zeros.

    Call as ``module(x1, x2)``; the leading axes of ``x1`` and ``x2`` broadcast.
    """

    def __init__(
        self,
        irreps_in1: Irreps,
        irreps_in2: Irreps,
        irreps_out: Irreps,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ):
        check_rngs(rngs, "FullyConnectedTensorProduct")
        self.irreps_in1 = to_irreps(irreps_in1, "FullyConnectedTensorProduct irreps_in1")
        self.irreps_in2 = to_irreps(irreps_in2, "FullyConnectedTensorProduct irreps_in2")
        self.irreps_out = to_irreps(irreps_out, "FullyConnectedTensorProduct irreps_out")
        example = [jax.ShapeDtypeStruct((irreps.dim,), param_dtype) for irreps in (self.irreps_in1, self.irreps_in2)]
        specs = record_parameters(self._recording_forward, *example)
        self.params = create_parameters(specs, rngs, param_dtype)

    def _recording_forward(self, get_parameter, x1: jax.Array, x2: jax.Array) -> IrrepsArray:
        return fully_connected_module_call(
            self.irreps_out,
            self.irreps_in1,
            self.irreps_in2,
            get_parameter,
            IrrepsArray(self.irreps_in1, x1),
            IrrepsArray(self.irreps_in2, x2),
        )

    def _get_parameter(self, name: str, shape: Tuple[int, ...], std: Any, dtype: Any) -> jax.Array:
        built_for = f"irreps_in1={self.irreps_in1}, irreps_in2={self.irreps_in2}"
        return parameter_value(self.params, name, shape, "FullyConnectedTensorProduct", built_for)

    def _checked_input(self, x: Any, irreps: Irreps, what: str) -> IrrepsArray:
        if not isinstance(x, IrrepsArray):
            raise TypeError(f"FullyConnectedTensorProduct: {what} must be an IrrepsArray, got {type(x).__name__}")
        if x.irreps.simplify() != irreps.simplify():
            raise ValueError(
                f"FullyConnectedTensorProduct: {what} has irreps {x.irreps}, the module was built for {irreps}"
            )
        return densify(x)

    def __call__(self, x1: IrrepsArray, x2: IrrepsArray, **kwargs: Any) -> IrrepsArray:
        """Weighted tensor product of ``x1`` and ``x2`` (leading axes broadcast), with irreps ``irreps_out``."""
        x1 = self._checked_input(x1, self.irreps_in1, "x1")
        x2 = self._checked_input(x2, self.irreps_in2, "x2")
        return fully_connected_module_call(
            self.irreps_out, self.irreps_in1, self.irreps_in2, self._get_parameter, x1, x2, **kwargs
        )
