"""The on-device numerics check (``bench/device_numerics.py``), run here on the CPU with the kernels in interpret mode.

The full tiny run happens once (module fixture, about a minute and a half on 2 cores); the other tests run one case
each, or nothing at all, to show the check catches what it is for: a kernel whose numbers are off, and an op that
silently ran the jnp path instead of a kernel.
"""

from __future__ import annotations

import json

import pytest

from bench import device_numerics
from e3nn_fast import dispatch

UNLIMITED = 1e9  # seconds: no budget cut


@pytest.fixture(scope="module")
def tiny_records():
    records = []
    ok = device_numerics.run(records.append, tiny=True, budget_s=UNLIMITED)
    return ok, records


def test_every_family_dtype_and_pass_checked_and_passing(tiny_records):
    ok, records = tiny_records
    failures = [(r.get("case"), r.get("dtype"), r.get("pass"), r.get("status"), r.get("rel_error"), r.get("error"))
                for r in records if not r.get("ok")]
    assert not failures, f"failing checks: {failures}"
    assert ok
    assert all("skipped" not in r for r in records)
    assert {r["family"] for r in records} == set(device_numerics.FAMILIES) == {
        "message_passing", "channelwise", "symmetric_contraction", "elementwise", "fully_connected", "linear"}
    assert all(r["kernel_used"] for r in records)
    assert all(r["executors"] == ["pallas-interpret"] for r in records)
    done = {(r["case"], r["dtype"], r["pass"]) for r in records}
    expected = {(case.name, dtype, pass_name) for dtype, passes in device_numerics.TIERS
                for case in device_numerics.CASES for pass_name in passes}
    assert done == expected and len(records) == len(expected)
    assert {dtype for _, dtype, _ in done} == {"float32", "float64", "bfloat16"}
    assert {p for _, d, p in done if d == "float32"} == {"fwd", "grad", "grad2"}
    assert {p for _, d, p in done if d == "float64"} == {"fwd", "grad"}
    assert {p for _, d, p in done if d == "bfloat16"} == {"fwd"}


def test_records_are_json_lines_with_the_documented_fields(tiny_records):
    _, records = tiny_records
    fields = {"part", "family", "case", "dtype", "pass", "rel_error", "tolerance", "ok", "kernel_used", "seconds",
              "error"}
    for record in records:
        assert fields <= set(record)
        assert record["part"] == "numerics" and record["error"] is None
        assert 0.0 <= record["rel_error"] <= record["tolerance"]
        assert json.loads(json.dumps(record)) == record
    # the order: float32 for every case first, the most important cases first within a tier
    assert [r["dtype"] for r in records[:3]] == ["float32"] * 3
    assert records[0]["case"] == "mp-conv"


def test_run_order_and_budget_skip_everything():
    records = []
    assert device_numerics.run(records.append, tiny=True, budget_s=-1.0) is True  # nothing executed, nothing failed
    assert len(records) == 1 and records[0]["part"] == "numerics"
    assert len(records[0]["skipped"]) == sum(len(p) for _, p in device_numerics.TIERS) * len(device_numerics.CASES)
    assert records[0]["skipped"][0] == "mp-conv/float32/fwd"


def test_wrong_kernel_is_caught(monkeypatch):
    """A kernel whose outputs are 1% off passes the dispatcher check but fails the numbers (float32 and float64)."""
    original = dispatch._EXECUTORS["tensor_product"]["pallas-interpret"]

    def off_by_one_percent(description, weights, chunks1, chunks2):
        return [None if o is None else o * 1.01 for o in original(description, weights, chunks1, chunks2)]

    monkeypatch.setitem(dispatch._EXECUTORS["tensor_product"], "pallas-interpret", off_by_one_percent)
    records = []
    assert device_numerics.run(records.append, tiny=True, budget_s=UNLIMITED, cases=["uvuv-sh"]) is False
    strict = [r for r in records if r["tolerance"] < 1e-2]  # bfloat16's 3e-2 cannot see a 1% error
    assert {(r["dtype"], r["pass"]) for r in strict} == {
        ("float32", "fwd"), ("float32", "grad"), ("float32", "grad2"), ("float64", "fwd"), ("float64", "grad")}
    for r in strict:
        assert r["ok"] is False and r["status"] == "inaccurate" and r["kernel_used"] is True
        assert r["rel_error"] > 5e-3


@pytest.mark.parametrize("how,case", [("choose", "uvu-conv"), ("qualifies", "mp-conv")])
def test_fallback_to_jnp_is_a_failure(monkeypatch, how, case):
    """Right numbers from the jnp executor are not a kernel check: every record fails with status "fallback"."""
    if how == "choose":  # the dispatcher answers "jnp" wherever a Pallas backend is forced
        original = dispatch.choose

        def to_jnp(op, **kwargs):
            if (kwargs.get("requested") or dispatch.current_backend()).startswith("pallas"):
                kwargs["requested"] = "jnp"
            return original(op, **kwargs)

        monkeypatch.setattr(dispatch, "choose", to_jnp)
    else:  # the kernels declare the configuration unsupported: the real fallback route of a forced backend
        from e3nn_fast.kernels import message_passing as kernel_module

        monkeypatch.setattr(kernel_module, "qualifies", lambda spec, dtype: False)
    records = []
    assert device_numerics.run(records.append, tiny=True, budget_s=UNLIMITED, cases=[case]) is False
    assert len(records) == 6
    for r in records:
        assert r["ok"] is False and r["kernel_used"] is False and r["status"] == "fallback"
        assert r["executors"] == ["jnp"]
        assert r["rel_error"] <= r["tolerance"]  # the numbers are right; the kernel did not run


def test_command_line_appends_json_lines(tmp_path, capsys):
    out = tmp_path / "numerics.jsonl"
    out.write_text('{"earlier": true}\n')
    assert device_numerics.main(["--out", str(out), "--tiny", "--budget", "-1"]) == 0  # budget spent at once
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"earlier": True} and "skipped" in lines[1]
    assert "PASS" in capsys.readouterr().out
