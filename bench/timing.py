"""Timing one compiled function: compile time, warm-up, median of repeated runs, memory of the executable.

Every run ends with ``jax.block_until_ready`` so that asynchronous dispatch does not hide device time.  The runner
times several backends of the same pass *interleaved* (one sample of each in turn, :func:`time_interleaved`), so
that load from other processes on a shared machine spreads over all backends instead of penalising whichever ran
during a busy second.  On a CPU each sample is preceded by untimed runs of the same function for a while (see
:data:`CPU_SETTLE_S`), so that it measures the steady state of a training loop, not a run overlapping the release
of the previous backend's memory.

Each sample also counts the process's minor page faults per call (:func:`minor_page_faults`).  On Linux with glibc,
``malloc`` maps every allocation above 32 MiB afresh and unmaps it when freed, so an executable whose temporaries (or
output) exceed that size faults in every page of them on every call: about 1.5 us per 4 KiB page on the 2-core VM of
2026-12-07, which made ``tp-16`` fwd+bwd (40.5 MiB of temporaries, 10,369 faults per call) 35 ms instead of 20 ms.
Whether a given call pays them depends on the heap's history (a large enough free block is reused without a fault),
so the count tells a real change apart from the allocator's.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

try:
    import resource  # POSIX: page-fault counts
except ImportError:  # Windows
    resource = None


@dataclasses.dataclass
class Compiled:
    """A jitted, lowered and compiled function with what was measured while building it."""

    run: Callable
    compile_s: float
    memory: dict  # from the executable's memory_analysis(): temp/argument/output/generated-code bytes


def memory_analysis(compiled) -> dict:
    """Byte counts XLA reports for a compiled executable (empty where the backend does not implement it)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend / JAX version implements it
        return {}
    if analysis is None:
        return {}
    fields = {
        "temp_bytes": "temp_size_in_bytes",
        "argument_bytes": "argument_size_in_bytes",
        "output_bytes": "output_size_in_bytes",
        "alias_bytes": "alias_size_in_bytes",
        "generated_code_bytes": "generated_code_size_in_bytes",
    }
    return {ours: int(getattr(analysis, theirs)) for ours, theirs in fields.items() if hasattr(analysis, theirs)}


def executable_bytes(memory: dict) -> Optional[int]:
    """Device bytes one run of the executable holds at its peak, by XLA's own accounting: arguments, outputs and
    temporaries, less what outputs alias (None where the backend reported nothing).  Unlike the allocator's
    process-wide high-water mark this belongs to one pass of one backend alone."""
    if not memory:
        return None
    return (memory.get("argument_bytes", 0) + memory.get("output_bytes", 0) + memory.get("temp_bytes", 0)
            - memory.get("alias_bytes", 0))


def compile_function(fn: Callable, args: Sequence, context: Optional[Callable] = None) -> Compiled:
    """``jax.jit(fn)`` lowered and compiled for ``args``; the seconds of tracing + compiling are the compile time.

    ``context`` (a no-argument context-manager factory, e.g. ``lambda: e3nn_fast.backend("jnp")``) is entered while
    tracing, which is when e3nn_fast's dispatcher decides the executor."""
    start = time.perf_counter()
    if context is None:
        lowered = jax.jit(fn).lower(*args)
    else:
        with context():
            lowered = jax.jit(fn).lower(*args)
    compiled = lowered.compile()
    return Compiled(compiled, time.perf_counter() - start, memory_analysis(compiled))


def run_once(compiled: Compiled, args: Sequence):
    """One blocking run: the warm-up, whose result the runner also compares between backends."""
    return jax.block_until_ready(compiled.run(*args))


MAX_CALLS_PER_SAMPLE = 64

# Seconds of untimed runs before each sample on a CPU.  Interleaving makes every sample follow another backend's
# run, and XLA's CPU runtime releases that run's temporaries while the next program starts (the kernel unmapping
# them: system time on both cores), which slows the next ~100 ms of work whatever it is.  The penalty is absolute,
# so it shrank the ratio of the faster library most.  Measured on the 2-core VM (jax 0.10.2, 2026-12-07), the fused
# symmetric contraction on ``sc-mace`` (22 MB of temporaries) after one run of e3nn-jax's (650 MB): its 4.5 ms
# forward took 73, 25, 9 and 6 ms on its first runs and settled within 50-130 ms; its fwd+bwd timed one run per
# sample gave 21.7 ms alone and 34.5 ms interleaved (run to run 21-71 ms).  A training loop calls its step back to
# back, so the steady state is what users see.
CPU_SETTLE_S = 0.15


