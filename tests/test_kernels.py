"""Pallas tensor-product kernels (interpret mode on CPU) against the reference executor.

Every kernel check runs under ``jax.jit`` with small sizes: interpret mode costs ~75 us per grid step and its programs
are slow to compile, so each case fuses forward, first (and for some cases second) derivatives into one compiled
function, and inputs are made and compared with numpy (eager jax would compile once per shape).  Row blocks are
shrunk so that batches span several blocks with a padded tail, and product tiles so that chunk loops run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import e3nn_fast as e3nn
from e3nn_fast import dispatch
from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.kernels import _aligned, fully_connected, layout
from e3nn_fast.kernels.tensor_product import kernel_family, qualifies
from e3nn_fast.kernels.tensor_product import tensor_product as kernel_tp
from e3nn_fast.path_description import (
    TensorProductDescription,
    describe_elementwise_tensor_product,
    describe_full_tensor_product,
    describe_tensor_square,
    irrep_normalization_factor,
    make_path,
)
from e3nn_fast.reference.tensor_product import tensor_product as reference_tp
from e3nn_fast.so3 import clebsch_gordan


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 8 rows (16 for matrix products) and small product tiles: several grid steps, chunk loops."""
    monkeypatch.setattr(layout, "MAX_BLOCK_ROWS", 8)
    monkeypatch.setattr(fully_connected, "TILE_ELEMENTS", 256)
    monkeypatch.setattr(fully_connected, "ACCUMULATOR_ELEMENTS", 512)


def interpret_tp(description, weights, chunks1, chunks2):
    return kernel_tp(description, weights, chunks1, chunks2, interpret=True)


# --- descriptions --------------------------------------------------------------------------------------------------


def describe(irreps1, irreps2, mode, weighted, *, lmax=4, mul_out=None, keep=None, seed=0, max_terms=None):
    """Every allowed path ``in1 x in2 -> ir_out`` (``l_out <= lmax``) in ``mode``, each into its own output segment,
    with a random coefficient; ``keep`` paths at most (a random subset), and at most ``max_terms`` non-zero CG
    entries in all (interpret-mode compile time grows with them)."""
    irreps1, irreps2 = Irreps(irreps1), Irreps(irreps2)
    rng = np.random.default_rng(seed)
    specs = []
    for a, (mul1, ir1) in enumerate(irreps1):
        for b, (mul2, ir2) in enumerate(irreps2):
            if mode in ("uuu", "uuw") and a != b:
                continue
            for ir in ir1 * ir2:
                if ir.l <= lmax:
                    specs.append((a, b, ir, mul1, mul2))
    if keep is not None and len(specs) > keep:
        specs = [specs[i] for i in sorted(rng.choice(len(specs), keep, replace=False))]
    if max_terms is not None:
        kept, terms = [], 0
        for spec in specs:
            count = int(np.count_nonzero(np.abs(clebsch_gordan(irreps1[spec[0]].ir.l, irreps2[spec[1]].ir.l, spec[2].l)) > 1e-12))
            if not kept or terms + count <= max_terms:
                kept.append(spec)
                terms += count
        specs = kept
    outs = []
    for a, b, ir, mul1, mul2 in specs:
        outs.append(({"uvu": mul1, "uvv": mul2, "uuu": mul1, "uvuv": mul1 * mul2, "uvw": mul_out, "uuw": 1}[mode], ir))
    irreps_out = Irreps(outs)
    paths = []
    for n, (a, b, ir, _, _) in enumerate(specs):
        norm = math.sqrt(irrep_normalization_factor("component", irreps1[a].ir, irreps2[b].ir, ir))
        paths.append(make_path(irreps1, irreps2, irreps_out, a, b, n, mode, norm * rng.uniform(0.5, 1.5), weighted))
    return TensorProductDescription(irreps1, irreps2, irreps_out, tuple(paths))


def random_irreps(rng, count, muls, lmax, single=False):
    out = []
    for _ in range(count):
        l = int(rng.integers(0, lmax + 1))
        out.append((1 if single else int(rng.choice(muls)), Irrep(l, int(rng.choice([1, -1])))))
    return Irreps(out)


def make_chunks(irreps, lead, seed, dtype, none=()):
    """Random chunks ``lead + (mul, 2l+1)`` (numpy-made: eager jax.random would compile once per shape)."""
    rng = np.random.default_rng(seed)
    return [None if n in none else jnp.asarray(rng.standard_normal(tuple(lead) + (mul, ir.dim)), dtype)
            for n, (mul, ir) in enumerate(irreps)]


