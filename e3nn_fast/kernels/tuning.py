"""Launch and block-size knobs of the Pallas kernels, settable without editing code.

Every knob has a default in the kernel module that uses it (for example ``message_passing.BLOCK_ROWS``); the
``E3NN_FAST_TUNE`` environment variable overrides any of them, read each time a kernel is *traced*::

    E3NN_FAST_TUNE="message_passing.block_rows=32,fully_connected.num_stages=1,aligned.num_warps=8"

so that a device session can sweep values (one process per setting: a function ``jax.jit`` has already traced keeps
the values it was traced with) and the winners can then become the defaults.  :func:`override` does the same
inside one process for a ``with`` block (tests, notebooks).

Knobs (``family.name``):

=================================== ===================================================================================
``<family>.num_warps``              Triton warps per program (families: aligned, fully_connected, message_passing,
                                    symmetric_contraction)
``<family>.num_stages``             Triton software-pipelining stages (0 = Pallas's own default)
``aligned.tile_elements``           target elements of one ``(rows, width)`` plane of a row block
``aligned.max_block_rows``          upper bound on the rows of a block
``aligned.live_elements``           elements of the planes one program keeps live (a plane is at most this / the
                                    planes of the largest output-plane group; ``2**30`` with ``target_programs=1``
                                    gives the shapes before issue 14)
``aligned.target_programs``         programs a launch aims at (rows, then lanes, halved until reached)
``aligned.channel_block``           lanes per program (second grid axis over channel blocks; default: chosen)
``fully_connected.tile_elements``   elements of an operand register tile (the outer-product chunk; a quarter of it
                                    when the dots are FMA loops: ``highest`` precision, float64)
``fully_connected.block_rows``      rows of a block (default: ``accumulator_elements`` / widest output plane,
                                    halved down to ``min_block_rows`` until a launch has ``target_programs``)
``fully_connected.min_block_rows``  lower bound on the rows of a block (Triton's ``dot`` needs 16)
``fully_connected.planes_per_program``   output planes per product-kernel program (second grid axis: planes /
                                    this; a large value gives one program per row block, as before issue 14)
``fully_connected.accumulator_elements`` elements of one program's accumulator (rows x plane, or weight tile;
                                    half of it with FMA dots)
``fully_connected.target_programs`` programs a launch aims at (product kernels: rows; weight gradient: splits)
``fully_connected.max_splits``      batch splits of the weight gradient at most
``message_passing.block_rows``      receiver (or sender) rows per program (default: halved from 16 down to 4 until
                                    ``target_programs`` is reached)
``message_passing.channel_block``   channels per program (a second grid axis over channel blocks; default: every
                                    channel, halved down to 32 when 4-row blocks fall short of ``target_programs``)
``message_passing.edge_tile``       edges a node kernel (out, x1) gathers at once: one vector load of T edge ids,
                                    (T, width) blocks per factor, summed over the tile (default 1: one edge at a
                                    time; edge kernels always 1).  Sums are bitwise reproducible for a fixed value
                                    and equal across values within float rounding
``message_passing.target_programs`` programs a launch aims at (``1`` gives the shape before issue 14: 16 rows and
                                    every channel per program)
``symmetric_contraction.tile_elements``      elements of one (node block, channel block) plane
``symmetric_contraction.max_channel_block``  upper bound on the channels of a block
``symmetric_contraction.load_group_planes``  consecutive output planes that share one load of each factor (default:
                                    all of a program's planes; ``1`` reloads per output plane, as before 2026-12-06)
``symmetric_contraction.jnp_chunk_lanes``    rows x channels per iteration of the *jnp* executor's row loop
                                    (default: 1,280 on CPU, 65,536 elsewhere; see
                                    :mod:`e3nn_fast.xla.symmetric_contraction`)
=================================== ===================================================================================

Block sizes must be powers of two (Triton's arrays are); a malformed or unknown entry raises ``ValueError`` naming
it, when a kernel is traced.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

ENV = "E3NN_FAST_TUNE"
FAMILIES = ("aligned", "fully_connected", "message_passing", "symmetric_contraction")

# The GPU the launch shapes are sized for: a 132-SM Hopper (H100 / H200 SXM).  A memory-bound kernel hides its load
# latency only with several programs resident on every SM, so each family's launch aims at 4 programs per SM (issue
# 14); the ``<family>.target_programs`` knobs change it per family.
SM_COUNT = 132
TARGET_PROGRAMS = 4 * SM_COUNT

# knob -> whether its value must be a power of two
_BLOCK_KNOBS = {
    "aligned.tile_elements": True,
    "aligned.max_block_rows": True,
    "aligned.live_elements": True,
    "aligned.target_programs": False,
    "aligned.channel_block": True,
    "fully_connected.tile_elements": True,
    "fully_connected.block_rows": True,
    "fully_connected.min_block_rows": True,
    "fully_connected.planes_per_program": False,
    "fully_connected.accumulator_elements": True,
    "fully_connected.target_programs": False,
    "fully_connected.max_splits": False,
    "message_passing.block_rows": True,
    "message_passing.channel_block": True,
    "message_passing.edge_tile": True,
    "message_passing.target_programs": False,
    "symmetric_contraction.tile_elements": True,
    "symmetric_contraction.max_channel_block": True,
    "symmetric_contraction.load_group_planes": False,
    "symmetric_contraction.jnp_chunk_lanes": False,
}
KNOBS: dict[str, bool] = {
    **{f"{family}.num_warps": True for family in FAMILIES},
    **{f"{family}.num_stages": False for family in FAMILIES},
    **_BLOCK_KNOBS,
}

_local = threading.local()


def parse(text: str) -> dict[str, int]:
    """``"a.b=1,c.d=2"`` -> ``{"a.b": 1, "c.d": 2}``, each name a known knob with a valid value."""
    settings: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"{ENV}: entry {item!r} is not of the form family.knob=integer")
        if name not in KNOBS:
            raise ValueError(f"{ENV}: unknown knob {name!r}; known knobs: {', '.join(sorted(KNOBS))}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{ENV}: {name} must be an integer, got {value.strip()!r}") from None
        _check(name, number)
        settings[name] = number
    return settings


def _check(name: str, value: int) -> None:
    minimum = 0 if name.endswith(".num_stages") else 1
    if value < minimum:
        raise ValueError(f"{ENV}: {name} must be at least {minimum}, got {value}")
    if KNOBS[name] and value & (value - 1):
        raise ValueError(f"{ENV}: {name} must be a power of two, got {value}")


def _overrides() -> dict[str, int]:
    settings = parse(os.environ.get(ENV, ""))
    for layer in getattr(_local, "stack", ()):
        settings.update(layer)
    return settings


def value(name: str, default: Optional[int]) -> Optional[int]:
    """The knob ``name`` (``"family.knob"``): the innermost :func:`override`, else ``E3NN_FAST_TUNE``, else
    ``default`` (the kernel module's constant)."""
    if name not in KNOBS:
        raise ValueError(f"unknown kernel knob {name!r}; known knobs: {', '.join(sorted(KNOBS))}")
    return _overrides().get(name, default)


@contextlib.contextmanager
def override(**knobs: int) -> Iterator[None]:
    """Set knobs for kernels traced inside the block: ``override(message_passing__block_rows=32)`` (``__`` stands
    for the dot of ``family.knob``)."""
    layer = {name.replace("__", "."): int(v) for name, v in knobs.items()}
    for name, v in layer.items():
        if name not in KNOBS:
            raise ValueError(f"unknown kernel knob {name!r}; known knobs: {', '.join(sorted(KNOBS))}")
        _check(name, v)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(layer)
    try:
        yield
    finally:
        stack.pop()


def current() -> dict[str, int]:
    """The knobs overridden here and now (for recording next to a measurement)."""
    return dict(sorted(_overrides().items()))
