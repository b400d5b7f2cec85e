"""The symmetric contraction as a multilinear form, shared by its Pallas kernels and its jnp executor.

The op (:mod:`e3nn_fast.symmetric_contraction`) is a polynomial of degree ``N = max(orders)`` in ``x``.  To reuse
the derivative machinery of :mod:`e3nn_fast.kernels.multilinear` it is written as a *multilinear* form in which ``x``
fills ``N`` separate slots ``x1 .. xN`` (bound to the same array), plus the per-node weights ``w`` and the output::

    F(x1, .., xN, w, g) = sum_nodes,channels sum_terms  value * x1[i1] * .. * xn[in] * w[m] * g[k]

one term per non-zero entry of the symmetry-folded basis (sorted ``i1 <= .. <= in``, see
:class:`~e3nn_fast.symmetric_tensor_product.BasisBlock`); an order-``n`` term involves the slots ``x1 .. xn`` only.
The output is ``dF/dg`` at ``x1 = .. = xN = x``; JAX's autodiff adds the contributions of the ``N`` slots, so
every derivative (``d/dx`` = the sum over slots of ``dF/dx_a``, ``d/dw``, their derivatives again, ``jax.jvp``,
``vmap``) is another evaluation of the same form with another output slot, through the multilinear primitive's
JVP/transpose/batching rules.

Every slot is ``(nodes, planes, channels)`` flattened to ``(nodes, planes * channels)`` for the primitive, a *plane*
being one input component, one weight row or one output component.  An evaluation computes, per output plane, the
sum of its terms, factorised greedily at trace time (:func:`factorise`): the factor shared by most products is
pulled out first, which is Horner's scheme on this sparse polynomial (monomial prefixes and weight planes are
multiplied once, not once per term), which a Pallas kernel unrolls over its node x channel tiles.  The jnp
executor evaluates the same terms as index tables instead (:mod:`e3nn_fast.xla.symmetric_contraction_gathers`), so
that XLA compiles a few gathers rather than one op per term.
"""

from __future__ import annotations

import collections
import functools

from e3nn_fast.kernels._pallas_compat import next_power_of_2
from e3nn_fast.kernels.multilinear import MultilinearPlan, Slot
from e3nn_fast.symmetric_tensor_product import SymmetricContractionDescription

__all__ = ["SymmetricContractionForm", "factorise", "programs", "emit"]


class SymmetricContractionForm(MultilinearPlan):
    """The form above for one description and channel count; ``padded`` rounds plane counts up to powers of two
    (Triton tiles) and is for kernels only.

    ``terms``: ``(value, ((slot, plane), ...))`` with one factor per involved slot (the output included).
    ``planes[s]``: the plane count of slot ``s`` (padded or not).
    """

    def __init__(self, description: SymmetricContractionDescription, channels: int, padded: bool):
        self.description = description
        self.channels = channels
        self.order = max(description.orders)
        d = description.irreps_in.dim
        num_weights = sum(block.mul for block in description.blocks)
        names = [f"x{a + 1}" for a in range(self.order)] + ["w", "out"]
        true_planes = [d] * self.order + [num_weights, description.irreps_out.dim]
        self.planes = tuple(next_power_of_2(p) if padded else p for p in true_planes)
        self.slots = tuple(Slot(name, True, p * channels) for name, p in zip(names, self.planes))
        w_slot, out_slot = self.order, self.order + 1
        terms, offset = [], 0
        for block in description.blocks:
            out_offset = description.output_offset(block.ir)
            for t, m, k, v in zip(block.indices, block.basis, block.component, block.value):
                factors = tuple((a, int(i)) for a, i in enumerate(t))
                factors += ((w_slot, offset + int(m)), (out_slot, out_offset + int(k)))
                terms.append((float(v), factors))
            offset += block.mul
        self.terms = tuple(terms)
        self._slot_sets = tuple(frozenset(s for s, _ in factors) for _, factors in terms)

    def has_terms(self, out_slot: int, require: frozenset) -> bool:
        needed = require | {out_slot}
        return any(needed <= slots for slots in self._slot_sets)

    def output_terms(self, out_slot: int, require: frozenset):
        """``(value, out plane, other factors)`` for every term involving ``out_slot`` and each slot of ``require``:
        the terms of one evaluation ``dF/d(out_slot)``, whichever executor runs it."""
        needed = require | {out_slot}
        for (value, factors), slots in zip(self.terms, self._slot_sets):
            if needed <= slots:
                plane = next(p for s, p in factors if s == out_slot)
                yield value, plane, tuple((s, p) for s, p in factors if s != out_slot)


def factorise(products):
    """A Horner-like expression for ``sum_p value_p * prod(factors_p)`` (factors hashable and orderable).

    Returns a list of items whose sum is the expression: ``("const", value)`` or ``(factor, inner)`` meaning
    ``factor * inner``, ``inner`` again such a list.  The factor common to most products is pulled out first.
    """
    items = []
    products = [p for p in products if p[0] != 0.0]
    while products:
        constant = sum(v for v, fs in products if not fs)
        if constant != 0.0:
            items.append(("const", constant))
        products = [p for p in products if p[1]]
        if not products:
            break
        counts = collections.Counter(f for _, fs in products for f in fs)
        best = min(counts, key=lambda f: (-counts[f], f))
        inner = [(v, tuple(f for f in fs if f != best)) for v, fs in products if best in fs]
        products = [p for p in products if best not in p[1]]
        items.append((best, factorise(inner)))
    return items


@functools.lru_cache(maxsize=1024)
def programs(form: SymmetricContractionForm, out_slot: int, require: frozenset):
    """``((plane, items), ...)``: the factorised sum of the terms of each output plane of ``out_slot`` that involve
    every slot of ``require``; factors are ``(input position, plane)``, positions counting the slots but
    ``out_slot``."""
    position = {slot: pos for pos, slot in enumerate(s for s in range(len(form.slots)) if s != out_slot)}
    grouped: dict = {}
    for value, plane, others in form.output_terms(out_slot, require):
        key = tuple(sorted((position[s], p) for s, p in others))
        products = grouped.setdefault(plane, {})
        products[key] = products.get(key, 0.0) + value
    return tuple(
        (plane, factorise([(v, fs) for fs, v in products.items()])) for plane, products in sorted(grouped.items())
    )


def emit(items, load):
    """Evaluate factorised ``items`` with ``load(factor) -> array``; returns an array or, if constant, a float."""
    total = None
    for head, inner in items:
        value = inner if head == "const" else load(head) * emit(inner, load)
        total = value if total is None else total + value
    return 0.0 if total is None else total
