"""e3nn_fast vs e3nn-jax on CPU: tensor products and a linear layer, under ``jax.jit``, in one process.

Workloads (``--quick`` divides the batch sizes by 4 and runs 3 repeats):

1. ``sh-tp``: a NequIP/MACE-style message.  Edge features ``32x0e+32x1o+32x2e`` times the spherical harmonics
   ``l <= 3`` of the edge vectors (``e3nn.spherical_harmonics([0, 1, 2, 3], vectors, True)``) with
   ``e3nn.tensor_product``, then scaled by per-edge weights, one per output irrep: ``out * w`` with ``w`` of shape
   ``(edges, out.irreps.num_irreps)`` (as nequip-jax does with the output of its radial MLP).  Passes:
   ``fwd`` (the scaled messages), ``fwd+bwd`` (value and gradient of ``sum(out**2)`` with respect to the features,
   the vectors and the weights) and ``forces`` (the double backward of force training: the gradient with respect to
   the weights of ``||dE/dpositions||**2``, where ``E`` is the sum of the scalar outputs and the edge vectors are
   ``positions[receivers] - positions[senders]``); XLA prunes every path that does not produce a scalar there, so
   ``forces-all`` repeats it with ``E`` the sum of the squared norms of all outputs.
2. ``tp``: ``e3nn.tensor_product`` of ``16x(0e+1o+2e)`` (written ``16x0e+16x1o+16x2e``; both libraries regroup their
   inputs, so the order does not matter) with ``0e+1o+2e``; ``fwd`` and ``fwd+bwd`` (gradient of ``sum(out**2)``
   with respect to both inputs).
3. ``linear``: ``haiku`` ``Linear`` on ``128x(0e+1o+2e)`` to the same irreps, with the same parameters in both
   libraries (initialised by e3nn-jax); ``fwd`` and ``fwd+bwd`` (gradient with respect to the parameters and the
   input).

Every function is compiled once per library (``lower().compile()``, timed as the compile time), run once to warm up
and to check that both libraries agree, then run ``--repeats`` times alternating between the libraries, each run
ended by ``block_until_ready``.  The table shows medians, the ratio e3nn-jax / e3nn_fast (above 1: e3nn_fast is
faster) and the compile times; ``--out`` writes everything, minima included, as JSON.

Run from the repository root: ``python -m bench.tp_vs_e3nn_jax [--quick] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import e3nn_jax
import e3nn_fast
from e3nn_fast import dispatch

SH_FEATURES = "32x0e+32x1o+32x2e"
TP_INPUT1 = "16x0e+16x1o+16x2e"
TP_INPUT2 = "0e+1o+2e"
LINEAR_IRREPS = "128x0e+128x1o+128x2e"


def spherical_harmonics(lib):
    """``lib.spherical_harmonics``; e3nn_fast's lives in :mod:`e3nn_fast.harmonics` until it is exported."""
    if lib is e3nn_fast and not hasattr(lib, "spherical_harmonics"):
        from e3nn_fast.harmonics import spherical_harmonics as sh

        return sh
    return lib.spherical_harmonics


def with_backend(fn: Callable, backend: str | None) -> Callable:
    """``fn`` traced with e3nn_fast's dispatcher forced to ``backend`` (None: the default, ``auto``)."""
    if backend is None:
        return fn

    def wrapped(*args):
        with dispatch.backend(backend):
            return fn(*args)

    return wrapped


# ----------------------------------------------------------------------------------------------- workload builders
# Each builder returns {pass name: (function of lib -> function of arrays, arguments)}.