def make_weights(description, lead, seed, dtype, per_row):
    rng = np.random.default_rng(seed)
    shapes = [(tuple(lead) if per_row else ()) + p.weight_shape for p in description.paths]
    return [jnp.asarray(rng.standard_normal(shape), dtype) if p.has_weight else None
            for shape, p in zip(shapes, description.paths)]


# Randomized cases (seeded): multiplicities 1..64 with non-powers of two, l up to 4, leading shapes whose row count
# is not a multiple of the block, zero (None) chunks, shared and per-row weights.
MULS = [1, 2, 3, 5, 7, 16, 33, 64]


def _case(kind, seed):
    rng = np.random.default_rng(seed)
    lead = [(11,), (3, 5), (2, 1, 9), (13,)][seed % 4]
    if kind == "sh":  # x (x) spherical harmonics, all channels kept apart (public tensor_product)
        x = random_irreps(rng, 2, MULS, 4)
        sh = random_irreps(rng, 2, MULS, 2, single=True)
        d = describe(x, sh, "uvuv", False, lmax=4, seed=seed, max_terms=50)
        return d, lead, None, {"none1": (), "none2": ()}
    if kind == "uvu":  # convolution message: one weight per row and channel
        d = describe(random_irreps(rng, 2, MULS, 3), random_irreps(rng, 2, MULS, 2, single=True), "uvu", True,
                     seed=seed, max_terms=40)
        return d, lead, "rows", {"none1": (), "none2": ()}
    if kind == "uvu-shared":
        d = describe(random_irreps(rng, 2, MULS, 2), random_irreps(rng, 1, MULS, 3, single=True), "uvu", True,
                     seed=seed, max_terms=30)
        return d, lead, "shared", {"none1": (), "none2": ()}
    if kind == "uuu":
        muls = [int(rng.choice(MULS)) for _ in range(3)]
        irreps1 = Irreps([(m, Irrep(int(rng.integers(0, 3)), 1)) for m in muls])
        irreps2 = Irreps([(m, Irrep(int(rng.integers(0, 3)), -1)) for m in muls])
        weighted = bool(seed % 2)
        d = describe(irreps1, irreps2, "uuu", weighted, seed=seed, max_terms=40)
        return d, lead, "shared" if weighted else None, {"none1": (1,), "none2": ()}
    if kind == "sh-left":  # harmonics first: the channels are input 2's (uvuv with mul1 = 1, and uvv)
        sh = random_irreps(rng, 2, MULS, 2, single=True)
        x = random_irreps(rng, 2, MULS, 3)
        d = describe(sh, x, ["uvuv", "uvv"][seed % 2], bool(seed % 2), seed=seed, max_terms=40)
        return d, lead, "rows" if seed % 2 else None, {"none1": (), "none2": ()}
    if kind == "uuw":  # elementwise products summed into one output channel, weighted or not
        muls = [int(rng.choice(MULS)) for _ in range(2)]
        irreps1 = Irreps([(m, Irrep(int(rng.integers(0, 3)), 1)) for m in muls])
        d = describe(irreps1, irreps1, "uuw", bool(seed % 2), seed=seed, max_terms=40)
        return d, lead, "shared" if seed % 2 else None, {"none1": (), "none2": ()}
    if kind == "uvw-scalar":  # uvw between single channels: the weights carry the channel (channel-aligned engine)
        d = describe("0e+1o", "1o", "uvw", True, mul_out=int(rng.choice(MULS[1:])), seed=seed, max_terms=40)
        return d, lead, "shared", {"none1": (), "none2": ()}
    if kind == "uvw":  # products in chunks of u (a fori_loop) through dot, or broadcast products for few channels
        irreps1, irreps2, mul_out = [("20x0e+3x1o", "8x0e+1o", 16), ("3x0e+3x1o", "8x0e+1o", 5),
                                     ("33x0e+2x1e", "16x0e+2x1o", 24)][seed % 3]
        d = describe(Irreps(irreps1), Irreps(irreps2), "uvw", True, mul_out=mul_out, keep=2, seed=seed)
        return d, lead, "shared", {"none1": (), "none2": ()}
    raise ValueError(kind)


