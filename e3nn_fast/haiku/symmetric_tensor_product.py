"""MACE's product basis: a weighted sum of symmetric tensor powers of the input, channel by channel (haiku)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Set, Tuple, Union

import haiku as hk
import jax

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.symmetric_tensor_product import parse_keep, parse_orders, symmetric_contraction

__all__ = ["SymmetricTensorProduct"]


def _default_get_parameter(name: str, shape: Tuple[int, ...], dtype: Any) -> jax.Array:
    return hk.get_parameter(name, shape, dtype, hk.initializers.RandomNormal())


class SymmetricTensorProduct(hk.Module):
    r"""Symmetric tensor product with learned weights, independently on each channel (MACE's product basis).

    For every channel it computes, for each output irrep, a learned linear combination of the symmetric tensor
    powers ``x``, ``x⊗x``, ``x⊗x⊗x``, ... (the powers listed in ``orders``), restricted to their symmetric part.

    Args:
        orders: the powers to include, e.g. ``(1, 2, 3)``.
        keep_irrep_out: if given, the output irreps to keep (irreps or a set of irreps).
        get_parameter: ``get_parameter(name, shape, dtype) -> Array`` returning unit variance normal weights;
            defaults to ``hk.get_parameter`` with a standard normal initialiser. Parameter names are
            ``w{order}_{ir}`` with shape ``(multiplicity, num_channel)``.

    Call with an IrrepsArray of shape ``(..., num_channel, irreps)``; returns ``(..., num_channel, irreps_out)``.
    """

    def __init__(
        self,
        orders: Tuple[int, ...],
        keep_irrep_out: Optional[Union[Set[Irrep], Irreps, str]] = None,
        get_parameter: Optional[Callable[[str, Tuple[int, ...], Any], jax.Array]] = None,
    ):
        super().__init__()
        self.orders = parse_orders(orders)
        self.keep_irrep_out = parse_keep(keep_irrep_out)
        self.get_parameter = _default_get_parameter if get_parameter is None else get_parameter

    def __call__(self, x: IrrepsArray) -> IrrepsArray:
        if not isinstance(x, IrrepsArray):
            raise TypeError(f"SymmetricTensorProduct expects an IrrepsArray, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(
                f"SymmetricTensorProduct expects an input of shape (..., num_channel, irreps), got shape {x.shape}"
            )

        def fn(x: IrrepsArray) -> IrrepsArray:
            return symmetric_contraction(x, self.orders, self.keep_irrep_out, self.get_parameter)

        for _ in range(x.ndim - 2):  # leading batch axes share the parameters
            fn = hk.vmap(fn, split_rng=False)
        return fn(x)
