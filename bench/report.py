"""Writing a run's results: results.json (everything), results.md (tables), speedup.png and roofline.png.

How to read them:

* ``results.json``: ``environment`` (date, command, machine, device, device peaks, versions, settings, wall time),
  ``backends`` (available or the reason not), ``workloads`` (sizes), ``skipped_workloads`` (with the reason) and
  ``rows``, one per workload x pass x backend with every figure (times of every run, compile time and its ratio to
  e3nn-jax's, memory, FLOPs, bytes, rates, fractions of peak, speedup vs e3nn-jax, largest difference from the
  baseline's output, the data a model workload ran on) or the error.
* ``results.md``: a summary table (median milliseconds per backend, in brackets the speedup relative to e3nn-jax:
  above 1 means faster than e3nn-jax), the compile time of every pass (``jax.jit`` lower + compile, one compile, the
  first call excluded) with its ratio to e3nn-jax's and a headline for the NequIP-style model's energy + forces step
  against issue 16's goal (at most 0.5x e3nn-jax's), which data the model ran on, time and memory side by side
  (median ms, the compiled executable's temporary bytes from ``memory_analysis``, and on a GPU the allocator's
  peak), the memory-bound floors of the fused-op
  workloads (counted compulsory bytes at the device's peak bandwidth, and published floors such as issue 6's 0.43 ms
  for MACE-large forward on an H100) with the fraction each backend reaches, and a detailed table.
* ``speedup.png``: speedup vs e3nn-jax per workload, one panel per pass (log scale; 1 = parity).
* ``roofline.png``: achieved GFLOP/s against arithmetic intensity (FLOPs per compulsory byte), with the device's
  compute and bandwidth roofs.  Small CPU workloads fit in cache and can sit above the measured DRAM-bandwidth roof.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

from bench.backends import BASELINE


def _clean(value):
    """JSON-safe copy: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=1, allow_nan=False)


# ----------------------------------------------------------------------------------------------------- markdown


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _backends_with_rows(results: dict) -> list[str]:
    seen = []
    for row in results["rows"]:
        if row["backend"] not in seen:
            seen.append(row["backend"])
    return [b for b in results["backends"] if b in seen]


def _rows_by_key(results: dict) -> dict:
    return {(r["workload"], r["pass"], r["backend"]): r for r in results["rows"]}