# Second derivatives (compile-heavy in interpret mode) on one case of each family, first derivatives on the others.
SECOND_ORDER_CASES = [("sh", 1), ("uvu", 0), ("uuu", 1), ("uvw", 0)]
FIRST_ORDER_CASES = [("sh", 0), ("sh", 2), ("sh-left", 0), ("sh-left", 1), ("uvu", 2), ("uvu-shared", 0),
                     ("uvu-shared", 1), ("uuu", 0), ("uuu", 2), ("uuw", 0), ("uuw", 1), ("uvw-scalar", 0), ("uvw", 1),
                     ("uvw", 2)]


def _inputs(description, lead, weight_kind, none1=(), none2=(), dtype=jnp.float64, seed=0):
    chunks1 = make_chunks(description.irreps_in1, lead, 3 * seed, dtype, none1)
    chunks2 = make_chunks(description.irreps_in2, lead, 3 * seed + 1, dtype, none2)
    weights = make_weights(description, lead, 3 * seed + 2, dtype, weight_kind == "rows")
    return weights, chunks1, chunks2


def derivatives(executor, description, second_order=True):
    """``(out, dE/d(inputs)[, dL/d(inputs)])`` with ``E = sum sin(out)`` and the forces-style ``L = |dE/dx2|^2``."""

    def energy(weights, chunks1, chunks2):
        return sum(jnp.sum(jnp.sin(o)) for o in executor(description, weights, chunks1, chunks2) if o is not None)

    def forces_loss(weights, chunks1, chunks2):
        forces = jax.grad(energy, argnums=2)(weights, chunks1, chunks2)
        return sum(jnp.sum(f**2) for f in jax.tree.leaves(forces))

    def run(weights, chunks1, chunks2):
        out = executor(description, weights, chunks1, chunks2)
        first = jax.grad(energy, argnums=(0, 1, 2))(weights, chunks1, chunks2)
        if not second_order:
            return out, first
        second = jax.grad(forces_loss, argnums=(0, 1, 2))(weights, chunks1, chunks2)
        return out, first, second

    return jax.jit(run)


def assert_trees_close(ours, theirs, rtol):
    """Same structure, shapes and dtypes; max-abs error within ``rtol`` of the max-abs value, leaf by leaf."""
    ours_leaves, ours_tree = jax.tree.flatten(ours, is_leaf=lambda x: x is None)
    theirs_leaves, theirs_tree = jax.tree.flatten(theirs, is_leaf=lambda x: x is None)
    assert ours_tree == theirs_tree
    for a, b in zip(ours_leaves, theirs_leaves):
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape and a.dtype == b.dtype
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # numpy: no compilation per shape
        if b.size:
            scale = max(float(np.max(np.abs(b))), 1e-30)
            error = float(np.max(np.abs(a - b)))
            assert error <= rtol * scale, f"relative error {error / scale:.3g} > {rtol}"


# --- kernels vs reference ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,seed,second_order", [c + (True,) for c in SECOND_ORDER_CASES] + [c + (False,) for c in FIRST_ORDER_CASES]
)
def test_forward_and_derivatives_match_reference_fp64(kind, seed, second_order):
    description, lead, weight_kind, nones = _case(kind, seed)
    inputs = _inputs(description, lead, weight_kind, **nones)
    assert all(kernel_family(path, weight) for path, weight in zip(description.paths, inputs[0]))
    ours = derivatives(interpret_tp, description, second_order)(*inputs)
    theirs = derivatives(reference_tp, description, second_order)(*inputs)
    assert_trees_close(ours, theirs, 1e-12)


@pytest.mark.parametrize("kind,seed", [("sh", 0), ("uvw", 1)])
def test_forward_and_gradient_match_reference_fp32(kind, seed):
    description, lead, weight_kind, nones = _case(kind, seed)
    weights, chunks1, chunks2 = _inputs(description, lead, weight_kind, dtype=jnp.float32, **nones)

    def run(executor):
        def f(weights, chunks1, chunks2):  # the output and its vjp w.r.t. input 1
            out, vjp = jax.vjp(lambda c1: executor(description, weights, c1, chunks2), chunks1)
            cotangent = [None if o is None else jnp.cos(o) for o in out]
            return out, vjp(cotangent)

        return jax.jit(f)(weights, chunks1, chunks2)

    assert_trees_close(run(interpret_tp), run(reference_tp), 1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    description = describe("16x0e+5x1o", "0e+1o", "uvu", True, keep=2, seed=3)
    weights, chunks1, chunks2 = _inputs(description, (19,), "rows", dtype=dtype)
    out = jax.jit(lambda *a: interpret_tp(description, *a))(weights, chunks1, chunks2)
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32), (weights, chunks1, chunks2))
    expected = jax.jit(lambda *a: reference_tp(description, *a))(*upcast)
    for o, e in zip(out, expected):
        assert o.dtype == dtype
        o, e = np.asarray(o, np.float32), np.asarray(e)
        assert np.max(np.abs(o - e)) <= 1e-2 * np.max(np.abs(e))  # rounding of the output only, not of each product


