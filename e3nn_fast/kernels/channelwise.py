"""Channelwise tensor-product kernels: one input carries the channels, the other has a single channel.

This is the product of features with spherical harmonics, ``tensor_product(x, sh)`` (``uvuv`` with ``mul2 = 1``),
legacy ``uvu`` instructions with a mul-1 second input, and the message of NequIP/MACE convolutions (``uvu`` with a
weight per edge and channel)::

    out[b, u, k] = sum_{ijk in CG} c_ijk w[b or -, u] x1[b, u, i] x2[b, j]

All channelwise (and elementwise) paths of a tensor product run in *one* ``pallas_call`` of the channel-aligned
engine (:mod:`e3nn_fast.kernels._aligned`), which unrolls the sparse Clebsch-Gordan entries at trace time.

Gradient kernels (the same engine with another output slot, see :mod:`e3nn_fast.kernels.multilinear`):

* ``dx1[b, u, i] = sum c w[u] g[b, u, k] x2[b, j]``: channelwise again (the cotangent plays input 1);
* ``dx2[b, j] = sum_u sum c w[u] x1[b, u, i] g[b, u, k]``: a lane-reduced elementwise product;
* ``dw[b, u] = sum c x1[b, u, i] x2[b, j] g[b, u, k]`` per row, or its sum over the rows (block partial sums) for
  weights shared by all rows.

Their derivatives are again products of the engine, so gradients of any order stay in these kernels.  ``dx2`` sums
over the channels, which therefore stay in one program: its row blocks shrink instead (4 x 128 at MACE-large).
Legacy per-sample products under ``vmap`` (one row and shared weights per call) fold the mapped weights into a
per-row weight slot of one launch (:func:`e3nn_fast.kernels.multilinear._fold_shared`).
"""

from __future__ import annotations

from e3nn_fast.kernels._aligned import channel_roles
from e3nn_fast.path_description import Path

MODES = ("uvu", "uvv", "uvuv", "uvw")


def qualifies(path: Path) -> bool:
    """Whether ``path`` is channelwise: at most one input carries the one channel index (``uvu``/``uvuv`` with
    ``mul2 = 1``, ``uvv``/``uvuv`` with ``mul1 = 1``, ``uvw`` with ``mul1 = mul2 = 1``), weighted or not."""
    return path.mode in MODES and channel_roles(path) is not None
