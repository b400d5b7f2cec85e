"""The training example over several devices and processes (issue 17 items 3 and 4): data-parallel and graph-parallel
losses and gradients equal one device's, in one process with 8 fake CPU devices and in 2 processes with 4 each
(``jax.distributed`` over a localhost coordinator, gloo CPU collectives).

JAX's device count and processes are fixed when it starts, so the checks run in fresh interpreters: this file run as
a script (``python tests/test_train_sharded.py GROUP [PROCESS_ID PORT]``) prints one JSON line that the tests assert
on.  Tiny EMT copper data (4-atom cells; one 108-atom cell for the graph-parallel checks) and a tiny model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOLERANCE = 1e-5  # relative, float32


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- script mode ----------------------------------------------------------------------------------------------------


def _checks(group: str, process_id: int = 0, port: int = 0) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    from potential import parallel

    if group == "multi":
        parallel.request_cpu_devices(4)
        parallel.initialize_distributed(f"localhost:{port}", 2, process_id)
    else:
        parallel.request_cpu_devices(8)
    import jax

    import e3nn_fast
    from potential import data, graphs, model, training

    local = jax.local_devices()[0]
    results = {"process": jax.process_index(), "processes": jax.process_count(), "devices": len(jax.devices()),
               "local_devices": len(jax.local_devices())}
    weights = training.LossWeights(energy=1.0, forces=1.0)
    leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]

    def compare(name, loss, grads, ref_loss, ref_grads):
        grads, ref_grads = leaves(grads), leaves(ref_grads)
        results[name] = {"loss": float(loss), "ref_loss": float(ref_loss), "loss_rel": rel(loss, ref_loss),
                         "grad_rel": max(rel(g, r) for g, r in zip(grads, ref_grads)),
                         "grad_norm": float(np.sqrt(sum(np.sum(g**2) for g in grads)))}

    # data parallel: 8 small cells, one per device
    frames = data.simulate_emt_copper(8, temperature_K=600.0, interval=2, repeat=1, seed=1)
    table = data.species_table(frames)
    e0 = data.fit_reference_energies(frames, table)
    small = [graphs.build_graph(f, 3.0, table, e0) for f in frames]
    config = model.ModelConfig(num_species=1, cutoff=3.0, features=4, lmax=2, num_layers=2, num_basis=4,
                               radial_hidden=8, avg_num_neighbours=graphs.average_num_neighbours(small),
                               energy_scale=graphs.forces_rms(small))
    potential = model.Potential(e3nn=e3nn_fast, config=config)
    flat = jax.device_put(graphs.pad_and_batch(small, graphs.padding_budget(small, 8)), local)
    params = model.init_params(potential, flat, seed=0)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(
        lambda p: training.energy_forces_loss(potential, p, flat, weights)))(params)

    dp = parallel.Placement(parallel.select_devices(None), "batch")
    stacked = dp.shard(parallel.stacked_batch(small, dp.size, graphs.padding_budget(small, 1)))
    # global arrays are arguments, never closed over (a process cannot embed other processes' rows)
    loss, grads = jax.jit(jax.value_and_grad(lambda p, b: parallel.data_parallel_loss(potential, p, b, weights)),
                          out_shardings=dp.replicated)(dp.replicate(params), stacked)
    compare("data_parallel", *dp.local((loss, grads)), ref_loss, ref_grads)

    # graph parallel: one 108-atom cell (atoms sorted along x) split over every device
    (frame,) = data.emt_copper_supercell(1, repeat=3, seed=2)
    big = graphs.build_graph(frame, 4.0, table, data.fit_reference_energies([frame], table))
    gp_config = model.ModelConfig(num_species=1, cutoff=4.0, features=4, lmax=2, num_layers=2, num_basis=4,
                                  radial_hidden=8, avg_num_neighbours=graphs.average_num_neighbours([big]),
                                  energy_scale=graphs.forces_rms([big]))
    one = model.Potential(e3nn=e3nn_fast, config=gp_config)
    batch = jax.device_put(graphs.pad_and_batch([big], graphs.padding_budget([big], 1)), local)
    gp_params = model.init_params(one, batch, seed=1)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(
        lambda p: training.energy_forces_loss(one, p, batch, weights)))(gp_params)
    gp = parallel.Placement(parallel.select_devices(None), "graph")
    host_inputs = parallel.graph_inputs(big, gp.size)
    results["halo_offsets"] = list(host_inputs.partition.halo_offsets)
    placed = parallel.place_graph(host_inputs, gp)
    replicated = gp.replicate(gp_params)
    for mode in ("halo", "all_gather") if group == "single" else ("halo",):
        sharded = parallel.GraphParallelPotential(e3nn=e3nn_fast, config=gp_config, axis_name="graph", mode=mode)
        loss, grads = jax.jit(jax.value_and_grad(
            lambda p, g: parallel.graph_parallel_loss(sharded, p, g, weights, gp.mesh)),
            out_shardings=gp.replicated)(replicated, placed)
        compare(f"graph_parallel_{mode}", *gp.local((loss, grads)), ref_loss, ref_grads)

    if group == "single":  # frames of one cell with different neighbour lists share one compiled loss
        moved = data.emt_copper_supercell(2, repeat=3, displacement_A=(0.2, 0.25), seed=3)
        pair = [graphs.build_graph(f, 4.0, table, data.fit_reference_energies(moved, table)) for f in moved]
        traces = []

        @jax.jit
        def frame_loss(p, g):
            traces.append(1)
            return parallel.graph_parallel_loss(sharded, p, g, weights, gp.mesh)

        hosts = parallel.common_graph_inputs(pair, gp.size, halo_multiple=8, edge_multiple=8)
        natural = [parallel.graph_inputs(g, gp.size).partition for g in pair]
        results["frames"] = {
            "num_edges": [len(g.senders) for g in pair],
            "natural_halo_offsets": [list(p.halo_offsets) for p in natural],
            "losses": [float(gp.local(frame_loss(replicated, parallel.place_graph(h, gp)))) for h in hosts],
            "traces": len(traces),
        }

    if group == "single":  # a few training steps of each layout
        optimizer = training.make_optimizer(5e-3, 4, 0)
        step = parallel.make_data_parallel_step(potential, optimizer, weights, dp)
        p, o = dp.replicate(params), dp.replicate(optimizer.init(params))
        batches = parallel.data_parallel_batches(small, 8, dp.size, graphs.padding_budget(small, 1), seed=0)
        results["dp_steps"] = []
        for _ in range(3):
            p, o, loss = step(p, o, next(batches))
            results["dp_steps"].append(float(loss))
        step = parallel.make_graph_parallel_step(sharded, optimizer, weights, gp)
        p, o = replicated, gp.replicate(optimizer.init(gp_params))
        results["gp_steps"] = []
        for _ in range(3):
            p, o, loss = step(p, o, placed)
            results["gp_steps"].append(float(loss))
    return results


def _env() -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("E3NN_FAST_BACKEND", None)
    env.pop("XLA_FLAGS", None)  # the script asks JAX for its devices itself
    return env


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _assert_equal_to_one_device(results: dict, names=("data_parallel", "graph_parallel_halo")) -> None:
    for name in names:
        check = results[name]
        assert np.isfinite(check["loss"]) and check["loss"] > 0 and check["grad_norm"] > 0, (name, check)
        assert check["loss_rel"] < TOLERANCE and check["grad_rel"] < TOLERANCE, (name, check)


def test_one_process_eight_devices_match_one_device():
    proc = subprocess.run([sys.executable, __file__, "single"], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = _last_json(proc.stdout)
    assert results["devices"] == 8 and results["processes"] == 1
    assert len(results["halo_offsets"]) >= 2  # neighbours really are on other devices
    _assert_equal_to_one_device(results, ("data_parallel", "graph_parallel_halo", "graph_parallel_all_gather"))
    frames = results["frames"]  # different edge counts (and halo distances), one trace of the loss
    assert frames["num_edges"][0] != frames["num_edges"][1], frames
    assert frames["traces"] == 1 and all(np.isfinite(frames["losses"])), frames
    for name in ("dp_steps", "gp_steps"):  # training steps run and reduce the loss
        losses = results[name]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], (name, losses)


def test_two_processes_match_one_device():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "multi", str(pid), str(port)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-4000:]
            outputs.append(_last_json(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for pid, results in enumerate(outputs):
        assert (results["process"], results["processes"], results["devices"], results["local_devices"]) == (pid, 2, 8, 4)
        _assert_equal_to_one_device(results)
    for name in ("data_parallel", "graph_parallel_halo"):  # both processes agree
        assert outputs[0][name]["loss"] == outputs[1][name]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--devices", "4", "--batch-size", "4"],
                                   ["--devices", "4", "--graph-parallel", "--supercell-repeat", "5"]])
def test_command_line_trains_sharded(tmp_path, flags):
    command = [sys.executable, str(EXAMPLES / "train_potential.py"), *flags, "--steps", "3", "--eval-every", "3",
               "--md-frames", "40", "--num-test", "8", "--features", "4", "--no-compare", "--no-progress",
               "--output", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["devices"] == 4
    assert np.isfinite(summary["test"]["forces_mae_meV_per_A"])


if __name__ == "__main__":  # script mode: one group of checks, results as one JSON line
    arguments = sys.argv[1:]
    group = arguments[0]
    extra = [int(a) for a in arguments[1:]]
    print(json.dumps(_checks(group, *extra)), flush=True)
