"""flax.nnx convolution layer on the fused message-passing op (:func:`e3nn_fast.message_passing.message_passing`).

Same layer as the haiku and linen ``MessagePassing``: no radial network inside (the caller's radial MLP produces
``edge_weights``), aggregation divided by ``avg_num_neighbors``, then an optional learned
:class:`~e3nn_fast.nnx.Linear` to ``irreps_out``.  nnx creates parameters at construction, so the node and edge
irreps are arguments of the constructor.
"""

from __future__ import annotations

from typing import Any, Optional

from flax import nnx

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.message_passing import layer_filter, message_passing, message_passing_irreps_out
from e3nn_fast.nnx.linear import Linear

__all__ = ["MessagePassing"]


class MessagePassing(nnx.Module):
    r"""Equivariant convolution ``Linear(sum_{e -> n} tensor_product(x[s_e], sh_e) * w_e / avg_num_neighbors)``.

    Args:
        irreps_in: irreps of the node features.
        irreps_sh: irreps of the edge attributes (usually spherical harmonics).
        irreps_out: if given, a learned linear map to these irreps follows the aggregation (and the messages are
            filtered to its irreps unless ``filter_ir_out`` is given); otherwise the aggregated messages are returned.
        filter_ir_out: keep only these message irreps.
        irrep_normalization: of the tensor product (default from ``config``).
        avg_num_neighbors: the aggregated messages are divided by it.
        rngs: ``nnx.Rngs`` for the linear map's parameters.

    Attributes:
        num_edge_weights: how many weights per edge the radial network must produce.

    Call as ``module(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes=None, *, mode=...)``; arguments as in
    :func:`e3nn_fast.message_passing`.
    """

    def __init__(
        self,
        irreps_in: Any,
        irreps_sh: Any,
        irreps_out: Any = None,
        *,
        filter_ir_out: Any = None,
        irrep_normalization: Optional[str] = None,
        avg_num_neighbors: float = 1.0,
        rngs: nnx.Rngs,
    ):
        self.irreps_out = None if irreps_out is None else Irreps(irreps_out)
        self.filter_ir_out = layer_filter(filter_ir_out, self.irreps_out)
        self.irrep_normalization = irrep_normalization
        self.avg_num_neighbors = float(avg_num_neighbors)
        irreps_messages = message_passing_irreps_out(irreps_in, irreps_sh, self.filter_ir_out)
        self.num_edge_weights = irreps_messages.num_irreps
        self.linear = None if self.irreps_out is None else Linear(irreps_messages, self.irreps_out, rngs=rngs)

    def __call__(self, node_feats: IrrepsArray, edge_sh: IrrepsArray, edge_weights, senders, receivers,
                 num_nodes: Optional[int] = None, *, mode: str = "promise_in_bounds") -> IrrepsArray:
        out = message_passing(node_feats, edge_sh, edge_weights, senders, receivers, num_nodes, mode=mode,
                              filter_ir_out=self.filter_ir_out, irrep_normalization=self.irrep_normalization)
        out = out / self.avg_num_neighbors
        if self.linear is not None:
            out = self.linear(out)
        return out
