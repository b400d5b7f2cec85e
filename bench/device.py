"""One timed session on a lent GPU: numerics of every kernel on the device, then the headline timings, then a sweep
of the kernel knobs, each part streaming JSON lines into the output folder as it goes.

Run from the repository root (``bench/device_session.sh`` installs the carried peer wheels first)::

    python -m bench.device --out $OUT --budget 450          # on the GPU
    python -m bench.device --out /tmp/dev --tiny             # CPU rehearsal: interpret mode, tiny sizes
    python -m bench.device --summarize $OUT                  # tables of a finished session

Every part runs in its own process under its own time limit (``min(cap, budget left)``), so a crash, a hang or a
compile that never ends costs that part alone, and every finished measurement is already on disk.  In order:

=========== ========================================================================================================
env         ``env.txt``: nvidia-smi, versions, the device, the measured copy bandwidth and fp32 matmul rate
numerics    ``numerics.jsonl``: every kernel family against the float64 reference on the device
            (:mod:`bench.device_numerics`)
mp          ``timings.jsonl``: MACE-large fused message passing at full size, fwd / fwd+bwd / forces
sc          MACE symmetric contraction (128 channels, l <= 3, orders 1-3, 10 species)
tp          the MACE-large and NequIP tensor products (op by op, per-edge weights)
fc          the fully connected product (e3nn-jax's FCTP benchmark) and haiku ``Linear``
sweep       ``sweep.jsonl``: kernel knobs (``E3NN_FAST_TUNE``) per family, forward passes, the kernel backend only
lowering    ``JAX_PLATFORMS=cpu`` lowering tests of this jax (the CPU-only path CI takes, on the device's jax)
=========== ========================================================================================================

The timing parts compare, on identical inputs and interleaved in one process, e3nn_fast's Pallas kernels, its jnp
executors, e3nn-jax and cuequivariance-jax, wherever each is importable (a missing one is listed, not fatal).
Outputs stay within the device tool's limits: at most 8 files, one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Optional

KERNEL_BACKENDS = ("e3nn_fast:pallas", "e3nn_fast:fused-pallas")
PEERS = ("e3nn-jax", "cuequivariance")


@dataclasses.dataclass(frozen=True)
class Part:
    """A step of the session: ``command(settings)`` is the argv of its process; ``cap_s`` its own time limit."""

    name: str
    cap_s: float
    command: Callable[["SessionSettings"], list]
    env: dict = dataclasses.field(default_factory=dict)
    background: bool = False  # CPU-only work that runs beside the GPU parts (it cannot disturb their timings)


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    out: str
    tiny: bool
    repeats: int
    exclude_backends: tuple = ()  # e.g. a backend already measured and too slow to time again at full size
    numerics_cases: tuple = ()  # only these numerics cases (all when empty)
    numerics_budget_s: float = 100.0

    @property
    def suite(self) -> str:
        return "tiny" if self.tiny else "full"


def _python(*args) -> list:
    return [sys.executable, *args]


def _bench(workloads, backends, *, jsonl: str, passes=None, tag: str = ""):
    """The argv of one ``python -m bench`` run streaming into ``jsonl``."""

    def command(s: SessionSettings) -> list:
        chosen = [b for b in backends if b not in s.exclude_backends]
        argv = _python("-m", "bench", "--suite", s.suite, "--workloads", *workloads, "--backends", *chosen,
                       "--jsonl", os.path.join(s.out, jsonl), "--repeats", str(s.repeats), "--no-progress",
                       "--measure-bandwidth", "--verbose")
        if passes:
            argv += ["--passes", *passes]
        if tag:
            argv += ["--tag", tag]
        return argv

    return command


NUMERICS_CAP_S = 120.0


def _numerics(s: SessionSettings) -> list:
    # its own budget a little under the part's limit (a check that starts in time may take ~20 s to compile), so
    # that it records what it skipped instead of being killed
    argv = _python("-m", "bench.device_numerics", "--out", os.path.join(s.out, "numerics.jsonl"),
                   "--budget", str(min(s.numerics_budget_s, NUMERICS_CAP_S - 20)))
    if s.numerics_cases:
        argv += ["--cases", *s.numerics_cases]
    return argv + (["--tiny"] if s.tiny else [])


def _environment(s: SessionSettings) -> list:
    return _python("-m", "bench.device", "--environment", os.path.join(s.out, "env.txt"))


def _lowering(s: SessionSettings) -> list:
    tests = ["tests/test_kernels.py", "tests/test_message_passing.py", "tests/test_symmetric_contraction.py",
             "tests/test_tuning.py"]
    return _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "lower", *tests)


FUSED = ("e3nn_fast:fused-pallas", "e3nn_fast:fused-jnp", *PEERS)
OP_BY_OP = ("e3nn_fast:pallas", "e3nn_fast:jnp", *PEERS)

# Knob settings of the sweep: (tag, E3NN_FAST_TUNE, workloads, backend).  The first of each family is the default.
SWEEP = (
    ("mp default", "", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    # the launch shape before issue 14 (16-row blocks of every channel: 188 node programs at this size)
    ("mp old shape", "message_passing.target_programs=1", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    ("mp rows 1", "message_passing.block_rows=1", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    # edge tiles (issue 14): settings that compile without spills at this size (bench/results/sm90/
    # 2026-12-05-message-passing-edge-tiles.txt, 2026-12-06-message-passing-edge-tiles.txt); a tile of T edges gets
    # 256 / T channels unless the channel knob is set
    ("mp tile 2", "message_passing.edge_tile=2", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    ("mp tile 4", "message_passing.edge_tile=4", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    ("mp tile 8", "message_passing.edge_tile=8", ("mp-mace-large",), "e3nn_fast:fused-pallas"),
    ("mp tile 4 warps 8", "message_passing.edge_tile=4,message_passing.num_warps=8", ("mp-mace-large",),
     "e3nn_fast:fused-pallas"),
    ("mp channels 32 warps 1", "message_passing.channel_block=32,message_passing.num_warps=1", ("mp-mace-large",),
     "e3nn_fast:fused-pallas"),
    ("mp channels 64 warps 2", "message_passing.channel_block=64,message_passing.num_warps=2", ("mp-mace-large",),
     "e3nn_fast:fused-pallas"),
    ("mp rows 4 channels 32 warps 1",
     "message_passing.block_rows=4,message_passing.channel_block=32,message_passing.num_warps=1", ("mp-mace-large",),
     "e3nn_fast:fused-pallas"),
    ("sc default", "", ("sc-mace",), "e3nn_fast:fused-pallas"),
    ("sc warps 8", "symmetric_contraction.num_warps=8", ("sc-mace",), "e3nn_fast:fused-pallas"),
    # the kernel before 2026-12-06: 4-node planes, every factor reloaded per output plane (24-30 s of Triton compile
    # per kernel offline, against 3-4 s now)
    ("sc old shape", "symmetric_contraction.tile_elements=512,symmetric_contraction.load_group_planes=1", ("sc-mace",),
     "e3nn_fast:fused-pallas"),
    # the jnp executor's row loop (auto's choice until a kernel wins): default 65,536 lanes per iteration off CPU
    ("sc jnp default", "", ("sc-mace",), "e3nn_fast:fused-jnp"),
    ("sc jnp lanes 16k", "symmetric_contraction.jnp_chunk_lanes=16384", ("sc-mace",), "e3nn_fast:fused-jnp"),
    ("sc jnp lanes 256k", "symmetric_contraction.jnp_chunk_lanes=262144", ("sc-mace",), "e3nn_fast:fused-jnp"),
    ("fc default", "", ("fctp",), "e3nn_fast:pallas"),
    ("fc old shape", "fully_connected.planes_per_program=1000", ("fctp",), "e3nn_fast:pallas"),
    ("fc stages 1", "fully_connected.num_stages=1", ("fctp",), "e3nn_fast:pallas"),
    ("fc warps 8", "fully_connected.num_warps=8", ("fctp",), "e3nn_fast:pallas"),
    ("tp default", "", ("mace-large",), "e3nn_fast:pallas"),
    ("tp old shape", "aligned.live_elements=1073741824,aligned.target_programs=1", ("mace-large",), "e3nn_fast:pallas"),
    ("tp warps 8", "aligned.num_warps=8", ("mace-large",), "e3nn_fast:pallas"),
    ("tp rows 64", "aligned.max_block_rows=64", ("mace-large",), "e3nn_fast:pallas"),
)


def parts() -> list:
    """The session's parts, in the order they run (headline numbers first)."""
    sweep = [Part(f"sweep: {tag}", 45.0, _bench(workloads, (backend,), jsonl="sweep.jsonl", passes=("fwd",), tag=tag),
                  env={"E3NN_FAST_TUNE": knobs}) for tag, knobs, workloads, backend in SWEEP]
    return [
        Part("env", 30.0, _environment),
        Part("numerics", NUMERICS_CAP_S, _numerics),
        Part("mp", 110.0, _bench(("mp-mace-large",), FUSED, jsonl="timings.jsonl")),
        # On the first device session (2026-12-04) sc and tp timed out at 55 s and 70 s, compiling: mp, with three
        # backends, needed 90 s.  Offline, a Triton kernel compiles in 2-18 s (README); these caps let the next
        # session's `--parts sc tp fc sweep` finish each part and still leave the sweep about 2 minutes of 450 s.
        Part("sc", 120.0, _bench(("sc-mace",), FUSED, jsonl="timings.jsonl")),
        Part("tp", 120.0, _bench(("mace-large", "nequip-benzene"), OP_BY_OP, jsonl="timings.jsonl")),
        Part("fc", 90.0, _bench(("fctp", "linear-128"), OP_BY_OP, jsonl="timings.jsonl")),
        *sweep,
        Part("lowering", 120.0, _lowering, env={"JAX_PLATFORMS": "cpu"}, background=True),
    ]


