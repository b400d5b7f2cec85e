"""MACE's product basis as a flax.nnx module; the maths is
:func:`e3nn_fast.symmetric_tensor_product.symmetric_contraction`, shared with the haiku module."""

from __future__ import annotations

from typing import Any, Callable, Optional, Set, Tuple, Union

import jax
import jax.numpy as jnp
from flax import nnx

from e3nn_fast._parameters import record_parameters
from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.nnx._params import check_rngs, create_parameters, parameter_value, positive_int, to_irreps
from e3nn_fast.symmetric_tensor_product import parse_keep, parse_orders, symmetric_contraction

__all__ = ["SymmetricTensorProduct"]

# symmetric_contraction's weights are unit-variance normals (haiku's default hk.initializers.RandomNormal()).
_WEIGHT_STD = 1.0


class SymmetricTensorProduct(nnx.Module):
    r"""Symmetric tensor product with learned weights, independently on each channel (flax.nnx).

    Same layer as :class:`e3nn_fast.haiku.SymmetricTensorProduct` (MACE's product basis): for every channel and
    output irrep, a learned combination of the symmetric powers ``x``, ``x⊗x``, ... listed in ``orders``.

    Args:
        irreps_in: irreps of the input (must match exactly: the symmetric bases depend on the order of the blocks).
        num_channel: number of channels, the axis before the irreps.
        orders: the powers to include, e.g. ``(1, 2, 3)``.
        keep_irrep_out: if given, the output irreps to keep (irreps or a set of irreps).
        rngs: ``nnx.Rngs``; one key is drawn from ``rngs.params()``.
        param_dtype: dtype of the parameters (default float32).

    Parameters live in ``self.params`` (an ``nnx.Dict``) under haiku's names ``w{order}_{ir}`` with shape
    ``(multiplicity, num_channel)``, so ``nnx.update(module, {"params": haiku_params[module_name]})`` loads a haiku
    module's.  The initial values use linen's key derivation (haiku draws its keys differently).

    Call with an IrrepsArray of shape ``(..., num_channel, irreps_in.dim)``; leading axes share the parameters.
    """

    def __init__(
        self,
        irreps_in: Irreps,
        num_channel: int,
        orders: Tuple[int, ...],
        keep_irrep_out: Optional[Union[Set[Irrep], Irreps, str]] = None,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ):
        check_rngs(rngs, "SymmetricTensorProduct")
        self.irreps_in = to_irreps(irreps_in, "SymmetricTensorProduct irreps_in")
        self.num_channel = positive_int(num_channel, "SymmetricTensorProduct num_channel", optional=False)
        self.orders = parse_orders(orders)
        keep = parse_keep(keep_irrep_out)
        # a frozenset: nnx keeps settings in its (hashed) graph definition
        self.keep_irrep_out = None if keep is None else frozenset(keep)
        example = jax.ShapeDtypeStruct((self.num_channel, self.irreps_in.dim), param_dtype)
        specs = record_parameters(self._recording_forward, example)
        self.params = create_parameters(specs, rngs, param_dtype)

    def _contract(self, get_parameter: Callable, x: IrrepsArray) -> IrrepsArray:
        return symmetric_contraction(x, self.orders, self.keep_irrep_out, get_parameter)

    def _recording_forward(self, get_parameter: Callable, x: jax.Array) -> IrrepsArray:
        return self._contract(
            lambda name, shape, dtype: get_parameter(name, shape, _WEIGHT_STD, dtype), IrrepsArray(self.irreps_in, x)
        )

    def __call__(self, x: IrrepsArray) -> IrrepsArray:
        """Returns an IrrepsArray of shape ``(..., num_channel, irreps_out.dim)``."""
        if not isinstance(x, IrrepsArray):
            raise TypeError(f"SymmetricTensorProduct expects an IrrepsArray, got {type(x).__name__}")
        if x.irreps != self.irreps_in:
            raise ValueError(f"SymmetricTensorProduct: input irreps {x.irreps} differ from irreps_in {self.irreps_in}")
        if x.ndim < 2 or x.shape[-2] != self.num_channel:
            raise ValueError(
                f"SymmetricTensorProduct: expected an input of shape (..., num_channel={self.num_channel}, "
                f"{self.irreps_in.dim}), got {x.shape}"
            )
        built_for = f"irreps_in={self.irreps_in}, num_channel={self.num_channel}"
        # Read the values once, outside jax.vmap: the vmapped function then closes over plain arrays.
        values = {name: self.params[name][...] for name in self.params}

        def get_parameter(name: str, shape: Tuple[int, ...], dtype: Any) -> jax.Array:
            return parameter_value(values, name, shape, "SymmetricTensorProduct", built_for)

        fn = lambda x: self._contract(get_parameter, x)  # noqa: E731
        for _ in range(x.ndim - 2):  # leading batch axes share the parameters
            fn = jax.vmap(fn)
        return fn(x)
