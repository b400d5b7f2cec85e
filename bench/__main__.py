"""``python -m bench`` / ``e3nn-fast-bench``: benchmark e3nn_fast against e3nn-jax (and cuequivariance-jax) on the
default JAX device.

Examples (from the repository root)::

    python -m bench                                  # quick suite, a few minutes on a CPU
    python -m bench --suite full                     # GPU-sized workloads
    python -m bench --workloads 'mace-*' sh-l3 --backends e3nn_fast:jnp e3nn-jax --repeats 10
    python -m bench --list                           # workloads, sizes and backends, then exit

Outputs go to ``--out`` (default ``bench/results/<UTC timestamp>``): results.json, results.md, speedup.png,
roofline.png (see :mod:`bench.report` for how to read them).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

DEFAULT_REPEATS = {"tiny": 2, "quick": 5, "full": 20}


def _names(values):
    """Accept both ``--workloads a b`` and ``--workloads a,b``."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    from bench.passes import PASSES
    from bench.runner import DTYPES
    from bench.workloads import SUITES

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, default="quick",
                        help="sizes: quick (default, a CPU in a few minutes), full (a GPU), tiny (tests)")
    parser.add_argument("--workloads", nargs="+", metavar="NAME", help="workload names or globs (default: all)")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        help="backend names or globs (default: every available one)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--out", help="output folder (default bench/results/<UTC timestamp>; none when only --jsonl "
                                      "is given)")
    parser.add_argument("--jsonl", metavar="FILE",
                        help="append every row to FILE as one JSON line as soon as its pass is measured")
    parser.add_argument("--tag", default="", help="free text stored in every streamed row (e.g. the kernel knobs "
                                                   "of a sweep)")
    parser.add_argument("--min-sample-ms", type=float,
                        help="queue calls back to back until a timed sample lasts this long (default: 2 on a "
                             "GPU/TPU, 0 on a CPU)")
    parser.add_argument("--settle-ms", type=float,
                        help="untimed runs of a function for this long before each of its timed samples (default: "
                             "150 on a CPU, where a run that follows another backend's overlaps the release of its "
                             "memory; 0 on a GPU/TPU)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc only: serve every allocation from one heap and keep freed memory mapped, so that "
                             "no call faults in fresh pages (steady-state timings; one heap's lock can slow "
                             "loop-heavy programs; the default measures the default allocator, as users run it)")
    parser.add_argument("--verbose", action="store_true",
                        help="one stderr line per compile and per timed pass (where did the time go)")
    parser.add_argument("--measure-bandwidth", action="store_true",
                        help="on a GPU/TPU, measure the copy bandwidth and count floors against it")
    parser.add_argument("--repeats", type=int, help=f"timed runs per pass and backend (default {DEFAULT_REPEATS})")
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES), help="passes to time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list workloads and backends, then exit")
    return parser.parse_args(argv)


def list_everything(suite: str) -> str:
    from bench import backends, workloads

    lines = [f"workloads ({suite} sizes):"]
    for w in workloads.WORKLOADS.values():
        reason = w.unavailable()
        note = f"  [skipped: {reason}]" if reason else ""
        lines.append(f"  {w.name:18s} {w.size(suite):>9} {w.unit:9s} {w.summary}{note}")
    lines.append("backends:")
    for b in backends.BACKENDS.values():
        ok, text = b.availability()
        lines.append(f"  {b.name:24s} {'available ' + text if ok else 'unavailable: ' + text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--keep-freed-memory" in argv:
        # before anything imports JAX, whose CPU client starts its threads: a thread keeps the malloc arena it first
        # allocated from (bench/allocator.py)
        from bench.allocator import keep_freed_memory

        try:
            keep_freed_memory()
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    args = parse_args(argv)
    from bench import backends, report, runner, workloads

    if args.list:
        print(list_everything(args.suite))
        return 0
    try:
        chosen_workloads = workloads.select(_names(args.workloads))
        chosen_backends = backends.select(_names(args.backends))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = runner.Settings(suite=args.suite, dtype=args.dtype,
                               repeats=args.repeats or DEFAULT_REPEATS[args.suite], seed=args.seed,
                               passes=tuple(args.passes), progress=not args.no_progress,
                               min_sample_s=None if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                               settle_s=None if args.settle_ms is None else args.settle_ms / 1e3,
                               measure_bandwidth=args.measure_bandwidth, verbose=args.verbose,
                               keep_freed_memory=args.keep_freed_memory)
    out = args.out
    if out is None and args.jsonl is None:
        out = os.path.join("bench", "results", datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    start = time.perf_counter()
    sink = report.JsonLines(args.jsonl, tag=args.tag) if args.jsonl else None
    try:
        results = runner.run_suite(chosen_workloads, chosen_backends, settings, on_row=sink)
    finally:
        if sink is not None:
            sink.close()
    written = list(report.write_all(results, out).values()) if out else []
    if args.jsonl:
        written.append(args.jsonl)
    print(report.summary_table(results))
    notes = report.data_lines(results) + report.compile_lines(results)
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\n{len(results['rows'])} rows in {time.perf_counter() - start:.0f} s; wrote " + ", ".join(written),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
