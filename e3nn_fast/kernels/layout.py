"""The packed layout the kernels read and write, and the conversions from and to e3nn's chunks.

e3nn stores a segment ``mul x ir`` multiplicity-major, ``(..., mul, 2l+1)``.  Inside a kernel the natural unit is a
*component plane*: component ``i`` of every channel of one segment, a ``(rows, mul)`` tile that is multiplied with
other planes lane by lane.  So the kernels use a *packed* layout: one 2-D operand ``(batch, columns)`` per input,
in which each segment is stored component-major, ``(2l+1, width)``, with its multiplicity padded with zeros to
``width`` = the next power of two (Triton requires power-of-two tiles).  Component ``i`` of a segment is then the
contiguous column range ``[offset + i * width, offset + (i + 1) * width)``: loads and stores are contiguous and
coalesced, and the padded lanes hold zeros, so they add nothing to lane reductions.

Packing (transpose + pad + concatenate) and unpacking (slice + transpose) are plain ``jax.numpy`` ops that XLA fuses
into one copy each way; they are part of every kernel's measured cost.  Weight vectors of channel-aligned paths
use the same layout with ``2l+1 = 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax.numpy as jnp

from e3nn_fast.kernels._pallas_compat import next_power_of_2


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
    """Where segment ``index`` (``mul`` channels of ``dim`` components) lives in a packed operand."""

    index: int
    mul: int
    dim: int
    width: int
    offset: int

    @property
    def size(self) -> int:
        return self.dim * self.width

    def column(self, component: int) -> int:
        """First column of component ``component``'s plane."""
        return self.offset + component * self.width


@dataclasses.dataclass(frozen=True)
class OperandLayout:
    """The segments of one packed operand, in column order."""

    segments: tuple[SegmentLayout, ...]

    @property
    def columns(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def max_width(self) -> int:
        return max((segment.width for segment in self.segments), default=1)

    def segment(self, index: int) -> SegmentLayout:
        for segment in self.segments:
            if segment.index == index:
                return segment
        raise KeyError(f"segment {index} is not in this packed operand")


def build_layout(entries: Sequence[tuple[int, int, int]]) -> OperandLayout:
    """Packed layout of the segments ``(index, mul, dim)``, each stored once, in the order given."""
    segments, offset, seen = [], 0, set()
    for index, mul, dim in entries:
        if index in seen:
            continue
        seen.add(index)
        width = next_power_of_2(mul)
        segments.append(SegmentLayout(index, mul, dim, width, offset))
        offset += dim * width
    return OperandLayout(tuple(segments))


def pack(layout: OperandLayout, chunks: Mapping[int, jnp.ndarray], dtype) -> jnp.ndarray:
    """``(rows, columns)`` from chunks ``(rows, mul, dim)`` (or ``(columns,)`` from unbatched ``(mul, dim)``)."""
    pieces = []
    for segment in layout.segments:
        x = jnp.asarray(chunks[segment.index], dtype)
        x = jnp.swapaxes(x, -1, -2)  # (..., dim, mul): component-major
        pad = [(0, 0)] * (x.ndim - 1) + [(0, segment.width - segment.mul)]
        x = jnp.pad(x, pad)
        pieces.append(x.reshape(x.shape[:-2] + (segment.size,)))
    return jnp.concatenate(pieces, axis=-1)


def unpack(layout: OperandLayout, packed: jnp.ndarray) -> dict[int, jnp.ndarray]:
    """Inverse of :func:`pack`: chunks ``(..., mul, dim)`` keyed by segment index."""
    chunks = {}
    for segment in layout.segments:
        x = packed[..., segment.offset : segment.offset + segment.size]
        x = x.reshape(x.shape[:-1] + (segment.dim, segment.width))[..., : segment.mul]
        chunks[segment.index] = jnp.swapaxes(x, -1, -2)
    return chunks


# Rows per program of the aligned families (sized by kernels/_aligned.py's launch shape): enough to fill a few
# warps with each (rows, width) plane, few enough to stay in registers.
TARGET_TILE_ELEMENTS = 2048
MIN_BLOCK_ROWS = 8
MAX_BLOCK_ROWS = 256


def pad_rows(x: jnp.ndarray, rows: int) -> jnp.ndarray:
    """``x`` with zero rows appended up to ``rows`` (a no-op when it already has them)."""
    if x.shape[0] == rows:
        return x
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