# ----------------------------------------------------------------------------------------------- the session


def run_session(settings: SessionSettings, budget_s: float, selected: Optional[list] = None,
                log=print) -> list:
    """Run the parts (all, or those whose name starts with one of ``selected``) within ``budget_s``; returns one
    ``{"part", "status", "seconds", "returncode"}`` per part, also appended to ``log.txt``."""
    os.makedirs(settings.out, exist_ok=True)
    started = time.perf_counter()
    outcomes = []
    log_path = os.path.join(settings.out, "log.txt")
    chosen = parts()
    if selected:  # in the order asked for
        chosen = [p for name in selected for p in chosen if p.name.startswith(name)]
        chosen = list({id(p): p for p in chosen}.values())
    background = [_start_background(p, settings, log) for p in chosen if p.background]
    for part in chosen:
        if part.background:
            continue
        left = budget_s - (time.perf_counter() - started)
        if left < 15:
            outcomes.append({"part": part.name, "status": "skipped: budget spent"})
            continue
        limit = min(part.cap_s, left)
        argv = part.command(settings)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
        log(f"[{time.perf_counter() - started:6.0f}s] {part.name}: limit {limit:.0f}s: "
            + " ".join(f"{k}={shlex.quote(v)}" for k, v in part.env.items()) + " " + shlex.join(argv[1:]))
        t0 = time.perf_counter()
        with open(log_path, "a") as log_file:
            log_file.write(f"\n===== {part.name} (limit {limit:.0f}s) {shlex.join(argv)}\n")
            log_file.flush()
            try:
                process = subprocess.run(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, timeout=limit)
                status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
                code = process.returncode
            except subprocess.TimeoutExpired:
                status, code = f"timed out after {limit:.0f}s", None
        outcome = {"part": part.name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
                   "returncode": code}
        outcomes.append(outcome)
        with open(log_path, "a") as log_file:
            log_file.write(json.dumps(outcome) + "\n")
        log(f"         {part.name}: {status} in {outcome['seconds']}s")
    for part, process, t0, path in background:
        left = max(1.0, part.cap_s - (time.perf_counter() - t0))
        try:
            code = process.wait(timeout=left)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            process.kill()
            code, status = None, f"timed out after {part.cap_s:.0f}s"
        outcome = {"part": part.name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
                   "returncode": code}
        outcomes.append(outcome)
        with open(log_path, "a") as log_file, open(path) as own:
            log_file.write(f"\n===== {part.name} (background) {shlex.join(part.command(settings))}\n{own.read()}")
            log_file.write(json.dumps(outcome) + "\n")
        os.remove(path)
        log(f"         {part.name}: {status} in {outcome['seconds']}s")
    return outcomes


