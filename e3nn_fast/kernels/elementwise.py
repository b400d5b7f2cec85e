"""Elementwise tensor-product kernels: both inputs carry the same channels (``uuu``, and ``uuw`` into one channel).

``elementwise_tensor_product`` and ``IrrepsArray * IrrepsArray`` couple channel ``u`` of input 1 with channel ``u``
of input 2::

    out[b, u, k] = sum_{ijk in CG} c_ijk w[u] x1[b, u, i] x2[b, u, j]

(``uuw`` without weights sums the channels into one output channel).  These paths run in the same single
``pallas_call`` of the channel-aligned engine (:mod:`e3nn_fast.kernels._aligned`) as the channelwise ones.

Gradient kernels (the same engine, another output slot): ``dx1 = sum c w g x2`` and ``dx2 = sum c w x1 g`` are
elementwise products again; ``dw[u] = sum c x1 x2 g`` is a product reduced over the rows (for shared weights) by
per-block partial sums.  Gradients of any order stay in the engine.

The gradients multiply pairs of full-width planes (``g_k x2_j``), so a program keeps many planes live: their row
blocks are small and wide channels are split over a second grid axis of lane blocks (``128x(0e+1o+2e)``: planes of
8 x 64, two lane blocks; see :func:`e3nn_fast.kernels._aligned._launch_shape`).
"""

from __future__ import annotations

from e3nn_fast.kernels._aligned import channel_roles
from e3nn_fast.path_description import Path

MODES = ("uuu", "uuw")


def qualifies(path: Path) -> bool:
    """Whether ``path`` is elementwise: ``uuu``, or ``uuw`` into a single output channel."""
    return path.mode in MODES and channel_roles(path) is not None
