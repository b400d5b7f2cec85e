"""One JAX primitive for message passing: a multilinear form over a graph whose derivatives are forms of the same
graph again, whichever executor evaluates them (the Pallas kernels or the edge-chunked jnp scans).

The model
---------
Message passing with per-edge weights is the derivative ``dF/dg`` of the multilinear form::

    F(x, sh, w, g) = sum_e  sum_paths  c * x[senders[e], .] * sh[e, .] * w[e, .] * g[receivers[e], .]

Its operands ("slots") have rows of two kinds: *node* slots (the features ``x``, read through ``senders``; the output
cotangent ``g``, read through ``receivers``) and *edge* slots (``sh``, ``w``), one row per edge.  The index arrays
are extra integer operands of the primitive, never differentiated.  Every derivative of the op is
``dF/d(slot)`` for some slot, evaluated by the same form object (a :class:`GraphForm`):

* **JVP** w.r.t. a slot ``t``: ``contract(out_slot, ...)`` with the tangent in slot ``t`` (every term involves
  every slot, so there is no restriction to a subset of terms, unlike :mod:`e3nn_fast.kernels.multilinear`);
* **transpose** of ``contract(out_slot=s)`` w.r.t. its linear slot ``t``: ``contract(out_slot=t)`` with the
  cotangent in slot ``s``: for ``t = x`` a message pass over the reversed graph, for an edge slot a per-edge product;
* **batching** (``vmap``): the form decides (:meth:`GraphForm.batch`): fold the batch into one larger graph, or one
  call per mapped element.

So the backward pass of a message pass is message passes, the double backward of force training is one more
contraction and never autodiff of autodiff, and ``jax.jvp``, ``jax.hessian`` and ``vmap`` work to any order.  The
forward's memory bound (no ``(num_edges, irreps_out.dim)`` array) holds for every derivative, and no residual is
saved: each contraction reads only the operands it is given.

Why one primitive for two executors: the rules above are the maths of the form, not of an executor.  A form carries
its executor's evaluation (:meth:`GraphForm.evaluate`); the Pallas executor
(:mod:`e3nn_fast.kernels.message_passing`) and the jnp executor (:mod:`e3nn_fast.xla.message_passing`) each define
one, and share every rule here.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax

from e3nn_fast import _shard_compat as shard_compat
from e3nn_fast.kernels import _pallas_compat as compat


class GraphForm:
    """What a graph form must say about itself; subclasses are hashable (they are primitive parameters).

    ``slot_names``: the float operands, in order (one of them the op's output, ``"out"``).  ``index_count``: how
    many integer index arrays ride along (the first has one entry per edge).  ``uses_pallas``: whether
    :meth:`evaluate` runs Pallas kernels (the device checks count those calls as evidence).
    """

    slot_names: tuple[str, ...] = ()
    index_count: int = 0
    uses_pallas: bool = True  # whether evaluate runs Pallas kernels (False: the jnp executor)

    def rows(self, out_slot: int, num_edges: int) -> int:
        """Rows of ``dF/d(out_slot)``: the node count of a node slot, ``num_edges`` for an edge slot."""
        raise NotImplementedError

    def columns(self, out_slot: int) -> int:
        """Columns of ``dF/d(out_slot)``."""
        raise NotImplementedError

    def shape(self, out_slot: int, indices: Sequence) -> tuple[int, ...]:
        """Shape of ``dF/d(out_slot)`` given the index arrays: ``(rows, columns)`` unless the form says otherwise."""
        return (self.rows(out_slot, indices[0].shape[0]), self.columns(out_slot))

    def evaluate(self, out_slot: int, operands: Sequence[Optional[jax.Array]], indices: Sequence[jax.Array]):
        """``dF/d(out_slot)`` from the other slots' operands (``None`` at ``out_slot``) and the index arrays."""
        raise NotImplementedError

    def batch(self, out_slot: int, args: Sequence, dims: Sequence[Optional[int]]):
        """``vmap`` of one contraction (``args``/``dims`` as a batching rule gets them; the result mapped on axis 0).

        The default runs one contraction per mapped element (``lax.map``); a form that can merge the batch into one
        larger graph overrides it.
        """
        size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
        moved = [x if d is None else jax.numpy.moveaxis(x, d, 0) for x, d in zip(args, dims)]

        def one(index):
            operands = [x if d is None else x[index] for x, d in zip(moved, dims)]
            return graph_form_p.bind(*operands, form=self, out_slot=out_slot)

        return jax.lax.map(one, jax.numpy.arange(size))


graph_form_p = compat.Primitive("e3nn_fast_graph_form")


def contract(form: GraphForm, out_slot: int, operands: Sequence, indices: Sequence) -> jax.Array:
    """``dF/d(slot out_slot)`` of ``form`` (``operands`` has ``None`` there), differentiable to any order."""
    inputs = [op for index, op in enumerate(operands) if index != out_slot]
    if any(op is None for op in inputs):
        raise ValueError(f"contract: every slot but the output ({form.slot_names[out_slot]}) needs an operand")
    if len(indices) != form.index_count:
        raise ValueError(f"contract: the form takes {form.index_count} index arrays, got {len(indices)}")
    # inside shard_map: one set of varying mesh axes for all operands, the index arrays included
    args = shard_compat.match_varying([*inputs, *indices])
    return graph_form_p.bind(*args, form=form, out_slot=out_slot)


def split(args: Sequence, form: GraphForm, out_slot: int):
    """Primitive arguments -> (float operands with ``None`` at ``out_slot``, index arrays)."""
    floats = list(args[: len(args) - form.index_count])
    floats.insert(out_slot, None)
    return floats, list(args[len(args) - form.index_count :])


def _impl(*args, form: GraphForm, out_slot: int):
    operands, indices = split(args, form, out_slot)
    with shard_compat.operand_mesh(args[0]):
        return form.evaluate(out_slot, operands, indices)


def _abstract_eval(*args, form: GraphForm, out_slot: int):
    operands, indices = split(args, form, out_slot)
    dtype = jax.numpy.result_type(*[op.dtype for op in operands if op is not None])
    return shard_compat.aval_like(form.shape(out_slot, indices), dtype, args[0])  # varying like the operands


def _jvp(primals, tangents, *, form: GraphForm, out_slot: int):
    """Linear in each float slot: the tangent is the sum of one contraction per varied slot."""
    out = graph_form_p.bind(*primals, form=form, out_slot=out_slot)
    operands, indices = split(primals, form, out_slot)
    float_tangents, _ = split(tangents, form, out_slot)
    tangent_out = None
    for slot, tangent in enumerate(float_tangents):
        if slot == out_slot or type(tangent) is compat.Zero:
            continue
        varied = list(operands)
        varied[slot] = tangent
        term = contract(form, out_slot, varied, indices)
        tangent_out = term if tangent_out is None else tangent_out + term
    if tangent_out is None:
        return out, compat.symbolic_zero_like(out)
    return out, tangent_out


def _transpose(cotangent, *args, form: GraphForm, out_slot: int):
    """Transpose w.r.t. the one linear float slot ``t``: ``contract(out_slot=t)`` with the cotangent at ``out_slot``."""
    undefined = [i for i, x in enumerate(args) if compat.is_undefined_primal(x)]
    if len(undefined) != 1 or undefined[0] >= len(args) - form.index_count:
        raise NotImplementedError("e3nn_fast graph form: transposition needs exactly one linear float operand")
    position = undefined[0]
    result: list = [None] * len(args)
    aval = args[position].aval
    if type(cotangent) is compat.Zero:
        result[position] = compat.Zero(aval)
        return result
    operands, indices = split([None if compat.is_undefined_primal(x) else x for x in args], form, out_slot)
    linear_slot = [i for i in range(len(operands)) if i != out_slot][position]
    operands[out_slot] = cotangent
    operands[linear_slot] = None
    result[position] = contract(form, linear_slot, operands, indices).astype(aval.dtype)
    return result


def _batch(args, dims, *, form: GraphForm, out_slot: int):
    return form.batch(out_slot, args, dims), 0


graph_form_p.def_impl(_impl)
graph_form_p.def_abstract_eval(_abstract_eval)
compat.primitive_jvps[graph_form_p] = _jvp
compat.primitive_transposes[graph_form_p] = _transpose
compat.primitive_batchers[graph_form_p] = _batch
compat.register_lowering(graph_form_p, compat.lower_fun(_impl, multiple_results=False))
