"""The fully connected (``uvw``) kernels' tilings (issue 14, item 2), each against the reference executor in
interpret mode: forward, first derivatives and the forces-style double backward.

The kernels split the output into planes on a second grid axis, compute one-channel planes (the gradient w.r.t. a
multiplicity-1 input) as lane reductions, tile broadcast products over columns and the weight gradient over
``(u, w)`` tiles of every path in one launch.  Each case below is shaped so that one of these forms runs (checked
through the helpers that choose them), with batches spanning several row blocks and a padded tail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from e3nn_fast.kernels import fully_connected, tuning
from e3nn_fast.kernels.tensor_product import kernel_family
from test_kernels import _inputs, assert_trees_close, derivatives, describe, interpret_tp
from e3nn_fast.reference.tensor_product import tensor_product as reference_tp


def _check(description, lead=(19,), second_order=True):
    inputs = _inputs(description, lead, "shared")
    assert all(kernel_family(path, weight) == "fully_connected" for path, weight in zip(description.paths, inputs[0]))
    ours = derivatives(interpret_tp, description, second_order)(*inputs)
    theirs = derivatives(reference_tp, description, second_order)(*inputs)
    assert_trees_close(ours, theirs, 1e-12)


def test_one_channel_planes_as_lane_reductions():
    """Input 2 of multiplicity 1 (harmonics-like): its gradient has one-channel planes, computed per segment as
    ``sum_y Y (X @ M)`` with X the operand of fewer planes: x1 for ``0e x 1o -> 1o``, the cotangent for
    ``1o x 1o -> 0e``.  The weight gradient of such paths groups its entries by the planes of x1."""
    description = describe("16x0e+16x1o", "0e+1o", "uvw", True, mul_out=16, lmax=1)
    plan = fully_connected.fully_connected_plan(description, tuple(range(len(description.paths))))
    forms = set()
    for path in plan.paths:
        entries = [(e[0], e[2]) for e in path.entries]  # the x2 gradient: A = x1, B = the cotangent
        form = fully_connected._reduction(16, path.padded_shape[0], path.padded_shape[2], 1, entries, jnp.float64)
        assert form is not None
        forms.add(form.x_is_a)
    assert forms == {True, False}
    assert {fully_connected._weight_grouping(path) for path in plan.paths} == {"i", "k"}
    _check(description)


def test_broadcast_products_in_column_tiles_and_weight_tiles(monkeypatch):
    """An inner size under 16 (two channels times one) into a 64-wide output: broadcast products, which a small
    broadcast budget cuts into more column tiles than are unrolled (a loop), and a weight gradient of several
    ``w`` tiles per path."""
    monkeypatch.setattr(fully_connected, "BROADCAST_ELEMENTS", 64)
    description = describe("2x0e+2x1o", "0e", "uvw", True, mul_out=64)
    columns, _ = fully_connected._plane_shapes(16, 64, [fully_connected._PathProduct(0, *[
        fully_connected.SegmentLayout(0, 2, 1, 2, 0), fully_connected.SegmentLayout(0, 1, 1, 1, 0)], None)],
        jnp.float64)
    assert 64 // columns > fully_connected.UNROLL_CHUNKS
    plan = fully_connected.fully_connected_plan(description, tuple(range(len(description.paths))))
    chunk, columns = fully_connected._weight_tiles(plan.paths[0], 16, jnp.float64)
    assert 64 // columns > 1
    _check(description)


@pytest.mark.parametrize("knobs", [
    {"fully_connected__planes_per_program": 3},  # several planes (and a one-channel segment) per program
    {"fully_connected__planes_per_program": 1000},  # one program per row block, as before issue 14
    {"fully_connected__block_rows": 32, "fully_connected__target_programs": 1},  # one padded row block
    {"fully_connected__accumulator_elements": 256, "fully_connected__tile_elements": 256,
     "fully_connected__max_splits": 2},  # small tiles: chunk loops, several u and w tiles, two batch splits
])
def test_knobs_do_not_change_the_result(knobs):
    description = describe("33x0e+2x1e", "16x0e+2x1o+1o", "uvw", True, mul_out=24, keep=3, seed=2)
    with tuning.override(**knobs):
        _check(description, lead=(3, 7), second_order=False)


def test_empty_batch():
    description = describe("16x0e+3x1o", "0e+1o", "uvw", True, mul_out=16, keep=2, seed=1)
    _check(description, lead=(0,), second_order=False)


def test_launch_shapes_at_mace_large_size():
    """FCTP ``64x(0e+1o+2e) (x) 0e+1o+2e`` on 5,000 rows, lowered for CUDA: every launch of the forward and the
    gradient has several programs per SM of a 132-SM GPU, and the output is one launch over (row blocks x planes)."""
    from pallas_lowering import lower_for_platform, require_pallas_lowering

    import e3nn_fast as e3nn
    from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct

    require_pallas_lowering("cuda")
    irreps = e3nn.Irreps("64x0e+64x1o+64x2e")
    tp = FunctionalFullyConnectedTensorProduct(irreps, e3nn.Irreps("0e+1o+2e"), irreps)
    size = sum(ins.path_shape[0] * ins.path_shape[1] * ins.path_shape[2] for ins in tp.instructions)

    def loss(w, x1, x2):
        with e3nn.backend("pallas"):
            out = jax.vmap(lambda a, b: tp.left_right(w, e3nn.IrrepsArray(irreps, a),
                                                      e3nn.IrrepsArray("0e+1o+2e", b)).array)(x1, x2)
        return jnp.sum(jnp.sin(out))

    shapes = (jax.ShapeDtypeStruct((size,), jnp.float32), jax.ShapeDtypeStruct((5000, irreps.dim), jnp.float32),
              jax.ShapeDtypeStruct((5000, 9), jnp.float32))
    from bench.sm90_resources import triton_launches

    launches = triton_launches(lower_for_platform(jax.grad(loss, argnums=(0, 1, 2)), shapes, "cuda"))
    programs = {launch.name.removeprefix("e3nn_fully_connected_"): launch.grid[0] * launch.grid[1]
                for launch in launches}
    assert len(launches) == 4 and set(programs) == {"out", "x1", "x2", "weights"}, programs
    assert min(programs.values()) >= 4 * 132, programs


@pytest.mark.parametrize("batch, rows, tiles, memory_cap", [
    (5000, 16, 11, 1 << 20),  # MACE-large FCTP: 313 blocks, 45 splits before (rounded down), 3.75 programs per SM
    (5000, 128, 12, 1 << 20),  # MACE-large Linear: 40 blocks of 128 rows, fewer than the 44 splits wanted
    (5000, 16, 11, 20),  # the partial sums' memory caps the splits
    (100_000, 64, 1, 1 << 20),  # max_splits caps them
    (80, 16, 11, 1 << 20),  # a batch too small for the target
    (3, 16, 3, 10),
])
def test_weight_gradient_grid(batch, rows, tiles, memory_cap):
    """The weight gradient's grid covers the batch, gives every split rows, stays within its caps, and has as many
    splits as wanted for ``target_programs`` or, where the caps or the batch stop that, the most an even split of
    the blocks allows (brute force over the steps per split)."""
    step, splits, per_split = fully_connected._weight_grid(batch, rows, tiles, memory_cap)
    blocks = -(-batch // step)
    cap = min(fully_connected.MAX_SPLITS, memory_cap)
    assert fully_connected._min_block_rows() <= step <= rows
    assert splits * per_split >= blocks and (splits - 1) * per_split < blocks and splits <= cap
    wanted = -(-fully_connected.TARGET_PROGRAMS // tiles)
    best = max(-(-blocks // p) for p in range(1, blocks + 1) if -(-blocks // p) <= cap)
    assert splits >= min(wanted, best), (step, splits, per_split, best)
    if splits < wanted:  # short of the target only at the smallest step or where the caps, not the blocks, bind
        assert step == fully_connected._min_block_rows() or blocks >= min(wanted, cap), (step, blocks)
    if step < rows:  # smaller steps only while the blocks were fewer than the splits wanted
        assert -(-batch // (2 * step)) < min(wanted, cap)
