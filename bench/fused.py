"""Workloads of e3nn_fast's fused ops: message passing (gather, tensor product, weights, scatter) and MACE's
symmetric contraction, each measured against the same computation written op by op.

======================= ============================================================================= ===============
name                    operation                                                                      full size
======================= ============================================================================= ===============
mp-mace-large           ``128x0e+128x1o+128x2e (x) 0e+1o+2e+3o -> 128x(0e+1o+2e+3o)`` paths, per-edge   3,000 nodes /
                        weights, gathered from senders and summed into receivers                       160,000 edges
mp-mace-medium          ``128x0e+128x1o (x) 0e+1o+2e+3o -> l <= 2``, the same                          4,000 nodes /
                                                                                                       70,000 edges
mp-nequip-benzene       ``64x(0o+0e+1o+1e+2o+2e+3o+3e) (x) 0e+1o+2e+3o -> l <= 3``, the same; 11 edges   4,545 nodes /
                        per node (benzene's 12 atoms all within the cutoff)                            50,000 edges
sc-mace                 MACE's product basis: ``x`` of ``nodes x 128 x (0e+1o+2e+3o)``, orders 1-3,    5,000 nodes
                        10 species, keeping ``0e+1o+2e``
======================= ============================================================================= ===============

Each workload has two builders, so one run compares (see :mod:`bench.backends`):

* API ``"e3nn"`` (e3nn-jax, the baseline, and the ``e3nn_fast:<executor>`` backends): the op by op composition a
  model writes, ``scatter_sum(tensor_product(x[senders], sh, filter_ir_out=f) * w, dst=receivers)`` (every edge's
  message materialised), and for the contraction the haiku ``SymmetricTensorProduct`` with the per-species weights
  handed to it through ``get_parameter`` under a ``vmap`` over the nodes (as MACE does; every node gathers its
  species' weights);
* API :data:`bench.backends.FUSED_API` (the ``e3nn_fast:fused-<executor>`` backends): ``e3nn_fast.message_passing`` /
  ``e3nn_fast.symmetric_contraction`` with the executor the backend forces.  The reference executor of
  ``message_passing`` *is* the unfused composition, so ``e3nn_fast:reference`` already times it.

Both write their output the same way, so the runner compares the fused outputs with e3nn-jax's.  The costs count the
*compulsory* traffic of the fused op (per edge: weights, harmonics, two int32 indices; per node: input and output
features), so a row's ``fraction_peak_bandwidth`` is the fraction it reaches of the memory-bound floor; for
MACE-large forward on an H100 the runner also reports the fraction of issue 6's published 0.43 ms floor
(:data:`MACE_LARGE_H100_FLOOR`).

The quick sizes are small (800 / 1,400 / 440 edges, 200 nodes): on a CPU the quick suite of these workloads is
dominated by compiling the three passes for every backend, not by running them.
"""

from __future__ import annotations

import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bench import costs
from bench.backends import FUSED_API
from bench.passes import Inputs, host_normal, host_rng
from bench.workloads import (E3NN_API, MACE_SH, PublishedFloor, Workload, channelwise_description, irreps,
                             register, repeat)

# Issue 6: ~9 KB per edge (the fp32 weights) read from HBM at the H100 SXM's 3.35 TB/s, 160,000 edges.
MACE_LARGE_H100_FLOOR = PublishedFloor(
    peaks_name="NVIDIA H100 SXM", pass_name="fwd", ms=0.43, size=160_000,
    source="issue 6: about 9 KB per edge from HBM at 3.35 TB/s, weights in fp32")


# ---------------------------------------------------------------------------------------------- message passing


def random_graph(rng: np.random.Generator, nodes: int, edges: int) -> tuple[jax.Array, jax.Array]:
    """(senders, receivers): random int32 edges, receivers sorted (as neighbour lists come), every node receiving
    about the same number of edges."""
    receivers = (np.arange(edges, dtype=np.int64) * nodes) // max(edges, 1)  # sorted, balanced in-degree
    senders = rng.integers(0, nodes, edges)
    return jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32)