def calls_per_sample(seconds_per_call: float, min_sample_s: float) -> int:
    """How many back-to-back calls one timed sample makes so that it lasts at least ``min_sample_s``.

    On a GPU a millisecond kernel is comparable to the host's cost of launching a jitted call and waiting for it;
    queuing several calls before one wait measures the device's time per call instead (as graph replay or
    ``triton.testing.do_bench`` do).  One call per sample when ``min_sample_s`` is 0 (the CPU default)."""
    if min_sample_s <= 0 or seconds_per_call <= 0:
        return 1
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(min_sample_s / seconds_per_call)))


def minor_page_faults() -> Optional[int]:
    """The minor page faults of this process so far (every thread), or None where the platform does not count them
    (no ``resource`` module: Windows)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_sample(compiled: Compiled, args: Sequence, calls: int) -> tuple[float, Optional[float]]:
    """Seconds per call of ``calls`` calls queued back to back, then one wait; and the minor page faults per call
    over the same span (None where they are not counted)."""
    faults_before = minor_page_faults()
    start = time.perf_counter()
    result = None
    for _ in range(calls):
        result = compiled.run(*args)
    jax.block_until_ready(result)
    seconds = (time.perf_counter() - start) / calls
    faults_after = minor_page_faults()
    faults = None if faults_before is None or faults_after is None else (faults_after - faults_before) / calls
    return seconds, faults


def _settle(compiled: Compiled, args: Sequence, settle_s: float) -> None:
    """Untimed runs of ``compiled`` until ``settle_s`` seconds have passed, at least one (see :data:`CPU_SETTLE_S`);
    none when ``settle_s`` is 0."""
    if settle_s <= 0:
        return
    start = time.perf_counter()
    while True:
        jax.block_until_ready(compiled.run(*args))
        if time.perf_counter() - start >= settle_s:
            return


def time_interleaved(functions: dict, args: Sequence, repeats: int, min_sample_s: float = 0.0,
                     settle_s: float = 0.0) -> dict:
    """Seconds per call of each compiled function, ``repeats`` samples each, samples interleaved between the
    functions; a sample queues :func:`calls_per_sample` calls (sized by one untimed calibration call each), after
    ``settle_s`` seconds of untimed runs of the same function (:func:`_settle`).

    Returns, per function, ``(seconds per call of each sample, calls per sample, page faults per call of each
    sample)`` (the faults None where they are not counted), or the exception a function raised during timing."""
    if settle_s < 0:
        raise ValueError(f"settle_s must be 0 or more seconds, got {settle_s}")
    times: dict = {name: [] for name in functions}
    faults: dict = {name: [] for name in functions}
    calls: dict = {}
    for name, compiled in functions.items():
        try:
            once = min(_timed_sample(compiled, args, 1)[0] for _ in range(2))  # the first may still be warming up
            calls[name] = calls_per_sample(once, min_sample_s)
        except Exception as error:  # noqa: BLE001 - reported as an error row by the runner
            times[name] = error
    for _ in range(repeats):
        for name, compiled in functions.items():
            if not isinstance(times[name], list):
                continue
            try:
                _settle(compiled, args, settle_s)
                seconds, sample_faults = _timed_sample(compiled, args, calls[name])
            except Exception as error:  # noqa: BLE001 - reported as an error row by the runner
                times[name] = error
                continue
            times[name].append(seconds)
            faults[name].append(sample_faults)
    return {name: value if not isinstance(value, list) else
            (value, calls[name], None if None in faults[name] else faults[name])
            for name, value in times.items()}


def summarize(seconds: list, calls: int = 1, faults: Optional[list] = None) -> dict:
    """Median and minimum in milliseconds per call, every sample, the calls queued per sample, and the median of
    the samples' minor page faults per call (None where they were not counted)."""
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "min_ms": 1e3 * min(seconds),
        "times_ms": [1e3 * s for s in seconds],
        "calls_per_sample": calls,
        "page_faults_per_call": None if not faults else statistics.median(faults),
    }


def max_relative_difference(ours, theirs) -> Optional[float]:
    """Largest ``|ours - theirs|`` over every leaf, relative to the largest ``|theirs|`` of that leaf; None when the
    two trees do not have the same structure and shapes (they are not comparable)."""
    a_leaves, b_leaves = jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)
    if len(a_leaves) != len(b_leaves):
        return None
    worst = 0.0
    for a, b in zip(a_leaves, b_leaves):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return None
        if b.size:
            scale = max(float(np.max(np.abs(b))), 1e-30)
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst
