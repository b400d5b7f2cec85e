"""Wall time of building a reduced symmetric tensor product basis, each measurement in a fresh Python process.

Building the basis is a one-off, cached cost, so the honest number is the first call in a new process (nothing
cached yet, the Clebsch-Gordan tables included); the second call of the same process shows what the cache saves.

Examples (from the repository root)::

    python -m bench.symmetric_basis_time                           # the default configurations, twice each
    python -m bench.symmetric_basis_time --irreps 0e+1o+2e+3o --order 4 --keep-ir 0e+1o --repeats 3
    python -m bench.symmetric_basis_time --implementation /tmp/old_reduced_tensor_product.py   # another version

The machine may be shared, so repeat the measurement and read the spread, not one number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import List, Optional, Tuple

# (irreps, order, keep_ir): the slow case of issue 16 and the restrictions MACE uses with it
DEFAULT_CONFIGS: List[Tuple[str, int, Optional[str]]] = [
    ("0e+1o+2e+3o", 4, None),
    ("0e+1o+2e+3o", 4, "0e+1o"),
    ("0e+1o+2e+3o", 4, "0e+1o+2e+3o"),
    ("0e+1o+2e+3o", 3, None),
    ("0e+1o+2e", 4, None),
]

# Run in the child process: time the first (uncached) and the second (cached) call.
_CHILD = """
import importlib.util, json, sys, time
path, irreps, order, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
if path:
    spec = importlib.util.spec_from_file_location("alternative_implementation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    import e3nn_fast.reduced_tensor_product as module
times = []
for _ in range(2):
    start = time.perf_counter()
    Q = module.reduced_symmetric_tensor_product_basis(irreps, order, keep_ir=keep)
    times.append(time.perf_counter() - start)
print(json.dumps({"first": times[0], "cached": times[1], "irreps": str(Q.irreps), "shape": list(Q.shape)}))
"""


def measure(irreps: str, order: int, keep_ir: Optional[str], implementation: str = "") -> dict:
    """Time one configuration in a new interpreter; returns the child's report (seconds, output irreps, shape)."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, implementation, irreps, str(order), json.dumps(keep_ir)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--irreps", help="input irreps (default: a set of configurations)")
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--keep-ir", default=None, help="output irreps to keep (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per configuration")
    parser.add_argument("--implementation", default="",
                        help="path of another reduced_tensor_product.py to time instead of e3nn_fast's")
    args = parser.parse_args(argv)

    configs = [(args.irreps, args.order, args.keep_ir)] if args.irreps else DEFAULT_CONFIGS
    for irreps, order, keep_ir in configs:
        runs = [measure(irreps, order, keep_ir, args.implementation) for _ in range(args.repeats)]
        firsts = ", ".join(f"{run['first']:.2f}" for run in runs)
        cached = max(run["cached"] for run in runs)
        print(f"{irreps} order {order} keep_ir={keep_ir}: first call {firsts} s; cached call <= {cached:.1e} s; "
              f"shape {tuple(runs[0]['shape'])}", flush=True)


if __name__ == "__main__":
    main()