def message_passing_cost(description, nodes: int, edges: int, itemsize: int) -> costs.Cost:
    """The fused op's FLOPs (tensor product, weight scaling and the scatter's add per output component of every
    edge) and its compulsory bytes (per edge: harmonics, weights, sender and receiver; per node: input and output)."""
    out = description.irreps_out
    flops = (description.flops_per_sample() + 2 * out.dim) * edges
    per_edge = (description.irreps_in2.dim + out.num_irreps) * itemsize + 2 * 4
    inputs = per_edge * edges + description.irreps_in1.dim * itemsize * nodes
    return costs.Cost(float(flops), float(inputs), float(out.dim * itemsize * nodes))


def message_passing_workload(name: str, in1: str, in2: str, filter_out: str, edges_per_node: float, sizes: dict,
                             summary: str, published_floor: Optional[PublishedFloor] = None) -> Workload:
    """A convolution over a random graph with ``size`` edges and ``size / edges_per_node`` nodes."""
    description = channelwise_description(in1, in2, filter_out)
    num_channels = description.irreps_out.num_irreps
    keep = filter_out.split("+")

    def nodes_of(edges: int) -> int:
        return max(1, round(edges / edges_per_node))

    def make_inputs(edges, dtype, key):
        rng = host_rng(key)
        nodes = nodes_of(edges)
        senders, receivers = random_graph(rng, nodes, edges)
        arrays = (
            host_normal(rng, (nodes, irreps(in1).dim), dtype),
            host_normal(rng, (edges, irreps(in2).dim), dtype),
            host_normal(rng, (edges, num_channels), dtype),
            senders,
            receivers,
        )
        # forces differentiate through the harmonics (positions); training updates the features and the weights
        return Inputs(arrays, differentiable=(0, 1, 2), force=1, trained=(0, 2))

    def build_unfused(lib):
        def forward(x, sh, w, senders, receivers):
            messages = lib.tensor_product(lib.IrrepsArray(in1, x[senders]), lib.IrrepsArray(in2, sh),
                                          filter_ir_out=keep) * w
            return lib.scatter_sum(messages, dst=receivers, output_size=x.shape[0]).array

        return forward

    def build_fused(lib):
        def forward(x, sh, w, senders, receivers):
            return lib.message_passing(lib.IrrepsArray(in1, x), lib.IrrepsArray(in2, sh), w, senders, receivers,
                                       x.shape[0], filter_ir_out=keep).array

        return forward

    def cost(edges, itemsize):
        return message_passing_cost(description, nodes_of(edges), edges, itemsize)

    return Workload(name, "message passing", summary, "edges", sizes, make_inputs,
                    {E3NN_API: build_unfused, FUSED_API: build_fused}, cost=cost,
                    details=lambda edges: {"nodes": nodes_of(edges), "edges": edges},
                    published_floor=published_floor)


# ---------------------------------------------------------------------------------------- symmetric contraction


def _describe_contraction(irreps_in: str, orders: tuple, keep: str):
    # ``e3nn_fast.symmetric_contraction`` is the function (it shadows its module on the package), hence sys.modules
    import e3nn_fast  # noqa: F401

    return sys.modules["e3nn_fast.symmetric_contraction"].describe(irreps_in, orders, keep)


def symmetric_contraction_cost(description, nodes: int, channels: int, species: int, itemsize: int) -> costs.Cost:
    """FLOPs: ``2 * order`` per sparse basis term, channel and node (the products of ``order`` inputs and the
    weighted accumulation); bytes: input, species and output per node, every species' weights once."""
    per_channel = sum(2 * block.order * len(block.value) for block in description.blocks)
    weights = sum(block.mul for block in description.blocks) * channels * species
    inputs = (nodes * channels * description.irreps_in.dim + weights) * itemsize + 4 * nodes
    return costs.Cost(float(per_channel * channels * nodes), float(inputs),
                      float(nodes * channels * description.irreps_out.dim * itemsize))


