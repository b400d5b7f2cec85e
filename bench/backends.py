"""The backend registry: the implementations compared in one run.

A backend is a library that speaks some API (``"e3nn"``: e3nn-jax 0.21's public API, which e3nn_fast implements)
plus, optionally, a context entered while tracing.  The defaults:

==================== ====================================================================================
``e3nn_fast:reference`` e3nn_fast with every op forced to the reference executor
``e3nn_fast:jnp``       e3nn_fast with the optimised jnp executor (the default on CPU)
``e3nn_fast:pallas``    e3nn_fast with the Pallas kernels, only on a GPU/TPU (interpret mode is never timed)
``e3nn-jax``            e3nn-jax itself, when importable: the baseline of every ratio
``cuequivariance``      cuequivariance-jax, when importable; runs the workloads that have a builder for its API
``e3nn_fast:fused-jnp``    e3nn_fast's fused ops (``message_passing``, ``symmetric_contraction``; API
                           ``"e3nn_fast.fused"``, :mod:`bench.fused`), jnp executor
``e3nn_fast:fused-pallas`` the same with the Pallas kernels, only on a GPU/TPU
==================== ====================================================================================

A backend that is not available here (library not importable, no accelerator) is listed in results.json with the
reason and produces no rows; a backend that raises while building, compiling or running a workload produces an error
row.  :func:`register` adds more, together with :func:`bench.workloads.add_builder` for the workloads they run.
The fused backends have no ``reference`` variant: the reference executor of ``message_passing`` is the op by op
composition that ``e3nn_fast:reference`` already runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
from typing import Callable, Optional

from bench import devices

BASELINE = "e3nn-jax"


@dataclasses.dataclass(frozen=True)
class Backend:
    """``load()`` returns the library module (raises ImportError when missing); ``context()`` is entered while
    tracing; ``requirement()`` returns why the backend cannot run on this machine, or None; ``layout`` names the
    API whose output layout this backend's outputs share (its own API when empty): outputs are compared between
    backends of the same layout."""

    name: str
    api: str
    load: Callable[[], object]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    requirement: Callable[[], Optional[str]] = lambda: None
    description: str = ""
    layout: str = ""

    @property
    def output_layout(self) -> str:
        return self.layout or self.api

    def availability(self) -> tuple[bool, str]:
        """(available, version or the reason it is not)."""
        reason = self.requirement()
        if reason is not None:
            return False, reason
        try:
            lib = self.load()
        except ImportError as error:
            return False, f"not importable: {error}"
        return True, str(getattr(lib, "__version__", "?"))


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (its name must be new)."""
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def select(patterns: Optional[list[str]]) -> list[Backend]:
    """Backends whose names match any of the names / shell globs (all for None), in registry order."""
    if not patterns:
        return list(BACKENDS.values())
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in BACKENDS)]
    if unmatched:
        raise ValueError(f"no backend matches {unmatched}; known backends: {', '.join(BACKENDS)}")
    return [b for n, b in BACKENDS.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _import(name: str) -> Callable[[], object]:
    return lambda: importlib.import_module(name)


def _e3nn_fast_executor(executor: str) -> Callable[[], contextlib.AbstractContextManager]:
    def context():
        import e3nn_fast

        return e3nn_fast.backend(executor)

    return context


def _needs_executor(executor: str, accelerator: bool, ops=("tensor_product",)) -> Callable[[], Optional[str]]:
    def requirement():
        if accelerator and not devices.is_accelerator():
            return "needs a GPU/TPU (interpret mode is never timed)"
        import e3nn_fast  # noqa: F401  (registers every op's executors)
        from e3nn_fast import dispatch

        for op in ops:
            if executor not in dispatch.available(op):
                return f"no {executor!r} executor registered for op {op!r}"
        return None

    return requirement


for _executor, _accelerator, _text in (
    ("reference", False, "e3nn_fast, reference executor (readable oracle)"),
    ("jnp", False, "e3nn_fast, optimised jnp executor"),
    ("pallas", True, "e3nn_fast, Pallas kernels"),
):
    register(Backend(f"e3nn_fast:{_executor}", "e3nn", _import("e3nn_fast"), _e3nn_fast_executor(_executor),
                     _needs_executor(_executor, _accelerator), _text))
FUSED_API = "e3nn_fast.fused"  # the fused ops' builders live in bench.fused
for _executor, _accelerator in (("jnp", False), ("pallas", True)):
    register(Backend(f"e3nn_fast:fused-{_executor}", FUSED_API, _import("e3nn_fast"), _e3nn_fast_executor(_executor),
                     _needs_executor(_executor, _accelerator, ("message_passing", "symmetric_contraction")),
                     f"e3nn_fast fused ops (message_passing, symmetric_contraction), {_executor} executor",
                     layout="e3nn"))
register(Backend(BASELINE, "e3nn", _import("e3nn_jax"), description="e3nn-jax (baseline of the ratios)"))
def _load_cuequivariance():
    """cuequivariance_jax, after registering its workload builders (:mod:`bench.cue`)."""
    module = importlib.import_module("cuequivariance_jax")
    importlib.import_module("bench.cue")
    return module


register(Backend("cuequivariance", "cuequivariance", _load_cuequivariance,
                 description="cuequivariance-jax (NVIDIA)"))
