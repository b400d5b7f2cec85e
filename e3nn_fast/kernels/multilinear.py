"""One JAX primitive for every kernel family: a multilinear contraction whose derivatives are contractions of the
same family, so that gradients of any order, forward mode and ``vmap`` all run through the kernels.

The model
---------
A kernel family describes a *multilinear form* over a few operands ("slots": the two inputs, the weights, the
output), a sum of *terms*, each a coefficient times one entry of every slot it involves (a :class:`MultilinearPlan`)::

    F(x1, x2, w, g) = sum_rows sum_terms  c * x1[.] * x2[.] * w[.] * g[.]

The tensor product is ``out = dF/dg``.  Evaluating ``dF/d(slot s)`` with the other slots given is one kernel call,
:func:`contract` ``(plan, out_slot=s, ...)``; for the tensor product's output, ``s`` is the output slot.  Because F is
multilinear, every derivative is again such a call:

* **JVP** w.r.t. slot ``t``: ``d(dF/ds) = contract(s, ..., slot t <- tangent)`` restricted to the terms that involve
  ``t`` (terms without ``t`` are constant in it).  The restriction is the ``require`` parameter.
* **Transpose** (reverse mode) of a call that is linear in slot ``t``: the cotangent of ``t`` is
  ``contract(out_slot=t, ..., slot s <- cotangent)`` over the same terms.
* **Batching** (``vmap``): an extra axis on batched slots is folded into the row axis (one kernel call).  A mapped
  shared slot (per-example weights, or per-example gradients of shared weights) becomes a per-row slot of one call
  when the family has a per-row variant of its plan and each element has at most ``FOLD_MAX_ROWS`` rows; anything
  else runs one kernel call per mapped element, or, for a plan evaluated in jnp, its evaluation under ``vmap``.

So the backward pass of the tensor product is built from kernels of the same family (the gradient w.r.t. ``x1`` of a
channelwise product is a channelwise product of the output cotangent with ``x2``; w.r.t. ``x2`` a channel-reduced
elementwise product; ...), and differentiating it again produces kernels again: reverse-over-reverse (forces in the
loss), forward-over-reverse (``jax.hessian``) and ``jax.jvp`` work to any order.

Why a primitive and not ``jax.custom_vjp``
------------------------------------------
A ``custom_vjp`` whose backward calls differentiable ``custom_vjp`` functions gives reverse mode of any order, but
JAX refuses forward mode through it (``jax.jvp``, ``jax.hessian`` = jacfwd-of-jacrev, ``jax.linearize``), and a
``custom_jvp`` on top needs a transposable linear map, which a ``pallas_call`` is not.  A primitive with a JVP rule
(linear in the tangents), a transpose rule and a batching rule covers all transformations with the same closure
argument, and its lowering (``mlir.lower_fun`` of the Pallas implementation) keeps every derivative inside the
kernels.  Shapes of the calls are static, so JAX's dead-code elimination drops the gradient kernels nobody uses.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from e3nn_fast import _shard_compat as shard_compat
from e3nn_fast.kernels import _pallas_compat as compat


@dataclasses.dataclass(frozen=True)
class Slot:
    """One operand of a multilinear plan: ``(rows, columns)`` when ``batched``, else ``(columns,)``."""

    name: str
    batched: bool
    columns: int


class MultilinearPlan:
    """A kernel family's description of a multilinear form; subclasses implement the kernels.

    Plans are compared by identity (their constructors are cached), so they can be primitive parameters cheaply.
    """

    family: str = ""
    slots: tuple[Slot, ...] = ()
    uses_pallas: bool = True  # False for a plan that evaluates in jnp (the jnp executor's hand-written derivatives)

    def has_terms(self, out_slot: int, require: frozenset) -> bool:
        """Whether some term involves ``out_slot`` and every slot in ``require``."""
        raise NotImplementedError

    def evaluate(self, out_slot: int, require: frozenset, operands: Sequence[Optional[jnp.ndarray]], interpret: bool):
        """Run the kernels for ``dF/d(out_slot)``; ``operands`` has ``None`` at ``out_slot``."""
        raise NotImplementedError

    def differentiated(self) -> "MultilinearPlan":
        """The plan that evaluates this form where it is differentiated (its JVP's primal and tangents, and so their
        transposes): this one, unless a plan tunes its evaluation for an undifferentiated forward."""
        return self

    def slot_index(self, name: str) -> int:
        for index, slot in enumerate(self.slots):
            if slot.name == name:
                return index
        raise KeyError(name)

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


multilinear_p = compat.Primitive("e3nn_fast_multilinear")


def contract(
    plan: MultilinearPlan,
    out_slot: int,
    operands: Sequence[Optional[jnp.ndarray]],
    *,
    require: frozenset = frozenset(),
    interpret: bool = False,
) -> jnp.ndarray:
    """``dF/d(out_slot)`` of ``plan``'s form, restricted to the terms involving every slot of ``require``.

    Args:
        plan: the multilinear form.
        out_slot: which slot the result is shaped like.
        operands: one array per slot, ``None`` at ``out_slot``.
        require: slots every evaluated term must involve.
        interpret: run the Pallas kernels in interpret mode (CPU testing).
    """
    require = frozenset(require) - {out_slot}
    inputs = tuple(op for index, op in enumerate(operands) if index != out_slot)
    if any(op is None for op in inputs):
        raise ValueError(f"contract: every slot but the output ({plan.slots[out_slot].name}) needs an operand")
    inputs = tuple(shard_compat.match_varying(inputs))  # inside shard_map: one set of varying axes for all operands
    if not plan.has_terms(out_slot, require):
        return shard_compat.vary(_zeros(plan, out_slot, inputs), shard_compat.varying_axes(inputs[0]))
    return multilinear_p.bind(*inputs, plan=plan, out_slot=out_slot, require=require, interpret=bool(interpret))


def _full_operands(inputs: Sequence, out_slot: int) -> list:
    operands = list(inputs)
    operands.insert(out_slot, None)
    return operands


def _rows(plan: MultilinearPlan, inputs: Sequence, out_slot: int) -> int:
    for slot, op in zip((s for i, s in enumerate(plan.slots) if i != out_slot), inputs):
        if slot.batched:
            return op.shape[0]
    raise ValueError("a multilinear contraction needs at least one batched operand")


def _out_shape(plan: MultilinearPlan, inputs: Sequence, out_slot: int) -> tuple[int, ...]:
    slot = plan.slots[out_slot]
    return (_rows(plan, inputs, out_slot), slot.columns) if slot.batched else (slot.columns,)


def _zeros(plan, out_slot, inputs):
    return jnp.zeros(_out_shape(plan, inputs, out_slot), jnp.result_type(*inputs))


def _abstract_eval(*inputs, plan, out_slot, require, interpret):
    del require, interpret
    dtype = jnp.result_type(*[x.dtype for x in inputs])
    # varying like the operands; on an explicit mesh, row-sharded like the first batched one (rows are what they share)
    slots = [s for i, s in enumerate(plan.slots) if i != out_slot]
    template = next((x for x, slot in zip(inputs, slots) if slot.batched), inputs[0])
    return shard_compat.aval_like(_out_shape(plan, inputs, out_slot), dtype, template)


def _impl(*inputs, plan, out_slot, require, interpret):
    return plan.evaluate(out_slot, require, _full_operands(inputs, out_slot), interpret)


def _jvp(primals, tangents, *, plan, out_slot, require, interpret):
    plan = plan.differentiated()
    out = multilinear_p.bind(*primals, plan=plan, out_slot=out_slot, require=require, interpret=interpret)
    operands = _full_operands(primals, out_slot)
    tangent_out = None
    for slot, tangent in zip((i for i in range(len(plan.slots)) if i != out_slot), tangents):
        if type(tangent) is compat.Zero:
            continue
        term_slots = require | {slot}
        if not plan.has_terms(out_slot, term_slots):
            continue
        varied = list(operands)
        varied[slot] = tangent
        term = contract(plan, out_slot, varied, require=term_slots, interpret=interpret)
        tangent_out = term if tangent_out is None else tangent_out + term
    if tangent_out is None:
        return out, compat.symbolic_zero_like(out)
    return out, tangent_out


def _transpose(cotangent, *inputs, plan, out_slot, require, interpret):
    undefined = [i for i, x in enumerate(inputs) if compat.is_undefined_primal(x)]
    if len(undefined) != 1:
        raise NotImplementedError("e3nn_fast multilinear contraction: transposition needs exactly one linear operand")
    position = undefined[0]
    linear_slot = [i for i in range(len(plan.slots)) if i != out_slot][position]
    result: list = [None] * len(inputs)
    aval = inputs[position].aval
    if type(cotangent) is compat.Zero:
        result[position] = compat.Zero(aval)
        return result
    operands = _full_operands(inputs, out_slot)
    operands[out_slot] = cotangent
    operands[linear_slot] = None
    value = contract(plan, linear_slot, operands, require=require | {out_slot}, interpret=interpret)
    result[position] = value.astype(aval.dtype)
    return result


def _batch(args, dims, *, plan, out_slot, require, interpret):
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    slots = [s for i, s in enumerate(plan.slots) if i != out_slot]
    params = dict(plan=plan, out_slot=out_slot, require=require, interpret=interpret)
    foldable = plan.slots[out_slot].batched and all(d is None or slot.batched for slot, d in zip(slots, dims))
    if foldable:
        folded = []
        for x, d, slot in zip(args, dims, slots):
            if not slot.batched:
                folded.append(x)
                continue
            x = jnp.broadcast_to(x[None], (size,) + x.shape) if d is None else jnp.moveaxis(x, d, 0)
            rows = x.shape[1]  # per mapped element (stated, not inferred: a -1 cannot be inferred for size 0)
            folded.append(x.reshape((size * rows,) + x.shape[2:]))
        out = multilinear_p.bind(*folded, **params)
        return out.reshape((size, rows) + out.shape[1:]), 0
    folded = _fold_shared(args, dims, size, plan, out_slot, require, interpret)
    if folded is not None:
        return folded, 0
    if not plan.uses_pallas:
        # a jnp plan's evaluation vectorises as written (its products gain a batch axis): one batched evaluation
        # rather than one call per element, at the price of autodiff for derivatives taken outside this vmap
        def evaluate(*xs):
            return plan.evaluate(out_slot, require, _full_operands(xs, out_slot), interpret)

        return jax.vmap(evaluate, in_axes=tuple(dims))(*args), 0
    mapped = [jnp.moveaxis(x, d, 0) if d is not None else None for x, d in zip(args, dims)]

    def one(xs):
        operands = [x if m is None else xs[i] for i, (x, m) in enumerate(zip(args, mapped))]
        return multilinear_p.bind(*operands, **params)

    stacked = [m if m is not None else jnp.zeros((size,), args[i].dtype) for i, m in enumerate(mapped)]
    return jax.lax.map(one, stacked), 0


# A mapped element with at most this many rows folds a mapped shared slot into a per-row slot: its value is then
# repeated on each of the element's rows (memory: rows x columns per element), which beats one launch of one
# under-filled row block per element (the legacy per-sample products under vmap: 160,000 launches of one row).
FOLD_MAX_ROWS = 64


def _fold_shared(args, dims, size, plan, out_slot, require, interpret):
    """``vmap`` of a call with a mapped *shared* slot (a weight vector per mapped element), or a shared output (a
    per-element weight gradient), as **one** call of the plan's per-row variant (``plan.per_row_variant(slots)``,
    families that have one): mapped shared operands repeated over their element's rows, the batched ones folded
    into the row axis as in :func:`_batch`, and a per-row output summed over each element's rows.  ``None`` (one
    call per element) when the family has no variant or an element has more than :data:`FOLD_MAX_ROWS` rows."""
    variant_of = getattr(plan, "per_row_variant", None)
    slots = [i for i in range(len(plan.slots)) if i != out_slot]
    rows = [x.shape[0] if d is None else x.shape[1 if d == 0 else 0]
            for x, d, i in zip(args, dims, slots) if plan.slots[i].batched]
    if variant_of is None or not rows or rows[0] > FOLD_MAX_ROWS:
        return None
    rows = rows[0]
    converted = frozenset(i for i, d in zip(slots, dims) if d is not None and not plan.slots[i].batched)
    if not plan.slots[out_slot].batched:
        converted |= {out_slot}
    variant = variant_of(converted)
    folded = []
    for x, d, i in zip(args, dims, slots):
        if d is None and not plan.slots[i].batched:
            folded.append(x)  # still shared by every row of every element
            continue
        x = jnp.moveaxis(x, d, 0) if d is not None else jnp.broadcast_to(x[None], (size,) + x.shape)
        if i in converted:
            x = jnp.broadcast_to(x[:, None], (size, rows) + x.shape[1:])
        folded.append(x.reshape((size * rows,) + x.shape[2:]))
    out = multilinear_p.bind(*folded, plan=variant, out_slot=out_slot, require=require, interpret=interpret)
    out = out.reshape((size, rows) + out.shape[1:])
    if out_slot not in converted:
        return out
    return jnp.sum(out.astype(jnp.promote_types(out.dtype, jnp.float32)), axis=1).astype(out.dtype)


multilinear_p.def_impl(_impl)
multilinear_p.def_abstract_eval(_abstract_eval)
compat.primitive_jvps[multilinear_p] = _jvp
compat.primitive_transposes[multilinear_p] = _transpose
compat.primitive_batchers[multilinear_p] = _batch
compat.register_lowering(multilinear_p, compat.lower_fun(_impl, multiple_results=False))