def symmetric_contraction_workload(name: str, irreps_in: str, channels: int, orders: tuple, keep: str,
                                   num_species: int, sizes: dict, summary: str) -> Workload:
    """MACE's product basis over ``size`` nodes of random species."""
    description = _describe_contraction(irreps_in, orders, keep)
    names = description.weight_names

    def make_inputs(nodes, dtype, key):
        rng = host_rng(key)
        weights = tuple(host_normal(rng, (num_species, description.weight_muls[n], channels), dtype) for n in names)
        arrays = (host_normal(rng, (nodes, channels, irreps(irreps_in).dim), dtype),
                  jnp.asarray(rng.integers(0, num_species, nodes), jnp.int32)) + weights
        # forces differentiate through x (it depends on the positions through the messages); training: the weights
        weight_positions = tuple(range(2, 2 + len(names)))
        return Inputs(arrays, differentiable=(0,) + weight_positions, force=0, trained=weight_positions)

    def build_haiku(lib):
        import haiku as hk

        def forward(x, species, *weights):
            by_name = dict(zip(names, weights))

            def per_node(x_node, s):
                def get_parameter(name, shape, dtype):
                    return by_name[name][s].astype(dtype)  # this node's species' (mul, channels) weights

                module = hk.without_apply_rng(hk.transform(
                    lambda v: lib.haiku.SymmetricTensorProduct(orders, keep_irrep_out=keep,
                                                               get_parameter=get_parameter)(v)))
                return module.apply({}, lib.IrrepsArray(irreps_in, x_node)).array

            return jax.vmap(per_node)(x, species)

        return forward

    def build_fused(lib):
        def forward(x, species, *weights):
            return lib.symmetric_contraction(lib.IrrepsArray(irreps_in, x), species, dict(zip(names, weights)),
                                             orders, keep).array

        return forward

    def cost(nodes, itemsize):
        return symmetric_contraction_cost(description, nodes, channels, num_species, itemsize)

    return Workload(name, "product basis", summary, "nodes", sizes, make_inputs,
                    {E3NN_API: build_haiku, FUSED_API: build_fused}, cost=cost,
                    details=lambda nodes: {"nodes": nodes, "channels": channels, "species": num_species})


# --------------------------------------------------------------------------------------------------- the registry

register(message_passing_workload(
    "mp-mace-large", "128x0e+128x1o+128x2e", MACE_SH, "0e+1o+2e+3o", 160_000 / 3_000,
    {"tiny": 64, "quick": 800, "full": 160_000},
    "fused MP 128x0e+128x1o+128x2e ⊗ 0e+1o+2e+3o → 128x(0e+1o+2e+3o), 53 edges/node", MACE_LARGE_H100_FLOOR))
register(message_passing_workload(
    "mp-mace-medium", "128x0e+128x1o", MACE_SH, "0e+1o+2e", 70_000 / 4_000,
    {"tiny": 64, "quick": 1_400, "full": 70_000},
    "fused MP 128x0e+128x1o ⊗ 0e+1o+2e+3o → l ≤ 2, 17.5 edges/node"))
register(message_passing_workload(
    "mp-nequip-benzene", repeat(64, "0o+0e+1o+1e+2o+2e+3o+3e"), MACE_SH, "0o+0e+1o+1e+2o+2e+3o+3e", 11.0,
    {"tiny": 44, "quick": 440, "full": 50_000},
    "fused MP 64x(0o+0e+1o+1e+2o+2e+3o+3e) ⊗ 0e+1o+2e+3o → l ≤ 3, 11 edges/node"))
register(symmetric_contraction_workload(
    "sc-mace", "0e+1o+2e+3o", 128, (1, 2, 3), "0e+1o+2e", 10, {"tiny": 8, "quick": 200, "full": 5_000},
    "MACE product basis 128x(0e+1o+2e+3o), orders 1-3, 10 species → 0e+1o+2e (e3nn-jax: haiku module, vmapped)"))