def _backend_table(results: dict, column: Callable[[str], str], cell: Callable[[dict], str]) -> str:
    """Workload x pass rows, one column per backend that produced rows: ``cell(row)`` for a successful row,
    ``error`` for a failed one, ``–`` where the backend has no row."""
    names = _backends_with_rows(results)
    rows = _rows_by_key(results)
    lines = ["| workload | size | pass | " + " | ".join(column(n) for n in names) + " |",
             "|---|---:|---|" + "---:|" * len(names)]
    for workload, info in results["workloads"].items():
        if workload in results["skipped_workloads"]:
            continue
        for pass_name in results["environment"]["settings"]["passes"]:
            cells = []
            for name in names:
                row = rows.get((workload, pass_name, name))
                cells.append("–" if row is None else "error" if row["status"] != "ok" else cell(row))
            lines.append(f"| {workload} | {info['size']} {info['unit']} | {pass_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """Workload x pass rows, one column per backend: median ms and (speedup vs e3nn-jax)."""

    def cell(row: dict) -> str:
        speedup = row.get("speedup_vs_e3nn_jax")
        return _ms(row["median_ms"]) + (f" ({speedup:.2f}×)" if speedup is not None else "")

    return _backend_table(results, lambda name: name, cell)


COMPILE_GOAL = 0.5  # issue 16: e3nn_fast compiles a NequIP-style energy+forces step in at most half e3nn-jax's time
MODEL_PASSES = {"fwd": "energy", "fwd+bwd": "energy + forces", "forces": "training step: loss gradient through "
                                                                          "the forces"}


def compile_table(results: dict) -> str:
    """Workload x pass rows, one column per backend: seconds of ``jax.jit`` lower + compile (one compile; the first
    call is not included) and, in brackets, that time relative to e3nn-jax's (below 1: compiles faster)."""

    def cell(row: dict) -> str:
        ratio = row.get("compile_ratio_vs_e3nn_jax")
        return _fmt(row.get("compile_s"), ".3g") + (f" ({ratio:.2f}×)" if ratio is not None else "")

    return _backend_table(results, lambda name: f"{name} s", cell)


def _geomean(values: list) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def compile_lines(results: dict) -> list[str]:
    """The compile-time headline: for every whole-model workload (group ``model``, the NequIP-style step) and pass,
    each backend's compile seconds and its ratio to e3nn-jax's (wall time, then the process's CPU time, which a
    loaded machine disturbs less), the energy + forces pass's wall-time ratio against :data:`COMPILE_GOAL`; then the
    geometric mean of the wall-time ratio over every row of each backend."""
    lines = []
    rows = [r for r in results["rows"] if r["status"] == "ok" and r.get("compile_s") is not None]
    for workload, info in results["workloads"].items():
        if info.get("group") != "model":
            continue
        for pass_name in results["environment"]["settings"]["passes"]:
            mine = [r for r in rows if r["workload"] == workload and r["pass"] == pass_name]
            baseline = next((r for r in mine if r["backend"] == BASELINE), None)
            others = [r for r in mine if r["backend"] != BASELINE]
            if not others:
                continue
            parts = []
            for r in others:
                ratio, cpu_ratio = r.get("compile_ratio_vs_e3nn_jax"), r.get("compile_cpu_ratio_vs_e3nn_jax")
                text = f"{r['backend']} {r['compile_s']:.3g} s"
                if ratio:
                    text += f" ({ratio:.2f}×" + (f"; CPU time {cpu_ratio:.2f}×)" if cpu_ratio else ")")
                parts.append(text)
            text = f"- {workload} {pass_name} ({MODEL_PASSES.get(pass_name, pass_name)}) compile: " + ", ".join(parts)
            if baseline is not None:
                text += f"; e3nn-jax {baseline['compile_s']:.3g} s"
                if pass_name == "fwd+bwd":
                    met = [r["backend"] for r in others if r.get("compile_ratio_vs_e3nn_jax", math.inf) <= COMPILE_GOAL]
                    text += (f"; goal ≤ {COMPILE_GOAL}× e3nn-jax: "
                             + (f"met by {', '.join(met)}" if met else "not met"))
            lines.append(text)
    by_backend: dict = {}
    for r in rows:
        if r.get("compile_ratio_vs_e3nn_jax") and r["backend"] != BASELINE:
            by_backend.setdefault(r["backend"], []).append(r["compile_ratio_vs_e3nn_jax"])
    if by_backend:
        lines.append("- geometric mean of compile time / e3nn-jax's over every pass run: " + ", ".join(
            f"{name} {_geomean(values):.2f}× ({len(values)} passes)" for name, values in by_backend.items()))
    return lines


def data_lines(results: dict) -> list[str]:
    """Which data each workload that reads or generates data ran on."""
    return [f"- workload {name} data: {info['data']}" for name, info in results["workloads"].items()
            if info.get("data") and name not in results["skipped_workloads"]]


def _mib(value) -> str:
    return f"{value / 2**20:.3g}" if value < 100 * 2**20 else f"{value / 2**20:.0f}"


# Minor page faults per call from which the time/memory table shows them: a call that maps a large allocation afresh
# faults once per 4 KiB page of it (thousands), where a steady-state call faults a handful of times or none.
PAGE_FAULTS_SHOWN = 100


def time_memory_table(results: dict) -> str:
    """Workload x pass rows, one column per backend: ``median ms / temp MiB`` (compiled ``memory_analysis``),
    ``/ peak MiB`` where the device allocator reports one (a process-wide high-water mark: an upper bound), and
    ``/ N faults`` where a call faulted in ``PAGE_FAULTS_SHOWN`` or more fresh pages (see ``bench.timing``)."""

    def cell(row: dict) -> str:
        temp = (row.get("memory") or {}).get("temp_bytes")
        text = _ms(row["median_ms"]) + " / " + (_mib(temp) if temp is not None else "?")
        if row.get("peak_memory_bytes") is not None:
            text += f" / peak {_mib(row['peak_memory_bytes'])}"
        if (row.get("page_faults_per_call") or 0) >= PAGE_FAULTS_SHOWN:
            text += f" / {row['page_faults_per_call']:.0f} faults"
        return text

    return _backend_table(results, lambda name: f"{name} ms / temp MiB", cell)


FLOOR_GROUPS = ("message passing", "product basis")  # workloads whose bytes count a fused op's compulsory traffic


def floor_lines(results: dict) -> list[str]:
    """One line per forward pass of the fused-op workloads: the floor of the counted bytes at the device's peak
    bandwidth and the fraction of it each backend reaches; then every published floor with its fractions."""
    lines = []
    by_pass: dict = {}
    for row in results["rows"]:
        if row["status"] == "ok" and row.get("floor_ms") is not None and row["pass"] == "fwd" \
                and row.get("group") in FLOOR_GROUPS:
            by_pass.setdefault(row["workload"], []).append(row)
    for workload, rows in by_pass.items():
        fractions = ", ".join(f"{r['backend']} {100 * r['floor_ms'] / r['median_ms']:.3g}%" for r in rows)
        lines.append(f"- {workload} fwd: floor {rows[0]['floor_ms']:.3g} ms ({rows[0]['bytes'] / 1e6:.4g} MB at "
                     f"peak bandwidth); achieved fraction: {fractions}")
    published: dict = {}
    for row in results["rows"]:
        if row["status"] == "ok" and row.get("fraction_published_floor") is not None:
            published.setdefault((row["workload"], row["pass"]), []).append(row)
    for (workload, pass_name), rows in published.items():
        fractions = ", ".join(f"{r['backend']} {100 * r['fraction_published_floor']:.3g}%" for r in rows)
        lines.append(f"- {workload} {pass_name}: published floor {rows[0]['published_floor_ms']:.3g} ms "
                     f"({rows[0]['published_floor_source']}); achieved fraction: {fractions}")
    return lines


def detail_table(results: dict) -> str:
    """One line per workload x pass x backend with every headline figure."""
    lines = ["| workload | pass | backend | median ms | × e3nn-jax | compile s | compile / e3nn-jax | temp MiB "
             "| peak MiB | faults / call | GFLOP/s | GB/s | % peak FLOP/s | % peak BW | max rel diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        head = f"| {row['workload']} | {row['pass']} | {row['backend']} |"
        if row["status"] != "ok":
            lines.append(head + f" error: {row.get('error', '')[:120].replace('|', '/')} |" + " |" * 11)
            continue
        memory = row.get("memory") or {}
        lines.append(head + " | ".join([
            f" {_ms(row['median_ms'])}",
            _fmt(row.get("speedup_vs_e3nn_jax"), ".2f"),
            _fmt(row.get("compile_s"), ".2f"),
            _fmt(row.get("compile_ratio_vs_e3nn_jax"), ".2f"),
            _fmt(memory.get("temp_bytes"), ".1f", 2**-20),
            _fmt(row.get("peak_memory_bytes"), ".0f", 2**-20),
            _fmt(row.get("page_faults_per_call"), ".0f"),
            _fmt(row.get("gflops_per_s"), ".3g"),
            _fmt(row.get("gbytes_per_s"), ".3g"),
            _fmt(row.get("fraction_peak_flops"), ".2g", 100),
            _fmt(row.get("fraction_peak_bandwidth"), ".2g", 100),
            _fmt(row.get("max_rel_diff"), ".1e"),
        ]) + " |")
    return "\n".join(lines)


def _settling(rows: list) -> str:
    """``", each after N ms of untimed runs"`` when the samples followed a settle time (see ``timing.CPU_SETTLE_S``),
    else nothing."""
    settle_s = next((row["settle_s"] for row in rows if row.get("settle_s")), None)
    return f", each after {settle_s * 1e3:.0f} ms of untimed runs" if settle_s else ""


def markdown(results: dict) -> str:
    """The whole results.md."""
    env = results["environment"]
    device, versions, settings = env["device"], env["versions"], env["settings"]
    peaks = env.get("peaks")
    lines = [
        f"# e3nn_fast benchmark: {settings['suite']} suite, {settings['dtype']}",
        "",
        f"- date: {env['date']}; wall time {env.get('wall_s', 0):.0f} s; median of {settings['repeats']} runs"
        + _settling(results["rows"]),
        f"- device: {device['device_kind']} ({device['platform']}, {device['device_count']} device(s)); host "
        f"{env['machine']['machine']}, {env['machine']['cpu_count']} CPU cores",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None),
        f"- allocator: {env.get('allocator', 'default')}",
    ]
    if peaks:
        flops = peaks["flops"].get(settings["dtype"])
        lines.append(f"- peaks ({peaks['source']}): {_fmt(flops, '.3g', 1e-9)} GFLOP/s {settings['dtype']}, "
                     f"{peaks['bandwidth'] / 1e9:.3g} GB/s")
    missing = {n: b["reason"] for n, b in results["backends"].items() if not b["available"]}
    for name, reason in missing.items():
        lines.append(f"- backend {name} not run: {reason}")
    with_rows = set(_backends_with_rows(results))
    for name, backend in results["backends"].items():
        if backend["available"] and name not in with_rows:
            lines.append(f"- backend {name} available but no selected workload has a builder for its API "
                         f"({backend['api']!r})")
    for name, reason in results["skipped_workloads"].items():
        lines.append(f"- workload {name} skipped: {reason}")
    lines += data_lines(results)
    lines += ["", "Median milliseconds per pass; in brackets the speedup relative to e3nn-jax (above 1: faster).", "",
              summary_table(results), "",
              "## Compile time", "",
              "Seconds of `jax.jit` lower + compile of each pass, one compile per backend, the first call not "
              "included; every backend's forward is traced once untimed first, so that no backend pays for "
              "filling its library's caches (e.g. Clebsch-Gordan coefficients) because it ran first. In brackets "
              "the time relative to e3nn-jax's (below 1: compiles faster).", ""]
    lines += compile_lines(results)
    lines += ["", compile_table(results), "",
              "## Time and memory", "",
              "Median ms / temporary MiB of the compiled executable (its memory_analysis; on a GPU also the "
              "allocator's peak, a process-wide high-water mark), and the minor page faults per call where there "
              f"were {PAGE_FAULTS_SHOWN} or more (fresh pages: glibc maps each allocation above 32 MiB anew, so such "
              "a call pays about 1.5 us per 4 KiB page).", "", time_memory_table(results), ""]
    floors = floor_lines(results)
    if floors:
        lines += ["## Memory-bound floors", "",
                  "Fused-op workloads, forward: the counted compulsory bytes at the device's peak bandwidth, and the "
                  "fraction of that floor each backend reaches (floor / median).", ""] + floors + [""]
    lines += ["## Details", "", detail_table(results), ""]
    errors = [r for r in results["rows"] if r["status"] != "ok"]
    if errors:
        lines += ["## Errors", ""] + [f"- {r['workload']} {r['pass']} {r['backend']}: {r.get('error')}"
                                      for r in errors] + [""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_speedup(results: dict, path: str) -> None:
    """One panel per pass, grouped bars per workload: speedup vs e3nn-jax of every other backend (log scale, 1 =
    parity); without an e3nn-jax baseline the bars are median milliseconds."""
    plt = _pyplot()
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    has_baseline = any("speedup_vs_e3nn_jax" in r for r in ok)
    names = [b for b in _backends_with_rows(results) if not (has_baseline and b == BASELINE)]
    workload_names = [w for w in results["workloads"] if any(r["workload"] == w for r in ok)]
    passes = results["environment"]["settings"]["passes"]
    values = {(r["workload"], r["pass"], r["backend"]):
              r.get("speedup_vs_e3nn_jax") if has_baseline else r["median_ms"] for r in ok}
    fig, axes = plt.subplots(len(passes), 1, sharex=True, squeeze=False,
                             figsize=(max(6.0, 0.35 * len(workload_names) * max(1, len(names)) + 2), 2.4 * len(passes)))
    width = 0.8 / max(1, len(names))
    for ax, pass_name in zip(axes[:, 0], passes):
        for i, name in enumerate(names):
            xs = [j + i * width for j, w in enumerate(workload_names) if values.get((w, pass_name, name))]
            ys = [values[(w, pass_name, name)] for w in workload_names if values.get((w, pass_name, name))]
            ax.bar(xs, ys, width, label=name, color=f"C{i}")
        ax.set_yscale("log")
        if has_baseline:
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(pass_name + (" speedup" if has_baseline else " ms"))
    axes[-1, 0].set_xticks([j + 0.4 - width / 2 for j in range(len(workload_names))], workload_names, rotation=45,
                           ha="right", fontsize=8)
    device = results["environment"]["device"]["device_kind"]
    what = "speedup vs e3nn-jax (median; above 1: faster)" if has_baseline else "median ms (no e3nn-jax baseline)"
    axes[0, 0].set_title(f"e3nn_fast on {device}: {what}")
    if names:
        axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roofline(results: dict, path: str) -> None:
    """Achieved GFLOP/s vs FLOPs per byte for every ok row with a cost, under the device's roofs."""
    plt = _pyplot()
    env = results["environment"]
    dtype = env["settings"]["dtype"]
    points = [r for r in results["rows"] if r["status"] == "ok" and r.get("intensity")]
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "osD^v<>pxh"
    for i, name in enumerate(_backends_with_rows(results)):
        mine = [r for r in points if r["backend"] == name]
        if mine:
            ax.scatter([r["intensity"] for r in mine], [r["gflops_per_s"] for r in mine], marker=markers[i % 10],
                       label=name, alpha=0.75)
    peaks: Optional[dict] = env.get("peaks")
    intensities = [r["intensity"] for r in points] or [1.0]
    if peaks and peaks["flops"].get(dtype):
        low, high = min(intensities) / 4, max(intensities) * 4
        xs = [low * (high / low) ** (k / 99) for k in range(100)]
        ys = [min(peaks["flops"][dtype], x * peaks["bandwidth"]) / 1e9 for x in xs]
        ax.plot(xs, ys, color="black", linewidth=1, label=f"roof ({peaks['source']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte)")
    ax.set_ylabel(f"achieved GFLOP/s ({dtype})")
    ax.set_title(f"roofline on {env['device']['device_kind']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class JsonLines:
    """Appends rows to a file as JSON lines, flushed one by one (a crash or a kill keeps every finished row);
    each row gets ``tag``, the kernel knobs in force and the device kind, so that lines from several runs stay
    self-describing."""

    def __init__(self, path: str, tag: str = ""):
        import jax

        from e3nn_fast.kernels import tuning

        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._file = open(path, "a")
        self._extra = {"tag": tag, "kernel_knobs": tuning.current(), "device_kind": jax.devices()[0].device_kind}

    def __call__(self, row: dict) -> None:
        self._file.write(json.dumps(_clean({**row, **self._extra}), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_all(results: dict, folder: str) -> dict:
    """Write the four outputs into ``folder`` (created); their paths.  A plotting failure (e.g. no matplotlib)
    leaves the JSON and markdown written and is recorded in the returned dict as an error string."""
    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, "results.json"), "markdown": os.path.join(folder, "results.md"),
             "speedup": os.path.join(folder, "speedup.png"), "roofline": os.path.join(folder, "roofline.png")}
    write_json(results, paths["json"])
    with open(paths["markdown"], "w") as f:
        f.write(markdown(results))
    for key, plot in (("speedup", plot_speedup), ("roofline", plot_roofline)):
        try:
            plot(results, paths[key])
        except ImportError as error:
            paths[key] = f"not written: {error}"
    return paths
