"""Flax (linen) convolution layer on the fused message-passing op (:func:`e3nn_fast.message_passing.message_passing`).

Same layer as :class:`e3nn_fast.haiku.message_passing.MessagePassing`: no radial network inside (the caller's radial
MLP produces ``edge_weights``), aggregation divided by ``avg_num_neighbors``, then an optional learned
:class:`~e3nn_fast.flax.Linear` to ``irreps_out`` (messages filtered to its irreps first, which changes no number).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen

from e3nn_fast.flax.linear import Linear
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.message_passing import layer_filter, message_passing, message_passing_irreps_out

__all__ = ["MessagePassing"]


class MessagePassing(flax.linen.Module):
    r"""Equivariant convolution ``Linear(sum_{e -> n} tensor_product(x[s_e], sh_e) * w_e / avg_num_neighbors)``.

    Attributes:
        irreps_out: if given, a learned linear map to these irreps follows the aggregation (and the messages are
            filtered to its irreps unless ``filter_ir_out`` is given).
        filter_ir_out: keep only these message irreps.
        irrep_normalization: of the tensor product (default from ``config``).
        avg_num_neighbors: the aggregated messages are divided by it.

    Call as ``module(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes=None, *, mode=...)``; arguments as in
    :func:`e3nn_fast.message_passing`.
    """

    irreps_out: Optional[Any] = None
    filter_ir_out: Optional[Any] = None
    irrep_normalization: Optional[str] = None
    avg_num_neighbors: float = 1.0

    def _filter(self):
        return layer_filter(self.filter_ir_out, self.irreps_out)

    def num_edge_weights(self, irreps_in, irreps_sh) -> int:
        """How many weights per edge the radial network must produce for these input irreps."""
        return message_passing_irreps_out(irreps_in, irreps_sh, self._filter()).num_irreps

    @flax.linen.compact
    def __call__(self, node_feats: IrrepsArray, edge_sh: IrrepsArray, edge_weights, senders, receivers,
                 num_nodes: Optional[int] = None, *, mode: str = "promise_in_bounds") -> IrrepsArray:
        out = message_passing(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes, mode=mode,
                              filter_ir_out=self._filter(), irrep_normalization=self.irrep_normalization)
        out = out / self.avg_num_neighbors
        if self.irreps_out is not None:
            out = Linear(Irreps(self.irreps_out), name="linear")(out)
        return out
