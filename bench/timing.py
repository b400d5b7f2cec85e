"""Timing one compiled function: compile time, warm-up, median of repeated runs, memory of the executable.

Every run ends with ``jax.block_until_ready`` so that asynchronous dispatch does not hide device time.  The runner
times several backends of the same pass *interleaved* (one run of each in turn, :func:`time_interleaved`), so that
load from other processes on a shared machine spreads over all backends instead of penalising whichever ran during
a busy second.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np


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


def time_interleaved(functions: dict, args: Sequence, repeats: int) -> dict:
    """Seconds of ``repeats`` blocking runs of each compiled function, runs interleaved between the functions.

    A function that raises during timing gets the exception as its value instead of a list of times."""
    times: dict = {name: [] for name in functions}
    for _ in range(repeats):
        for name, compiled in functions.items():
            if not isinstance(times[name], list):
                continue
            try:
                start = time.perf_counter()
                jax.block_until_ready(compiled.run(*args))
                times[name].append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - reported as an error row by the runner
                times[name] = error
    return times


def summarize(seconds: list) -> dict:
    """Median and minimum in milliseconds, and every run."""
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "min_ms": 1e3 * min(seconds),
        "times_ms": [1e3 * s for s in seconds],
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