def sh_tp_workload(edges: int, key) -> dict:
    nodes = max(2, edges // 8)
    k = jax.random.split(key, 5)
    features = jax.random.normal(k[0], (edges, e3nn_jax.Irreps(SH_FEATURES).dim), jnp.float32)
    positions = 2.0 * jax.random.normal(k[1], (nodes, 3), jnp.float32)
    senders = jax.random.randint(k[2], (edges,), 0, nodes)
    # receivers != senders, so that no edge vector is zero
    receivers = (senders + jax.random.randint(k[3], (edges,), 1, nodes)) % nodes
    vectors = positions[receivers] - positions[senders]
    sh_irreps = e3nn_jax.Irreps.spherical_harmonics(3)
    num_irreps = e3nn_jax.tensor_product(e3nn_jax.Irreps(SH_FEATURES), sh_irreps).num_irreps
    weights = jax.random.normal(k[4], (edges, num_irreps), jnp.float32)

    def messages(lib, x, vec, w):
        sh = spherical_harmonics(lib)([0, 1, 2, 3], lib.IrrepsArray("1o", vec), True)
        return lib.tensor_product(lib.IrrepsArray(SH_FEATURES, x), sh) * w

    def forward(lib):
        return lambda x, vec, w: messages(lib, x, vec, w).array

    def forward_backward(lib):
        def loss(x, vec, w):
            return jnp.sum(messages(lib, x, vec, w).array ** 2)

        return jax.value_and_grad(loss, argnums=(0, 1, 2))

    def forces(lib):
        def energy(positions, x, w, senders, receivers):
            out = messages(lib, x, positions[receivers] - positions[senders], w)
            return jnp.sum(out.filter(keep=["0e"]).array)

        def force_loss(w, positions, x, senders, receivers):
            f = -jax.grad(energy)(positions, x, w, senders, receivers)
            return jnp.sum(f**2)

        return jax.value_and_grad(force_loss)

    def forces_all_outputs(lib):
        # Same, with an energy that uses every output (the sum of their squared norms), so that XLA cannot prune the
        # paths that do not produce scalars.
        def energy(positions, x, w, senders, receivers):
            return jnp.sum(messages(lib, x, positions[receivers] - positions[senders], w).array ** 2)

        def force_loss(w, positions, x, senders, receivers):
            f = -jax.grad(energy)(positions, x, w, senders, receivers)
            return jnp.sum(f**2)

        return jax.value_and_grad(force_loss)

    force_args = (weights, positions, features, senders, receivers)
    return {
        "fwd": (forward, (features, vectors, weights)),
        "fwd+bwd": (forward_backward, (features, vectors, weights)),
        "forces": (forces, force_args),
        "forces-all": (forces_all_outputs, force_args),
    }


def tp_workload(batch: int, key) -> dict:
    k1, k2 = jax.random.split(key)
    x1 = jax.random.normal(k1, (batch, e3nn_jax.Irreps(TP_INPUT1).dim), jnp.float32)
    x2 = jax.random.normal(k2, (batch, e3nn_jax.Irreps(TP_INPUT2).dim), jnp.float32)

    def product(lib, a, b):
        return lib.tensor_product(lib.IrrepsArray(TP_INPUT1, a), lib.IrrepsArray(TP_INPUT2, b)).array

    def forward(lib):
        return lambda a, b: product(lib, a, b)

    def forward_backward(lib):
        return jax.value_and_grad(lambda a, b: jnp.sum(product(lib, a, b) ** 2), argnums=(0, 1))

    return {"fwd": (forward, (x1, x2)), "fwd+bwd": (forward_backward, (x1, x2))}


def linear_workload(batch: int, key) -> dict:
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (batch, e3nn_jax.Irreps(LINEAR_IRREPS).dim), jnp.float32)

    def transformed(lib):
        def apply(a):
            return lib.haiku.Linear(LINEAR_IRREPS)(lib.IrrepsArray(LINEAR_IRREPS, a)).array

        return hk.without_apply_rng(hk.transform(apply))

    params = transformed(e3nn_jax).init(k2, x)

    def forward(lib):
        return transformed(lib).apply

    def forward_backward(lib):
        apply = transformed(lib).apply
        return jax.value_and_grad(lambda p, a: jnp.sum(apply(p, a) ** 2), argnums=(0, 1))

    return {"fwd": (forward, (params, x)), "fwd+bwd": (forward_backward, (params, x))}


