"""The benchmark harness (``python -m bench``) on CPU with the tiny suite: it runs end to end, writes valid JSON, a
markdown table and PNGs, reports a missing optional backend cleanly, turns a failing backend into error rows, runs
the molecule workload on generated EMT data when the rMD17 file is absent (skips it when a named file is absent),
and reports compile times against e3nn-jax's."""

import json
import os
import sys
import types

import jax.numpy as jnp
import pytest

import e3nn_fast
from bench import backends, costs, devices, model, report, runner, timing, workloads
from bench.__main__ import main
from bench.passes import PASSES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny(workload_names, backend_names, passes=PASSES, repeats=2):
    settings = runner.Settings(suite="tiny", repeats=repeats, progress=False, passes=passes)
    return runner.run_suite(workloads.select(workload_names), backends.select(backend_names), settings)


def test_cli_tiny_suite_writes_json_markdown_and_pngs(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["--suite", "tiny", "--workloads", "high-l5", "--backends", "e3nn_fast:jnp", "e3nn-jax",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    with open(out / "results.json") as f:
        results = json.load(f)  # valid JSON (NaN would fail: allow_nan=False when writing)
    assert results["environment"]["versions"]["e3nn_fast"] == e3nn_fast.__version__
    assert results["environment"]["device"]["platform"] == "cpu"
    assert results["environment"]["peaks"]["source"] == "measured"
    rows = results["rows"]
    assert {(r["workload"], r["pass"], r["backend"]) for r in rows} == {
        (w, p, b) for w in ("high-l5",) for p in PASSES for b in ("e3nn_fast:jnp", "e3nn-jax")}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["compile_s"] > 0 and len(row["times_ms"]) == 2
        assert row["memory"]["output_bytes"] > 0  # compiled memory_analysis on CPU
        assert row["flops"] > 0 and row["bytes"] > 0 and row["fraction_peak_flops"] > 0
        assert row["max_rel_diff"] < 1e-4  # e3nn_fast agrees with e3nn-jax on every pass
        assert row["speedup_vs_e3nn_jax"] > 0
        assert row["compile_ratio_vs_e3nn_jax"] > 0
        assert row["settle_s"] == timing.CPU_SETTLE_S  # the CPU default: untimed runs before every sample
    baseline = [r for r in rows if r["backend"] == "e3nn-jax"]
    assert all(r["speedup_vs_e3nn_jax"] == 1.0 for r in baseline)
    text = (out / "results.md").read_text()
    assert "| workload | size | pass | e3nn_fast:jnp | e3nn-jax |" in text
    assert "median of 2 runs, each after 150 ms of untimed runs" in text
    assert "| high-l5 | 8 edges | forces |" in text
    assert "| workload | size | pass | e3nn_fast:jnp s | e3nn-jax s |" in text  # the compile-time table
    for name in ("speedup.png", "roofline.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert "| high-l5 | 8 edges | fwd |" in capsys.readouterr().out


def test_missing_optional_backend_is_reported_not_run(monkeypatch):
    missing = backends.Backend("not-installed", "e3nn", lambda: __import__("no_such_module_for_the_bench"))
    monkeypatch.setitem(backends.BACKENDS, missing.name, missing)
    results = _tiny(["sh-l3"], ["e3nn_fast:reference", "not-installed"], passes=("fwd",))
    assert results["backends"]["not-installed"]["available"] is False
    assert "not importable" in results["backends"]["not-installed"]["reason"]
    assert {r["backend"] for r in results["rows"]} == {"e3nn_fast:reference"}
    assert all(r["status"] == "ok" for r in results["rows"])
    # no e3nn-jax in this run: outputs are compared with the first backend and no ratio is claimed
    assert all("speedup_vs_e3nn_jax" not in r and r["compared_to"] == "e3nn_fast:reference" for r in results["rows"])
    assert "backend not-installed not run: not importable" in report.markdown(results)


def test_failing_backend_becomes_error_rows(monkeypatch, tmp_path):
    def broken_spherical_harmonics(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    broken_lib = types.SimpleNamespace(**{n: getattr(e3nn_fast, n) for n in ("IrrepsArray", "tensor_product")},
                                       spherical_harmonics=broken_spherical_harmonics)
    broken = backends.Backend("broken", "e3nn", lambda: broken_lib)
    monkeypatch.setitem(backends.BACKENDS, broken.name, broken)
    results = _tiny(["sh-l3", "high-l5"], ["e3nn_fast:jnp", "broken"], passes=("fwd", "forces"))
    by_backend = {}
    for row in results["rows"]:
        by_backend.setdefault(row["backend"], []).append(row)
    assert all(r["status"] == "ok" for r in by_backend["e3nn_fast:jnp"])
    errors = [r for r in by_backend["broken"] if r["status"] == "error"]
    assert {(r["workload"], r["pass"]) for r in errors} == {("sh-l3", "fwd"), ("sh-l3", "forces")}
    assert all("RuntimeError: kernel exploded" in r["error"] for r in errors)
    # the broken backend still ran the workload it did not break
    assert all(r["status"] == "ok" for r in by_backend["broken"] if r["workload"] == "high-l5")
    paths = report.write_all(results, str(tmp_path))
    assert "## Errors" in open(paths["markdown"]).read()
    assert json.load(open(paths["json"]))["rows"]


def test_molecule_workload_skipped_when_a_named_file_is_absent(monkeypatch):
    monkeypatch.setenv("E3NN_FAST_BENCH_MOLECULE", os.path.join("no", "such", "aspirin.xyz"))
    results = _tiny(["nequip-train"], ["e3nn_fast:jnp"], passes=("fwd",))
    assert "not found" in results["skipped_workloads"]["nequip-train"]
    assert results["rows"] == []
    assert "workload nequip-train skipped" in report.markdown(results)


def test_molecule_workload_falls_back_to_generated_emt_data(monkeypatch):
    """A fresh clone (no ../shared/data): the training step runs on EMT copper generated offline by the training
    example's generator, says so in every row and in results.md, and reports its compile time against e3nn-jax."""
    monkeypatch.delenv("E3NN_FAST_BENCH_MOLECULE", raising=False)
    monkeypatch.setattr(model, "DATA_FILE", os.path.join("no", "such", "rmd17.xyz"))
    data = model.dataset()
    assert data.file is None and data.cutoff == model.EMT_CUTOFF and "EMT copper" in data.description
    assert model.species_table() == (29,)
    graph = model.load_graph(1, jnp.float32)
    assert graph["positions"].shape == (32, 3) and graph["species"].tolist() == [0] * 32
    vectors = graph["positions"][graph["receivers"]] - graph["positions"][graph["senders"]] + graph["shifts"]
    lengths = jnp.linalg.norm(vectors, axis=1)
    assert float(lengths.max()) < model.EMT_CUTOFF and float(lengths.min()) > 1.5  # periodic images, no self-pairs
    assert bool(jnp.any(graph["shifts"] != 0))  # a 7.2 Å cell with a 4 Å cutoff has edges to periodic images
    assert float(jnp.abs(graph["forces"]).max()) > 0  # EMT labels, not zeros

    results = _tiny(["nequip-train"], ["e3nn_fast:jnp", "e3nn-jax"], passes=("fwd+bwd",), repeats=1)
    assert results["skipped_workloads"] == {}
    assert results["workloads"]["nequip-train"]["data"] == data.description
    rows = {r["backend"]: r for r in results["rows"]}
    assert set(rows) == {"e3nn_fast:jnp", "e3nn-jax"}
    for row in rows.values():
        assert row["status"] == "ok" and row["data"] == data.description
        assert row["max_rel_diff"] < 1e-4  # energy and forces agree with e3nn-jax on the generated graph
    ours, theirs = rows["e3nn_fast:jnp"], rows["e3nn-jax"]
    assert ours["compile_ratio_vs_e3nn_jax"] == pytest.approx(ours["compile_s"] / theirs["compile_s"])
    assert ours["compile_cpu_ratio_vs_e3nn_jax"] == pytest.approx(ours["compile_cpu_s"] / theirs["compile_cpu_s"])
    assert ours["compile_cpu_s"] > 0 and theirs["compile_cpu_s"] > 0
    assert theirs["compile_ratio_vs_e3nn_jax"] == 1.0
    text = report.markdown(results)
    assert f"- workload nequip-train data: {data.description}" in text
    assert "## Compile time" in text
    assert "- nequip-train fwd+bwd (energy + forces) compile: e3nn_fast:jnp " in text and "goal ≤ 0.5×" in text


def _compile_row(workload, pass_name, backend, compile_s, ratio):
    return {"workload": workload, "group": "model" if workload == "nequip-train" else "convolution",
            "pass": pass_name, "backend": backend, "status": "ok", "median_ms": 1.0, "compile_s": compile_s,
            "compile_ratio_vs_e3nn_jax": ratio}


def test_compile_time_report_lines_and_table():
    results = {
        "environment": {"settings": {"passes": ["fwd", "fwd+bwd"]}},
        "backends": {"e3nn_fast:jnp": {}, "e3nn-jax": {}},
        "workloads": {"nequip-train": {"group": "model", "size": 2, "unit": "frames"},
                      "high-l5": {"group": "convolution", "size": 8, "unit": "edges"}},
        "skipped_workloads": {},
        "rows": [_compile_row("nequip-train", "fwd", "e3nn_fast:jnp", 1.0, 0.5),
                 _compile_row("nequip-train", "fwd", "e3nn-jax", 2.0, 1.0),
                 _compile_row("nequip-train", "fwd+bwd", "e3nn_fast:jnp", 3.0, 0.75),
                 _compile_row("nequip-train", "fwd+bwd", "e3nn-jax", 4.0, 1.0),
                 _compile_row("high-l5", "fwd", "e3nn_fast:jnp", 0.5, 0.25),
                 _compile_row("high-l5", "fwd", "e3nn-jax", 2.0, 1.0)],
    }
    results["rows"][2]["compile_cpu_ratio_vs_e3nn_jax"] = 0.6
    lines = report.compile_lines(results)
    assert lines[0] == "- nequip-train fwd (energy) compile: e3nn_fast:jnp 1 s (0.50×); e3nn-jax 2 s"
    assert lines[1] == ("- nequip-train fwd+bwd (energy + forces) compile: e3nn_fast:jnp 3 s "
                        "(0.75×; CPU time 0.60×); e3nn-jax 4 s; goal ≤ 0.5× e3nn-jax: not met")
    # geometric mean of 0.5, 0.75 and 0.25 over every e3nn_fast pass, the baseline left out
    assert lines[2] == ("- geometric mean of compile time / e3nn-jax's over every pass run: e3nn_fast:jnp "
                        f"{(0.5 * 0.75 * 0.25) ** (1 / 3):.2f}× (3 passes)")
    results["rows"][2]["compile_ratio_vs_e3nn_jax"] = 0.5
    assert report.compile_lines(results)[1].endswith("goal ≤ 0.5× e3nn-jax: met by e3nn_fast:jnp")
    table = report.compile_table(results)
    assert "| workload | size | pass | e3nn_fast:jnp s | e3nn-jax s |" in table
    assert "| high-l5 | 8 edges | fwd | 0.5 (0.25×) | 2 (1.00×) |" in table


def test_costs_follow_the_path_description():
    description = workloads.channelwise_description("128x5e", "1x3e", "5e")
    cost = costs.tensor_product_cost(description, 10, 4, channel_scale=True)
    assert cost.flops == 10 * (description.flops_per_sample() + 128 * 11)
    assert cost.input_bytes == 10 * 4 * (128 * 11 + 7 + 128)  # x1, x2 and one weight per output channel
    assert cost.output_bytes == 10 * 4 * 128 * 11
    assert cost.for_pass("fwd+bwd")[0] == 3 * cost.flops
    assert costs.spherical_harmonics_flops(3) > costs.spherical_harmonics_flops(2)


class _FakeClock:
    """``time.perf_counter`` of a fake clock that only the stand-in functions below advance."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _counting_function(clock, seconds_per_call):
    """A compiled-function stand-in that takes ``seconds_per_call`` of ``clock`` per call and counts its calls."""
    calls = []

    def run(*args):
        calls.append(args)
        clock.now += seconds_per_call
        return jnp.zeros(())

    return timing.Compiled(run, 0.0, {}), calls


def test_each_sample_follows_untimed_runs_for_the_settle_time(monkeypatch):
    # A run after another backend's overlaps the release of its memory on XLA's CPU runtime; the settle time
    # keeps such runs out of the samples (timing.CPU_SETTLE_S).  Durations are powers of two: exact sums.
    clock = _FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    fast, fast_calls = _counting_function(clock, 2.0**-9)
    slow, slow_calls = _counting_function(clock, 2.0**-5)
    measured = timing.time_interleaved({"fast": fast, "slow": slow}, (), repeats=3, settle_s=2.0**-4)
    assert measured["fast"][0] == [2.0**-9] * 3 and measured["slow"][0] == [2.0**-5] * 3
    # two calibration calls, then per sample 32 untimed runs (2**-4 s of them) and the timed one
    assert len(fast_calls) == 2 + 3 * (32 + 1)
    # a longer run settles in fewer: the run that reaches the settle time is still untimed
    assert len(slow_calls) == 2 + 3 * (2 + 1)
    plain, plain_calls = _counting_function(clock, 2.0**-9)
    timing.time_interleaved({"plain": plain}, (), repeats=4)  # settle_s 0: no untimed runs
    assert len(plain_calls) == 2 + 4
    with pytest.raises(ValueError, match="settle_s must be 0 or more"):
        timing.time_interleaved({"plain": plain}, (), repeats=1, settle_s=-1.0)
    with pytest.raises(ValueError, match="settle_s must be 0 or more"):
        runner.run_suite([], [], runner.Settings(settle_s=-0.1))


def test_each_sample_counts_the_page_faults_of_its_calls(monkeypatch):
    """Page faults per call are counted per sample, their median summarised, and shown in the time/memory table from
    report.PAGE_FAULTS_SHOWN on (a call that maps a large allocation afresh faults once per page of it)."""
    clock = _FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    counter = {"faults": 0}
    monkeypatch.setattr(timing, "minor_page_faults", lambda: counter["faults"])
    compiled, _ = _counting_function(clock, 2.0**-9)
    faulting_run = compiled.run

    def run(*args):  # 10,369 fresh pages per call, as tp-16's 40.5 MiB of temporaries on glibc
        counter["faults"] += 10_369
        return faulting_run(*args)

    faulting = timing.Compiled(run, 0.0, {})
    # samples of 4 calls (2**-7 s): the count is per call
    seconds, calls, faults = timing.time_interleaved({"f": faulting}, (), repeats=3, min_sample_s=2.0**-7)["f"]
    assert seconds == [2.0**-9] * 3 and calls == 4 and faults == [10_369] * 3
    summary = timing.summarize(seconds, calls, faults)
    assert summary["page_faults_per_call"] == 10_369
    assert timing.summarize(seconds, calls, None)["page_faults_per_call"] is None  # not counted on this platform

    def results_with(faults_per_call):
        row = {"workload": "tp-16", "pass": "fwd+bwd", "backend": "e3nn_fast:jnp", "status": "ok",
               "median_ms": 35.0, "memory": {"temp_bytes": 40.5 * 2**20}, "page_faults_per_call": faults_per_call}
        return {"rows": [row], "backends": ["e3nn_fast:jnp"], "workloads": {"tp-16": {"size": 4096, "unit": "samples"}},
                "skipped_workloads": {}, "environment": {"settings": {"passes": ["fwd+bwd"]}}}

    assert "/ 10369 faults" in report.time_memory_table(results_with(10_369.0))
    assert "faults" not in report.time_memory_table(results_with(report.PAGE_FAULTS_SHOWN - 1.0))
    assert "faults" not in report.time_memory_table(results_with(None))
    assert "| 10369 |" in report.detail_table(results_with(10_369.0))
    monkeypatch.undo()
    assert timing.minor_page_faults() is None or timing.minor_page_faults() >= 0


def test_selection_rejects_unknown_names():
    assert [w.name for w in workloads.select(["sh-l*"])] == ["sh-l3", "sh-l8"]
    with pytest.raises(ValueError, match="no workload matches"):
        workloads.select(["nope"])
    with pytest.raises(ValueError, match="no backend matches"):
        backends.select(["nope"])
    with pytest.raises(ValueError, match="dtype"):
        runner.run_suite([], [], runner.Settings(dtype="int8"))
    with pytest.raises(ValueError, match="passes"):
        runner.run_suite([], [], runner.Settings(passes=("backward",)))
    assert main(["--workloads", "nope"]) == 2


CPU_PEAKS = devices.DevicePeaks("test CPU", {"float32": 50e9, "float64": 25e9}, 10e9, "measured")


def test_fused_workloads_compare_with_e3nn_jax_and_report_memory_and_floors(monkeypatch):
    monkeypatch.setattr(devices, "device_peaks", lambda **_: CPU_PEAKS)  # fixed peaks: no probe, a known floor
    # forward only: the fused ops' gradient graphs take long to compile (the CLI's default runs all passes)
    results = _tiny(["mp-mace-medium", "sc-mace"], ["e3nn_fast:fused-jnp", "e3nn-jax"], passes=("fwd",))
    rows = {(r["workload"], r["backend"]): r for r in results["rows"]}
    assert set(rows) == {(w, b) for w in ("mp-mace-medium", "sc-mace") for b in ("e3nn_fast:fused-jnp", "e3nn-jax")}
    for (workload, backend), row in rows.items():
        assert row["status"] == "ok", row
        assert row["memory"]["temp_bytes"] >= 0 and row["memory"]["output_bytes"] > 0
        assert row["bytes"] > 0 and row["floor_ms"] == pytest.approx(1e3 * row["bytes"] / CPU_PEAKS.bandwidth)
        assert "fraction_published_floor" not in row  # issue 6's 0.43 ms floor is for an H100, not this CPU
    for workload in ("mp-mace-medium", "sc-mace"):
        fused = rows[(workload, "e3nn_fast:fused-jnp")]
        # the fused op's output is laid out as e3nn-jax's, so it is checked against the baseline
        assert fused["compared_to"] == "e3nn-jax" and fused["max_rel_diff"] < 1e-4
    info = results["workloads"]["mp-mace-medium"]
    assert info["edges"] == 64 and info["nodes"] == round(64 / 17.5)
    assert results["workloads"]["sc-mace"]["species"] == 10
    text = report.markdown(results)
    assert "## Time and memory" in text and "## Memory-bound floors" in text
    assert "- mp-mace-medium fwd: floor" in text


def test_published_floor_scales_with_the_size_and_applies_on_an_h100_only():
    workload = workloads.WORKLOADS["mp-mace-large"]
    floor = workload.published_floor
    assert floor.peaks_name == "NVIDIA H100 SXM" and floor.floor_ms(160_000) == 0.43
    assert abs(floor.floor_ms(80_000) - 0.215) < 1e-12
    h100 = devices.table_peaks("NVIDIA H100 80GB HBM3")
    row = {"pass": "fwd", "median_ms": 0.86}
    runner._published_floor(row, workload, "full", h100)
    assert row["fraction_published_floor"] == pytest.approx(0.5) and row["published_floor_ms"] == 0.43
    for pass_name, peaks in (("fwd+bwd", h100), ("fwd", devices.table_peaks("A100")), ("fwd", CPU_PEAKS)):
        row = {"pass": pass_name, "median_ms": 1.0}
        runner._published_floor(row, workload, "full", peaks)
        assert "fraction_published_floor" not in row
    description = workloads.channelwise_description("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")
    cost = workloads.WORKLOADS["mp-mace-large"].cost(160_000, 4)
    # ~9 KB per edge: the fp32 weights (one per output channel), harmonics and two int32 indices
    assert cost.input_bytes > 160_000 * 4 * description.irreps_out.num_irreps
    assert abs(cost.input_bytes / 160_000 / 1e3 - 9) < 0.5


_FRESH_PAGES_SCRIPT = """
import ctypes, ctypes.util, resource, sys, threading
if sys.argv[1] == "keep":
    from bench.allocator import keep_freed_memory
    keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rounds(size):  # a buffer from malloc, written and freed, as an executable's temporaries are each call
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(faults[2:])
main = rounds(48 * 2**20)
worker = []  # another thread, as XLA's workers: its own arena, whose heaps hold at most 64 MiB
thread = threading.Thread(target=lambda: worker.append(rounds(80 * 2**20)))
thread.start()
thread.join()
print(main, worker[0])
"""


def _glibc() -> bool:
    """Whether this process's C library is glibc (whose allocator bench.allocator tunes)."""
    import ctypes

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def _fault_granularity() -> int:
    """Bytes one page fault maps in a fresh anonymous mapping: 4 KiB, or 2 MiB where the kernel backs every such
    mapping with transparent huge pages (``[always]``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as modes:
            return 2**21 if "[always]" in modes.read() else 2**12
    except OSError:
        return 2**12


@pytest.mark.skipif(not _glibc(), reason="glibc's allocator is what is measured")
def test_keeping_freed_memory_removes_the_page_faults_of_large_allocations():
    """With glibc's defaults a 48 MiB allocation is mapped afresh each time (a fault per 4 KiB page when filled), and
    so is an 80 MiB one from another thread (its arena's heaps hold 64 MiB); bench.allocator.keep_freed_memory serves
    both from memory kept mapped (a handful of faults)."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FRESH_PAGES_SCRIPT, mode], cwd=root, capture_output=True,
                             text=True, check=True, env=dict(os.environ, PYTHONPATH=root))
        return [int(n) for n in out.stdout.split()]

    page = _fault_granularity()
    main_thread, worker_thread = faults("default")
    # 48 MiB and 80 MiB in 4 KiB pages: 12,288 and 20,480 (the 2-core VM of 2026-12-07: 12,289 and 20,481)
    assert main_thread >= 0.97 * 48 * 2**20 / page and worker_thread >= 0.97 * 80 * 2**20 / page
    assert max(faults("keep")) < min(100, main_thread // 10)


def test_keep_freed_memory_is_recorded_and_refused_without_mallopt(monkeypatch):
    from bench import allocator

    class NoMallopt:  # a C library without glibc's mallopt
        pass

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: NoMallopt())
    with pytest.raises(RuntimeError, match="needs glibc's mallopt"):
        allocator.keep_freed_memory()
    with pytest.raises(RuntimeError, match="needs glibc's mallopt"):
        runner.run_suite([], [], runner.Settings(keep_freed_memory=True))
    assert main(["--workloads", "sh-l3", "--keep-freed-memory", "--no-progress", "--suite", "tiny"]) == 2
