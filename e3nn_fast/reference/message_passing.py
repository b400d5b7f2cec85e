"""Equivariant message passing, the unfused way: the oracle every fused executor is tested against.

The operation (:func:`e3nn_fast.message_passing`) is the convolution of NequIP/MACE-style models::

    out[n] = sum_{e : receivers[e] = n}  tensor_product(x[senders[e]], sh[e]) * w[e]

where ``tensor_product`` is e3nn's full tensor product (inputs regrouped, output irreps sorted and regrouped) and
``* w[e]`` scales each irrep copy of the product by its own weight.  This module holds

* :class:`MessagePassingSpec`: the static part of a call (irreps, filter, normalisation) and everything derived from
  it once (the tensor-product description, the output irreps, where each path's channels land in the output and
  which weight scales them).  Every executor reads the same spec, so the output layout is decided in one place.
* :func:`message_passing`: the reference executor, literally gather -> ``tensor_product`` (forced onto the reference
  tensor-product executor) -> weights -> ``scatter_sum``.  It materialises one message per edge; it is readable and
  differentiable to any order, and that is its only job.

Executor contract (shared by the ``reference``, ``jnp`` and Pallas executors of op ``"message_passing"``)::

    run(spec, x, sh, w, senders, receivers, num_nodes) -> (num_nodes, spec.irreps_out.dim)

with ``x`` ``(num_inputs, irreps_in.dim)``, ``sh`` ``(num_edges, irreps_sh.dim)`` and ``w``
``(num_edges, irreps_out.num_irreps)`` or ``None``, all of one float dtype, already regrouped like the spec's
irreps; ``senders`` int32 in ``[0, num_inputs)``; ``receivers`` int32 in ``[0, num_nodes]`` where ``num_nodes``
marks an edge to drop.  The public op normalises the indices to this form.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax.numpy as jnp
import numpy as np

from e3nn_fast import dispatch
from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.path_description import TensorProductDescription, describe_full_tensor_product


@dataclasses.dataclass(frozen=True)
class SegmentPlacement:
    """Where output segment ``segment`` of the description lands in the op's output.

    ``column``: its first column in the output (its ``mul x (2l+1)`` block is contiguous, multiplicity-major);
    ``copy``: the index of its first irrep copy, i.e. the weight column scaling its channel 0.
    """

    segment: int
    column: int
    copy: int


@dataclasses.dataclass(frozen=True)
class MessagePassingSpec:
    """The static configuration of a message-passing call; build it with :func:`message_passing_spec` (cached)."""

    irreps_in: Irreps  # regrouped node irreps
    irreps_sh: Irreps  # regrouped edge-attribute irreps
    filter_ir_out: Optional[tuple[Irrep, ...]]
    irrep_normalization: str

    @functools.cached_property
    def description(self) -> TensorProductDescription:
        """The full (``uvuv``) tensor product, output segments in path order (not yet sorted)."""
        return describe_full_tensor_product(
            self.irreps_in, self.irreps_sh, self.filter_ir_out, self.irrep_normalization
        )

    @functools.cached_property
    def irreps_out(self) -> Irreps:
        """The op's output irreps: the description's, sorted and regrouped (as ``tensor_product`` returns them)."""
        return self.description.irreps_out.regroup()

    @functools.cached_property
    def placements(self) -> tuple[SegmentPlacement, ...]:
        """One placement per output segment of the description, indexed by segment.

        Sorting permutes whole segments and regrouping merges neighbours of equal irreps; both keep each segment's
        ``(mul, 2l+1)`` block contiguous, so the output is the description's segments concatenated in sorted order.
        """
        irreps = self.description.irreps_out
        order = irreps.sort().inv  # order[new position] = old segment
        placements: dict[int, SegmentPlacement] = {}
        column = copy = 0
        for segment in order:
            mul, ir = irreps[segment]
            placements[segment] = SegmentPlacement(segment, column, copy)
            column += mul * ir.dim
            copy += mul
        assert column == self.irreps_out.dim and copy == self.irreps_out.num_irreps
        return tuple(placements[s] for s in range(len(irreps)))


@functools.lru_cache(maxsize=256)
def message_passing_spec(
    irreps_in: Irreps, irreps_sh: Irreps, filter_ir_out: Optional[tuple[Irrep, ...]], irrep_normalization: str
) -> MessagePassingSpec:
    """The cached spec of regrouped ``irreps_in`` x ``irreps_sh`` (filter as a tuple of irreps or ``None``)."""
    return MessagePassingSpec(Irreps(irreps_in), Irreps(irreps_sh), filter_ir_out, irrep_normalization)


def message_passing(spec: MessagePassingSpec, x, sh, w, senders, receivers, num_nodes: int) -> jnp.ndarray:
    """The unfused composition: one ``(num_edges, irreps_out.dim)`` message array, then a scatter-sum."""
    from e3nn_fast.graph import scatter_sum
    from e3nn_fast.tensor_products import tensor_product

    gathered = IrrepsArray(spec.irreps_in, x[senders])
    with dispatch.backend("reference"):  # decided at trace time: the oracle never runs a kernel
        messages = tensor_product(
            gathered,
            IrrepsArray(spec.irreps_sh, sh),
            filter_ir_out=spec.filter_ir_out,
            irrep_normalization=spec.irrep_normalization,
        )
    assert messages.irreps == spec.irreps_out, (messages.irreps, spec.irreps_out)
    if w is not None:
        messages = messages * w
    # receivers == num_nodes marks a dropped edge.
    return scatter_sum(messages.array, dst=receivers, output_size=num_nodes, mode="drop")