# ------------------------------------------------------------------------------------------------------ measurement


def compile_timed(fn: Callable, args) -> tuple[Callable, float]:
    """The compiled ``jax.jit(fn)`` for ``args`` and the seconds tracing + compiling took."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def max_relative_difference(a, b) -> float:
    """Largest ``|a - b|`` over all leaves, relative to the largest ``|a|`` of the same leaf."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(float(np.max(np.abs(x))), 1e-30) if x.size else 1.0
        worst = max(worst, float(np.max(np.abs(x - y))) / scale if x.size else 0.0)
    return worst


def measure(builders: dict, args, repeats: int, backend: str | None) -> dict:
    """Compile, warm up, compare and time one pass of a workload in both libraries (runs alternate)."""
    fns = {"e3nn_fast": with_backend(builders(e3nn_fast), backend), "e3nn-jax": builders(e3nn_jax)}
    compiled, compile_s, outputs = {}, {}, {}
    for name, fn in fns.items():
        compiled[name], compile_s[name] = compile_timed(fn, args)
        outputs[name] = jax.block_until_ready(compiled[name](*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name in fns:
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - start)
    return {
        "median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
        "min_ms": {n: 1e3 * min(t) for n, t in times.items()},
        "compile_s": compile_s,
        "max_rel_diff": max_relative_difference(outputs["e3nn-jax"], outputs["e3nn_fast"]),
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| workload | pass | e3nn_fast (ms) | e3nn-jax (ms) | e3nn-jax / e3nn_fast | compile e3nn_fast (s) "
        "| compile e3nn-jax (s) | max rel diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fast, ref = r["median_ms"]["e3nn_fast"], r["median_ms"]["e3nn-jax"]
        lines.append(
            f"| {r['workload']} | {r['pass']} | {fast:.2f} | {ref:.2f} | {ref / fast:.2f}x "
            f"| {r['compile_s']['e3nn_fast']:.2f} | {r['compile_s']['e3nn-jax']:.2f} | {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch sizes / 4 and 3 repeats: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per library (default 15, quick 3)")
    parser.add_argument("--workloads", default="sh-tp,tp,linear", help="comma-separated subset of sh-tp,tp,linear")
    parser.add_argument("--backend", default=None, help="force e3nn_fast's backend (default: the dispatcher's auto)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    scale = 4 if args.quick else 1
    sizes = {"sh-tp": 4000 // scale, "tp": 4000 // scale, "linear": 4096 // scale}
    makers = {"sh-tp": sh_tp_workload, "tp": tp_workload, "linear": linear_workload}
    selected = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in selected if w not in makers]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(makers)}")

    results = []
    for n, workload in enumerate(selected):
        passes = makers[workload](sizes[workload], jax.random.PRNGKey(n))
        for pass_name, (builders, fn_args) in passes.items():
            r = measure(builders, fn_args, repeats, args.backend)
            r.update({"workload": workload, "pass": pass_name, "size": sizes[workload]})
            results.append(r)
            print(f"{workload:7s} {pass_name:8s} e3nn_fast {r['median_ms']['e3nn_fast']:9.2f} ms  "
                  f"e3nn-jax {r['median_ms']['e3nn-jax']:9.2f} ms", file=sys.stderr, flush=True)

    print(markdown_table(results))
    if args.out:
        meta = {
            "jax": jax.__version__,
            "e3nn_jax": e3nn_jax.__version__,
            "e3nn_fast": getattr(e3nn_fast, "__version__", "?"),
            "platform": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "e3nn_fast_backend": args.backend or dispatch.current_backend(),
            "tensor_product_executor": dispatch.choose("tensor_product", size=1 << 20, requested=args.backend),
            "quick": args.quick,
            "repeats": repeats,
            "sizes": sizes,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
