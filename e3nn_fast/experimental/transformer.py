r"""Equivariant graph attention (drop-in for ``e3nn_jax.experimental.transformer``, a haiku module).

For an edge :math:`s \to d` with attributes :math:`a_{sd}` (typically spherical harmonics of the edge vector and
scalar embeddings of its length):

- a *key* and a *value* are built from the source features: :math:`[f_s, f_s \otimes a_{sd}]` filtered to the
  wanted irreps, each irrep scaled by an MLP of the scalar part of :math:`a_{sd}`;
- the attention logits (one per head) are a learned linear map of the scalar products :math:`f_d \otimes k_{sd}`;
- the weights :math:`\alpha_{sd}` are a softmax over the edges arriving at :math:`d`, each term also multiplied by a
  smooth cutoff :math:`c_{sd}` so that edges can enter and leave the neighbourhood continuously;
- the output of node :math:`d` is a linear map of :math:`\sum_s \sqrt{\alpha_{sd}}\, v_{sd}` (heads are
  contiguous groups of the value channels).

The square root keeps the output normalised when the values are independent.  Parameter names
(``mlp_key``, ``linear_logit``, ``mlp_val``, ``linear_out``) are those of e3nn-jax 0.21.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from e3nn_fast.graph import scatter_sum
from e3nn_fast.haiku.linear import Linear
from e3nn_fast.haiku.mlp import MultiLayerPerceptron
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, concatenate
from e3nn_fast.tensor_products import tensor_product

__all__ = ["Transformer"]


def _index_max(i: jax.Array, x: jax.Array, out_dim: int) -> jax.Array:
    """Per-segment maximum of ``x`` (rows grouped by ``i``), floored at 0: ``(out_dim,) + x.shape[1:]``.

    The floor at 0 is harmless for the softmax (any per-node shift cancels) and keeps empty segments finite.
    """
    return jnp.zeros((out_dim,) + x.shape[1:], x.dtype).at[i].max(x)


def _cutoff_softmax(logit: jax.Array, cutoff: jax.Array, edge_dst: jax.Array, num_nodes: int) -> jax.Array:
    """Attention weights ``(num_edges, num_heads)``: softmax of ``logit`` over the edges of each destination node.

    Each exponential is multiplied by the edge's ``cutoff`` weight, so that an edge whose cutoff goes to zero leaves
    the softmax continuously.  A node without (weighted) edges gets a zero normaliser, replaced by one to avoid 0/0.
    """
    # any per-node shift cancels in the ratio; subtracting the per-node maximum avoids overflow
    shifted = logit - _index_max(edge_dst, logit, num_nodes)[edge_dst]
    weighted = cutoff[:, None] * jnp.exp(shifted)
    total = scatter_sum(weighted, dst=edge_dst, output_size=num_nodes)
    total = jnp.where(total == 0.0, 1.0, total)
    return weighted / total[edge_dst]


def _split_heads_and_scale(value: IrrepsArray, alpha: jax.Array, num_heads: int) -> IrrepsArray:
    """Scale head ``h`` of ``value`` (the ``h``-th contiguous group of channels of each irrep) by ``sqrt(alpha[:, h])``.

    The square root (rather than ``alpha`` itself) keeps the summed messages normalised when the values are
    independent; the ReLU keeps the root real should a cutoff weight be negative.
    """
    per_head = value.mul_to_axis(num_heads)  # (num_edges, num_heads, irreps / num_heads)
    per_head = per_head * jnp.sqrt(jax.nn.relu(alpha))[:, :, None]
    return per_head.axis_to_mul()


def _check_edges(edge_src, edge_dst, edge_weight_cutoff, edge_attr, node_feat) -> None:
    if not isinstance(node_feat, IrrepsArray) or node_feat.ndim != 2:
        raise TypeError("Transformer: node_feat must be an IrrepsArray of shape (num_nodes, irreps.dim)")
    if not isinstance(edge_attr, IrrepsArray) or edge_attr.ndim != 2:
        raise TypeError("Transformer: edge_attr must be an IrrepsArray of shape (num_edges, irreps.dim)")
    num_edges = edge_attr.shape[0]
    for name, value in (("edge_src", edge_src), ("edge_dst", edge_dst), ("edge_weight_cutoff", edge_weight_cutoff)):
        if jnp.shape(value) != (num_edges,):
            raise ValueError(f"Transformer: {name} must have shape ({num_edges},) (num_edges), got {jnp.shape(value)}")
    for name, value in (("edge_src", edge_src), ("edge_dst", edge_dst)):
        if not jnp.issubdtype(jnp.asarray(value).dtype, jnp.integer):
            raise TypeError(f"Transformer: {name} must hold integer node indices, got dtype {jnp.asarray(value).dtype}")
    if "0e" not in edge_attr.irreps:
        raise ValueError(f"Transformer: edge_attr needs scalars (0e) for the MLPs, got irreps {edge_attr.irreps}")


def _edge_features(
    list_neurons: List[int], act, x: IrrepsArray, y: IrrepsArray, filter_ir_out: Optional[Irreps], name: str
) -> IrrepsArray:
    """``[x, x (x) y_nonscalar]`` filtered to ``filter_ir_out``, each irrep scaled by an MLP of ``y``'s scalars.

    A plain function, not a method of :class:`Transformer`: haiku opens a name scope for module methods, which would
    change the parameter names.
    """
    features = concatenate([x, tensor_product(x, y.filter(drop="0e"))]).regroup().filter(keep=filter_ir_out)
    scales = MultiLayerPerceptron(
        list(list_neurons) + [features.irreps.num_irreps], act, output_activation=False, name=name
    )(y.filter(keep="0e"))
    return features * scales


class Transformer(hk.Module):
    r"""Equivariant graph transformer layer (see the module docstring).

    Args:
        irreps_node_output: irreps of the output node features.
        list_neurons: hidden layer sizes of the MLPs that weight keys and values from the edge scalars.
        act: activation of those MLPs.
        num_heads: number of attention heads; the value irreps multiplicities must be divisible by it.
    """

    def __init__(
        self,
        irreps_node_output: Irreps,
        list_neurons: List[int],
        act: Callable[[jax.Array], jax.Array],
        num_heads: int = 1,
    ):
        super().__init__()
        self.irreps_node_output = Irreps(irreps_node_output)
        self.list_neurons = list_neurons
        self.act = act
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"Transformer: num_heads must be a positive int, got {num_heads!r}")
        self.num_heads = num_heads

    def __call__(
        self,
        edge_src: jax.Array,
        edge_dst: jax.Array,
        edge_weight_cutoff: jax.Array,
        edge_attr: IrrepsArray,
        node_feat: IrrepsArray,
    ) -> IrrepsArray:
        r"""Apply the layer.

        Args:
            edge_src: ``(num_edges,)`` int, source node of each edge.
            edge_dst: ``(num_edges,)`` int, destination node of each edge.
            edge_weight_cutoff: ``(num_edges,)`` float, smooth cutoff of each edge (e.g. ``soft_envelope``).
            edge_attr: ``(num_edges, irreps)`` edge attributes (e.g. spherical harmonics + radial scalars).
            node_feat: ``(num_nodes, irreps)`` node features.

        Returns:
            ``(num_nodes, irreps_node_output)`` node features.
        """
        _check_edges(edge_src, edge_dst, edge_weight_cutoff, edge_attr, node_feat)
        num_nodes = node_feat.shape[0]
        source, destination = node_feat[edge_src], node_feat[edge_dst]

        key = _edge_features(self.list_neurons, self.act, source, edge_attr, node_feat.irreps, "mlp_key")
        logit = Linear(f"{self.num_heads}x0e", name="linear_logit")(
            tensor_product(destination, key, filter_ir_out="0e")
        ).array  # (num_edges, num_heads)
        alpha = _cutoff_softmax(logit, edge_weight_cutoff, edge_dst, num_nodes)

        value = _edge_features(self.list_neurons, self.act, source, edge_attr, self.irreps_node_output, "mlp_val")
        message = _split_heads_and_scale(value, alpha, self.num_heads)
        return Linear(self.irreps_node_output, name="linear_out")(
            scatter_sum(message, dst=edge_dst, output_size=num_nodes)
        )
