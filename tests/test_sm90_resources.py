"""Offline sm_90 (Hopper) resource check of every Pallas kernel (``python -m bench.sm90_resources``), on the CPU.

Every kernel of every family's forward, gradient and forces-style double backward, at the test suite's sizes, is
compiled for sm_90 with pip ``triton`` (its compiler and ptxas; no GPU) and must not spill registers nor use more
than 227 KiB of shared memory.  The MACE-large sizes run under ``-m slow``.

Without ``triton`` these tests fail (never skip) and say to install the test extras.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest

from bench import sm90_resources as sm90
from e3nn_fast.kernels import tuning
from pallas_lowering import require_pallas_lowering

# Known violations, each with what is known: strict, so that a fix shows up as an XPASS failure and the entry must
# then be removed.  (Empty since the fully connected family's tiling, issue 14 item 2.)
KNOWN_SPILLS: dict = {}
# Kernel families checked on their own at MACE-large sizes (slow): no spill, and programs for every SM.
SPILL_FREE_AT_MACE_LARGE = ("fully_connected", "linear")
# The channel-aligned families checked on their own at MACE-large sizes (slow): no spill, one launch per kernel (no
# loop of launches), and at least 4 programs per SM (issue 14).
ALIGNED_AT_MACE_LARGE = ("channelwise_uvuv", "channelwise_uvu", "elementwise")
TEST_CASES = [pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_SPILLS[name], strict=True))
              if name in KNOWN_SPILLS else name
              for name in sorted({case.name for case in sm90.cases_for("test")})]


def _require_triton() -> None:
    missing = sm90.triton_missing()
    if missing:
        pytest.fail(missing, pytrace=False)


@functools.lru_cache(maxsize=None)
def _rows(sizes: str) -> tuple:
    """Every row of ``sizes``, computed once per test process (kernels shared between cases compile once)."""
    return tuple(sm90.check(sizes))


def _assert_fits(rows) -> None:
    bad = [row for row in rows if row["violations"]]
    if bad:
        pytest.fail(f"{len(bad)} of {len(rows)} kernel rows over the sm_90 limits (spill > 0 B or shared memory > "
                    f"{sm90.MAX_SMEM} B, or not lowered/compiled):\n" + sm90.format_table(bad), pytrace=False)


@pytest.mark.parametrize("case_name", TEST_CASES)
def test_kernels_fit_sm90_at_test_sizes(case_name):
    """No kernel of the case's forward, gradient or double backward spills or exceeds Hopper's shared memory."""
    _require_triton()
    require_pallas_lowering("cuda")
    # This case's rows only: under pytest-xdist the cases of this test land on different workers, and a worker that
    # computed every case's rows for its first case repeated the other worker's compiles (150 s instead of ~75 s).
    rows = sm90.check("test", cases=[case_name])
    assert {row["pass"] for row in rows} == set(sm90.PASSES), f"passes missing for {case_name}"
    _assert_fits(rows)
    for row in rows:
        assert row["programs"] >= 1 and 0 < row["registers"] <= sm90.REGISTER_CAP and row["resident_per_sm"] >= 1


@pytest.mark.slow
def test_kernels_fit_sm90_at_mace_large_sizes():
    _require_triton()
    require_pallas_lowering("cuda")
    rows = _rows("mace-large")
    assert {(row["case"], row["pass"]) for row in rows} == {
        (case.name, p) for case in sm90.cases_for("mace-large") for p in sm90.PASSES}
    _assert_fits(rows)


@pytest.mark.parametrize("case_name", SPILL_FREE_AT_MACE_LARGE)
def test_fully_connected_family_fits_sm90_with_ieee_dots(case_name):
    """Under ``jax.default_matmul_precision("highest")`` the fully connected kernels' dots are IEEE float32 FMA
    loops (no tensor cores), which hold more registers per output: they must not spill either (test sizes)."""
    _require_triton()
    require_pallas_lowering("cuda")
    rows = sm90.check("test", cases=[case_name], precision="highest")
    assert {row["pass"] for row in rows} == set(sm90.PASSES) and {row["precision"] for row in rows} == {"highest"}
    _assert_fits(rows)


@pytest.mark.slow
@pytest.mark.parametrize("precision", [None, "highest"])
@pytest.mark.parametrize("case_name", SPILL_FREE_AT_MACE_LARGE)
def test_fully_connected_family_fits_sm90_at_mace_large_sizes(case_name, precision):
    """FCTP ``64x(0e+1o+2e) (x) 0e+1o+2e`` and Linear ``128x(0e+1o+2e)`` on 5,000 rows, TF32 and IEEE dots: no
    kernel of the forward, gradient or double backward spills, and every launch has at least 4 programs per SM
    (issue 14, items 2 and 3)."""
    _require_triton()
    require_pallas_lowering("cuda")
    rows = sm90.check("mace-large", cases=[case_name], precision=precision)
    assert {row["pass"] for row in rows} == set(sm90.PASSES)
    _assert_fits(rows)
    assert {row["family"] for row in rows} == {"fully_connected"}
    for row in rows:
        assert row["programs_per_sm"] >= 4 and row["resident_per_sm"] >= 1, sm90.format_table([row])


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ALIGNED_AT_MACE_LARGE)
def test_aligned_families_fit_sm90_at_mace_large_sizes(case_name):
    """``128x(0e+1o+2e) (x) 0e+1o+2e+3o`` on 160,000 rows (harmonics, and the legacy per-row-weight ``uvu`` under
    ``vmap``, folded into one launch) and ``128x(0e+1o+2e) (.) 128x(0e+1o+2e)`` on 5,000 rows: no kernel of the
    forward, gradient or double backward spills, none runs in a loop, every launch has >= 4 programs per SM."""
    _require_triton()
    require_pallas_lowering("cuda")
    rows = sm90.check("mace-large", cases=[case_name])
    assert {row["pass"] for row in rows} == set(sm90.PASSES)
    _assert_fits(rows)
    assert {row["family"] for row in rows} == {"aligned"}
    for row in rows:
        assert not row["in_loop"] and row["programs_per_sm"] >= 4, sm90.format_table([row])


@pytest.mark.slow
def test_message_passing_fits_sm90_at_mace_large_size():
    """``128x(0e+1o+2e) (x) 0e+1o+2e+3o``, 3,000 nodes / 160,000 edges (about 20 s): no kernel of the forward,
    gradient or double backward spills, and every launch, the node kernels (out, x1) included, has at least 4
    programs per SM (issue 14, item 3: they had 188 programs, 1.4 per SM, in 16-row blocks)."""
    _require_triton()
    require_pallas_lowering("cuda")
    rows = sm90.check("mace-large", cases=["message_passing"])
    assert {row["pass"] for row in rows} == set(sm90.PASSES)
    _assert_fits(rows)
    assert {row["kernel"] for row in rows} >= {"e3nn_message_passing_out", "e3nn_message_passing_x1"}
    for row in rows:
        assert not row["in_loop"] and row["programs_per_sm"] >= 4, sm90.format_table([row])


def test_message_passing_edge_tiles_fit_sm90_at_test_size():
    """``message_passing.edge_tile=4``: the tiled node kernels (out, x1) of the forward, gradient and double backward
    compile without spills, and the rows record the knob."""
    _require_triton()
    require_pallas_lowering("cuda")
    with tuning.override(message_passing__edge_tile=4):
        rows = sm90.check("test", cases=["message_passing"])
    assert {row["pass"] for row in rows} == set(sm90.PASSES)
    assert {row["kernel"] for row in rows} >= {"e3nn_message_passing_out", "e3nn_message_passing_x1"}
    _assert_fits(rows)
    assert {row["family_knobs"]["message_passing.edge_tile"] for row in rows} == {4}


# Edge tiles at MACE-large size (per tile sums over (T, width) blocks): tiles of 4 over every channel spilled in the
# forward kernel (6.5 KB) and the x-gradient (416 B); these shapes compile without (bench/results/sm90/
# 2026-12-05-message-passing-edge-tiles.txt), T = 4 and 8 alone now with the channels EDGE_TILE_LANES leaves them.
EDGE_TILES_AT_MACE_LARGE = [
    {"message_passing__edge_tile": 2},
    {"message_passing__edge_tile": 4},
    {"message_passing__edge_tile": 8},
    {"message_passing__edge_tile": 4, "message_passing__channel_block": 32},
    {"message_passing__edge_tile": 4, "message_passing__channel_block": 64, "message_passing__num_warps": 8},
]


@pytest.mark.slow
@pytest.mark.parametrize("knobs", EDGE_TILES_AT_MACE_LARGE)
def test_message_passing_edge_tiles_fit_sm90_at_mace_large_size(knobs):
    """The spill-free edge-tile shapes at 3,000 nodes / 160,000 edges: no kernel spills, >= 4 programs per SM."""
    _require_triton()
    require_pallas_lowering("cuda")
    with tuning.override(**knobs):
        rows = sm90.check("mace-large", cases=["message_passing"])
    assert {row["pass"] for row in rows} == set(sm90.PASSES)
    _assert_fits(rows)
    for row in rows:
        assert not row["in_loop"] and row["programs_per_sm"] >= 4, sm90.format_table([row])


def test_knobs_reach_the_compiled_kernel_and_are_recorded():
    _require_triton()
    case = sm90.cases_for("test", ["channelwise_uvuv"])[0]
    with tuning.override(aligned__num_warps=8, aligned__max_block_rows=8):
        rows = sm90.case_rows(case, "fwd")
    assert [row["kernel"] for row in rows] == ["e3nn_aligned_out"]
    row = rows[0]
    assert row["num_warps"] == 8 and row["programs"] == 2  # 16 rows in blocks of 8
    assert row["knobs"] == {"aligned.max_block_rows": 8, "aligned.num_warps": 8}
    assert row["family_knobs"]["aligned.max_block_rows"] == 8
    assert not row["violations"]


def test_command_line_writes_rows_and_exit_status(tmp_path, capsys):
    _require_triton()
    out = tmp_path / "rows.jsonl"
    status = sm90.main(["--cases", "channelwise_uvuv", "--passes", "fwd", "--jsonl", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert status == 0
    assert lines[0]["environment"]["triton"] and lines[0]["max_smem"] == 232448
    assert [(row["case"], row["pass"], row["kernel"]) for row in lines[1:]] == [
        ("channelwise_uvuv", "fwd", "e3nn_aligned_out")]
    assert "aligned_out" in capsys.readouterr().out
    # A limit every kernel breaks (shared memory > -1 B) exits 1.
    assert sm90.main(["--cases", "channelwise_uvuv", "--passes", "fwd", "--max-smem", "-1"]) == 1


def test_missing_triton_names_the_test_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    message = sm90.triton_missing()
    assert message and "test extras" in message and "pip install" in message
    with pytest.raises(RuntimeError, match="test extras"):
        sm90.check("test")


def test_limits_and_occupancy_arithmetic():
    row = {"spill_bytes": 8, "spill_stores": 4, "spill_loads": 4, "shared_bytes": sm90.MAX_SMEM + 1}
    assert len(sm90.violations(row, max_spill=0, max_smem=sm90.MAX_SMEM)) == 2
    assert sm90.violations({**row, "spill_bytes": 0, "shared_bytes": sm90.MAX_SMEM}, 0, sm90.MAX_SMEM) == []
    assert sm90.violations({"error": "compile failed: x"}, 0, sm90.MAX_SMEM) == ["compile failed: x"]
    assert sm90.MAX_SMEM == 232448
    assert sm90.resident_programs(32, 4, 0) == 16  # 64 warps per SM
    assert sm90.resident_programs(255, 4, 0) == 2  # 256 registers x 128 threads per block
    assert sm90.resident_programs(168, 4, 0) == 3
    assert sm90.resident_programs(32, 4, 100_000) == 2  # shared memory
    assert sm90.kernel_family("e3nn_fully_connected_weights") == "fully_connected"


def test_launches_inside_loops_report_their_trip_count():
    """A kernel under ``lax.map`` (what a vmapped kernel that cannot fold its batch becomes) is one custom call in
    a ``while`` loop: the launch records the loop's trip count; a plain call records none."""
    import jax
    import jax.numpy as jnp

    from e3nn_fast.kernels import _pallas_compat as compat
    from pallas_lowering import lower_for_platform

    require_pallas_lowering("cuda")

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 2.0

    copy = compat.pallas_call(kernel, family="aligned", interpret=False,
                              out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32))
    xs = jax.ShapeDtypeStruct((5, 8, 128), jnp.float32)
    mapped = sm90.triton_launches(lower_for_platform(lambda xs: jax.lax.map(copy, xs), (xs,), "cuda"))
    plain = sm90.triton_launches(lower_for_platform(lambda xs: copy(xs[0]), (xs,), "cuda"))
    assert [launch.loop_trips for launch in mapped] == [(5,)]
    assert [launch.loop_trips for launch in plain] == [()]
    assert mapped[0].ttir == plain[0].ttir and "tt.func" in mapped[0].ttir and mapped[0].grid == (1, 1, 1)
