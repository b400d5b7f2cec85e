"""Deprecated alias of ``python -m bench`` (the old e3nn_fast vs e3nn-jax CPU comparison, now the harness).

``python -m bench.tp_vs_e3nn_jax [--quick] [--repeats N] [--backend EXECUTOR] [--workloads a,b] [--out DIR]`` runs
the harness with e3nn_fast's ``--backend`` executor (default ``jnp``) against e3nn-jax; ``--quick`` (the default)
runs the quick suite, ``--full`` the full one.  Everything else lives in
:mod:`bench`; this module only translates the old options.
"""

from __future__ import annotations

import argparse
import sys

from bench.__main__ import main as bench_main


def translate(argv=None) -> list[str]:
    """The ``python -m bench`` arguments equivalent to the old options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="the full (GPU-sized) suite")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--workloads")
    parser.add_argument("--backend", default="jnp", help="e3nn_fast executor: reference, jnp or pallas")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    out = ["--suite", "full" if args.full and not args.quick else "quick",
           "--backends", f"e3nn_fast:{args.backend}", "e3nn-jax"]
    if args.repeats:
        out += ["--repeats", str(args.repeats)]
    if args.workloads:
        out += ["--workloads", args.workloads]
    if args.out:
        out += ["--out", args.out]
    return out


def main(argv=None) -> int:
    return bench_main(translate(argv))


if __name__ == "__main__":
    sys.exit(main())
