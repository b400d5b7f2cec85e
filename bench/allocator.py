"""Keeping freed memory mapped in this process (glibc), so that timings measure the programs, not the page faults.

With its defaults, glibc's ``malloc`` maps each allocation above its mmap threshold (at most 32 MiB) afresh and unmaps
it when freed, and gives the free top of its heap back to the kernel beyond a trim threshold.  An XLA executable whose
temporaries or output take such an allocation then faults in every page of it on every call (about 1.5 us per 4 KiB
page on the 2-core VM of 2026-12-07), and whether a given call does depends on what the process freed before: the
same ``tp-16`` fwd+bwd took 20 ms in one process and 35 ms in another (see :mod:`bench.timing`, which counts the
faults).  A thread other than the main one allocates from an arena of its own, whose heaps hold at most 64 MiB: a
larger allocation there is mapped afresh whatever the mmap settings, and XLA's worker threads make most of the large
ones (``nequip-benzene`` at 4,096 edges: 400 MiB of temporaries, 128,000 faults and 270 of its 460 ms per call).

:func:`keep_freed_memory` turns all three off, as ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` would at start-up: every thread allocates from the main heap, nothing is mapped per
allocation, and freed memory stays mapped, so every backend runs in steady-state memory, as a training loop under a
caching allocator would.  The price: one arena serves every thread under one lock, and loop-heavy programs slowed
down (a quick-suite run with it, 2026-12-07: the fused ``mp-nequip-benzene`` fwd+bwd 42 -> 100 ms, ``sc-mace`` forces
24 -> 91 ms, while ``sh-tp`` forward went 42 -> 26 ms).  The bench uses it only when asked (``--keep-freed-memory``);
by default it measures what users get.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# freed memory at the top of the heap kept up to this many bytes (the largest value the C int parameter takes)
KEPT_BYTES = 2**31 - 1

DESCRIPTION = "glibc, freed memory kept mapped (mallopt M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1)"


def keep_freed_memory() -> str:
    """Make this process's glibc ``malloc`` serve every allocation, from every thread, from its main heap and keep
    freed memory mapped; returns a description for the results.  Threads that already allocated keep the arena they
    have, so it must run before JAX starts its CPU client: the CLI calls it before importing anything that does
    (``run_suite`` applies it again, which reaches only threads started later).

    Raises:
        RuntimeError: where the C library is not glibc (no ``mallopt``), or glibc refused a setting.
    """
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    mallopt = getattr(library, "mallopt", None)
    if mallopt is None or not hasattr(library, "gnu_get_libc_version"):
        raise RuntimeError("--keep-freed-memory needs glibc's mallopt, which this platform's C library lacks; "
                           "run without it (the default allocator) or preload another allocator instead")
    for parameter, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEPT_BYTES)):
        if mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"glibc's mallopt refused parameter {parameter} = {value}")
    return DESCRIPTION
