"""GPU check of the Pallas tensor-product kernels: correctness compiled on the device, then timings.

One prepared script for a lent GPU (about 8 minutes on an H100; ``--budget`` stops the timing part early):

1. **Checks** (small random configurations of every kernel family, channelwise / elementwise / fully connected,
   shared and per-row weights): the ``pallas`` executor against the ``reference`` executor, forward, first
   derivatives and the forces-style double backward (gradient of ``|dE/dx2|^2``), fp64 kernels against the fp64
   reference (rel 1e-12) and fp32 kernels against the fp64 reference (rel 1e-5).  Errors are max-abs over max-abs.
2. **Timings** on MACE-large-like workloads, ``128x0e+128x1o+128x2e (x) 0e+1o+2e+3o`` over up to 160,000 edges
   (fewer when the float32 output would not fit the memory budget, printed), fp32, for each executor registered
   (``reference``, ``jnp`` when present, ``pallas``) and e3nn-jax when importable:
   ``fwd`` (the product), ``bwd`` (gradient of ``sum(out * c)`` w.r.t. every input), ``2nd`` (gradient w.r.t. the
   weights and input 1 of ``|d/dx2 sum(out * c)|^2``, the double backward of force training).  Every function is
   compiled first (compile time reported), run once, then timed as the median of ``--repeats`` runs each ended by
   ``block_until_ready``, on random (not zero) data.

``--tiny`` runs the same code on CPU with the kernels in interpret mode (``pallas-interpret``) and tiny sizes: a
smoke test of the script itself, not a measurement.

3. **Fused message passing** (:func:`e3nn_fast.message_passing`) on MACE-large (3,000 nodes, ``--edges`` edges):
   the unfused ``reference`` composition, the edge-chunked ``jnp`` executor and the fused kernel, forward / backward /
   forces-style double backward, with compiled temp memory and the fraction of the H100 HBM floor (0.43 ms).

Run from the repository root: ``python bench/gpu_check.py [--tiny] [--edges N] [--budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, interpret mode, tiny sizes (smoke test)")
    parser.add_argument("--edges", type=int, default=160_000, help="edges of the MACE-like workloads")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which timings are skipped (ignored with --tiny)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--memory-gb", type=float, default=6.0, help="budget for one fp32 output tensor")
    parser.add_argument("--check-budget", type=float, default=200.0,
                        help="seconds after which the remaining checks are skipped (ignored with --tiny)")
    parser.add_argument("--skip-checks", action="store_true")
    return parser.parse_args()


ARGS = parse_args()
if ARGS.tiny:
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)  # for the fp64 checks; every array below has an explicit dtype

from e3nn_fast import dispatch  # noqa: E402
from e3nn_fast.irreps import Irreps  # noqa: E402
from e3nn_fast.kernels import _pallas_compat  # noqa: E402
from e3nn_fast.kernels.tensor_product import kernel_family  # noqa: E402
from e3nn_fast.path_description import (  # noqa: E402
    TensorProductDescription,
    describe_elementwise_tensor_product,
    describe_full_tensor_product,
    irrep_normalization_factor,
    make_path,
)
import e3nn_fast.tensor_products  # noqa: E402,F401  (registers the executors)

START = time.perf_counter()
KERNEL = "pallas-interpret" if ARGS.tiny else "pallas"


def elapsed() -> float:
    return time.perf_counter() - START


# --- descriptions ---------------------------------------------------------------------------------------------------


def describe(irreps1, irreps2, mode, weighted, *, lmax=3, mul_out=None, irreps_out=None):
    """Every allowed ``in1 x in2 -> ir_out`` with ``l_out <= lmax`` in ``mode``; each path writes its own output
    segment, or (``irreps_out`` given, for ``uvw``) the segment of ``irreps_out`` with that irrep."""
    irreps1, irreps2 = Irreps(irreps1), Irreps(irreps2)
    specs = []
    for a, (mul1, ir1) in enumerate(irreps1):
        for b, (mul2, ir2) in enumerate(irreps2):
            if mode == "uuu" and a != b:
                continue
            for ir in ir1 * ir2:
                if ir.l <= lmax and (irreps_out is None or ir in [i for _, i in Irreps(irreps_out)]):
                    specs.append((a, b, ir, mul1, mul2))
    if irreps_out is not None:
        out = Irreps(irreps_out)
        targets = [[i for _, i in out].index(ir) for _, _, ir, _, _ in specs]
    else:
        sizes = {"uvu": lambda m1, m2: m1, "uuu": lambda m1, m2: m1, "uvuv": lambda m1, m2: m1 * m2,
                 "uvw": lambda m1, m2: mul_out}
        out = Irreps([(sizes[mode](m1, m2), ir) for _, _, ir, m1, m2 in specs])
        targets = list(range(len(specs)))
    paths = []
    for (a, b, ir, _, _), target in zip(specs, targets):
        norm = math.sqrt(irrep_normalization_factor("component", irreps1[a].ir, irreps2[b].ir, ir))
        paths.append(make_path(irreps1, irreps2, out, a, b, target, mode, norm / math.sqrt(len(specs)), weighted))
    return TensorProductDescription(irreps1, irreps2, out, tuple(paths))


def random_inputs(description, rows, dtype, per_row, seed=0):
    key = jax.random.PRNGKey(seed)
    out = {"weights": [], "x1": [], "x2": []}
    for name, irreps in (("x1", description.irreps_in1), ("x2", description.irreps_in2)):
        for mul, ir in irreps:
            key, sub = jax.random.split(key)
            out[name].append(jax.random.normal(sub, (rows, mul, ir.dim), dtype))
    for path in description.paths:
        key, sub = jax.random.split(key)
        shape = ((rows,) if per_row else ()) + path.weight_shape
        out["weights"].append(jax.random.normal(sub, shape, dtype) if path.has_weight else None)
    return out["weights"], out["x1"], out["x2"]


def passes(executor, description):
    """The three timed functions of ``(weights, x1, x2, cotangents)``."""

    def energy(weights, x1, x2, cotangents):
        out = executor(description, weights, x1, x2)
        return sum(jnp.sum(o * c) for o, c in zip(out, cotangents) if o is not None)

    def forward(weights, x1, x2, cotangents):
        return executor(description, weights, x1, x2)

    def backward(weights, x1, x2, cotangents):
        return jax.grad(energy, argnums=(0, 1, 2))(weights, x1, x2, cotangents)

    def double_backward(weights, x1, x2, cotangents):
        def forces(weights, x1):
            grads = jax.grad(energy, argnums=2)(weights, x1, x2, cotangents)
            return sum(jnp.sum(g * g) for g in grads)

        return jax.grad(forces, argnums=(0, 1))(weights, x1)

    return {"fwd": forward, "bwd": backward, "2nd": double_backward}


def cotangents_for(description, rows, dtype, seed=1):
    key = jax.random.PRNGKey(seed)
    out = []
    for mul, ir in description.irreps_out:
        key, sub = jax.random.split(key)
        out.append(jax.random.normal(sub, (rows, mul, ir.dim), dtype))
    return out


def max_relative_error(ours, theirs) -> float:
    worst = 0.0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), 1e-30) if b.size else 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale if b.size else 0.0)
    return worst


# --- 1. checks ------------------------------------------------------------------------------------------------------

def checks():
    """Small configurations of every family: (name, description, per-row weights)."""
    if ARGS.tiny:  # interpret mode compiles slowly: a few paths each
        return [
            ("channelwise uvuv (x (x) sh)", describe_full_tensor_product(Irreps("3x0e+2x1o"), Irreps("0e+1o"), None,
                                                                          "component"), False),
            ("channelwise uvu per-row w", describe("4x0e+3x1o", "0e+1o", "uvu", True, lmax=1), True),
            ("channelwise uvu shared w", describe("4x0e+3x1o", "1o", "uvu", True, lmax=1), False),
            ("elementwise uuu", describe_elementwise_tensor_product(Irreps("3x0e+2x1o"), Irreps("3x1o+2x1e"), None,
                                                                     "component"), False),
            ("fully connected uvw small", describe("3x0e+2x1o", "2x0e", "uvw", True, mul_out=5), False),
            ("fully connected uvw", describe("20x0e", "16x0e", "uvw", True, mul_out=24), False),
        ]
    return [
        ("channelwise uvuv (x (x) sh)", describe_full_tensor_product(Irreps("5x0e+33x1o+3x2e+2x4e"),
                                                                      Irreps("0e+1o+2e"), None, "component"), False),
        ("channelwise uvu per-row w", describe("16x0e+7x1o+3x2e", "0e+1o+2e+3o", "uvu", True), True),
        ("channelwise uvu shared w", describe("16x0e+7x1o", "0e+1o+2e", "uvu", True), False),
        ("elementwise uuu", describe_elementwise_tensor_product(Irreps("9x0e+5x1o+3x2e"), Irreps("9x1o+5x1e+3x2o"),
                                                                 None, "component"), False),
        ("fully connected uvw small", describe("3x0e+2x1o", "2x0e+1o", "uvw", True, mul_out=5), False),
        ("fully connected uvw", describe("32x0e+20x1o", "16x0e+1o", "uvw", True, mul_out=24), False),
    ]


def run_checks() -> bool:
    print("\n== checks: pallas vs reference (compiled on %s) ==" % jax.default_backend())
    reference = dispatch.executor("tensor_product", requested="reference")
    kernel = dispatch.executor("tensor_product", requested=KERNEL)
    ok = True
    rows = 37 if ARGS.tiny else 1001
    for name, description, per_row in checks():
        families = {kernel_family(p, w) for p, w in zip(description.paths, random_inputs(description, 1, jnp.float32,
                                                                                          per_row)[0])}
        line = [f"{name:32s}"]
        exact = random_inputs(description, rows, jnp.float64, per_row)
        exact_cotangents = cotangents_for(description, rows, jnp.float64)
        expected = {p: jax.jit(f)(*exact, exact_cotangents) for p, f in passes(reference, description).items()}
        for dtype, tolerance in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
            inputs, cotangents = jax.tree.map(lambda x: x.astype(dtype), (exact, exact_cotangents))
            for p, f in passes(kernel, description).items():
                try:
                    error = max_relative_error(jax.jit(f)(*inputs, cotangents), expected[p])
                    good = error <= tolerance
                    line.append(f"{jnp.dtype(dtype).name[5:]}/{p} {error:.1e}{'' if good else ' FAIL'}")
                except Exception as exc:  # noqa: BLE001 - report and continue with the other checks
                    good = False
                    line.append(f"{jnp.dtype(dtype).name[5:]}/{p} ERROR {type(exc).__name__}: {str(exc)[:200]}")
                ok &= good
        print("  ".join(line), f"[{','.join(sorted(str(f) for f in families))}]")
    print("checks:", "PASS" if ok else "FAIL", f"({elapsed():.0f}s)")
    return ok


# --- 2. timings -----------------------------------------------------------------------------------------------------

MACE = "128x0e+128x1o+128x2e"
SH = "0e+1o+2e+3o"


def workloads():
    if ARGS.tiny:  # a smoke test of the script: small enough for interpret mode
        x, sh, fc = "4x0e+4x1o", "0e+1o", "4x0e+4x1o"
    else:
        x, sh, fc = MACE, SH, "32x0e+32x1o"
    return [
        # name (short label first), description, per-row weights, rows divisor
        ("conv-uvu: channelwise uvu, per-edge w (MACE conv)", describe(x, sh, "uvu", True), True, 1),
        ("sh-uvuv: channelwise uvuv, x (x) sh (tensor_product)", describe(x, sh, "uvuv", False), False, 1),
        ("fc-sh: fully connected uvw, x (x) sh -> x", describe(x, sh, "uvw", True, irreps_out=x), False, 4),
        ("fc-sq: fully connected uvw, 32x(0e+1o) squared", describe(fc, fc, "uvw", True, irreps_out=fc), False, 4),
        ("uuu: elementwise uuu (x * x)", describe(x, x, "uuu", False, lmax=2), False, 1),
    ]


def time_function(function, args, repeats):
    compile_start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    compile_time = time.perf_counter() - compile_start
    result = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times), compile_time, result


def e3nn_jax_executor():
    try:
        import e3nn_jax
    except ImportError:
        return None

    def run(description, weights, x1, x2):  # only for the unweighted uvuv workload: e3nn_jax.tensor_product
        rows = x1[0].shape[0]
        a = e3nn_jax.IrrepsArray(str(description.irreps_in1), jnp.concatenate([c.reshape(rows, -1) for c in x1], -1))
        b = e3nn_jax.IrrepsArray(str(description.irreps_in2), jnp.concatenate([c.reshape(rows, -1) for c in x2], -1))
        out = e3nn_jax.tensor_product(a, b, filter_ir_out=sorted({str(ir) for _, ir in description.irreps_out}))
        # sorted and regrouped: other chunks than the description's, so only the timing is comparable
        return [jnp.zeros((rows, mul, ir.dim), out.dtype) + jnp.sum(out.array) for mul, ir in description.irreps_out]

    return run


def run_timings():
    print(f"\n== timings (fp32; median of {ARGS.repeats}; ms) ==")
    executors = [name for name in ("reference", "jnp", KERNEL) if name in dispatch.available("tensor_product")]
    rows_table = []
    for name, description, per_row, divisor in workloads():
        out_bytes = 4 * description.irreps_out.dim
        edges = max(1, min(ARGS.edges, int(ARGS.memory_gb * 1e9 / out_bytes)) // divisor)
        if ARGS.tiny:
            edges = 40
        inputs = random_inputs(description, edges, jnp.float32, per_row)
        cotangents = cotangents_for(description, edges, jnp.float32)
        flops = description.flops_per_sample() * edges
        print(f"\n{name}: {description.irreps_in1} x {description.irreps_in2} -> {description.irreps_out.dim} dims, "
              f"{len(description.paths)} paths, {edges} rows, {flops / 1e9:.1f} GFLOP forward")
        candidates = [(e, dispatch.executor("tensor_product", requested=e)) for e in executors]
        if name.startswith("sh-uvuv") and e3nn_jax_executor() is not None:
            candidates.append(("e3nn-jax", e3nn_jax_executor()))
        reference_out = None
        for executor_name, executor in candidates:
            row = [name.split(":")[0], executor_name]
            for pass_name, function in passes(executor, description).items():
                if elapsed() > ARGS.budget and not ARGS.tiny:
                    row.append("skipped (budget)")
                    continue
                try:
                    median, compile_time, result = time_function(function, (*inputs, cotangents), ARGS.repeats)
                    note = ""
                    if pass_name == "fwd" and executor_name != "e3nn-jax":
                        if reference_out is None:
                            reference_out = result
                        else:
                            note = f" err {max_relative_error(result, reference_out):.0e}"
                    row.append(f"{median * 1e3:9.2f} (c {compile_time:.0f}s){note}")
                except Exception as exc:  # noqa: BLE001 - OOM or a compile failure: report and go on
                    message = str(exc).split("\n")[0][:80]
                    row.append(f"ERROR {type(exc).__name__}: {message}")
            print("  " + " | ".join(row))
            rows_table.append(row)
    print("\n== table ==")
    print(f"{'workload':9s} | {'executor':16s} | {'fwd ms':24s} | {'bwd ms':24s} | {'2nd ms':24s}")
    for row in rows_table:
        print(" | ".join([f"{row[0]:9s}", f"{row[1]:16s}"] + [f"{c:24s}" for c in row[2:]]))


# --- fused message passing (MACE-large: 3,000 nodes, 160,000 edges) ------------------------------------------------

MP_FLOOR_MS = 0.43  # H100 HBM floor of the MACE-large forward (about 9 KB per edge at 3.35 TB/s), from issue 6


def message_passing_inputs(nodes: int, edges: int, irreps_x: str, irreps_sh: str):
    from e3nn_fast.irreps_array import IrrepsArray
    from e3nn_fast.message_passing import message_passing_irreps_out

    rng = np.random.default_rng(5)
    x = IrrepsArray(irreps_x, jnp.asarray(rng.standard_normal((nodes, Irreps(irreps_x).dim)), jnp.float32))
    sh = IrrepsArray(irreps_sh, jnp.asarray(rng.standard_normal((edges, Irreps(irreps_sh).dim)), jnp.float32))
    w = jnp.asarray(rng.standard_normal((edges, message_passing_irreps_out(irreps_x, irreps_sh).num_irreps)),
                    jnp.float32)
    receivers = jnp.asarray(np.sort(rng.integers(0, nodes, edges)), jnp.int32)
    senders = jnp.asarray(rng.integers(0, nodes, edges), jnp.int32)
    return x, sh, w, senders, receivers


def message_passing_passes(executor: str, nodes: int):
    from e3nn_fast.message_passing import message_passing

    def out(x, sh, w, senders, receivers):
        with dispatch.backend(executor):
            return message_passing(x, sh, w, senders, receivers, nodes).array

    def energy(x, sh, w, senders, receivers):
        return jnp.sum(jnp.sin(out(x, sh, w, senders, receivers)))

    def forces(x, sh, w, senders, receivers):  # gradient w.r.t. the weights of |dE/dsh|^2, as in force training
        def loss(w):
            return jnp.sum(jax.grad(energy, argnums=1)(x, sh, w, senders, receivers).array ** 2)
        return jax.grad(loss)(w)

    return {
        "fwd": out,
        "bwd": jax.grad(energy, argnums=(0, 1, 2)),
        "2nd": forces,
    }


def run_message_passing_timings():
    nodes, edges = (10, 40) if ARGS.tiny else (3_000, ARGS.edges)
    irreps_x = "4x0e+4x1o" if ARGS.tiny else MACE
    print(f"\n== fused message passing: {irreps_x} (x) {SH}, {nodes} nodes, {edges} edges (fp32; ms; temp MB) ==")
    args = message_passing_inputs(nodes, edges, irreps_x, SH)
    executors = [e for e in ("reference", "jnp", KERNEL) if e in dispatch.available("message_passing")]
    for executor in executors:
        row = [executor]
        for pass_name, function in message_passing_passes(executor, nodes).items():
            if elapsed() > ARGS.budget and not ARGS.tiny:
                row.append(f"{pass_name} skipped (budget)")
                continue
            try:
                compiled = jax.jit(function).lower(*args).compile()
                memory = compiled.memory_analysis()
                temp = getattr(memory, "temp_size_in_bytes", 0) / 1e6 if memory is not None else float("nan")
                median, compile_time, _ = time_function(function, args, ARGS.repeats)
                floor = f" floor {MP_FLOOR_MS / (median * 1e3):.0%}" if pass_name == "fwd" and not ARGS.tiny else ""
                row.append(f"{pass_name} {median * 1e3:.2f} (temp {temp:.0f} MB, c {compile_time:.0f}s){floor}")
            except Exception as exc:  # noqa: BLE001 - OOM or a compile failure: report and go on
                row.append(f"{pass_name} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        print("  " + " | ".join(row))


def main():
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"kernel executor: {KERNEL}; GPU lowering per family: "
          f"{ {f: _pallas_compat.lowering(f) for f in _pallas_compat.LOWERING} }")
    ok = None if ARGS.skip_checks else run_checks()
    run_timings()
    run_message_passing_timings()
    print(f"\ntotal {elapsed():.0f}s; checks {'skipped' if ok is None else 'PASS' if ok else 'FAIL'}")
    return 0 if ok is not False else 1


if __name__ == "__main__":
    sys.exit(main())
