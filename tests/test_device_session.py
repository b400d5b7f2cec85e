"""The GPU session script (``python -m bench.device``) rehearsed on this CPU: interpret mode, tiny sizes, peers used
where installed.  The quick test runs the parts that exercise every mechanism (environment, a timing part, a sweep
setting with its knobs recorded, the per-part time limit); the slow one runs the whole session."""

import json
import os
import subprocess
import sys

import pytest

from bench import device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *extra, budget=600):
    command = [sys.executable, "-m", "bench.device", "--out", str(out), "--tiny", "--budget", str(budget), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget + 120)


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_rehearsal_streams_rows_and_records_knobs(tmp_path):
    process = _run(tmp_path, "--parts", "env", "mp", "sweep: mp old shape")
    assert process.returncode == 0, process.stdout + process.stderr
    assert "jax " in (tmp_path / "env.txt").read_text()
    rows = _lines(tmp_path / "timings.jsonl")
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd", "forces"}
    assert {"e3nn_fast:fused-jnp"} <= {r["backend"] for r in rows}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["workload"] == "mp-mace-large" and row["median_ms"] > 0 and row["executable_bytes"] > 0
    sweep = _lines(tmp_path / "sweep.jsonl") if (tmp_path / "sweep.jsonl").exists() else []
    # on a CPU the kernel backends are unavailable (interpret mode is never timed): the sweep runs but writes nothing
    assert all(r["kernel_knobs"] == {"message_passing.target_programs": 1} for r in sweep)
    summary = (tmp_path / "summary.md").read_text()
    assert "| mp-mace-large | 64 | forces |" in summary
    assert '"part": "sweep: mp old shape", "status": "ok"' in summary
    assert len(os.listdir(tmp_path)) <= 8  # the device tool brings back at most 8 files


def test_every_sweep_setting_is_a_valid_knob_string_and_each_family_has_its_default_and_old_shape():
    from e3nn_fast.kernels import tuning

    tags = [tag for tag, _, _, _ in device.SWEEP]
    assert len(set(tags)) == len(tags)
    for tag, knobs, workloads, _ in device.SWEEP:
        assert workloads and (knobs == "" or tuning.parse(knobs)), tag
    for family in ("mp", "fc", "tp"):  # the GPU session times the shapes before issue 14 against the new ones
        assert {f"{family} default", f"{family} old shape"} <= set(tags)


def test_a_part_past_its_limit_is_stopped_and_the_next_runs(tmp_path, monkeypatch):
    slow = device.Part("slow", 2.0, lambda s: [sys.executable, "-c", "import time; time.sleep(30)"])
    quick = device.Part("quick", 20.0, lambda s: [sys.executable, "-c", "print('done')"])
    monkeypatch.setattr(device, "parts", lambda: [slow, quick])
    outcomes = device.run_session(device.SessionSettings(str(tmp_path), True, 1), 60, log=lambda *a: None)
    assert outcomes[0]["status"].startswith("timed out") and outcomes[0]["seconds"] < 10
    assert outcomes[1]["status"] == "ok"
    assert "done" in (tmp_path / "log.txt").read_text()


def test_budget_spent_skips_the_rest(tmp_path, monkeypatch):
    quick = device.Part("quick", 20.0, lambda s: [sys.executable, "-c", "pass"])
    monkeypatch.setattr(device, "parts", lambda: [quick, quick])
    outcomes = device.run_session(device.SessionSettings(str(tmp_path), True, 1), 10, log=lambda *a: None)
    assert [o["status"] for o in outcomes] == ["skipped: budget spent"] * 2


def test_summary_tables_from_rows():
    rows = [
        {"workload": "w", "size": 10, "pass": "fwd", "backend": "e3nn-jax", "status": "ok", "median_ms": 4.0,
         "executable_bytes": 8 * 2**20},
        {"workload": "w", "size": 10, "pass": "fwd", "backend": "cuequivariance", "status": "ok", "median_ms": 2.0},
        {"workload": "w", "size": 10, "pass": "fwd", "backend": "e3nn_fast:fused-pallas", "status": "ok",
         "median_ms": 1.0, "floor_ms": 0.5, "executable_bytes": 2**20},
        {"workload": "w", "size": 10, "pass": "fwd", "backend": "e3nn_fast:fused-jnp", "status": "error",
         "error": "boom"},
    ]
    table = device.timings_summary(rows)
    assert "| w | 10 | fwd | 1 (4.00×, cue 2.00×) | error | 4 (1.00×, cue 0.50×) | 2 (2.00×) | 0.5 | 50% | 1 / 8 |" \
        in table
    assert "error: w fwd e3nn_fast:fused-jnp: boom" in table
    checks = [{"case": "c", "family": "f", "ok": True}, {"case": "d", "family": "g", "ok": False, "rel_error": 1.0}]
    assert "1 of 2 checks passed" in device.numerics_summary(checks)


@pytest.mark.slow
def test_whole_session_rehearsal(tmp_path):
    process = _run(tmp_path, budget=1500)
    assert process.returncode == 0, process.stdout + process.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "timed out" not in summary and "failed" not in summary, summary
    assert all(r.get("ok") for r in _lines(tmp_path / "numerics.jsonl") if "case" in r)
