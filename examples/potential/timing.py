"""Time per training step of the same model, parameters and batch, built on e3nn_fast and on e3nn_jax.

The candidates are compiled first, then timed in alternating rounds, so that a busy machine slows them alike; the
reported time is the best round's median.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Dict, Optional

import jax
import numpy as np
import optax

from .graphs import GraphBatch
from .model import ModelConfig, Potential
from .training import LossWeights, make_train_step


def compare_train_steps(
    candidates: Dict[str, tuple],
    config: ModelConfig,
    params,
    batch: GraphBatch,
    optimizer: optax.GradientTransformation,
    weights: LossWeights,
    rounds: int = 6,
    steps_per_round: int = 10,
) -> Dict[str, Dict[str, float]]:
    """``{name: {"compile_s", "step_s"}}`` for ``candidates = {name: (e3nn module, backend or None)}``.

    ``backend`` (e3nn_fast only) is forced while the step is traced, which is when e3nn_fast picks its executors.
    """
    opt_state = optimizer.init(params)
    steps, results = {}, {}
    for name, (e3nn, backend) in candidates.items():
        step = make_train_step(Potential(e3nn=e3nn, config=config), optimizer, weights)
        start = time.perf_counter()
        if backend is not None:
            with e3nn.backend(backend):
                jax.block_until_ready(step(params, opt_state, batch))
        else:
            jax.block_until_ready(step(params, opt_state, batch))
        steps[name] = step
        results[name] = {"compile_s": time.perf_counter() - start, "step_s": float("inf")}
    for _ in range(rounds):
        for name, step in steps.items():
            times = []
            for _ in range(steps_per_round):
                start = time.perf_counter()
                jax.block_until_ready(step(params, opt_state, batch))
                times.append(time.perf_counter() - start)
            results[name]["step_s"] = min(results[name]["step_s"], float(np.median(times)))
    return results


def import_e3nn_jax() -> Optional[ModuleType]:
    """e3nn_jax if it is installed (the comparison is optional), else None."""
    try:
        import e3nn_jax
    except ImportError:
        return None
    return e3nn_jax
