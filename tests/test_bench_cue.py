"""The cuequivariance-jax builders of the fused workloads (``mp-*``, ``sc-mace``) and of ``linear-128``
(:mod:`bench.cue`).

What is checked:

* the harness runs them on the tiny suite next to ``e3nn_fast:jnp`` (which traces the shared cotangent, so the
  output shapes must agree) and every cuequivariance row is ok with a positive time, for ``fwd``, ``fwd+bwd`` and
  ``forces`` (on a CPU: the ``naive`` method);
* message passing, numerically (float64): the cuequivariance builder equals the e3nn-API builder of the same
  workload (e3nn_fast's ``scatter_sum(tensor_product(x[senders], sh) * w)``) up to output layout.  The map between
  the two is made explicit: node features go in as ``(irrep, mul)`` blocks, each of cuequivariance's output blocks
  (one per path, ``(irrep, mul)``) is transposed to ``(mul, irrep)``, and the block order is matched by finding, with
  all weights 1, the one e3nn block of the same irrep equal to each cuequivariance block (the two libraries order a
  few paths of the same output irrep differently: e3nn by its sorted input irreps, ``2e`` before ``2o``,
  cuequivariance in the inputs' written order).  With that permutation applied to the weights and the outputs,
  fresh random inputs and weights must agree to 1e-10 relative: this checks the gather by senders, the scatter into
  receivers, the Clebsch-Gordan values *and* their normalisation (no scale is fitted), and which weight multiplies
  which path and channel;
* symmetric contraction: NOT numerically against e3nn (the two libraries' symmetric-power bases differ and the
  builder's weights are shape-only stand-ins); checked are the output shape, finiteness, and that the per-species
  weights are gathered by ``species``: changing one species' weights changes exactly the nodes of that species;
* ``linear-128``: not numerically (its weights are the builder's own); only through the harness rows;
* uniform_1d: cuequivariance checks a polynomial against its CUDA method only when lowering for a GPU, which works
  from a CPU; with a stand-in for the (absent) CUDA ops module, the forward and second derivative of each builder's
  call lower, with its indices, for ``mp-*`` and ``sc-mace``, and ``linear-128`` is refused (two channel modes), so
  it runs the naive method on a GPU.  The real kernel's own checks are not run here.
"""

from __future__ import annotations

import sys
import types

import pytest