def test_fully_connected_half_precision_weight_gradient():
    description = describe("16x0e", "16x0e", "uvw", True, mul_out=16, seed=4)
    weights, chunks1, chunks2 = _inputs(description, (21,), "shared", dtype=jnp.bfloat16)

    def grads(executor, args):
        return jax.grad(lambda w: sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in executor(description, w, *args[1:])))(
            args[0]
        )

    ours = jax.jit(lambda *a: grads(interpret_tp, a))(weights, chunks1, chunks2)
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32), (weights, chunks1, chunks2))
    theirs = jax.jit(lambda *a: grads(reference_tp, a))(*upcast)
    for a, b in zip(ours, theirs):
        assert a.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 2e-2 * np.max(np.abs(b))


@pytest.mark.parametrize("kind", ["uvu", "uvw"])
def test_check_grads_order_2(kind):
    if kind == "uvu":
        description, lead, per_row = describe("2x0e+3x1o", "1o", "uvu", True, keep=1, seed=5), (9,), True
    else:
        description, lead, per_row = describe("2x0e+1o", "1o", "uvw", True, mul_out=3, keep=1, seed=5), (9,), False
    weights, chunks1, chunks2 = _inputs(description, lead, "rows" if per_row else "shared")
    f = jax.jit(lambda *a: interpret_tp(description, *a))
    check_grads(f, (weights, chunks1, chunks2), order=2, modes=("rev", "fwd") if kind == "uvu" else ("rev",))


def test_forces_double_backward_matches_reference():
    """A NequIP-like energy: node features gathered on edges, coupled with l<=1 harmonics of the edge vectors by a
    uvu product with per-edge weights from the edge length; forces are -dE/dpositions; the loss on the forces is
    differentiated w.r.t. the parameters."""
    description = describe("4x0e+3x1o", "0e+1o", "uvu", True, keep=3, seed=6)
    senders = jnp.array([0, 1, 2, 3, 4, 0, 2, 1, 3, 4, 0])
    receivers = jnp.array([1, 2, 3, 4, 0, 2, 4, 3, 0, 1, 3])
    rng = np.random.default_rng(7)
    positions = jnp.asarray(rng.standard_normal((5, 3)))
    features = make_chunks(description.irreps_in1, (5,), 8, jnp.float64)
    radial = jnp.asarray(rng.standard_normal((len(description.paths), 4)))

    def energy(executor, positions, features, radial):
        vectors = positions[receivers] - positions[senders]
        length = jnp.linalg.norm(vectors, axis=-1)
        sh = [jnp.ones(length.shape + (1, 1)), (math.sqrt(3) * vectors / length[:, None])[:, None, :]]
        basis = jnp.stack([jnp.cos(k * length) for k in range(4)], -1)  # (edges, 4)
        weights = []
        for n, path in enumerate(description.paths):
            weights.append(jnp.tanh(basis @ radial[n])[:, None, None] * jnp.ones(path.weight_shape))
        messages = executor(description, weights, [f[senders] for f in features], sh)
        return sum(jnp.sum(jnp.tanh(m)) for m in messages if m is not None)

    def training_loss(executor, positions, features, radial):
        forces = -jax.grad(energy, argnums=1)(executor, positions, features, radial)
        return jnp.sum(forces**2) + energy(executor, positions, features, radial)

    def train_grads(executor):
        return jax.jit(jax.grad(lambda *a: training_loss(executor, *a), argnums=(0, 1, 2)))(positions, features, radial)

    assert_trees_close(train_grads(interpret_tp), train_grads(reference_tp), 1e-12)


