r"""Message-passing convolution on point clouds (drop-in for ``e3nn_jax.experimental.point_convolution``).

One layer, in haiku (:class:`MessagePassingConvolutionHaiku`) and flax.linen (:class:`MessagePassingConvolutionFlax`)
flavours sharing the same maths (:func:`_convolve`):

1. edge vectors :math:`\vec r_{sd} = x_d - x_s`, edge attributes :math:`[\phi(|\vec r|), Y^{1..L}(\hat r)]`;
2. node features go through a linear map (``linear_up``);
3. message :math:`m_{sd} = [f_s, f_s \otimes Y(\hat r)]` filtered to ``target_irreps``, each irrep scaled by an MLP
   of the radial embedding :math:`\phi`;
4. messages are summed at the receivers, divided by :math:`\sqrt{\text{avg\_num\_neighbors}}`, and mapped by a
   linear layer (``linear_down``) to ``target_irreps``.

Parameter names follow e3nn-jax 0.21 so its parameters load unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import flax.linen
import haiku as hk
import jax
import jax.numpy as jnp

from e3nn_fast.flax.linear import Linear as FlaxLinear
from e3nn_fast.flax.mlp import MultiLayerPerceptron as FlaxMultiLayerPerceptron
from e3nn_fast.harmonics import spherical_harmonics
from e3nn_fast.haiku.linear import Linear as HaikuLinear
from e3nn_fast.haiku.mlp import MultiLayerPerceptron as HaikuMultiLayerPerceptron
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, concatenate, norm, zeros
from e3nn_fast.radial import bessel, soft_envelope
from e3nn_fast.tensor_products import tensor_product

__all__ = ["radial_basis", "MessagePassingConvolutionHaiku", "MessagePassingConvolutionFlax"]


def radial_basis(r: jax.Array, cutoff: float, num_radial_basis: int) -> jax.Array:
    """Bessel functions of ``r / cutoff`` times a smooth envelope vanishing at the cutoff: ``(n, num_radial_basis)``.

    Suitable as the ``radial_basis`` of the convolutions: ``lambda r: radial_basis(r, 6.0, 8)``.
    """
    x = r / cutoff
    return bessel(x, num_radial_basis) * soft_envelope(x)[:, None]


def _check_inputs(positions, node_feats, senders, receivers) -> None:
    """Clear errors for the graph given to the layer (e3nn-jax fails later, or with a bare assert)."""
    if not isinstance(positions, IrrepsArray):
        raise TypeError(
            f"MessagePassingConvolution: positions should be an IrrepsArray of irreps 1o (or 1e) and shape "
            f"(n_nodes, 3), got a {type(positions).__name__}; wrap them with e3nn.IrrepsArray('1o', positions)"
        )
    if not isinstance(node_feats, IrrepsArray):
        raise TypeError(
            f"MessagePassingConvolution: node_feats should be an IrrepsArray of shape (n_nodes, irreps.dim), "
            f"got a {type(node_feats).__name__}; wrap them with e3nn.IrrepsArray(irreps, node_feats)"
        )
    if positions.ndim != 2 or positions.irreps.dim != 3 or positions.irreps.num_irreps != 1:
        raise ValueError(
            f"MessagePassingConvolution: positions should have irreps 1o (or 1e) and shape (n_nodes, 3), "
            f"got irreps {positions.irreps} and shape {positions.shape}"
        )
    if node_feats.ndim != 2:
        raise ValueError(
            f"MessagePassingConvolution: node_feats should have shape (n_nodes, irreps.dim), got {node_feats.shape}"
        )
    if jnp.shape(senders) != jnp.shape(receivers) or len(jnp.shape(senders)) != 1:
        raise ValueError(
            f"MessagePassingConvolution: senders and receivers should be 1-D index arrays of the same length "
            f"(one entry per edge), got shapes {jnp.shape(senders)} and {jnp.shape(receivers)}"
        )


def _convolve(self, positions, node_feats, senders, receivers, linear_cls, mlp_cls) -> IrrepsArray:
    """The layer's maths; ``linear_cls`` / ``mlp_cls`` are the framework's Linear and MultiLayerPerceptron."""
    _check_inputs(positions, node_feats, senders, receivers)
    target_irreps = Irreps(self.target_irreps)

    vectors = positions[receivers] - positions[senders]  # (n_edges, 1o or 1e)
    lengths = norm(vectors).array[:, 0]
    edge_attrs = concatenate(
        [
            self.radial_basis(lengths),
            spherical_harmonics(list(range(1, self.sh_lmax + 1)), vectors, True),
        ]
    )

    node_feats = linear_cls(node_feats.irreps, name="linear_up")(node_feats)
    sent = node_feats[senders]
    messages = concatenate(
        [
            sent.filter(target_irreps),
            tensor_product(sent, edge_attrs.filter(drop="0e"), filter_ir_out=target_irreps),
        ]
    ).regroup()
    scales = mlp_cls(
        tuple(self.mlp_neurons) + (messages.irreps.num_irreps,), self.mlp_activation, output_activation=False
    )(edge_attrs.filter(keep="0e"))
    messages = messages * scales

    node_feats = zeros(messages.irreps, node_feats.shape[:1], messages.dtype).at[receivers].add(messages)
    node_feats = node_feats / jnp.sqrt(self.avg_num_neighbors)
    return linear_cls(target_irreps, name="linear_down")(node_feats)


_CLASS_DOC = r"""Message passing convolution on a point cloud (see the module docstring).

    Args:
        target_irreps: irreps of the output node features.
        radial_basis: ``r (n_edges,) -> (n_edges, num_basis)`` embedding of the edge lengths (e.g.
            ``lambda r: radial_basis(r, cutoff, 8)``).
        avg_num_neighbors: the summed messages are divided by its square root.
        sh_lmax: highest degree of the edge spherical harmonics.
        num_radial_basis: kept for compatibility (the embedding size is whatever ``radial_basis`` returns).
        mlp_neurons: hidden layer sizes of the MLP mapping the radial embedding to message scales.
        mlp_activation: activation of that MLP.
