"""Kernel knobs (``E3NN_FAST_TUNE`` / ``tuning.override``): parsed strictly, read at trace time, and reaching the
lowered kernels; the kernels give the same numbers at every block size; the fully connected kernel's matrix
products follow ``jax_default_matmul_precision``."""

import functools
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


@pytest.mark.parametrize("value,complaint", [
    ("3", "must be a power of two, got 3"), ("6", "must be a power of two, got 6"),
    ("0", "must be at least 1, got 0"), ("-4", "must be at least 1, got -4"),
])
def test_edge_tile_knob_rejects_non_powers_of_two(value, complaint):
    """``message_passing.edge_tile`` is a tile shape: a power of two >= 1, refused by name otherwise (environment
    and ``override`` alike)."""
    assert tuning.parse(f"message_passing.edge_tile={2 ** 3}") == {"message_passing.edge_tile": 8}
    with pytest.raises(ValueError, match=re.escape(f"message_passing.edge_tile {complaint}")):
        tuning.parse(f"message_passing.edge_tile={value}")
    with pytest.raises(ValueError, match=re.escape(f"message_passing.edge_tile {complaint}")):
        with tuning.override(message_passing__edge_tile=int(value)):
            pass


def test_edge_tile_applies_to_node_launches_only(monkeypatch):
    """Default 1 (one edge at a time, the code before edge tiles); the knob sets the node kernels' (out, x1) tile,
    the edge kernels (x2, weights) keep 1: each of their rows is one edge."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    monkeypatch.delenv(tuning.ENV, raising=False)
    assert kernel_mp.EDGE_TILE == 1
    assert {name: kernel_mp.edge_tile(name) for name in ("out", "x1", "x2", "weights_batched")} == {
        "out": 1, "x1": 1, "x2": 1, "weights_batched": 1}
    monkeypatch.setenv(tuning.ENV, "message_passing.edge_tile=4")
    assert {name: kernel_mp.edge_tile(name) for name in ("out", "x1", "x2", "weights_batched")} == {
        "out": 4, "x1": 4, "x2": 1, "weights_batched": 1}
    with tuning.override(message_passing__edge_tile=2):
        assert kernel_mp.edge_tile("out") == 2


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


def _message_passing_problem(irreps_x, irreps_sh, nodes=5, edges=13):
    rng = np.random.default_rng(0)
    x = e3nn.IrrepsArray(irreps_x, jnp.asarray(rng.standard_normal((nodes, e3nn.Irreps(irreps_x).dim)), jnp.float32))
    sh = e3nn.IrrepsArray(irreps_sh, jnp.asarray(rng.standard_normal((edges, e3nn.Irreps(irreps_sh).dim)),
                                                 jnp.float32))
    senders = jnp.asarray(rng.integers(0, nodes, edges), jnp.int32)
    receivers = jnp.asarray(np.sort(rng.integers(0, nodes, edges)), jnp.int32)
    w = jnp.asarray(rng.standard_normal((edges, e3nn.message_passing_irreps_out(x.irreps, sh.irreps).num_irreps)),
                    jnp.float32)
    return x, sh, w, senders, receivers, nodes


def _forces_style(backend, x, sh, w, senders, receivers, nodes):
    """Output, and the gradient w.r.t. (x, w) of |d sum(sin(out)) / d sh|^2: every kernel slot is an output once."""
    def out(x, sh, w):
        with e3nn.backend(backend):
            return e3nn.message_passing(x, sh, w, senders, receivers, nodes).array

    def loss(x, w):
        g = jax.grad(lambda s: jnp.sum(jnp.sin(out(x, s, w))))(sh)
        return jnp.sum(g.array ** 2)

    return out(x, sh, w), jax.grad(loss, argnums=(0, 1))(x, w)


@functools.lru_cache(maxsize=None)
def _message_passing_expected():
    """The reference's output and forces-style gradients, computed once for every knob setting below."""
    problem = _message_passing_problem("4x0e+4x1o+4x2e", "0e+1o+2e")
    return jax.jit(lambda: _forces_style("reference", *problem))()


@pytest.mark.parametrize("knobs", [{}, {"message_passing__block_rows": 2}, {"message_passing__channel_block": 2},
                                   {"message_passing__channel_block": 4, "message_passing__block_rows": 1},
                                   {"message_passing__edge_tile": 4, "message_passing__channel_block": 2}])