def test_jvp_hessian_and_vmap():
    description = describe("3x0e+2x1o", "1o", "uvu", True, keep=1, seed=8)
    weights, chunks1, chunks2 = _inputs(description, (5,), "rows")
    tangents = _inputs(description, (5,), "rows", seed=9)

    def energy(executor):
        return lambda *a: sum(jnp.sum(jnp.sin(o)) for o in executor(description, *a) if o is not None)

    def transformed(executor):
        jvp = jax.jvp(energy(executor), (weights, chunks1, chunks2), tangents)
        hessian = jax.hessian(energy(executor), argnums=2)(weights, chunks1, chunks2)
        stacked = [jnp.stack([c, -2 * c]) for c in chunks1]
        mapped = jax.vmap(lambda c1: executor(description, weights, c1, chunks2))(stacked)
        shared = make_weights(description, (), 3, jnp.float64, False)
        per_example = jax.vmap(jax.grad(lambda w, c1, c2: energy(executor)(w, c1, c2)), (None, 0, 0))(
            shared, chunks1, chunks2
        )
        return jvp, hessian, mapped, per_example

    ours = jax.jit(lambda: transformed(interpret_tp))()
    theirs = jax.jit(lambda: transformed(reference_tp))()
    assert_trees_close(ours, theirs, 1e-12)


@pytest.mark.parametrize("fold", [True, False])
def test_vmap_over_samples_and_their_weights(monkeypatch, fold):
    """``vmap`` over samples *and* their weights (the legacy per-sample products): inside, each call has one row and
    shared weights; the mapped shared weight slot becomes a per-row slot of one launch (no loop of launches), in the
    forward, the gradients and the double backward.  Elements with more than ``FOLD_MAX_ROWS`` rows keep one launch
    per element (a ``lax.map``).  Both give the reference's numbers."""
    from e3nn_fast.kernels import multilinear

    if not fold:
        monkeypatch.setattr(multilinear, "FOLD_MAX_ROWS", 0)
    description = describe("3x0e+2x1o+1x2e", "0e+1o", "uvu", True, seed=17, max_terms=30)
    weights, chunks1, chunks2 = _inputs(description, (7,), "rows")

    def per_sample(description, weights, chunks1, chunks2):
        return jax.vmap(lambda w, c1, c2: interpret_tp(description, w, c1, c2))(weights, chunks1, chunks2)

    ours = derivatives(per_sample, description)
    text = str(jax.make_jaxpr(ours)(weights, chunks1, chunks2))
    assert text.count("e3nn_fast_multilinear") >= 4
    assert ("scan" not in text and "while" not in text) == fold  # lax.map is a scan
    assert_trees_close(ours(weights, chunks1, chunks2),
                       derivatives(reference_tp, description)(weights, chunks1, chunks2), 1e-12)


def test_gradient_graph_runs_only_kernels():
    description = describe("3x0e+2x1o", "0e+1o", "uvu", True, keep=3, seed=10)
    weights, chunks1, chunks2 = _inputs(description, (6,), "rows")
    energy = lambda *a: sum(jnp.sum(jnp.sin(o)) for o in interpret_tp(description, *a) if o is not None)
    forces = lambda *a: sum(jnp.sum(g**2) for g in jax.grad(energy, argnums=2)(*a))
    jaxpr = str(jax.make_jaxpr(jax.grad(forces, argnums=(0, 1)))(weights, chunks1, chunks2))
    assert jaxpr.count("e3nn_fast_multilinear") >= 4
    assert "dot_general" not in jaxpr  # no einsum of the reference anywhere in forward, backward, double backward


def test_edge_cases_match_reference():
    # zero chunks on both sides, an empty batch, no leading axes, broadcasting leading axes, a zero coefficient
    description = describe_full_tensor_product(Irreps("3x0e+2x1o+0x2e"), Irreps("0e+1o"), (Irrep("1o"),), "component")
    for lead1, lead2, none1, none2 in [((4,), (4,), (1,), ()), ((0,), (0,), (), ()), ((3, 1), (1, 5), (), ())]:
        chunks1 = make_chunks(description.irreps_in1, lead1, 0, jnp.float64, none1)
        chunks2 = make_chunks(description.irreps_in2, lead2, 1, jnp.float64, none2)
        weights = [None] * len(description.paths)
        ours = jax.jit(lambda c1, c2: interpret_tp(description, weights, c1, c2))(chunks1, chunks2)
        theirs = jax.jit(lambda c1, c2: reference_tp(description, weights, c1, c2))(chunks1, chunks2)
        assert_trees_close(ours, theirs, 1e-12)
    zero = describe("2x0e+1o", "0e", "uvu", False, seed=11)
    zero = TensorProductDescription(
        zero.irreps_in1, zero.irreps_in2, zero.irreps_out, (dataclass_replace(zero.paths[0], coefficient=0.0),) + zero.paths[1:]
    )
    chunks1 = make_chunks(zero.irreps_in1, (3,), 0, jnp.float64)
    chunks2 = make_chunks(zero.irreps_in2, (3,), 1, jnp.float64)
    ours = jax.jit(lambda c1, c2: interpret_tp(zero, [None] * len(zero.paths), c1, c2))(chunks1, chunks2)
    theirs = jax.jit(lambda c1, c2: reference_tp(zero, [None] * len(zero.paths), c1, c2))(chunks1, chunks2)
    assert_trees_close(ours, theirs, 1e-12)


