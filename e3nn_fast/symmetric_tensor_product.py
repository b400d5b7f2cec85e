"""MACE's product basis as a framework-free function: a weighted sum of symmetric tensor powers of the input,
channel by channel.  The haiku, linen and nnx ``SymmetricTensorProduct`` modules only create the parameters and call
:func:`symmetric_contraction`.

The maths is stated once, in :func:`describe_symmetric_contraction`: for each order and output irrep, the reduced
symmetric basis ``U`` (divided by its multiplicity), both dense (for the readable Horner evaluation below) and as a
sparse list of terms over *sorted* input-index tuples (for the optimised jnp executor and the Pallas kernel of
:mod:`e3nn_fast.symmetric_contraction`, which never form the redundant permutations of a symmetric tensor).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, FrozenSet, Iterable, Optional, Set, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reduced_tensor_product import reduced_symmetric_tensor_product_basis

__all__ = [
    "symmetric_contraction",
    "parse_orders",
    "parse_keep",
    "describe_symmetric_contraction",
    "SymmetricContractionDescription",
    "BasisBlock",
]


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


# --- the description: the maths, computed once per (irreps, orders, keep) -----------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BasisBlock:
    """The normalised basis of one output irrep at one order, and its weight ``w{order}_{ir}``.

    ``dense`` is ``U / mul`` of shape ``(d,) * order + (mul, ir.dim)``.  The sparse form folds the symmetry of ``U``
    in its input indices: ``indices[t]`` is a sorted tuple ``i_1 <= ... <= i_order`` (shape ``(terms, order)``),
    ``value[t]`` the sum of ``U / mul`` over every permutation of that tuple, ``basis[t]`` the weight row ``m`` and
    ``component[t]`` the component of ``ir``; so ``out[k] = sum_t value w[basis] prod_a x[indices[t, a]]``.
    """

    order: int
    ir: Irrep
    mul: int
    dense: np.ndarray
    indices: np.ndarray
    basis: np.ndarray
    component: np.ndarray
    value: np.ndarray

    @property
    def name(self) -> str:
        return f"w{self.order}_{self.ir}"


@dataclasses.dataclass(frozen=True, eq=False)
class SymmetricContractionDescription:
    """Everything :func:`symmetric_contraction` computes, for an input ``irreps_in`` (compared by identity; cached).

    ``blocks`` are listed by decreasing order (the Horner order), then by output irrep; ``irreps_out`` is the sorted
    set of output irreps, each with multiplicity 1; ``weight_names`` / ``weight_muls`` list the weights in
    ``blocks`` order.
    """

    irreps_in: Irreps
    orders: Tuple[int, ...]
    keep: Optional[FrozenSet[Irrep]]
    blocks: Tuple[BasisBlock, ...]
    irreps_out: Irreps

    @property
    def weight_names(self) -> Tuple[str, ...]:
        return tuple(block.name for block in self.blocks)

    @property
    def weight_muls(self) -> Dict[str, int]:
        return {block.name: block.mul for block in self.blocks}

    def output_offset(self, ir: Irrep) -> int:
        """First column of ``ir`` in the output."""
        offset = 0
        for _, out_ir in self.irreps_out:
            if out_ir == ir:
                return offset
            offset += out_ir.dim
        raise KeyError(ir)


def _sparse_symmetric(dense: np.ndarray, order: int, tol: float = 1e-12):
    """The terms of a basis symmetric in its first ``order`` axes, one per sorted index tuple (see BasisBlock).

    Vectorised: the non-zero entries' first ``order`` indices are sorted per entry, equal index tuples are merged by
    ``np.unique`` of their flat indices (lexicographic order) and their values summed with ``np.add.at``, which adds in the order of
    the entries, so the sums are the same floats as a loop over the entries would give.
    """
    nonzero = np.argwhere(np.abs(dense) > tol)
    empty = np.zeros((0, order), np.int32), np.zeros((0,), np.int32), np.zeros((0,), np.int32), np.zeros((0,))
    if len(nonzero) == 0:
        return empty
    values = dense[tuple(nonzero.T)].astype(np.float64)
    keys = np.concatenate([np.sort(nonzero[:, :order], axis=1), nonzero[:, order:]], axis=1)
    # one integer per index tuple (mixed radix, most significant first), so that ordering and merging are 1-D
    codes = np.ravel_multi_index(keys.T, dense.shape)
    unique_codes, inverse = np.unique(codes, return_inverse=True)
    table = np.stack(np.unravel_index(unique_codes, dense.shape), axis=1)
    summed = np.zeros(len(unique_codes), np.float64)
    np.add.at(summed, inverse.reshape(-1), values)
    kept = np.abs(summed) > tol
    if not kept.any():
        return empty
    table, summed = table[kept], summed[kept]
    return table[:, :order].astype(np.int32), table[:, order].astype(np.int32), table[:, order + 1].astype(np.int32), summed


@functools.lru_cache(maxsize=128)
def describe_symmetric_contraction(
    irreps_in: Irreps, orders: Tuple[int, ...], keep: Optional[FrozenSet[Irrep]]
) -> SymmetricContractionDescription:
    """The bases of the symmetric contraction of ``irreps_in`` for ``orders``, restricted to ``keep`` if given."""
    irreps_in = Irreps(irreps_in)
    keep_ir = None if keep is None else set(keep)
    blocks = []
    for order in sorted(set(orders), reverse=True):
        U = reduced_symmetric_tensor_product_basis(irreps_in, order, keep_ir=keep_ir)
        for (mul, ir), u in zip(U.irreps, U.chunks):
            dense = np.asarray(u, dtype=np.float64) / u.shape[-2]  # [d^order, mul, ir.dim]
            blocks.append(BasisBlock(order, ir, mul, dense, *_sparse_symmetric(dense, order)))
    irreps_out = Irreps(sorted({block.ir for block in blocks}))
    return SymmetricContractionDescription(irreps_in, tuple(orders), keep, tuple(blocks), irreps_out)


# --- the readable evaluation (the oracle of every other executor) ---------------------------------------------


def horner_contraction(description: SymmetricContractionDescription, x: jax.Array, weights: Dict[str, jax.Array]):
    """Contract ``x`` ``(num_channel, d)`` with the weighted dense bases, Horner style -> ``{ir: (num_channel, ir.dim)}``.

    For each output irrep ``ir`` the result is ``sum_n <U_n[ir] w_n[ir], x^n>`` over the orders, evaluated as
    ``((w_N U_N . x + w_{N-1} U_{N-1}) . x + ...) . x``: each step contracts one input axis of the running tensor
    with ``x``, so no power of ``x`` is ever formed.  ``weights[name]`` has shape ``(mul, num_channel)``.
    """
    acc: Dict[Irrep, jax.Array] = {}  # ir -> [channel, d, ..., d, ir.dim] with the not-yet-contracted axes
    by_order: Dict[int, list] = {}
    for block in description.blocks:
        by_order.setdefault(block.order, []).append(block)
    for order in range(max(description.orders), 0, -1):
        started = set()
        for block in by_order.get(order, []):
            u = jnp.asarray(block.dense, dtype=x.dtype)
            w = weights[block.name]
            if block.ir not in acc:
                # first term for this irrep: contract its last input axis with x right away
                acc[block.ir] = jnp.einsum("...jki,kc,cj->c...i", u, w, x)
                started.add(block.ir)
            else:
                acc[block.ir] = acc[block.ir] + jnp.einsum("...ki,kc->c...i", u, w)
        for ir in acc:
            if ir not in started:
                acc[ir] = jnp.einsum("c...ji,cj->c...i", acc[ir], x)
    return acc


def symmetric_contraction(
    x: IrrepsArray,
    orders: Tuple[int, ...],
    keep_irrep_out: Optional[Set[Irrep]],
    get_parameter: Callable[[str, Tuple[int, ...], Any], jax.Array],
) -> IrrepsArray:
    """Contract ``x`` of shape ``(num_channel, irreps)`` with weighted symmetric bases.

    For each output irrep ``ir`` the result is ``sum_n <U_n[ir] w_n[ir], x^n>`` over ``n in orders``; ``U_n`` is
    divided by its multiplicity, which together with unit variance weights normalises each term. Weights are per
    channel: ``w{n}_{ir}`` has shape ``(mul, num_channel)``.  The dispatcher's executor of the op
    ``symmetric_contraction`` evaluates it (:func:`horner_contraction` is the reference's readable form).
    """
    from e3nn_fast.symmetric_contraction import contract_shared_weights  # that module imports this one

    num_channel = x.shape[0]
    keep = None if keep_irrep_out is None else frozenset(keep_irrep_out)
    description = describe_symmetric_contraction(x.irreps, tuple(orders), keep)
    # parameters are requested in the Horner order (decreasing order), as the modules always did
    weights = {block.name: get_parameter(block.name, (block.mul, num_channel), x.dtype) for block in description.blocks}
    return IrrepsArray(description.irreps_out, contract_shared_weights(description, x.array, weights))
