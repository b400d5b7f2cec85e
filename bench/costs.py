"""FLOPs and bytes of a workload, counted from e3nn_fast's path descriptions (not from the executed code).

The forward FLOPs of a tensor product are :meth:`TensorProductDescription.flops_per_sample` (2 per multiply-add of
the sparse Clebsch-Gordan contractions, weights included) times the batch; the bytes are the compulsory traffic of
the data each sample reads and writes once (both inputs, per-sample weights, the output) plus the shared weights once.
Whatever an executor materialises beyond that is its own overhead, which is exactly what the achieved fraction of
peak bandwidth exposes.

The backward passes are counted with fixed multipliers, the usual rule for bilinear maps: a reverse pass needs two
products of the forward's size per product (one per input), so ``fwd+bwd`` ~ 3x the forward FLOPs; ``forces``
runs a forward and the backward to the force input (~2x), then reverses that (~2x more each), ~6x.  Bytes: the
backward reads the inputs and the cotangent again and writes one gradient per input (~2x the forward's inputs plus
the output), the same for ``forces``.  These are estimates for a roofline, not exact counts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from e3nn_fast.irreps import Irreps
from e3nn_fast.path_description import TensorProductDescription
from e3nn_fast.so3 import clebsch_gordan

FLOP_MULTIPLIER = {"fwd": 1.0, "fwd+bwd": 3.0, "forces": 6.0}


@dataclasses.dataclass(frozen=True)
class Cost:
    """Forward FLOPs and bytes of a whole workload (all samples), and the input/output split of the bytes."""

    flops: float
    input_bytes: float
    output_bytes: float

    def for_pass(self, pass_name: str) -> tuple[float, float]:
        """(FLOPs, bytes) of a pass, from the forward's by the multipliers of the module docstring."""
        flops = self.flops * FLOP_MULTIPLIER[pass_name]
        if pass_name == "fwd":
            return flops, self.input_bytes + self.output_bytes
        return flops, 2 * self.input_bytes + self.output_bytes


def bytes_per_sample(description: TensorProductDescription, itemsize: int, per_sample_weights: bool) -> tuple[int, int]:
    """(input bytes, output bytes) one sample reads and writes: both inputs, its weights if they are per-sample,
    and the output (only the segments some path writes)."""
    inputs = description.irreps_in1.dim + description.irreps_in2.dim
    if per_sample_weights:
        inputs += description.num_weights
    outputs = int(description.output_mask.sum())
    return inputs * itemsize, outputs * itemsize


def tensor_product_cost(description: TensorProductDescription, samples: int, itemsize: int, *,
                        per_sample_weights: bool = False, channel_scale: bool = False) -> Cost:
    """Cost of ``samples`` products.  ``channel_scale``: the output is then multiplied by one per-sample weight per
    output channel (the ``tensor_product(x, sh) * w`` of NequIP/MACE convolutions): one more FLOP per output
    component and ``num_irreps`` more input values per sample."""
    flops = description.flops_per_sample()
    inputs, outputs = bytes_per_sample(description, itemsize, per_sample_weights)
    if channel_scale:
        flops += description.irreps_out.dim
        inputs += description.irreps_out.num_irreps * itemsize
    shared = 0 if per_sample_weights else description.num_weights * itemsize
    return Cost(float(flops) * samples, float(inputs) * samples + shared, float(outputs) * samples)


def spherical_harmonics_flops(lmax: int) -> int:
    """FLOPs of one vector's harmonics ``l <= lmax`` by the usual recursion ``Y_l = C (Y_{l-1} (x) Y_1)``: 2 per
    non-zero CG entry per degree, plus the normalisation of the vector (about 10)."""
    total = 10
    for l in range(2, lmax + 1):
        total += 2 * int((abs(clebsch_gordan(l - 1, 1, l)) > 1e-12).sum())
    return total


def spherical_harmonics_cost(lmax: int, vectors: int, itemsize: int) -> Cost:
    """Cost of the harmonics ``l <= lmax`` of ``vectors`` 3-vectors."""
    out_dim = Irreps.spherical_harmonics(lmax).dim
    return Cost(float(spherical_harmonics_flops(lmax)) * vectors, 3.0 * itemsize * vectors,
                float(out_dim) * itemsize * vectors)


def fraction(achieved: Optional[float], peak: Optional[float]) -> Optional[float]:
    """``achieved / peak`` or None when either is unknown."""
    if achieved is None or not peak or math.isnan(achieved):
        return None
    return achieved / peak