def dataclass_replace(path, **changes):
    import dataclasses

    return dataclasses.replace(path, **changes)


LANE_BLOCK_CASES = [
    ("uvu", lambda: describe("4x0e+2x1o+3x2e", "0e+1o", "uvu", True, seed=14, max_terms=30), "rows"),
    ("uvu-shared", lambda: describe("4x0e+2x1o+1x1e", "0e+1o", "uvu", True, seed=15, max_terms=30), "shared"),
    ("uuu", lambda: describe(Irreps("4x0e+2x1o+1x2e"), Irreps("4x1o+2x1e+1x0e"), "uuu", True, seed=16,
                             max_terms=30), "shared"),
]


@pytest.mark.parametrize("name,make,weight_kind", LANE_BLOCK_CASES, ids=[c[0] for c in LANE_BLOCK_CASES])
def test_lane_blocks_match_reference(name, make, weight_kind):
    """Channels split over a second grid axis (``aligned.channel_block=2``: planes of 4 lanes in 2 blocks, narrower
    ones round-robin over the programs, one-channel outputs never split, shared-weight gradients summed over rows per
    lane block) give the reference's output, first and second derivatives."""
    from e3nn_fast.kernels import tuning

    description = make()
    inputs = _inputs(description, (13,), weight_kind)
    with tuning.override(aligned__channel_block=2):
        ours = derivatives(interpret_tp, description)(*inputs)
    assert_trees_close(ours, derivatives(reference_tp, description)(*inputs), 1e-12)


def _mace_large_groups(description, slot):
    kinds = tuple(None for _ in description.paths)
    plan = _aligned.aligned_plan(description, tuple(range(len(description.paths))), kinds)
    return _aligned._product_groups(plan, plan.slot_index(slot), frozenset())


