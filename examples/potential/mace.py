"""A MACE-style layer built from e3nn_fast's fused ops: message passing for the atomic basis ``A``, then the
symmetric contraction (MACE's product basis ``B``) with per-species weights, then a linear update with a skip
connection.  flax.linen, public API only (``import e3nn_fast as e3nn``).

    A_i  = Linear( sum_{j in N(i)} R(|r_ij|) * (h_j ⊗ Y(r_ij)) / avg_num_neighbours )   (e3nn.flax.MessagePassing)
    B_i  = sum_nu  w_nu[species_i] · Sym^nu(A_i)                                           (e3nn.symmetric_contraction)
    h_i' = Linear(B_i) + Linear_species(h_i)                                              (skip, per-species weights)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import e3nn_fast as e3nn


class MACELayer(nn.Module):
    """One MACE interaction + product block.

    Attributes:
        features: channels ``k`` of the atomic basis (``A`` has irreps ``k x (0e + 1o + ... + lmax)``).
        hidden_irreps: irreps of the layer's output node features.
        num_species: number of chemical species (weights of the product basis and the skip are per species).
        lmax: degree of the edge spherical harmonics and of ``A``.
        correlation: body order of the product basis (orders ``1..correlation``).
        cutoff: radial cutoff (Å); ``avg_num_neighbours`` normalises the aggregation.
    """

    features: int
    hidden_irreps: str
    num_species: int
    lmax: int = 3
    correlation: int = 3
    cutoff: float = 5.0
    avg_num_neighbours: float = 10.0
    num_basis: int = 8

    @nn.compact
    def __call__(self, node_feats: e3nn.IrrepsArray, species, vectors: e3nn.IrrepsArray, senders, receivers):
        num_nodes = node_feats.shape[0]
        sh_irreps = e3nn.Irreps.spherical_harmonics(self.lmax)
        a_irreps = e3nn.Irreps([(self.features, ir) for _, ir in sh_irreps])
        sh = e3nn.spherical_harmonics(sh_irreps, vectors, normalize=True, normalization="component")
        lengths = e3nn.norm(vectors).array[:, 0]
        radial = e3nn.bessel(lengths, self.num_basis, self.cutoff) * e3nn.soft_envelope(lengths, self.cutoff)[:, None]

        conv = e3nn.flax.MessagePassing(irreps_out=a_irreps, avg_num_neighbors=self.avg_num_neighbours)
        num_weights = conv.num_edge_weights(node_feats.irreps, sh.irreps)
        edge_weights = e3nn.flax.MultiLayerPerceptron([32, num_weights], jax.nn.silu, output_activation=False)(
            e3nn.IrrepsArray(f"{self.num_basis}x0e", radial)
        ).array
        a = conv(node_feats, sh, edge_weights, senders, receivers, num_nodes)  # (nodes, k x (0e+1o+...))

        # product basis, channel by channel: (nodes, k, 0e+1o+...) -> (nodes, k, kept irreps)
        keep = e3nn.Irreps(self.hidden_irreps).regroup()
        orders = tuple(range(1, self.correlation + 1))
        shapes = e3nn.symmetric_contraction_weight_shapes(sh_irreps, self.features, self.num_species, orders,
                                                          [ir for _, ir in keep])
        weights = {name: self.param(name, nn.initializers.normal(1.0), shape) for name, shape in shapes.items()}
        b = e3nn.symmetric_contraction(a.mul_to_axis(self.features), species, weights, orders,
                                       [ir for _, ir in keep]).axis_to_mul()

        update = e3nn.flax.Linear(self.hidden_irreps, name="product_linear")(b)
        skip = e3nn.flax.Linear(self.hidden_irreps, num_indexed_weights=self.num_species, force_irreps_out=True,
                                name="skip")(
            species, node_feats)
        return update + skip


class MACEEnergy(nn.Module):
    """A small model on top: species embedding, ``num_layers`` :class:`MACELayer` blocks, and the energy as the sum over
    atoms and layers of a linear readout of the scalars (``layer`` holds the blocks' settings)."""

    layer: dict
    num_layers: int = 2

    @nn.compact
    def __call__(self, positions, species, senders, receivers):
        num_species, features = self.layer["num_species"], self.layer["features"]
        one_hot = jax.nn.one_hot(species, num_species, dtype=positions.dtype)
        h = e3nn.flax.Linear(f"{features}x0e", name="embedding")(e3nn.IrrepsArray(f"{num_species}x0e", one_hot))
        vectors = e3nn.IrrepsArray("1o", positions[receivers] - positions[senders])
        energy = 0.0
        for i in range(self.num_layers):
            h = MACELayer(**self.layer, name=f"layer_{i}")(h, species, vectors, senders, receivers)
            energy = energy + jnp.sum(e3nn.flax.Linear("0e", name=f"readout_{i}")(h).array)
        return energy