cuex = pytest.importorskip("cuequivariance_jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import e3nn_fast  # noqa: E402
from bench import backends, runner, workloads  # noqa: E402
from bench import cue as bench_cue  # noqa: E402
from bench.passes import PASSES  # noqa: E402

NAMES = ["mp-mace-large", "mp-mace-medium", "mp-nequip-benzene", "sc-mace", "linear-128"]


def _tiny(workload_names, backend_names, passes):
    settings = runner.Settings(suite="tiny", repeats=1, progress=False, passes=passes)
    return runner.run_suite(workloads.select(workload_names), backends.select(backend_names), settings)


def _assert_cue_rows_ok(results, names, passes):
    rows = [r for r in results["rows"] if r["backend"] == "cuequivariance"]
    assert {(r["workload"], r["pass"]) for r in rows} == {(n, p) for n in names for p in passes}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["compile_s"] > 0, row


# In CI the smallest message-passing workload and the linear; the MACE message-passing workloads (the same builder at
# other irreps) and sc-mace (whose builder has its own numerical test below) cost two minutes more of compiling.
CI_NAMES = ["mp-nequip-benzene", "linear-128"]


@pytest.mark.parametrize("names", [CI_NAMES, pytest.param(NAMES, marks=pytest.mark.slow)], ids=["ci", "all"])
def test_harness_runs_cue_builders_next_to_e3nn_fast(names):
    results = _tiny(names, ["cuequivariance", "e3nn_fast:jnp"], PASSES)
    assert results["backends"]["cuequivariance"]["available"]
    _assert_cue_rows_ok(results, names, PASSES)
    assert all(r["status"] == "ok" for r in results["rows"] if r["backend"] == "e3nn_fast:jnp")


# --------------------------------------------------------------------------------------- message passing numerics


def _blocks(irreps):
    return [(mul, ir.dim) for mul, ir in irreps]


def _transpose_blocks(a, blocks, to_ir_mul: bool):
    """``(mul, irrep)`` blocks to ``(irrep, mul)`` (or back) along the last axis."""
    pieces, offset = [], 0
    for mul, dim in blocks:
        block = a[:, offset:offset + mul * dim]
        shape = (-1, mul, dim) if to_ir_mul else (-1, dim, mul)
        pieces.append(block.reshape(shape).swapaxes(1, 2).reshape(-1, mul * dim))
        offset += mul * dim
    return jnp.concatenate(pieces, axis=1)


def _split(a, sizes):
    return np.split(np.asarray(a), np.cumsum(sizes)[:-1], axis=1)


@pytest.mark.parametrize("name", ["mp-mace-medium", "mp-nequip-benzene"])
def test_message_passing_matches_e3nn_api_up_to_layout(name):
    jax.config.update("jax_enable_x64", True)
    workload = workloads.WORKLOADS[name]
    polynomial = bench_cue._channelwise_polynomial(*bench_cue.MESSAGE_PASSING[name], flatten=False)
    in_blocks, out_blocks = _blocks(polynomial.inputs[1].irreps), _blocks(polynomial.outputs[0].irreps)
    out_irreps = [ir for _, ir in polynomial.outputs[0].irreps]
    sizes = [mul * dim for mul, dim in out_blocks]
    cue_forward = jax.jit(workload.builders[bench_cue.API](cuex))
    e3nn_forward = jax.jit(workload.builders[workloads.E3NN_API](e3nn_fast))

    def cue_in_e3nn_layout(x, sh, w, senders, receivers):
        out = cue_forward(_transpose_blocks(x, in_blocks, True), sh, w, senders, receivers)
        return _transpose_blocks(out, out_blocks, False)

    edges = 44  # a few nodes with several edges each
    x, sh, w, senders, receivers = workload.make_inputs(edges, jnp.float64, jax.random.PRNGKey(0)).arrays
    assert x.shape[0] > 1
    ones = jnp.ones_like(w)
    ours = _split(cue_in_e3nn_layout(x, sh, ones, senders, receivers), sizes)
    theirs = _split(e3nn_forward(x, sh, ones, senders, receivers), sizes)
    permutation = []
    for p, block in enumerate(ours):
        scale = np.abs(block).max()
        matches = [q for q, other in enumerate(theirs) if out_irreps[q] == out_irreps[p]
                   and other.shape == block.shape and np.abs(other - block).max() <= 1e-12 * scale]
        assert len(matches) == 1, (p, out_irreps[p], matches)
        permutation.append(matches[0])
    assert sorted(permutation) == list(range(len(ours)))

    # fresh inputs and weights; cuequivariance's path p reads the weights of e3nn's block permutation[p]
    x, sh, w, senders, receivers = workload.make_inputs(edges, jnp.float64, jax.random.PRNGKey(1)).arrays
    channels = np.cumsum([0] + [mul for mul, _ in out_blocks])
    columns = np.concatenate([np.arange(channels[q], channels[q + 1]) for q in permutation])
    ours = _split(cue_in_e3nn_layout(x, sh, w[:, columns], senders, receivers), sizes)
    theirs = _split(e3nn_forward(x, sh, w, senders, receivers), sizes)
    reordered = np.concatenate([ours[permutation.index(q)] for q in range(len(ours))], axis=1)
    expected = np.concatenate(theirs, axis=1)
    np.testing.assert_allclose(reordered, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_message_passing_rejects_wrong_weight_count():
    workload = workloads.WORKLOADS["mp-mace-medium"]
    x, sh, w, senders, receivers = workload.make_inputs(17, jnp.float32, jax.random.PRNGKey(0)).arrays
    forward = workload.builders[bench_cue.API](cuex)
    with pytest.raises(ValueError, match="cuequivariance expects .* weights per edge"):
        jax.eval_shape(forward, x, sh, w[:, :-1], senders, receivers)


# ------------------------------------------------------------------------------------------ symmetric contraction


def test_symmetric_contraction_gathers_weights_by_species():
    workload = workloads.WORKLOADS["sc-mace"]
    x, species, *weights = workload.make_inputs(8, jnp.float32, jax.random.PRNGKey(0)).arrays
    forward = jax.jit(workload.builders[bench_cue.API](cuex))
    expected_shape = jax.eval_shape(workload.builders[workloads.E3NN_API](e3nn_fast), x, species, *weights).shape
    out = np.asarray(forward(x, species, *weights))
    assert out.shape == expected_shape
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
    changed = int(species[0])
    perturbed = [wk.at[changed].add(1.0) for wk in weights]
    moved = np.abs(np.asarray(forward(x, species, *perturbed)) - out).max(axis=(1, 2))
    of_species = np.asarray(species) == changed
    assert np.all(moved[of_species] > 0) and np.all(moved[~of_species] == 0), (moved, np.asarray(species))


# ------------------------------------------------------------------------------------------------------ uniform_1d


def _lowering_reasons(names, monkeypatch):
    """uniform_1d's verdict on each workload's call, lowered for a GPU, with the CUDA ops replaced by zeros."""
    ops = types.ModuleType("cuequivariance_ops_jax")
    ops.__version__ = "99.0"
    ops.Operation = ops.Path = lambda *args: args
    ops.uniform_1d = lambda inputs, outputs, *args, **kwargs: [jnp.zeros(o.shape, o.dtype) for o in outputs]
    monkeypatch.setitem(sys.modules, "cuequivariance_ops_jax", ops)
    verdicts = {}

    def record(key, compute, args):
        verdicts[current] = bench_cue.uniform_1d_rejection(compute, args, platforms=("cuda",))
        return "naive"

    monkeypatch.setattr(bench_cue, "_method", record)
    for current in names:
        workload = workloads.WORKLOADS[current]
        inputs = workload.make_inputs(workload.size("tiny"), jnp.float32, jax.random.PRNGKey(0))
        jax.eval_shape(workload.builders[bench_cue.API](cuex), *inputs.arrays)
    return verdicts


def test_uniform_1d_takes_the_indexed_calls_and_refuses_the_linear(monkeypatch):
    verdicts = _lowering_reasons(["mp-mace-medium", "sc-mace", "linear-128"], monkeypatch)
    assert verdicts["mp-mace-medium"] is None
    assert verdicts["sc-mace"] is None
    assert "exactly one mode" in verdicts["linear-128"]
