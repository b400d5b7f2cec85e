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
mode.  A forced backend that an op does not implement falls back to the reference (logged).  A backend name is
checked where it is set (``backend(name)``, ``config("backend", name)``, ``E3NN_FAST_BACKEND`` at import).

A forced ``pallas`` compiles real kernels, which only exist for GPU and TPU.  Compiling such a computation for CPU
(running it there, eagerly or under ``jit``) raises one ``ValueError`` that points to ``pallas-interpret``, for every
op, including ops that would fall back to another executor: the check sits in the compiled program
(:func:`require_accelerator`), not in the tracing, so tracing on a CPU host and lowering for CUDA still works.

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

from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from e3nn_fast._static_int import static_int
from e3nn_fast.configuration import BACKENDS, check_backend, config, snapshot

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


def _validate(name: str, source: str = "the backend name") -> str:
    return check_backend(name, source)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force the backend of every operation traced inside the block (``auto``, ``reference``, ``jnp``, ``pallas``,
    ``pallas-interpret``).  Blocks nest; the innermost wins."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(_validate(name, f"e3nn_fast.backend({name!r})"))
    try:
        yield
    finally:
        stack.pop()


def current_backend() -> str:
    """The backend in force here: the innermost :func:`backend` block, else ``config("backend")``."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _validate(config("backend"))


def trace_settings() -> Optional[tuple]:
    """Everything e3nn_fast reads while tracing an op (the backend in force, every ``config`` option, the kernel
    knobs), as a hashable key for programs cached across eager calls (:mod:`e3nn_fast._eager`); ``None`` inside a
    :func:`recorded_choices` block, whose caller must see every decision, so nothing may come from a cache."""
    if getattr(_local, "recorders", None):
        return None
    from e3nn_fast.kernels import tuning  # here, not at the top: the kernels package imports this module

    return current_backend(), snapshot(), tuple(tuning.current().items())


def register(op: str, executor: str, implementation: Callable) -> Callable:
    """Make ``implementation`` available as ``executor`` for ``op``."""
    if executor == "auto" or executor not in BACKENDS:
        raise ValueError(f"Cannot register executor {executor!r}; expected one of {BACKENDS[1:]}")
    _EXECUTORS.setdefault(op, {})[executor] = implementation
    return implementation


def available(op: str) -> tuple[str, ...]:
    """The executors registered for ``op``."""
    return tuple(_EXECUTORS.get(op, {}))


def problem_size(*factors) -> int:
    """The product of ``factors`` (leading sizes, output widths): the ``size`` an op passes to :func:`choose`.

    0 where a factor is symbolic (``jax.export`` with a symbolic batch size): no measured crossover can be compared
    with it, so ``auto`` keeps the jnp executor, as below any crossover.
    """
    size = 1
    for factor in factors:
        count = static_int(factor)
        if count is None:
            return 0
        size *= count
    return size


def choose(op: str, *, size: int = 0, qualifies: bool = True, requested: Optional[str] = None) -> str:
    """Name of the executor that runs ``op`` for a problem of ``size`` (e.g. batch x output dim).

    ``qualifies`` is False when the kernels do not implement this configuration (an unsupported mode, dtype, ...).
    """
    executors = _EXECUTORS.get(op, {})
    wanted = _validate(requested, f"choose(requested={requested!r})") if requested is not None else current_backend()
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
    """The implementation :func:`choose` selects.

    Under a forced ``pallas``, the outputs of the ``pallas`` executor (which may still hand some paths to jnp) and of
    an op that has no kernel at all pass through :func:`require_accelerator`, so that compiling them for CPU fails
    with one clear message.  A configuration the kernels declare unsupported (``qualifies=False``) keeps its
    documented fallback to jnp unmarked.
    """
    wanted = kwargs.get("requested") or current_backend()
    chosen = choose(op, **kwargs)
    run = _EXECUTORS[op][chosen]
    if not _refuses_cpu(op, chosen, wanted):
        return run

    def guarded(*args, **kw):
        return require_accelerator(run(*args, **kw), f"the op {op!r}")

    return guarded


def _refuses_cpu(op: str, chosen: str, wanted: str) -> bool:
    """Whether ``op``'s outputs must refuse a CPU compile: a forced ``pallas`` that chose the kernel executor, or an
    op without any kernel executor."""
    return wanted == "pallas" and (chosen == "pallas" or "pallas" not in _EXECUTORS.get(op, {}))


def guard_forced_pallas(op: str, chosen: str, tree):
    """``tree`` as :func:`executor`'s wrapper leaves it, for ops that call :func:`choose` and
    :func:`implementation` themselves (e.g. to pass the executor as a static argument)."""
    if _refuses_cpu(op, chosen, current_backend()):
        return require_accelerator(tree, f"the op {op!r}")
    return tree


# --- the CPU check of a forced "pallas" ------------------------------------------------------------------------------
# An identity primitive whose lowering for CPU raises: it marks values computed under a forced ``pallas`` backend.
# Tracing never fails (a program traced on a CPU host may be lowered for CUDA, as the kernel tests do); only
# compiling for CPU does, with one message for every op, whether its executor ran a kernel or fell back to jnp.

PALLAS_NEEDS_ACCELERATOR = (
    "e3nn_fast backend 'pallas' compiles Pallas kernels for a GPU or a TPU, but {what} is being compiled for CPU. "
    "Use the backend 'pallas-interpret' to run the same kernels on CPU (slow, for testing), or 'auto' / 'jnp' for "
    "the fast CPU executors (e3nn_fast.backend(...), e3nn_fast.config('backend', ...) or E3NN_FAST_BACKEND)."
)

def _ad_name(name: str):
    """An ``ad`` name, from the private module where a JAX release no longer re-exports it publicly."""
    value = getattr(ad, name, None)
    if value is None:  # pragma: no cover - depends on the JAX release
        from jax._src.interpreters import ad as private_ad

        value = getattr(private_ad, name)
    return value


_Zero = _ad_name("Zero")
_instantiate_zeros = _ad_name("instantiate_zeros")

_accelerator_only_p = Primitive("e3nn_fast_requires_accelerator")
_accelerator_only_p.multiple_results = True


def _run_accelerator_only(*args, what):
    # Eager use compiles the primitive for the default device, where the CPU lowering below raises.
    return jax.jit(lambda *a: _accelerator_only_p.bind(*a, what=what))(*args)


def _accelerator_only_jvp(primals, tangents, *, what):
    # The tangents are marked too: jax.grad may drop the primal outputs, and the check must survive that.
    nonzero = [i for i, t in enumerate(tangents) if type(t) is not _Zero]
    marked = _accelerator_only_p.bind(*[tangents[i] for i in nonzero], what=what) if nonzero else []
    tangents_out = list(tangents)
    for i, t in zip(nonzero, marked):
        tangents_out[i] = t
    return _accelerator_only_p.bind(*primals, what=what), tangents_out


def _accelerator_only_transpose(cotangents, *args, what):
    cotangents = [_instantiate_zeros(ct) for ct in cotangents]
    return _accelerator_only_p.bind(*cotangents, what=what)


def _refuse_cpu_lowering(ctx, *args, what):
    raise ValueError(PALLAS_NEEDS_ACCELERATOR.format(what=what))


_accelerator_only_p.def_impl(_run_accelerator_only)
_accelerator_only_p.def_abstract_eval(lambda *avals, what: list(avals))
_ad_name("primitive_jvps")[_accelerator_only_p] = _accelerator_only_jvp
_ad_name("primitive_transposes")[_accelerator_only_p] = _accelerator_only_transpose
_batchers = getattr(batching, "primitive_batchers", None)
if _batchers is None:  # pragma: no cover - depends on the JAX release
    from jax._src.interpreters import batching as _private_batching

    _batchers = _private_batching.primitive_batchers
_batchers[_accelerator_only_p] = lambda args, dims, *, what: (
    _accelerator_only_p.bind(*args, what=what), dims)
mlir.register_lowering(_accelerator_only_p, lambda ctx, *args, what: list(args))
mlir.register_lowering(_accelerator_only_p, _refuse_cpu_lowering, platform="cpu")


def require_accelerator(tree, what: str = "this computation"):
    """``tree`` unchanged, marked so that compiling it for CPU raises the "pallas needs a GPU/TPU" error.

    Used on the outputs of every op run under a forced ``pallas`` backend, and by the kernels' ``pallas_call``
    for the CPU platform.  A no-op on GPU and TPU.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        return tree
    return jax.tree_util.tree_unflatten(treedef, _accelerator_only_p.bind(*leaves, what=str(what)))