def test_launch_shapes_at_mace_large_sizes(monkeypatch):
    """Issue 14: the elementwise gradients of ``128x(0e+1o+2e)`` on 5,000 rows get planes of 8 x 64 (two lane blocks,
    ~4 registers a plane; 16 x 128 spilled 2 KB) and >= 4 programs per SM of a 132-SM GPU; the channelwise ``dx2``
    (a sum over all 128 lanes, which cannot be split) 4 x 128; ``live_elements=2**30, target_programs=1`` restores
    the old shapes."""
    from e3nn_fast.kernels import tuning

    monkeypatch.setattr(layout, "MAX_BLOCK_ROWS", 256)  # undo the small_blocks fixture: the shipped bound
    irreps = Irreps("128x0e+128x1o+128x2e")
    elementwise = describe_elementwise_tensor_product(irreps, irreps, None, "component")
    harmonics = Irreps("0e+1o+2e+3o")
    sh = describe_full_tensor_product(irreps, harmonics, tuple(ir for _, ir in harmonics), "component")

    def shape(description, slot, rows):
        found = _aligned._launch_shape(_mace_large_groups(description, slot), rows)
        return found.rows, found.lane_blocks, -(-rows // found.rows) * found.lane_blocks

    for slot in ("x1", "x2"):
        rows, lane_blocks, programs = shape(elementwise, slot, 5000)
        assert (rows, lane_blocks) == (8, 2) and programs >= 4 * 132
    assert shape(elementwise, "out", 5000)[:2] == (8, 1)
    assert shape(sh, "x2", 160000)[:2] == (4, 1)
    with tuning.override(aligned__live_elements=2**30, aligned__target_programs=1):
        assert shape(elementwise, "x1", 5000) == (16, 1, 313)
        assert shape(sh, "x2", 160000) == (16, 1, 10000)


def test_mixed_modes_fall_back_per_path():
    """tensor_square has uvuv, u<v and uuu paths: the aligned ones run in kernels, u<v through the reference."""
    description = describe_tensor_square(Irreps("3x0e+1o"), "component", False)
    families = {kernel_family(p, None) for p in description.paths}
    assert families == {"aligned", None} and not qualifies(description)
    chunks = make_chunks(description.irreps_in1, (7,), 0, jnp.float64)
    weights = [None] * len(description.paths)
    ours = derivatives(interpret_tp, description)(weights, chunks, chunks)
    theirs = derivatives(reference_tp, description)(weights, chunks, chunks)
    assert_trees_close(ours, theirs, 1e-12)


def test_family_classification():
    assert qualifies(describe("2x0e+1o", "0e+1o", "uvu", True))
    assert qualifies(describe("0e+1o", "3x1o", "uvv", False))
    assert qualifies(describe_elementwise_tensor_product(Irreps("2x0e+1o"), Irreps("2x1o+1o"), None, "component"))
    assert qualifies(describe("2x0e+1o", "3x0e+1o", "uvw", True, mul_out=4))
    assert not qualifies(describe("2x0e+1o", "3x0e+1o", "uvu", True))  # two channel indices, not uvw
    per_row_uvw = describe("2x0e", "3x0e", "uvw", True, mul_out=4)
    assert kernel_family(per_row_uvw.paths[0], jnp.zeros((5, 2, 3, 4))) is None
    assert _aligned.channel_roles(describe("1x0e", "3x1o", "uvuv", False).paths[0]) == (False, True, True, False)


# --- CUDA / TPU lowering -------------------------------------------------------------------------------------------


from pallas_lowering import lower_for_platform as _lower_for_platform  # noqa: E402
from pallas_lowering import require_pallas_lowering as _require_pallas_lowering  # noqa: E402


LOWERING_CASES = [
    ("uvu", lambda: describe("5x0e+33x1o+3x2e", "0e+1o+2e", "uvu", True, seed=12, max_terms=20), "rows"),
    ("uuu", lambda: describe_elementwise_tensor_product(Irreps("7x0e+2x1o"), Irreps("7x1o+2x2e"), None, "component"),
     None),
    ("uvw", lambda: describe("20x0e+5x1o", "16x0e+1o", "uvw", True, mul_out=24, keep=2, seed=13), "shared"),
    ("linear", lambda: _linear_description("12x0e+3x1o+5x1o", "7x0e+4x1o"), "shared"),
]


def _linear_description(irreps_in, irreps_out):
    from e3nn_fast.linear import FunctionalLinear

    return FunctionalLinear(Irreps(irreps_in), Irreps(irreps_out)).description()


LOWERING_TARGETS = [("cuda", "triton", jnp.float32), ("tpu", "tpu_custom_call", jnp.float32)]


@pytest.mark.parametrize(
    "platform,marker,dtype,name,make,weight_kind",
    [target + case for target in LOWERING_TARGETS for case in LOWERING_CASES]
    + [("cuda", "triton", jnp.bfloat16) + LOWERING_CASES[0]],  # bf16: one family (the dtype handling is shared)
)
def test_kernels_and_gradient_graphs_lower(platform, marker, dtype, name, make, weight_kind):
    """Forward, gradient and forces-style double backward of each family lower for the accelerator, every product
    inside kernels (a kernel that cannot lower fails here, on the CPU machine)."""
    _require_pallas_lowering(platform)  # fails (never skips) when this jax cannot lower Pallas there at all
    description = make()
    weights, chunks1, chunks2 = _inputs(description, (37,), weight_kind, dtype=dtype)
    compiled_tp = lambda *a: kernel_tp(*a, interpret=False)

    def energy(weights, chunks1, chunks2):
        out = compiled_tp(description, weights, chunks1, chunks2)
        return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in out if o is not None)

    def forces_loss(weights, chunks1, chunks2):
        return sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.grad(energy, argnums=2)(weights, chunks1, chunks2))

    def everything(weights, chunks1, chunks2):
        out = compiled_tp(description, weights, chunks1, chunks2)
        first = jax.grad(energy, argnums=(0, 1, 2))(weights, chunks1, chunks2)
        second = jax.grad(forces_loss, argnums=(0, 1))(weights, chunks1, chunks2)
        return out, first, second

    text = _lower_for_platform(everything, (weights, chunks1, chunks2), platform).as_text()
    assert text.count(marker) >= 6  # forward, gradient and double-backward kernels
    assert name in ("uvw", "linear") or "dot_general" not in text  # no reference einsum (uvw kernels use dots inside)


def test_lowering_table_is_triton():
    from e3nn_fast.kernels import _pallas_compat as compat

    assert {compat.lowering(family) for family in compat.LOWERING} == {"triton"}


