"""The dispatcher: the one place that decides which executor runs an operation.

Executors:

==================== ======================================================================================
``reference``        the pure-jnp oracle in :mod:`e3nn_fast.reference` (readable, differentiable to any order)
``jnp``              an optimised pure-jnp executor, validated against the reference like a kernel
``pallas``           the Pallas kernels of :mod:`e3nn_fast.kernels`, compiled for the current GPU/TPU
``pallas-interpret`` the same kernels in Pallas's interpret mode (CPU testing only; very slow)
==================== ======================================================================================

The backend is chosen, in order of precedence, by the innermost ``with e3nn_fast.backend(name):`` block, then
``e3nn_fast.config("backend", name)``, whose default is the ``E3NN_FAST_BACKEND`` environment variable, else
``auto``.  ``auto`` takes a kernel only on an accelerator, only for an op and size listed in :data:`KERNEL_PAYS_OFF`
(entries come from measurements in ``bench/``, so ``auto`` never picks a kernel slower than the jnp path), and
otherwise the ``jnp`` executor when the op has one, else the reference.  On CPU ``auto`` never selects interpret
mode.  A forced backend that an op does not implement falls back to the reference (logged).

The choice is made when an operation is *traced*: a function that ``jax.jit`` has already traced keeps the executor
it was traced with, so switch backends around the first call of a fresh function (or a fresh ``jax.jit`` of a new
function object), as with any trace-time setting.

Ops: ``tensor_product`` (every tensor product, legacy instructions and ``FullyConnectedTensorProduct``),
``linear`` (``FunctionalLinear`` and the ``Linear`` modules; kernels run it as a ``uvw`` product with the constant
scalar ``1``), ``spherical_harmonics``, and the ops registered by later modules (message passing, symmetric
contraction).

Set the ``e3nn_fast.dispatch`` logger to ``DEBUG`` (or ``E3NN_FAST_LOG_DISPATCH=1``) to log every decision; the
decision is made at trace time, so it is logged once per compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from typing import Callable, Iterator, Optional

import jax

from e3nn_fast.configuration import config

BACKENDS = ("auto", "reference", "jnp", "pallas", "pallas-interpret")

logger = logging.getLogger("e3nn_fast.dispatch")
if os.environ.get("E3NN_FAST_LOG_DISPATCH"):
    logging.basicConfig()
    logger.setLevel(logging.DEBUG)

# op name -> executor name -> implementation
_EXECUTORS: dict[str, dict[str, Callable]] = {}

@dataclasses.dataclass(frozen=True)
class MeasuredWin:
    """Where a kernel was *measured* faster than the jnp executor: sizes of at least ``min_size`` (the ``size`` the op
    passes to :func:`choose`), the smallest size measured winning, from the committed results files ``sources``
    (paths from the repository root).
    Smaller sizes keep the jnp executor until a measurement says otherwise."""

    min_size: int
    sources: tuple
    evidence: str

    def __call__(self, size: int) -> bool:
        return size >= self.min_size


# (op, platform) -> predicate(size) saying where a kernel was measured faster than the jnp path on that platform.
# Every entry cites the committed measurement it comes from; an op without an entry never gets a kernel from auto.
KERNEL_PAYS_OFF: dict[tuple[str, str], Callable[[int], bool]] = {
    # MACE-large, 128x0e+128x1o+128x2e (x) 0e+1o+2e+3o -> l <= 3, 3,000 nodes, 160,000 edges, fp32 on an H200
    # (size = 160,000 edges x 9,088 output components): fused kernel 3.7 / 10.9 / 9.0 ms against the jnp
    # executor's 52.6 / 611 ms (fwd / fwd+bwd / forces; its forces pass was not finished within the part's limit).
    ("message_passing", "gpu"): MeasuredWin(
        min_size=160_000 * 9_088,
        sources=("bench/results/gpu/2026-12-04-h200/run1-timings.jsonl",
                 "bench/results/gpu/2026-12-04-h200/run2-timings.jsonl"),
        evidence="mp-mace-large fp32 H200: fused-pallas 3.7 ms fwd, 10.9 ms fwd+bwd vs fused-jnp 52.6 / 611 ms"),
}

_local = threading.local()


@contextlib.contextmanager
def recorded_choices() -> Iterator[list]:
    """Collect the ``(op, executor)`` decisions made while tracing inside the block, in order.

    For checks that must know which executor really ran (a forced ``pallas`` falls back to ``jnp`` for a
    configuration its kernels do not implement): trace a fresh function inside the block, then read the list."""
    stack = getattr(_local, "recorders", None)
    if stack is None:
        stack = _local.recorders = []
    choices: list = []
    stack.append(choices)
    try:
        yield choices
    finally:
        stack.remove(choices)


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown e3nn_fast backend {name!r}; expected one of {BACKENDS}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force the backend of every operation traced inside the block (``auto``, ``reference``, ``jnp``, ``pallas``,
    ``pallas-interpret``).  Blocks nest; the innermost wins."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(_validate(name))
    try:
        yield
    finally:
        stack.pop()


def current_backend() -> str:
    """The backend in force here: the innermost :func:`backend` block, else ``config("backend")``."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _validate(config("backend"))


def register(op: str, executor: str, implementation: Callable) -> Callable:
    """Make ``implementation`` available as ``executor`` for ``op``."""
    if executor == "auto" or executor not in BACKENDS:
        raise ValueError(f"Cannot register executor {executor!r}; expected one of {BACKENDS[1:]}")
    _EXECUTORS.setdefault(op, {})[executor] = implementation
    return implementation


def available(op: str) -> tuple[str, ...]:
    """The executors registered for ``op``."""
    return tuple(_EXECUTORS.get(op, {}))


def choose(op: str, *, size: int = 0, qualifies: bool = True, requested: Optional[str] = None) -> str:
    """Name of the executor that runs ``op`` for a problem of ``size`` (e.g. batch x output dim).

    ``qualifies`` is False when the kernels do not implement this configuration (an unsupported mode, dtype, ...).
    """
    executors = _EXECUTORS.get(op, {})
    wanted = _validate(requested) if requested is not None else current_backend()
    platform = jax.default_backend()
    if wanted == "auto":
        pays = KERNEL_PAYS_OFF.get((op, platform))
        if platform != "cpu" and qualifies and "pallas" in executors and pays is not None and pays(size):
            chosen = "pallas"
        else:
            chosen = "jnp" if "jnp" in executors else "reference"
    elif wanted.startswith("pallas") and not qualifies:
        chosen = "jnp" if "jnp" in executors else "reference"
    else:
        chosen = wanted if wanted in executors else "reference"
    if chosen not in executors:
        raise ValueError(f"No executor registered for op {op!r}")
    logger.debug("%s: backend=%s platform=%s size=%d qualifies=%s -> %s", op, wanted, platform, size, qualifies, chosen)
    for choices in getattr(_local, "recorders", ()):
        choices.append((op, chosen))
    return chosen


def implementation(op: str, executor_name: str) -> Callable:
    """The implementation registered as ``executor_name`` for ``op`` (no choice made)."""
    try:
        return _EXECUTORS[op][executor_name]
    except KeyError:
        raise ValueError(f"No executor {executor_name!r} registered for op {op!r}; have {available(op)}") from None


def executor(op: str, **kwargs) -> Callable:
    """The implementation :func:`choose` selects."""
    return _EXECUTORS[op][choose(op, **kwargs)]
