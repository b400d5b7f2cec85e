"""Kernel knobs (``E3NN_FAST_TUNE`` / ``tuning.override``): parsed strictly, read at trace time, and reaching the
lowered kernels; the kernels give the same numbers at every block size; the fully connected kernel's matrix
products follow ``jax_default_matmul_precision``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast.kernels import fully_connected, tuning
from pallas_lowering import lower_for_platform


def test_parse_accepts_known_knobs():
    assert tuning.parse(" message_passing.block_rows=32, aligned.num_stages=0 ,") == {
        "message_passing.block_rows": 32, "aligned.num_stages": 0}


@pytest.mark.parametrize("text,complaint", [
    ("message_passing.rows=32", "unknown knob 'message_passing.rows'"),
    ("aligned.num_warps", "not of the form"),
    ("aligned.num_warps=four", "must be an integer"),
    ("aligned.num_warps=6", "power of two"),
    ("message_passing.block_rows=0", "at least 1"),
    ("fully_connected.num_stages=-1", "at least 0"),
])
def test_parse_rejects_bad_entries(text, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        tuning.parse(text)


def test_environment_then_override(monkeypatch):
    monkeypatch.setenv(tuning.ENV, "message_passing.block_rows=32")
    assert tuning.value("message_passing.block_rows", 16) == 32
    assert tuning.value("aligned.num_warps", 4) == 4
    with tuning.override(message_passing__block_rows=64):
        assert tuning.value("message_passing.block_rows", 16) == 64
        assert tuning.current() == {"message_passing.block_rows": 64}
    assert tuning.value("message_passing.block_rows", 16) == 32
    with pytest.raises(ValueError, match="power of two"):
        with tuning.override(aligned__num_warps=3):
            pass
    with pytest.raises(ValueError, match="unknown kernel knob"):
        tuning.value("aligned.warps", 4)


def _product(x, sh):
    with e3nn.backend("pallas"):
        return e3nn.tensor_product(x, sh).array


def test_launch_knobs_reach_the_lowered_kernel():
    """num_warps / num_stages of a family appear in the Triton custom call lowered for CUDA from this CPU."""
    x = e3nn.IrrepsArray("4x0e+4x1o", jnp.ones((16, 16), jnp.float32))
    sh = e3nn.IrrepsArray("0e+1o", jnp.ones((16, 4), jnp.float32))
    texts = {}
    for knobs in ({}, {"aligned__num_warps": 8, "aligned__num_stages": 2}):
        with tuning.override(**knobs):
            texts[bool(knobs)] = lower_for_platform(lambda a, b: _product(a, b), (x, sh), "cuda").as_text()
    assert "num_warps = 4" in texts[False] and "num_warps = 8" not in texts[False]
    assert "num_warps = 8" in texts[True] and "num_stages = 2" in texts[True]


@pytest.mark.parametrize("knobs", [{}, {"message_passing__block_rows": 2}, {"message_passing__block_rows": 64}])
def test_message_passing_block_rows_do_not_change_the_result(knobs):
    rng = np.random.default_rng(0)
    nodes, edges = 5, 13
    x = e3nn.IrrepsArray("3x0e+2x1o", jnp.asarray(rng.standard_normal((nodes, 9)), jnp.float32))
    sh = e3nn.IrrepsArray("0e+1o", jnp.asarray(rng.standard_normal((edges, 4)), jnp.float32))
    senders = jnp.asarray(rng.integers(0, nodes, edges), jnp.int32)
    receivers = jnp.asarray(np.sort(rng.integers(0, nodes, edges)), jnp.int32)
    w = jnp.asarray(rng.standard_normal((edges, e3nn.message_passing_irreps_out(x.irreps, sh.irreps).num_irreps)),
                    jnp.float32)

    def run(backend):
        with e3nn.backend(backend):
            return e3nn.message_passing(x, sh, w, senders, receivers, nodes).array

    with tuning.override(**knobs):
        kernel = jax.jit(lambda: run("pallas-interpret"))()
    np.testing.assert_allclose(kernel, jax.jit(lambda: run("reference"))(), rtol=2e-5, atol=2e-5)


def test_fully_connected_precision_follows_jax():
    assert fully_connected.matmul_precision() == jax.lax.Precision.DEFAULT  # TF32 on tensor cores, as XLA
    with jax.default_matmul_precision("highest"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.HIGHEST
    with jax.default_matmul_precision("float32"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.HIGHEST
    with jax.default_matmul_precision("tensorfloat32"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.DEFAULT
