"""Checkpoints: parameters, optimiser state, step, learning curves and metadata in one msgpack file
(flax.serialization).

The metadata (model configuration, species table, reference energies, data settings) is stored as JSON text so that
``--resume`` can rebuild exactly the same model before the arrays are restored into its parameter tree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from flax import serialization

from .training import History, TrainState

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: TrainState, metadata: Dict[str, Any]) -> None:
    """Write ``state`` and JSON-serialisable ``metadata`` to ``path`` (atomically: temporary file, then rename)."""
    history = {k: np.asarray(v) for k, v in state.history.as_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "params": serialization.to_state_dict(state.params),
        "opt_state": serialization.to_state_dict(state.opt_state),
        "step": state.step,
        "history": history,
        "metadata": json.dumps(metadata),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(serialization.msgpack_serialize(payload))
    os.replace(temporary, path)


def read_checkpoint(path: str | os.PathLike) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(raw payload, metadata) of a checkpoint; restore the arrays with :func:`restore_state`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    payload = serialization.msgpack_restore(path.read_bytes())
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} is not a version-{FORMAT_VERSION} potential checkpoint")
    return payload, json.loads(payload["metadata"])


def restore_state(payload: Dict[str, Any], params_template, opt_state_template) -> TrainState:
    """A :class:`TrainState` with the arrays of ``payload`` in the trees of the templates (names and shapes checked)."""
    _check_matches(params_template, payload["params"], "parameters")
    _check_matches(opt_state_template, payload["opt_state"], "optimiser state")
    params = serialization.from_state_dict(params_template, payload["params"])
    opt_state = serialization.from_state_dict(opt_state_template, payload["opt_state"])
    history = History.from_dict({k: np.asarray(v).tolist() for k, v in payload["history"].items()})
    return TrainState(params=params, opt_state=opt_state, step=int(payload["step"]), history=history)


def _check_matches(template, stored: Dict[str, Any], what: str) -> None:
    """Raise ValueError unless ``stored`` (a state dict) has exactly the leaves of ``template``, with their shapes.

    (flax's from_state_dict silently ignores stored entries that the template lacks.)
    """
    from flax import traverse_util

    def shapes(tree):
        state = serialization.to_state_dict(tree)
        if not isinstance(state, dict):
            return {(): np.shape(state)}
        flat = traverse_util.flatten_dict(state, keep_empty_nodes=True)
        return {"/".join(map(str, k)): np.shape(v) for k, v in flat.items()}

    expected, found = shapes(template), shapes(stored)
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        mismatched = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise ValueError(
            f"checkpoint {what} do not match the model: missing {missing}, unexpected {unexpected}, "
            f"different shapes {[(k, expected[k], found[k]) for k in mismatched]}"
        )
