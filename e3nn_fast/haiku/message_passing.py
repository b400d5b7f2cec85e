"""Haiku convolution layer on the fused message-passing op (:func:`e3nn_fast.message_passing.message_passing`).

The layer owns no radial network: the caller's radial MLP turns edge lengths into ``edge_weights`` (one per edge and
output irrep copy, :meth:`MessagePassing.num_edge_weights` of them), which keeps the module usable by NequIP-, MACE-
and Allegro-style models alike.  With ``irreps_out`` a learned :class:`~e3nn_fast.haiku.Linear` mixes the aggregated
messages into ``irreps_out`` (the messages are then filtered to those irreps first: the linear map would drop the
others anyway, so this changes no number and saves their computation).
"""

from __future__ import annotations

from typing import Optional

import haiku as hk

from e3nn_fast.haiku.linear import Linear
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.message_passing import layer_filter, message_passing, message_passing_irreps_out

__all__ = ["MessagePassing"]


class MessagePassing(hk.Module):
    r"""Equivariant convolution ``Linear(sum_{e -> n} tensor_product(x[s_e], sh_e) * w_e / avg_num_neighbors)``.

    Args:
        irreps_out: if given, a learned linear map to these irreps follows the aggregation (and the messages are
            filtered to its irreps unless ``filter_ir_out`` is given); otherwise the aggregated messages are returned.
        filter_ir_out: keep only these message irreps.
        irrep_normalization: of the tensor product (default from ``config``).
        avg_num_neighbors: the aggregated messages are divided by it.
        name: haiku module name.

    Call as ``module(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes=None, *, mode=...)``; arguments as in
    :func:`e3nn_fast.message_passing`.
    """

    def __init__(
        self,
        irreps_out=None,
        *,
        filter_ir_out=None,
        irrep_normalization: Optional[str] = None,
        avg_num_neighbors: float = 1.0,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self.irreps_out = None if irreps_out is None else Irreps(irreps_out)
        self.filter_ir_out = layer_filter(filter_ir_out, self.irreps_out)
        self.irrep_normalization = irrep_normalization
        self.avg_num_neighbors = avg_num_neighbors

    def num_edge_weights(self, irreps_in, irreps_sh) -> int:
        """How many weights per edge the radial network must produce for these input irreps."""
        return message_passing_irreps_out(irreps_in, irreps_sh, self.filter_ir_out).num_irreps

    def __call__(self, node_feats: IrrepsArray, edge_sh: IrrepsArray, edge_weights, senders, receivers,
                 num_nodes: Optional[int] = None, *, mode: str = "promise_in_bounds") -> IrrepsArray:
        out = message_passing(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes, mode=mode,
                              filter_ir_out=self.filter_ir_out, irrep_normalization=self.irrep_normalization)
        out = out / self.avg_num_neighbors
        if self.irreps_out is not None:
            out = Linear(self.irreps_out, name="linear")(out)
        return out