# --- dispatcher ---------------------------------------------------------------------------------------------------


def test_dispatcher_context_manager_and_config():
    assert {"reference", "pallas", "pallas-interpret"} <= set(dispatch.available("tensor_product"))
    with e3nn.backend("pallas-interpret"):
        assert dispatch.choose("tensor_product", size=10) == "pallas-interpret"
        with e3nn.backend("reference"):
            assert dispatch.choose("tensor_product", size=10) == "reference"
        assert dispatch.choose("tensor_product", size=10) == "pallas-interpret"
    previous = e3nn.config("backend")
    try:
        e3nn.config("backend", "pallas-interpret")
        assert dispatch.choose("tensor_product", size=10) == "pallas-interpret"
    finally:
        e3nn.config("backend", previous)
    with pytest.raises(ValueError):
        with e3nn.backend("triton"):
            pass


def test_auto_on_cpu_never_picks_interpret_mode(monkeypatch):
    assert jax.default_backend() == "cpu"
    monkeypatch.setitem(dispatch.KERNEL_PAYS_OFF, ("tensor_product", "cpu"), lambda size: True)
    for size in (1, 10**3, 10**9):
        with e3nn.backend("auto"):
            chosen = dispatch.choose("tensor_product", size=size)
        assert not chosen.startswith("pallas")


def test_environment_variable_selects_backend():
    code = "from e3nn_fast import dispatch; print(dispatch.current_backend())"
    env = dict(os.environ, E3NN_FAST_BACKEND="pallas-interpret", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pallas-interpret"


def test_public_tensor_product_through_interpret_backend():
    x = e3nn.normal("3x0e+2x1o", jax.random.PRNGKey(0), (3, 4))
    sh = e3nn.normal("1o", jax.random.PRNGKey(1), (4,))
    expected = e3nn.tensor_product(x, sh)
    with e3nn.backend("pallas-interpret"):
        ours = jax.jit(e3nn.tensor_product)(x, sh)
        jaxpr = str(jax.make_jaxpr(e3nn.tensor_product)(x, sh))
        product = jax.jit(lambda a, b: e3nn.elementwise_tensor_product(a, b))(x, x)
    assert "e3nn_fast_multilinear" in jaxpr
    assert ours.irreps == expected.irreps
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(expected.array), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(product.array), np.asarray(e3nn.elementwise_tensor_product(x, x).array), rtol=1e-12, atol=1e-12
    )


def test_compiled_backend_on_cpu_fails_clearly():
    x = e3nn.normal("2x0e", jax.random.PRNGKey(0), (3,))
    sh = e3nn.normal("0e", jax.random.PRNGKey(1), (3,))
    with e3nn.backend("pallas"):
        with pytest.raises(Exception, match="interpret"):
            jax.jit(e3nn.tensor_product)(x, sh)


def test_bad_weights_raise():
    description = describe("2x0e+1o", "0e+1o", "uvu", True)
    chunks1 = make_chunks(description.irreps_in1, (3,), 0, jnp.float64)
    chunks2 = make_chunks(description.irreps_in2, (3,), 1, jnp.float64)
    with pytest.raises(ValueError, match="weights"):
        interpret_tp(description, [None] * len(description.paths), chunks1, chunks2)
    with pytest.raises(ValueError, match="one per path"):
        interpret_tp(description, [], chunks1, chunks2)


def test_auto_kernel_choices_cite_committed_measurements():
    """Every entry of KERNEL_PAYS_OFF names results files committed under bench/results/gpu that hold a kernel row of
    that op; and auto picks the kernel only at sizes measured, on the platform measured."""
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert dispatch.KERNEL_PAYS_OFF, "auto has no measured kernel choice at all"
    for (op, platform), entry in dispatch.KERNEL_PAYS_OFF.items():
        assert isinstance(entry, dispatch.MeasuredWin), (op, platform)
        kernel_rows = []
        for source in entry.sources:
            assert source.startswith("bench/results/gpu/"), source
            with open(os.path.join(root, source)) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            kernel_rows += [r for r in rows if r["backend"].startswith("e3nn_fast:") and "pallas" in r["backend"]]
        assert any(r["status"] == "ok" for r in kernel_rows), entry.sources
        assert entry(entry.min_size) and not entry(entry.min_size - 1)
    with e3nn.backend("auto"):
        assert dispatch.choose("message_passing", size=10**10) == "jnp"  # this CPU: never a kernel