def _start_background(part: Part, settings: SessionSettings, log):
    """Start a background part now, its output kept aside and appended to log.txt when it is collected."""
    path = os.path.join(settings.out, f".{part.name}.log")
    log(f"[background] {part.name}: limit {part.cap_s:.0f}s")
    with open(path, "w") as own:
        process = subprocess.Popen(part.command(settings), env={**os.environ, "PYTHONUNBUFFERED": "1", **part.env},
                                   stdout=own, stderr=subprocess.STDOUT)
    return part, process, time.perf_counter(), path


# ------------------------------------------------------------------------------------------------- environment


def _command_output(argv: list) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"({shlex.join(argv)} failed: {error})"


def write_environment(path: str) -> None:
    """nvidia-smi, versions of everything timed, the devices, and the two ceilings measured here: a large copy's
    bandwidth and an fp32 matrix product's rate at XLA's default precision."""
    import importlib
    import platform

    lines = [f"date {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", f"python {platform.python_version()}",
             f"host {platform.node()} {platform.machine()} {os.cpu_count()} cores"]
    for module in ("jax", "jaxlib", "triton", "numpy", "e3nn_fast", "e3nn_jax", "haiku", "cuequivariance",
                   "cuequivariance_jax", "cuequivariance_ops_jax", "flax"):
        try:
            version = str(getattr(importlib.import_module(module), "__version__", "?"))
        except Exception as error:  # noqa: BLE001 - a peer missing or broken is a fact to record
            version = f"not importable ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
        lines.append(f"{module} {version}")
    import jax
    import jax.numpy as jnp

    from bench import devices

    lines.append(f"devices {jax.devices()} kind {jax.devices()[0].device_kind!r}")
    if devices.is_accelerator():
        bandwidth = devices.probe_copy_bandwidth()
        size = 8192
        a = jnp.asarray(jax.random.normal(jax.random.PRNGKey(0), (size, size)), jnp.float32)
        seconds = devices._median_seconds(jax.jit(lambda x, y: x @ y), (a, a), 10)
        lines.append(f"measured copy bandwidth {bandwidth / 1e12:.2f} TB/s (2 GiB fp32, read + write)")
        lines.append(f"measured fp32 matmul {2 * size**3 / seconds / 1e12:.1f} TFLOP/s ({size}^3, default precision)")
    lines.append("\n" + _command_output(["nvidia-smi"]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


# ---------------------------------------------------------------------------------------------------- summary


def _read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: everything before it stands
                    pass
    return rows


def numerics_summary(rows: list) -> str:
    checks = [r for r in rows if "case" in r]
    failed = [r for r in checks if not r.get("ok")]
    lines = [f"numerics: {len(checks) - len(failed)} of {len(checks)} checks passed"]
    for r in failed:
        lines.append(f"  FAIL {r.get('family')} / {r.get('case')} {r.get('dtype')} {r.get('pass')}: "
                     f"err {r.get('rel_error')} tol {r.get('tolerance')} kernel_used {r.get('kernel_used')} "
                     f"{r.get('error') or ''}")
    for r in rows:
        if r.get("skipped"):
            lines.append(f"  skipped (budget): {r['skipped']}")
    return "\n".join(lines)


def _cell(row: Optional[dict], baseline: Optional[dict], cue: Optional[dict]) -> str:
    if row is None:
        return "–"
    if row.get("status") != "ok":
        return "error"
    text = f"{row['median_ms']:.3g}"
    ratios = []
    if baseline is not None and baseline.get("status") == "ok":
        ratios.append(f"{baseline['median_ms'] / row['median_ms']:.2f}×")
    if cue is not None and cue.get("status") == "ok" and row is not cue:
        ratios.append(f"cue {cue['median_ms'] / row['median_ms']:.2f}×")
    return text + (f" ({', '.join(ratios)})" if ratios else "")


def timings_summary(rows: list) -> str:
    """Median ms per backend; in brackets the speedup over e3nn-jax and over cuequivariance; then the fraction of
    the HBM floor and the executable's bytes for the kernel rows."""
    rows = [r for r in rows if "workload" in r and "backend" in r]
    backends = [b for b in ("e3nn_fast:fused-pallas", "e3nn_fast:pallas", "e3nn_fast:fused-jnp", "e3nn_fast:jnp",
                            "e3nn-jax", "cuequivariance") if any(r["backend"] == b for r in rows)]
    index = {(r["workload"], r["pass"], r["backend"]): r for r in rows}
    keys = list(dict.fromkeys((r["workload"], r["size"], r["pass"]) for r in rows))
    lines = ["| workload | size | pass | " + " | ".join(backends) + " | floor ms | best e3nn_fast % of floor | "
             "MiB e3nn_fast / e3nn-jax |",
             "|---|---:|---|" + "---:|" * (len(backends) + 3)]
    for workload, size, pass_name in keys:
        baseline = index.get((workload, pass_name, "e3nn-jax"))
        cue = index.get((workload, pass_name, "cuequivariance"))
        cells = [_cell(index.get((workload, pass_name, b)), baseline, cue) for b in backends]
        ours = [index.get((workload, pass_name, b)) for b in backends if b.startswith("e3nn_fast")]
        ours = [r for r in ours if r is not None and r.get("status") == "ok"]
        best = min(ours, key=lambda r: r["median_ms"]) if ours else None
        floor = best.get("floor_ms") if best else None
        fraction = f"{100 * floor / best['median_ms']:.0f}%" if floor else ""
        memory = ""
        if best and best.get("executable_bytes") and baseline and baseline.get("executable_bytes"):
            memory = f"{best['executable_bytes'] / 2**20:.0f} / {baseline['executable_bytes'] / 2**20:.0f}"
        lines.append(f"| {workload} | {size} | {pass_name} | " + " | ".join(cells)
                     + f" | {'' if floor is None else f'{floor:.3g}'} | {fraction} | {memory} |")
    errors = [r for r in rows if r.get("status") != "ok"]
    for r in errors:
        lines.append(f"\nerror: {r['workload']} {r['pass']} {r['backend']}: {r.get('error')}")
    return "\n".join(lines)


def sweep_summary(rows: list) -> str:
    rows = [r for r in rows if r.get("status") == "ok"]
    lines = ["| tag | knobs | workload | backend | fwd ms |", "|---|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r.get('tag')} | {r.get('kernel_knobs')} | {r['workload']} | {r['backend']} | "
                     f"{r['median_ms']:.3g} |")
    return "\n".join(lines)


def summarize(folder: str) -> str:
    """The tables of a session folder: one block per run prefix (``numerics.jsonl`` or ``run1-numerics.jsonl``, ...),
    so that several runs committed side by side each keep their own tables."""
    import glob

    prefixes = sorted({os.path.basename(path)[: -len(name)]
                       for name in ("numerics.jsonl", "timings.jsonl", "sweep.jsonl")
                       for path in glob.glob(os.path.join(folder, f"*{name}"))}) or [""]
    blocks = []
    for prefix in prefixes:
        def rows(name):
            return _read_jsonl(os.path.join(folder, prefix + name))

        title = [f"## {prefix.rstrip('-')}", ""] if prefix else []
        blocks.append("\n".join(title + [numerics_summary(rows("numerics.jsonl")), "",
                                         timings_summary(rows("timings.jsonl")), "",
                                         sweep_summary(rows("sweep.jsonl"))]))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------------------------- entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (the device tool's $OUT)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal: interpret mode, tiny sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per pass (default 20, tiny 2)")
    parser.add_argument("--parts", nargs="+", help="run only the parts whose names start with these")
    parser.add_argument("--exclude-backends", nargs="+", default=(), metavar="NAME",
                        help="leave these backends out of the timing parts")
    parser.add_argument("--numerics-cases", nargs="+", default=(), metavar="CASE",
                        help="numerics: only these cases (default all)")
    parser.add_argument("--numerics-budget", type=float, default=100.0, help="numerics: seconds for new checks")
    parser.add_argument("--environment", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--summarize", metavar="FOLDER", help="print the tables of a finished session and exit")
    args = parser.parse_args(argv)
    if args.environment:
        write_environment(args.environment)
        return 0
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not args.out:
        parser.error("--out is required")
    settings = SessionSettings(out=args.out, tiny=args.tiny, repeats=args.repeats or (2 if args.tiny else 20),
                               exclude_backends=tuple(args.exclude_backends), numerics_cases=tuple(args.numerics_cases),
                               numerics_budget_s=args.numerics_budget)
    outcomes = run_session(settings, args.budget, args.parts)
    summary = summarize(args.out)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary + "\n\nparts:\n" + "\n".join(json.dumps(o) for o in outcomes) + "\n")
    print("\n" + summary)
    print("\nparts: " + "; ".join(f"{o['part']} {o['status']}" for o in outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
