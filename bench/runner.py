"""Runs a suite: every selected workload x pass x backend, into result rows.

For each workload the inputs are made once and shared by all backends.  For each pass every backend's function is
compiled (timed) and run once (warm-up; its result is compared with the baseline's), then all backends are timed
together, runs interleaved (see :mod:`bench.timing`).  Anything a backend raises while building, compiling or running
becomes that backend's error row for the pass and the run goes on.  Rows carry the FLOPs and bytes of the pass (from
:mod:`bench.costs`), the achieved rates and fractions of the device's peaks (:mod:`bench.devices`), memory, and the
speedup relative to e3nn-jax (baseline median / this median: above 1 is faster than e3nn-jax) and the compile time
relative to e3nn-jax's (this compile / baseline compile: below 1 compiles faster; one compile each, lower + compile,
the first call not included, after every backend's forward has been traced once untimed).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from bench import allocator as allocator_module
from bench import backends as backends_module
from bench import costs, devices, timing
from bench.passes import PASSES, cotangent_like
from bench.workloads import Workload

DTYPES = ("float32", "float64")


@dataclasses.dataclass
class Settings:
    suite: str = "quick"
    dtype: str = "float32"
    repeats: int = 5
    seed: int = 0
    progress: bool = True
    passes: tuple = PASSES
    min_sample_s: Optional[float] = None  # per timed sample; None: 0 on CPU, MIN_SAMPLE_S_ACCELERATOR on GPU/TPU
    settle_s: Optional[float] = None  # untimed runs before each sample; None: timing.CPU_SETTLE_S on CPU, 0 on GPU/TPU
    measure_bandwidth: bool = False  # replace the datasheet bandwidth by a measured copy on an accelerator
    verbose: bool = False  # one stderr line per compile and per timed pass (to see where a time limit struck)
    # glibc keeps freed memory mapped: no page faults per call (bench.allocator; applied by run_suite, and by the CLI
    # before JAX starts, which covers JAX's own threads too)
    keep_freed_memory: bool = False


MIN_SAMPLE_S_ACCELERATOR = 2e-3


def error_text(error: BaseException) -> str:
    """One line naming the exception, short enough for a table cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def environment(settings: Settings, peaks: Optional[devices.DevicePeaks]) -> dict:
    """Machine, device, versions and settings for results.json."""
    versions = {"jax": jax.__version__}
    for module in ("jaxlib", "e3nn_fast", "e3nn_jax", "cuequivariance_jax", "haiku", "flax"):
        try:
            versions[module] = str(getattr(__import__(module), "__version__", "?"))
        except ImportError:
            versions[module] = None
    from e3nn_fast.kernels import tuning

    return {
        "kernel_knobs": tuning.current(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": devices.machine_description(),
        "device": devices.device_description(),
        "peaks": None if peaks is None else dataclasses.asdict(peaks),
        "versions": versions,
        "settings": dataclasses.asdict(settings),
    }


class _Progress:
    """A tqdm bar when asked for and installed, else nothing."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="pass", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, text: str, done: bool):
        if self.bar is not None:
            self.bar.set_description(text)
            if done:
                self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _rates(row: dict, cost: Optional[costs.Cost], pass_name: str, peaks, dtype: str) -> None:
    """Add FLOPs, bytes, achieved rates and fractions of peak to an ok row."""
    if cost is None:
        return
    flops, nbytes = cost.for_pass(pass_name)
    seconds = row["median_ms"] / 1e3
    row.update({"flops": flops, "bytes": nbytes, "intensity": flops / nbytes if nbytes else None,
                "gflops_per_s": flops / seconds / 1e9, "gbytes_per_s": nbytes / seconds / 1e9})
    if peaks is not None:
        row["floor_ms"] = 1e3 * nbytes / peaks.bandwidth  # the time of the counted bytes at peak bandwidth
        row["fraction_peak_flops"] = costs.fraction(flops / seconds, peaks.peak_flops(dtype))
        row["fraction_peak_bandwidth"] = costs.fraction(nbytes / seconds, peaks.bandwidth)


def _say(settings: Settings, text: str) -> None:
    if settings.verbose:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _run_pass(workload, pass_name, forwards, inputs, args, settings, cost, peaks) -> list[dict]:
    """Rows of one pass of one workload for every backend that built a forward."""
    base = {"workload": workload.name, "group": workload.group, "pass": pass_name,
            "size": workload.size(settings.suite), "unit": workload.unit, "dtype": settings.dtype}
    rows, compiled, outputs = {}, {}, {}
    for name, (backend, forward) in forwards.items():
        row = rows[name] = dict(base, backend=name, status="ok")
        try:
            function = workload.passes(forward, inputs)[pass_name]
            _say(settings, f"{workload.name} {pass_name} {name}: compiling")
            cpu_start = time.process_time()  # CPU seconds of this process: less sensitive than wall time to load
            compiled[name] = timing.compile_function(function, args, backend.context)
            compile_cpu_s = time.process_time() - cpu_start
            _say(settings, f"{workload.name} {pass_name} {name}: compiled in {compiled[name].compile_s:.1f} s")
            outputs[name] = timing.run_once(compiled[name], args)
            row["compile_s"] = compiled[name].compile_s
            row["compile_cpu_s"] = compile_cpu_s
            row["memory"] = compiled[name].memory
            row["executable_bytes"] = timing.executable_bytes(compiled[name].memory)
            row["peak_memory_bytes"] = devices.peak_memory_bytes()
        except Exception as error:  # noqa: BLE001 - a failing backend is an error row, not a crash
            compiled.pop(name, None)
            row.update(status="error", error=error_text(error))
    min_sample_s, settle_s = _sampling(settings)
    _say(settings, f"{workload.name} {pass_name}: timing {', '.join(compiled)}")
    for name, measured in timing.time_interleaved(compiled, args, settings.repeats, min_sample_s, settle_s).items():
        if isinstance(measured, BaseException):
            rows[name].update(status="error", error=error_text(measured))
            continue
        rows[name].update(timing.summarize(*measured), settle_s=settle_s)
        _rates(rows[name], cost, pass_name, peaks, settings.dtype)
        _published_floor(rows[name], workload, settings.suite, peaks)
    baseline = rows.get(backends_module.BASELINE)
    for name, row in rows.items():
        if baseline is not None and row.get("compile_s") and baseline.get("compile_s"):
            # seconds of lower + compile relative to e3nn-jax's (below 1: compiles faster); kept even when the timed
            # runs later failed, since the compile itself was measured
            row["compile_ratio_vs_e3nn_jax"] = row["compile_s"] / baseline["compile_s"]
            if row.get("compile_cpu_s") and baseline.get("compile_cpu_s"):
                row["compile_cpu_ratio_vs_e3nn_jax"] = row["compile_cpu_s"] / baseline["compile_cpu_s"]
        if row["status"] != "ok":
            continue
        if baseline is not None and baseline["status"] == "ok":
            row["speedup_vs_e3nn_jax"] = baseline["median_ms"] / row["median_ms"]
        reference = _reference_for(name, rows, forwards)
        if reference is not None:
            row["compared_to"] = reference
            row["max_rel_diff"] = timing.max_relative_difference(outputs[name], outputs[reference])
    return list(rows.values())


def _sampling(settings: Settings) -> tuple[float, float]:
    """The seconds a timed sample lasts at least and the seconds of untimed runs before it: the settings, or this
    device's defaults (an accelerator queues calls for ``MIN_SAMPLE_S_ACCELERATOR`` and needs no settling; a CPU
    times one call after ``timing.CPU_SETTLE_S`` of untimed ones)."""
    accelerator = devices.is_accelerator()
    min_sample_s, settle_s = settings.min_sample_s, settings.settle_s
    if min_sample_s is None:
        min_sample_s = MIN_SAMPLE_S_ACCELERATOR if accelerator else 0.0
    if settle_s is None:
        settle_s = 0.0 if accelerator else timing.CPU_SETTLE_S
    return min_sample_s, settle_s


def _published_floor(row: dict, workload: Workload, suite: str, peaks) -> None:
    """Add the fraction of the workload's published floor (e.g. issue 6's 0.43 ms for MACE-large forward on an H100)
    that the row achieves, when this pass on this device has one."""
    floor = workload.published_floor
    if floor is None or peaks is None or peaks.name != floor.peaks_name or row["pass"] != floor.pass_name:
        return
    floor_ms = floor.floor_ms(workload.size(suite))
    row.update(published_floor_ms=floor_ms, fraction_published_floor=floor_ms / row["median_ms"],
               published_floor_source=floor.source)


def _reference_for(name: str, rows: dict, forwards: dict) -> Optional[str]:
    """The backend whose output ``name``'s is compared with: e3nn-jax when it ran, else the first backend that ran;
    only among backends of the same output layout (others lay their outputs out differently)."""
    layout = forwards[name][0].output_layout
    same = [n for n, r in rows.items() if r["status"] == "ok" and forwards[n][0].output_layout == layout]
    if backends_module.BASELINE in same:
        return backends_module.BASELINE
    return same[0] if same else None


def _forwards(workload: Workload, backends: list, available: dict, passes: tuple) -> tuple[dict, list[dict]]:
    """``{backend name: (backend, forward)}`` for the available backends with a builder for the workload, and the
    error rows of backends whose build raised."""
    forwards, errors = {}, []
    for backend in backends:
        if not available[backend.name]["available"] or backend.api not in workload.builders:
            continue
        try:
            with backend.context():
                forwards[backend.name] = (backend, workload.builders[backend.api](backend.load()))
        except Exception as error:  # noqa: BLE001
            for pass_name in passes:
                errors.append({"workload": workload.name, "group": workload.group, "pass": pass_name,
                               "backend": backend.name, "status": "error", "error": error_text(error)})
    return forwards, errors


def _cotangent(workload: Workload, forwards: dict, inputs, key, rows: list, passes: tuple):
    """A cotangent for the forward's output, traced with the first backend that can; backends that fail to trace
    are removed from ``forwards`` with error rows (they would fail every pass)."""
    for name, (backend, forward) in list(forwards.items()):
        try:
            with backend.context():
                return cotangent_like(forward, inputs, key)
        except Exception as error:  # noqa: BLE001
            del forwards[name]
            for pass_name in passes:
                rows.append({"workload": workload.name, "group": workload.group, "pass": pass_name,
                             "backend": name, "status": "error", "error": error_text(error)})
    return None


def _trace_each(forwards: dict, inputs) -> None:
    """Trace every backend's forward once, untimed (``jax.eval_shape``), so that each library's own caches (e.g.
    Clebsch-Gordan coefficients; e3nn_fast's are also filled by initialising a model's parameters) are filled before
    any compile is timed: the compile times then compare tracing and XLA compiling, not who ran first.  A backend
    that fails here fails again in its passes, where its error rows are made."""
    for backend, forward in forwards.values():
        try:
            with backend.context():
                jax.eval_shape(forward, *inputs.arrays)
        except Exception:  # noqa: BLE001
            pass


def run_suite(workloads: list[Workload], backends: list, settings: Settings,
              on_row: Optional[Callable[[dict], None]] = None) -> dict:
    """Measure ``workloads`` x passes x ``backends``; the whole results document (see :mod:`bench.report`).

    ``on_row`` is called with every row as soon as its pass is measured (to stream rows to a file, so that a crash
    or a time limit loses only the pass in flight)."""
    if settings.dtype not in DTYPES:
        raise ValueError(f"dtype {settings.dtype!r} is not one of {DTYPES}")
    unknown = [p for p in settings.passes if p not in PASSES]
    if unknown or not settings.passes:
        raise ValueError(f"passes {list(settings.passes)} must be a non-empty subset of {PASSES}")
    if settings.repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {settings.repeats}")
    if settings.settle_s is not None and settings.settle_s < 0:
        raise ValueError(f"settle_s must be 0 or more seconds, got {settings.settle_s}")
    allocator = allocator_module.keep_freed_memory() if settings.keep_freed_memory else "default"
    if settings.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(settings.dtype)
    started = time.perf_counter()
    peaks = devices.device_peaks(measure_bandwidth=settings.measure_bandwidth)
    available = {}
    for backend in backends:
        ok, text = backend.availability()
        available[backend.name] = {"available": ok, ("version" if ok else "reason"): text, "api": backend.api,
                                   "description": backend.description}
    results = {"environment": dict(environment(settings, peaks), allocator=allocator), "backends": available,
               "skipped_workloads": {}, "workloads": {}, "rows": _StreamedRows(on_row)}
    progress = _Progress(len(workloads) * len(settings.passes), settings.progress)
    try:
        for index, workload in enumerate(workloads):
            size = workload.size(settings.suite)
            results["workloads"][workload.name] = {"group": workload.group, "summary": workload.summary,
                                                   "size": size, "unit": workload.unit}
            if workload.details is not None:
                results["workloads"][workload.name].update(workload.details(size))
            reason = workload.unavailable()
            forwards = {}
            if reason is None:
                try:
                    inputs = workload.make_inputs(size, dtype, jax.random.PRNGKey(settings.seed + index))
                    forwards, error_rows = _forwards(workload, backends, available, settings.passes)
                    results["rows"].extend(error_rows)
                except Exception as error:  # noqa: BLE001 - e.g. an unreadable data file
                    reason = f"inputs failed: {error_text(error)}"
            if reason is not None:
                results["skipped_workloads"][workload.name] = reason
            if not forwards:
                for _ in settings.passes:
                    progress.step(f"{workload.name}: skipped", done=True)
                continue
            cotangent = _cotangent(workload, forwards, inputs, jax.random.PRNGKey(settings.seed + 1000 + index),
                                   results["rows"], settings.passes)
            if cotangent is None:  # every backend failed to trace the forward: their error rows are recorded
                for _ in settings.passes:
                    progress.step(f"{workload.name}: failed", done=True)
                continue
            _trace_each(forwards, inputs)
            args = (*inputs.arrays, cotangent)
            cost = workload.cost(size, dtype.itemsize) if workload.cost is not None else None
            for pass_name in settings.passes:
                progress.step(f"{workload.name} {pass_name}", done=False)
                rows = _run_pass(workload, pass_name, forwards, inputs, args, settings, cost, peaks)
                if "data" in results["workloads"][workload.name]:  # which data a model workload ran on
                    for row in rows:
                        row["data"] = results["workloads"][workload.name]["data"]
                results["rows"].extend(rows)
                progress.step(f"{workload.name} {pass_name}", done=True)
    finally:
        progress.close()
    results["environment"]["wall_s"] = time.perf_counter() - started
    results["rows"] = list(results["rows"])
    return results


class _StreamedRows(list):
    """The results' row list, handing each row to ``on_row`` as it is added."""

    def __init__(self, on_row: Optional[Callable[[dict], None]]):
        super().__init__()
        self._on_row = on_row

    def append(self, row: dict) -> None:
        super().append(row)
        if self._on_row is not None:
            self._on_row(row)

    def extend(self, rows) -> None:
        for row in rows:
            self.append(row)