def test_message_passing_blocks_do_not_change_the_result(knobs):
    """Row blocks, channel blocks (a second grid axis) and edge tiles give the reference's numbers, derivatives
    included."""
    problem = _message_passing_problem("4x0e+4x1o+4x2e", "0e+1o+2e")
    with tuning.override(**knobs):
        kernel = jax.jit(lambda: _forces_style("pallas-interpret", *problem))()
    for ours, theirs in zip(jax.tree.leaves(kernel), jax.tree.leaves(_message_passing_expected())):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_channel_blocks_form_a_second_grid_axis():
    """channel_block=2 on 8 channels: 4 programs per row block for the forward kernel (grid_y in the Triton call);
    mixed multiplicities (8 and 4 channels) cannot be split and keep one program per row block."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    def grid_y(irreps_x):
        x, sh, w, senders, receivers, nodes = _message_passing_problem(irreps_x, "0e+1o")

        def forward(x, sh, w):
            with e3nn.backend("pallas"):
                return e3nn.message_passing(x, sh, w, senders, receivers, nodes).array

        with tuning.override(message_passing__channel_block=2):
            text = lower_for_platform(forward, (x, sh, w), "cuda").as_text()
        return sorted(set(int(v) for v in re.findall(r"grid_y = (\d+)", text)))

    assert grid_y("8x0e+8x1o") == [4]
    assert grid_y("8x0e+4x1o") == [1]
    assert kernel_mp.CHANNEL_BLOCK is None and kernel_mp.MIN_CHANNELS > 8  # default: 8 channels are never split


def _message_passing_groups(irreps_x, irreps_sh):
    """The product groups of every kernel slot of a weighted message pass, by slot name."""
    from e3nn_fast.kernels import message_passing as kernel_mp
    from e3nn_fast.kernels._aligned import _product_groups
    from e3nn_fast.reference.message_passing import message_passing_spec

    spec = message_passing_spec(e3nn.Irreps(irreps_x), e3nn.Irreps(irreps_sh), None, "component")
    _, plan = kernel_mp._plan(spec, True)
    return {slot.name: _product_groups(plan, plan.slot_index(slot.name), frozenset()) for slot in plan.slots}


def test_message_passing_launch_shape_at_mace_large_size():
    """3,000 nodes of 128 channels: the node kernels (out, x1) get 4-row blocks of every channel, 750 programs (>= 4
    per SM of a 132-SM GPU); ``target_programs=1`` gives the shape before issue 14 (16 rows, 188 programs); the
    edge kernels (160,000 rows) keep 16-row blocks; the x2 gradient (an output of width 1, a sum over channels) is
    never split and reads every channel."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    groups = _message_passing_groups("128x0e+128x1o+128x2e", "0e+1o+2e+3o")
    for name in ("out", "x1"):
        assert kernel_mp.launch_shape(groups[name], 3000) == (4, 128)
        with tuning.override(message_passing__target_programs=1):
            assert kernel_mp.launch_shape(groups[name], 3000) == (16, 128)
    assert -(-3000 // 4) >= 4 * 132
    # Edge tiles: at most EDGE_TILE_LANES (T x channels) unless the channel knob fixes them (T = 4 over 128 channels
    # spilled); rows are then halved only as far as the target needs.
    assert kernel_mp.launch_shape(groups["out"], 3000, tile=2) == (4, 128)
    assert kernel_mp.launch_shape(groups["out"], 3000, tile=4) == (8, 64)
    assert kernel_mp.launch_shape(groups["x1"], 3000, tile=8) == (16, 32)
    with tuning.override(message_passing__channel_block=128):
        assert kernel_mp.launch_shape(groups["out"], 3000, tile=4) == (4, 128)
    assert kernel_mp.launch_shape(groups["weights_batched"], 160000) == (16, 128)
    assert kernel_mp.splittable_width(groups["x2"]) is None
    assert kernel_mp.launch_shape(groups["x2"], 160000) == (16, 128)


def test_message_passing_small_graphs_split_channels_after_rows():
    """64 nodes of 128 channels: rows are halved to MIN_BLOCK_ROWS (16 blocks), then channel blocks down to
    MIN_CHANNELS (4 per row block); the knobs fix their part of the shape."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    out = _message_passing_groups("128x0e+128x1o", "0e+1o")["out"]
    assert kernel_mp.launch_shape(out, 64) == (kernel_mp.MIN_BLOCK_ROWS, kernel_mp.MIN_CHANNELS) == (4, 32)
    with tuning.override(message_passing__block_rows=16):
        assert kernel_mp.launch_shape(out, 64) == (16, 32)
    with tuning.override(message_passing__channel_block=64):
        assert kernel_mp.launch_shape(out, 64) == (4, 64)
    with tuning.override(message_passing__target_programs=32):
        assert kernel_mp.launch_shape(out, 64) == (4, 64)  # 16 row blocks x 2 channel blocks
    assert kernel_mp.launch_shape(out, 3) == (4, 32)  # a single, padded row block


def test_aligned_channel_blocks_form_a_second_grid_axis():
    """aligned.channel_block=2 on 8 channels: 4 programs per row block (grid_y in the Triton call) for the
    elementwise product and its gradients; by default 8 channels are one lane block; a knob that is not a power of
    two is refused."""
    rng = np.random.default_rng(0)
    x = e3nn.IrrepsArray("8x0e+8x1o", jnp.asarray(rng.standard_normal((16, 32)), jnp.float32))

    def loss(x):
        with e3nn.backend("pallas"):
            return jnp.sum(jnp.sin(e3nn.elementwise_tensor_product(x, x).array))

    def grid_y(**knobs):
        with tuning.override(**knobs):
            text = lower_for_platform(jax.grad(loss), (x,), "cuda").as_text()
        return sorted(set(int(v) for v in re.findall(r"grid_y = (\d+)", text)))

    assert grid_y(aligned__channel_block=2) == [4]
    assert grid_y() == [1]
    with pytest.raises(ValueError, match="power of two"):
        with tuning.override(aligned__channel_block=3):
            pass


def test_fully_connected_precision_follows_jax():
    assert fully_connected.matmul_precision() == jax.lax.Precision.DEFAULT  # TF32 on tensor cores, as XLA
    with jax.default_matmul_precision("highest"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.HIGHEST
    with jax.default_matmul_precision("float32"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.HIGHEST
    with jax.default_matmul_precision("tensorfloat32"):
        assert fully_connected.matmul_precision() == jax.lax.Precision.DEFAULT