"""

_CALL_DOC = r"""Apply the convolution.

        Args:
            positions: ``(n_nodes, 1o or 1e)`` positions.
            node_feats: ``(n_nodes, irreps)`` node features.
            senders: ``(n_edges,)`` int, source node of each edge.
            receivers: ``(n_edges,)`` int, destination node of each edge.

        Returns:
            ``(n_nodes, target_irreps)`` node features.
"""


class MessagePassingConvolutionHaiku(hk.Module):
    __doc__ = _CLASS_DOC

    def __init__(
        self,
        target_irreps: Irreps,
        radial_basis: Callable[[jax.Array], jax.Array],
        *,
        avg_num_neighbors: float,
        sh_lmax: int = 3,
        num_radial_basis: int = 8,
        mlp_neurons: Sequence[int] = (64,),
        mlp_activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
        name: str = None,
    ):
        super().__init__(name=name)
        # the same attributes (and conversions) as the flax fields, read by the shared ``_convolve``
        self.target_irreps, self.avg_num_neighbors = Irreps(target_irreps), avg_num_neighbors
        self.radial_basis, self.num_radial_basis, self.sh_lmax = radial_basis, num_radial_basis, sh_lmax
        self.mlp_neurons, self.mlp_activation = tuple(mlp_neurons), mlp_activation

    def __call__(
        self, positions: IrrepsArray, node_feats: IrrepsArray, senders: jax.Array, receivers: jax.Array
    ) -> IrrepsArray:
        return _convolve(
            self, positions, node_feats, senders, receivers, HaikuLinear, HaikuMultiLayerPerceptron
        )

    __call__.__doc__ = _CALL_DOC


class MessagePassingConvolutionFlax(flax.linen.Module):
    __doc__ = _CLASS_DOC

    target_irreps: Irreps
    radial_basis: Callable[[jax.Array], jax.Array]
    avg_num_neighbors: float
    sh_lmax: int = 3
    num_radial_basis: int = 8
    mlp_neurons: Tuple[int, ...] = (64,)
    mlp_activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu

    @flax.linen.compact
    def __call__(
        self, positions: IrrepsArray, node_feats: IrrepsArray, senders: jax.Array, receivers: jax.Array
    ) -> IrrepsArray:
        return _convolve(self, positions, node_feats, senders, receivers, FlaxLinear, FlaxMultiLayerPerceptron)

    __call__.__doc__ = _CALL_DOC
