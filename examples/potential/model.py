"""A NequIP-style equivariant potential (flax.linen) written once against an ``e3nn`` module passed in.

``Potential(e3nn=e3nn_fast, ...)`` and ``Potential(e3nn=e3nn_jax, ...)`` are the same model with the same parameter
tree, so one set of parameters runs on both and their training steps can be timed against each other.

Per layer: messages ``h_j ⊗ Y(r_ij)`` (spherical harmonics from l = 0, so ``h_j`` itself is one of the paths) weighted
per irrep by an MLP of the radial basis of ``|r_ij|``, summed over neighbours (:func:`convolution`), then a linear map
plus a species-indexed linear self-interaction, and a gate.
The atomic energy is a linear readout of the last scalars times a fixed energy scale; the total energy is its sum.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters and data statistics that define the model (stored in checkpoints)."""

    num_species: int
    cutoff: float = 4.0  # Å
    features: int = 16  # channels per irrep in the hidden layers
    lmax: int = 2  # highest degree of the spherical harmonics and hidden irreps
    num_layers: int = 2
    num_basis: int = 8  # Bessel functions of the radial basis
    radial_hidden: int = 32  # width of the radial MLP
    avg_num_neighbours: float = 1.0  # aggregated messages are divided by this
    energy_scale: float = 1.0  # eV; multiplies the network's atomic output (RMS force of the training set)

    def __post_init__(self):
        for name in ("num_species", "features", "lmax", "num_layers", "num_basis", "radial_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cutoff <= 0 or self.avg_num_neighbours <= 0 or self.energy_scale <= 0:
            raise ValueError(f"cutoff, avg_num_neighbours and energy_scale must be positive: {self}")


def natural_irrep(l: int) -> str:
    """The irrep of degree ``l`` with the parity of a spherical harmonic, ``(-1)^l``: 0e, 1o, 2e, 3o, ..."""
    return f"{l}{'e' if l % 2 == 0 else 'o'}"


def natural_irreps(features: int, lmax: int, num_gates: int = 0) -> str:
    """``features`` copies of ``0e + 1o + 2e + ...`` up to ``lmax``, plus ``num_gates`` extra scalars for a gate."""
    terms = [f"{features + num_gates}x0e"] + [f"{features}x{natural_irrep(l)}" for l in range(1, lmax + 1)]
    return " + ".join(terms)


def convolution(e3nn: ModuleType, nodes, sh, radial_weights: Callable[[int], jax.Array], senders, receivers,
                num_nodes: int, avg_num_neighbours: float, filter_ir_out: list):
    """Equivariant message passing: ``sum_j w(|r_ij|) (h_j ⊗ Y(r_ij)) / avg_num_neighbours``.

    With e3nn_fast it is the fused :func:`e3nn_fast.message_passing`; with e3nn-jax (the timing comparison) the same
    maths op by op: gather, tensor product, per-edge weights, scatter-sum.  ``radial_weights(n)`` returns per-edge weights ``(num_edges, n)``, one per
    irrep copy of the messages; ``filter_ir_out`` lists the irreps kept.
    """
    if hasattr(e3nn, "message_passing"):
        # e3nn_fast: the fused op (same numbers, no (num_edges, irreps_out.dim) message array, forward or backward)
        num_weights = e3nn.message_passing_irreps_out(nodes.irreps, sh.irreps, filter_ir_out).num_irreps
        out = e3nn.message_passing(nodes, sh, radial_weights(num_weights), senders, receivers, num_nodes,
                                   filter_ir_out=filter_ir_out)
        return out / avg_num_neighbours
    messages = e3nn.tensor_product(nodes[senders], sh, filter_ir_out=filter_ir_out)
    messages = _scale_each_irrep(e3nn, messages, radial_weights(messages.irreps.num_irreps))
    return e3nn.scatter_sum(messages, dst=receivers, output_size=num_nodes) / avg_num_neighbours


def _scale_each_irrep(e3nn: ModuleType, x, weights: jax.Array):
    """Multiply every irrep copy of ``x`` (``num_irreps`` of them) by its own column of ``weights``."""
    chunks, offset = [], 0
    for (mul, _), chunk in zip(x.irreps, x.chunks):
        if chunk is not None:
            chunk = chunk * weights[:, offset : offset + mul, None]
        chunks.append(chunk)
        offset += mul
    return e3nn.from_chunks(x.irreps, chunks, x.shape[:-1], x.dtype)


class Potential(nn.Module):
    """Atomic energies (eV) of the atoms of a (batched) graph; see the module docstring."""

    e3nn: Any  # the e3nn module to build with: e3nn_fast or e3nn_jax
    config: ModelConfig

    @nn.compact
    def __call__(self, positions, species, senders, receivers, shifts) -> jax.Array:
        e3nn, config = self.e3nn, self.config
        num_nodes = positions.shape[0]
        vectors = positions[senders] - positions[receivers] + shifts

        def convolve(nodes, sh, radial_weights, keep):
            return convolution(e3nn, nodes, sh, radial_weights, senders, receivers, num_nodes,
                               config.avg_num_neighbours, keep)

        return self.atomic_energies(vectors, species, convolve)

    def atomic_energies(self, vectors, species, convolve) -> jax.Array:
        """The layers, given the edge vectors ``(num_edges, 3)`` and a ``convolve(nodes, sh, radial_weights, keep)``
        that aggregates messages into this call's nodes.  Called from a compact ``__call__`` (here, or the
        graph-parallel one of ``potential.parallel``), so both build the same parameter tree."""
        e3nn, config = self.e3nn, self.config
        vectors = e3nn.IrrepsArray("1o", vectors)
        sh = e3nn.spherical_harmonics(list(range(config.lmax + 1)), vectors, normalize=True, normalization="component")
        radial = self.radial_basis(e3nn.norm(vectors).array[:, 0])

        one_hot = jax.nn.one_hot(species, config.num_species, dtype=vectors.dtype)
        nodes = e3nn.flax.Linear(f"{config.features}x0e")(e3nn.IrrepsArray(f"{config.num_species}x0e", one_hot))
        for layer in range(config.num_layers):
            last = layer == config.num_layers - 1
            # The last layer only feeds the scalar readout: skip its non-scalar outputs.
            keep = [e3nn.Irrep(natural_irrep(l)) for l in range(1 if last else config.lmax + 1)]
            target = f"{config.features}x0e" if last else natural_irreps(config.features, config.lmax,
                                                                          config.features * config.lmax)

            def radial_weights(num, layer=layer):
                mlp = e3nn.flax.MultiLayerPerceptron((config.radial_hidden, config.radial_hidden, num), act=jax.nn.silu,
                                                     output_activation=False, name=f"radial_{layer}")
                return mlp(radial)

            aggregated = convolve(nodes, sh, radial_weights, keep)
            update = e3nn.flax.Linear(target, name=f"update_{layer}")(aggregated)
            skip = e3nn.flax.Linear(target, num_indexed_weights=config.num_species, force_irreps_out=True,
                                    name=f"skip_{layer}")(species, nodes)
            nodes = e3nn.gate(update + skip)
        atomic = e3nn.flax.Linear("0e", name="readout")(nodes).array[:, 0]
        return config.energy_scale * atomic

    def radial_basis(self, lengths: jax.Array) -> jax.Array:
        """Bessel functions times a smooth polynomial envelope that vanishes (with two derivatives) at the cutoff."""
        e3nn, config = self.e3nn, self.config
        basis = e3nn.bessel(lengths, config.num_basis, x_max=config.cutoff)
        return basis * e3nn.poly_envelope(5, 2, x_max=config.cutoff)(lengths)[:, None]


def graph_energies_and_forces(model: Potential, params, batch) -> tuple[jax.Array, jax.Array]:
    """Energy of every graph of ``batch`` (G,) and forces ``-dE/dpositions`` (N, 3); padding graphs give 0 energy."""
    num_graphs = batch.graph_mask.shape[0]

    def energies(positions):
        atomic = model.apply(params, positions, batch.species, batch.senders, batch.receivers, batch.shifts)
        per_graph = jax.ops.segment_sum(atomic, batch.node_graph, num_segments=num_graphs)
        per_graph = jnp.where(batch.graph_mask, per_graph, 0.0)
        # Graphs do not interact, so the gradient of the sum gives every atom the gradient of its own graph's energy.
        return jnp.sum(per_graph), per_graph

    minus_forces, per_graph = jax.grad(energies, has_aux=True)(batch.positions)
    return per_graph, -minus_forces


def init_params(model: Potential, batch, seed: int = 0):
    """Initial parameters (shapes from one padded batch)."""
    # Jitted: run eagerly, the many small operations of the first call would be much slower than one compilation.
    init = jax.jit(model.init)
    return init(jax.random.PRNGKey(seed), batch.positions, batch.species, batch.senders, batch.receivers, batch.shifts)
