"""The training example (examples/train_potential.py and examples/potential/): data, padding, model symmetries,
a few training steps that reduce the loss, and checkpoint round trips.  Tiny EMT copper data and a tiny model."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from potential import checkpoint, data, graphs, model, training  # noqa: E402

CUTOFF = 3.0


@pytest.fixture(scope="module")
def frames():
    # 4-atom periodic fcc Cu cell: every atom has 12 neighbours within 3 Å (all through periodic images too).
    return data.simulate_emt_copper(8, temperature_K=600.0, interval=2, repeat=1, seed=1)


@pytest.fixture(scope="module")
def dataset(frames):
    table = data.species_table(frames)
    e0 = data.fit_reference_energies(frames, table)
    return [graphs.build_graph(f, CUTOFF, table, e0) for f in frames]


@pytest.fixture(scope="module")
def config(dataset):
    return model.ModelConfig(num_species=1, cutoff=CUTOFF, features=4, lmax=2, num_layers=2, num_basis=4,
                             radial_hidden=8, avg_num_neighbours=graphs.average_num_neighbours(dataset),
                             energy_scale=graphs.forces_rms(dataset))


@pytest.fixture(scope="module")
def potential(config):
    return model.Potential(e3nn=e3nn_fast, config=config)


@pytest.fixture(scope="module")
def predict(potential):
    return training.make_predict(potential)


# One padded shape for every prediction in this file, so that the jitted functions compile once.
BUDGET = graphs.PaddingBudget(num_nodes=16, num_edges=4 * 4 * 12 + 8, num_graphs=5)


def batch_of(graph_list):
    return graphs.pad_and_batch(graph_list, BUDGET, dtype=np.float64)


@pytest.fixture(scope="module")
def params(dataset, potential):
    return model.init_params(potential, batch_of(dataset[:1]), seed=3)


def test_emt_frames_are_labelled_and_cached(tmp_path, frames):
    frame = frames[0]
    assert frame.num_atoms == 4 and frame.forces.shape == (4, 3) and np.all(frame.pbc)
    # Newton's third law for a periodic crystal: forces sum to zero.
    np.testing.assert_allclose(frame.forces.sum(0), 0.0, atol=1e-8)
    assert len({f.energy for f in frames}) == len(frames)  # the MD moves
    first = data.cached_emt_dataset(3, cache_dir=tmp_path, interval=1, repeat=1)
    assert len(list(tmp_path.glob("*.xyz"))) == 1
    again = data.cached_emt_dataset(3, cache_dir=tmp_path, interval=1, repeat=1)  # read back from the cache
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-8)
        np.testing.assert_allclose(a.cell, b.cell, atol=1e-8)
        assert abs(a.energy - b.energy) < 1e-8


def test_reference_energies_are_least_squares():
    e0 = np.array([-13.6, -1030.0, -2040.0])
    table = np.array([1, 6, 8])
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        numbers = rng.choice(table, size=rng.integers(2, 6))
        energy = float(np.sum(e0[np.searchsorted(table, numbers)]))
        frames.append(data.Frame(numbers, np.zeros((len(numbers), 3)), np.zeros((3, 3)), np.zeros(3, bool), energy,
                                 np.zeros((len(numbers), 3))))
    np.testing.assert_allclose(data.fit_reference_energies(frames, data.species_table(frames)), e0, rtol=1e-10)
    with pytest.raises(ValueError, match="not in the training species"):
        data.species_indices(np.array([1, 7]), table)


def test_neighbour_list_matches_brute_force(frames):
    frame = frames[0]
    senders, receivers, shifts = graphs.neighbour_list(frame, CUTOFF)
    vectors = frame.positions[senders] - frame.positions[receivers] + shifts
    lengths = np.linalg.norm(vectors, axis=1)
    assert np.all((lengths > 0.5) & (lengths < CUTOFF))
    # Brute force over the 27 nearest images.
    images = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ frame.cell
    d = frame.positions[None, :, None] - frame.positions[:, None, None] + images[None, None]
    norms = np.linalg.norm(d, axis=-1)
    assert len(senders) == np.sum((norms > 1e-6) & (norms < CUTOFF))


def test_padding_budget_and_overflow(dataset):
    budget = graphs.padding_budget(dataset, 3)
    batch = graphs.pad_and_batch(dataset[:2], budget)
    assert batch.positions.shape == (budget.num_nodes, 3) and batch.senders.shape == (budget.num_edges,)
    assert batch.graph_mask.tolist() == [True, True, False, False]
    assert batch.node_mask.sum() == 8
    assert batch.positions.dtype == np.float32  # the default dtype of the example
    with pytest.raises(ValueError, match="do not fit"):
        graphs.pad_and_batch(dataset[:4], budget)


def test_padding_does_not_change_real_graphs(dataset, params, predict):
    energy_alone, forces_alone = predict(params, batch_of(dataset[:1]))
    energies, forces = predict(params, batch_of([dataset[2], dataset[0], dataset[1]]))
    np.testing.assert_allclose(energies[1], energy_alone[0], rtol=1e-12)
    np.testing.assert_allclose(forces[4:8], forces_alone[:4], atol=1e-12)
    assert np.all(np.isfinite(np.asarray(forces)))
    np.testing.assert_array_equal(np.asarray(energies)[3:], 0.0)  # padding graphs contribute nothing
    np.testing.assert_array_equal(np.asarray(energy_alone)[1:], 0.0)


def test_energy_invariant_forces_equivariant_translation_invariant(dataset, params, predict):
    batch = batch_of(dataset[:2])
    # A random rotation composed with the inversion: the energy is O(3)-invariant.
    rotation = -np.asarray(e3nn_fast.rand_matrix(jax.random.PRNGKey(5), (), dtype=jnp.float64))
    rotated = batch._replace(positions=batch.positions @ rotation.T, shifts=batch.shifts @ rotation.T)
    translated = batch._replace(positions=batch.positions + np.array([0.3, -1.7, 2.2]))
    energies, forces = predict(params, batch)
    assert np.std(np.asarray(forces)[batch.node_mask]) > 1e-6  # not trivially zero
    energies_rot, forces_rot = predict(params, rotated)
    np.testing.assert_allclose(energies_rot, energies, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(forces_rot, np.asarray(forces) @ rotation.T, atol=1e-10)
    energies_tr, forces_tr = predict(params, translated)
    np.testing.assert_allclose(energies_tr, energies, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(forces_tr, forces, atol=1e-10)


def test_forces_are_minus_the_energy_gradient(dataset, params, predict):
    batch = batch_of(dataset[:1])
    _, forces = predict(params, batch)
    displacement = np.zeros_like(batch.positions)
    displacement[1, 2] = 1e-5
    plus, _ = predict(params, batch._replace(positions=batch.positions + displacement))
    minus, _ = predict(params, batch._replace(positions=batch.positions - displacement))
    np.testing.assert_allclose(-(plus[0] - minus[0]) / 2e-5, forces[1, 2], rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def trained(dataset, potential, params):
    """20 training steps on one batch of 3 graphs; the step returns the loss of the parameters it starts from."""
    batch = batch_of(dataset[3:6])
    optimizer = training.make_optimizer(5e-2, 20, warmup_steps=2)
    state = training.TrainState(params, optimizer.init(params), 0, training.History())
    step = training.make_train_step(potential, optimizer, training.LossWeights())
    state, _ = training.train(state, step, iter([batch] * 20), 20, lambda p: {"energy_mae_meV_per_atom": 1.0,
                              "forces_mae_meV_per_A": 2.0}, eval_every=10, progress=False)
    return state, optimizer


def test_training_steps_reduce_the_loss(trained):
    state, _ = trained
    assert state.step == 20 and len(state.history.loss) == 20
    assert state.history.eval_step == [0, 10, 20] and state.history.forces_mae == [2.0, 2.0, 2.0]
    assert state.history.loss[-1] < 0.5 * state.history.loss[0], state.history.loss


def test_checkpoint_round_trip_restores_predictions(tmp_path, trained, dataset, potential, params, predict):
    state, optimizer = trained
    path = tmp_path / "checkpoint.msgpack"
    checkpoint.save_checkpoint(path, state, {"model": {"features": 4}, "note": "test"})
    payload, metadata = checkpoint.read_checkpoint(path)
    assert metadata == {"model": {"features": 4}, "note": "test"}
    template = jax.tree_util.tree_map(jnp.zeros_like, params)  # same tree, other values
    restored = checkpoint.restore_state(payload, template, optimizer.init(template))
    assert restored.step == state.step and restored.history == state.history
    for a, b in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                    jax.tree_util.tree_leaves((restored.params, restored.opt_state))):
        np.testing.assert_array_equal(a, b)
    batch = batch_of(dataset[:3])
    for a, b in zip(predict(state.params, batch), predict(restored.params, batch)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(predict(params, batch)[0], predict(restored.params, batch)[0])  # training changed them
    smaller = {"params": {k: v for k, v in params["params"].items() if k != "readout"}}
    with pytest.raises(ValueError, match="unexpected.*readout"):
        checkpoint.restore_state(payload, smaller, optimizer.init(smaller))
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.read_checkpoint(tmp_path / "missing.msgpack")


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lmax"):
        model.ModelConfig(num_species=1, lmax=0)
    with pytest.raises(ValueError, match="positive"):
        model.ModelConfig(num_species=1, cutoff=-1.0)


@pytest.mark.slow
def test_command_line_trains_and_resumes(tmp_path):
    common = [sys.executable, str(EXAMPLES / "train_potential.py"), "--md-frames", "12", "--num-test", "4",
              "--features", "4", "--lmax", "1", "--layers", "1", "--batch-size", "2", "--eval-every", "3",
              "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "run"), "--no-progress"]
    first = subprocess.run(common + ["--steps", "3"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "force MAE" in first.stdout and (tmp_path / "run" / "learning_curves.png").is_file()
    second = subprocess.run(common + ["--steps", "5", "--resume", "--no-compare"], capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "trained to step 5" in second.stdout


def test_fused_model_matches_the_e3nn_jax_composition(dataset, config, params, predict):
    # e3nn_fast runs the convolution through the fused message passing; e3nn-jax op by op: same parameters, same numbers
    e3nn_jax = pytest.importorskip("e3nn_jax")
    theirs = training.make_predict(model.Potential(e3nn=e3nn_jax, config=config))
    batch = batch_of(dataset[:2])
    energies, forces = predict(params, batch)
    energies_jax, forces_jax = theirs(params, batch)
    np.testing.assert_allclose(energies, energies_jax, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(forces, forces_jax, rtol=1e-9, atol=1e-10)
