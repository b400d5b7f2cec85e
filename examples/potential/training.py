"""Loss on energies and forces, the optax optimiser, the jitted training step, evaluation and the training loop."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .graphs import Graph, GraphBatch, PaddingBudget, iterate_batches
from .model import Potential, graph_energies_and_forces


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the per-atom energy and the force terms; both errors are measured in units of the energy scale."""

    energy: float = 1.0
    forces: float = 1.0


def energy_forces_loss(model: Potential, params, batch: GraphBatch, weights: LossWeights) -> jax.Array:
    """``w_E * mean((dE / n_atoms)^2) + w_F * mean(dF^2)`` over the real graphs and atoms, divided by scale^2."""
    return combine_loss_sums(loss_sums(model, params, batch), weights, model.config.energy_scale)


def loss_sums(model: Potential, params, batch: GraphBatch) -> tuple:
    """The sums the loss is made of: (sum of squared per-atom energy errors, real graphs, sum of squared force
    errors, real atoms).  Sums add across shards of a batch, so a data-parallel loss is the loss of the whole batch."""
    energies, forces = graph_energies_and_forces(model, params, batch)
    graph_error = jnp.where(batch.graph_mask, (energies - batch.energy) / jnp.maximum(batch.num_atoms, 1.0), 0.0)
    force_error = jnp.where(batch.node_mask[:, None], forces - batch.forces, 0.0)
    return jnp.sum(graph_error**2), jnp.sum(batch.graph_mask), jnp.sum(force_error**2), jnp.sum(batch.node_mask)


def combine_loss_sums(sums: tuple, weights: LossWeights, scale: float) -> jax.Array:
    """The loss from :func:`loss_sums` (summed over shards, if any)."""
    energy_sq, num_graphs, forces_sq, num_atoms = sums
    energy_term = energy_sq / jnp.maximum(num_graphs, 1)
    forces_term = forces_sq / jnp.maximum(3 * num_atoms, 1)
    return (weights.energy * energy_term + weights.forces * forces_term) / scale**2


def make_optimizer(learning_rate: float, num_steps: int, warmup_steps: int = 50) -> optax.GradientTransformation:
    """Adam with a linear warm-up then cosine decay to 1% of ``learning_rate``, after global-norm clipping."""
    warmup_steps = max(0, min(warmup_steps, num_steps // 2))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 1),
        end_value=0.01 * learning_rate,
    )
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))


def make_train_step(model: Potential, optimizer: optax.GradientTransformation, weights: LossWeights) -> Callable:
    """``(params, opt_state, batch) -> (params, opt_state, loss)``, jitted (one compilation: batches are padded)."""

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: energy_forces_loss(model, p, batch, weights))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def make_predict(model: Potential) -> Callable:
    """Jitted ``(params, batch) -> (graph energies, forces)``."""
    return jax.jit(lambda params, batch: graph_energies_and_forces(model, params, batch))


def evaluate(
    predict: Callable, params, graphs: Sequence[Graph], batch_size: int, budget: PaddingBudget
) -> Dict[str, float]:
    """Energy MAE (meV/atom) and force MAE (meV/Å, per component) of ``params`` on ``graphs``."""
    energy_errors, force_errors = [], []
    for batch in iterate_batches(graphs, batch_size, budget):
        energies, forces = jax.device_get(predict(params, batch))
        real = batch.graph_mask
        energy_errors.append(np.abs(energies[real] - batch.energy[real]) / batch.num_atoms[real])
        force_errors.append(np.abs(forces[batch.node_mask] - batch.forces[batch.node_mask]).ravel())
    return {
        "energy_mae_meV_per_atom": 1000.0 * float(np.mean(np.concatenate(energy_errors))),
        "forces_mae_meV_per_A": 1000.0 * float(np.mean(np.concatenate(force_errors))),
    }


@dataclasses.dataclass
class History:
    """Learning curves: training loss per step and evaluation metrics at some steps."""

    step: List[int] = dataclasses.field(default_factory=list)
    loss: List[float] = dataclasses.field(default_factory=list)
    eval_step: List[int] = dataclasses.field(default_factory=list)
    energy_mae: List[float] = dataclasses.field(default_factory=list)
    forces_mae: List[float] = dataclasses.field(default_factory=list)

    def as_dict(self) -> Dict[str, list]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, list]) -> "History":
        return cls(**{k: [v for v in values.get(k, [])] for k in cls.__dataclass_fields__})


@dataclasses.dataclass
class TrainState:
    """Everything that a checkpoint holds and that the loop updates."""

    params: dict
    opt_state: optax.OptState
    step: int
    history: History


def infinite_batches(graphs: Sequence[Graph], batch_size: int, budget: PaddingBudget, seed: int, start_epoch: int = 0):
    """Shuffled batches forever, a fresh order per epoch (epoch ``k`` always uses the same order, for --resume)."""
    epoch = start_epoch
    while True:
        yield from iterate_batches(graphs, batch_size, budget, np.random.default_rng([seed, epoch]))
        epoch += 1


def train(
    state: TrainState,
    train_step: Callable,
    batches,
    num_steps: int,
    evaluate_fn: Callable[[dict], Dict[str, float]],
    eval_every: int,
    on_checkpoint: Optional[Callable[[TrainState], None]] = None,
    checkpoint_every: int = 0,
    progress: bool = True,
) -> tuple[TrainState, float]:
    """Run training steps until ``state.step == num_steps``; returns the state and the median time per step (seconds,
    excluding the first step of this run, which includes compilation)."""
    from tqdm import tqdm

    running = None
    step_times = []
    bar = tqdm(total=num_steps, initial=state.step, disable=not progress, dynamic_ncols=True, desc="training")

    def record_evaluation():
        metrics = evaluate_fn(state.params)
        state.history.eval_step.append(state.step)
        state.history.energy_mae.append(metrics["energy_mae_meV_per_atom"])
        state.history.forces_mae.append(metrics["forces_mae_meV_per_A"])
        loss = "   -   " if running is None else f"{running:.4f}"
        bar.write(
            f"step {state.step:6d}  loss {loss}  energy MAE {metrics['energy_mae_meV_per_atom']:.2f} meV/atom  "
            f"force MAE {metrics['forces_mae_meV_per_A']:.1f} meV/Å"
        )

    if state.step == 0 and not state.history.eval_step:
        record_evaluation()  # the starting point of the learning curves
    while state.step < num_steps:
        batch = next(batches)
        start = time.perf_counter()
        state.params, state.opt_state, loss = train_step(state.params, state.opt_state, batch)
        loss = float(loss)  # blocks until the step is done, so the timing is honest
        step_times.append(time.perf_counter() - start)
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {state.step}")
        state.step += 1
        running = loss if running is None else 0.95 * running + 0.05 * loss
        state.history.step.append(state.step)
        state.history.loss.append(loss)
        if state.step % eval_every == 0 or state.step == num_steps:
            record_evaluation()
        if on_checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0:
            on_checkpoint(state)
        bar.set_postfix(loss=f"{running:.4f}")
        bar.update(1)
    bar.close()
    steady = step_times[1:] if len(step_times) > 1 else step_times
    return state, float(np.median(steady)) if steady else float("nan")
