"""Learning curves (training loss and held-out MAEs against the step) saved as a PNG with matplotlib's Agg backend."""

from __future__ import annotations

import os

import numpy as np

from .training import History


def smooth(values, window: int) -> np.ndarray:
    """Running mean over ``window`` steps (shorter at the start), to make a noisy loss curve readable."""
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    stop = np.arange(1, len(values) + 1)
    begin = np.maximum(stop - window, 0)
    return (cumulative[stop] - cumulative[begin]) / (stop - begin)


def plot_learning_curves(history: History, path: str | os.PathLike, title: str = "") -> None:
    """Three panels: training loss (log), energy MAE (meV/atom) and force MAE (meV/Å) on the held-out set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    if history.loss:
        axes[0].semilogy(history.step, history.loss, color="0.75", lw=0.8, label="per step")
        axes[0].semilogy(history.step, smooth(history.loss, 25), color="C0", label="running mean (25)")
        axes[0].legend()
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].plot(history.eval_step, history.energy_mae, "o-", color="C1")
    axes[1].set(xlabel="step", ylabel="meV/atom", title="energy MAE (held out)")
    axes[2].plot(history.eval_step, history.forces_mae, "o-", color="C2")
    axes[2].set(xlabel="step", ylabel="meV/Å", title="force MAE (held out)")
    for axis in axes[1:]:
        if history.eval_step and min(history.energy_mae + history.forces_mae) > 0:
            axis.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
