"""MACE's product basis as a framework-free function: a weighted sum of symmetric tensor powers of the input,
channel by channel.  The haiku, linen and nnx ``SymmetricTensorProduct`` modules only create the parameters and call
:func:`symmetric_contraction`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Set, Tuple

import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.reduced_tensor_product import reduced_symmetric_tensor_product_basis

__all__ = ["symmetric_contraction", "parse_orders", "parse_keep"]


def parse_orders(orders: Iterable[int]) -> Tuple[int, ...]:
    try:
        orders = tuple(orders)
    except TypeError as e:
        raise TypeError(
            f"SymmetricTensorProduct: orders should be a tuple of positive integers, got {orders!r}"
        ) from e
    if not orders or not all(isinstance(o, int) and not isinstance(o, bool) and o > 0 for o in orders):
        raise ValueError(f"SymmetricTensorProduct: orders should be a non-empty tuple of positive integers, got {orders}")
    return orders


def parse_keep(keep_irrep_out) -> Optional[Set[Irrep]]:
    if keep_irrep_out is None:
        return None
    if isinstance(keep_irrep_out, (str, Irreps)):
        irreps = Irreps(keep_irrep_out)
        if any(mul != 1 for mul, _ in irreps):
            raise ValueError(f"SymmetricTensorProduct: keep_irrep_out should list irreps once each, got {irreps}")
        return {ir for _, ir in irreps}
    if isinstance(keep_irrep_out, Irrep):
        return {keep_irrep_out}
    return {Irrep(ir) for ir in keep_irrep_out}


def symmetric_contraction(
    x: IrrepsArray,
    orders: Tuple[int, ...],
    keep_irrep_out: Optional[Set[Irrep]],
    get_parameter: Callable[[str, Tuple[int, ...], Any], jax.Array],
) -> IrrepsArray:
    """Contract ``x`` of shape ``(num_channel, irreps)`` with weighted symmetric bases, Horner style.

    For each output irrep ``ir`` the result is ``sum_n <U_n[ir] w_n[ir], x^n>`` over ``n in orders``, evaluated as
    ``((w_N U_N . x + w_{N-1} U_{N-1}) . x + ...) . x``: each step contracts one input axis of the running tensor
    with ``x``, so no power of ``x`` is ever formed. ``U_n`` is divided by its multiplicity, which together with unit
    variance weights normalises each term. Weights are per channel: ``w{n}_{ir}`` has shape ``(mul, num_channel)``.
    """
    num_channel = x.shape[0]
    acc: Dict[Irrep, jax.Array] = {}  # ir -> [channel, d, ..., d, ir.dim] with the not-yet-contracted axes
    for order in range(max(orders), 0, -1):
        U = reduced_symmetric_tensor_product_basis(x.irreps, order, keep_ir=keep_irrep_out)
        started = set()
        if order in orders:
            for (mul, ir), u in zip(U.irreps, U.chunks):
                u = jnp.asarray(u / u.shape[-2], dtype=x.dtype)  # [d^order, mul, ir.dim]
                w = get_parameter(f"w{order}_{ir}", (mul, num_channel), x.dtype)
                if ir not in acc:
                    # first term for this irrep: contract its last input axis with x right away
                    acc[ir] = jnp.einsum("...jki,kc,cj->c...i", u, w, x.array)
                    started.add(ir)
                else:
                    acc[ir] = acc[ir] + jnp.einsum("...ki,kc->c...i", u, w)
        for ir in acc:
            if ir not in started:
                acc[ir] = jnp.einsum("c...ji,cj->c...i", acc[ir], x.array)

    irreps_out = Irreps(sorted(acc.keys()))
    return from_chunks(irreps_out, [acc[ir][:, None, :] for _, ir in irreps_out], (num_channel,), x.dtype)
