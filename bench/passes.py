"""The three timed passes of a workload, derived from its forward function.

``fwd``
    the forward function itself.
``fwd+bwd``
    value and gradient of ``E = sum(forward(*inputs) * cotangent)`` with respect to every differentiable input.  A
    fixed random cotangent (an argument, so XLA cannot fold it) keeps every output component live, unlike
    ``sum(out)`` whose all-ones cotangent XLA can simplify.
``forces``
    the double backward of force training: value and gradient, with respect to the *trained* inputs (features,
    weights), of ``L = sum(dE/d(force input) ** 2)``, where the force input is the one that plays the positions' role
    (the spherical harmonics / edge vectors).  It differentiates through a gradient, as a force-matching loss does.

Workloads that are whole models (the NequIP training step) define their own passes with the same names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PASSES = ("fwd", "fwd+bwd", "forces")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The arrays a workload's forward takes, and the roles of each argument position.

    ``differentiable``: positions differentiated in ``fwd+bwd``; ``force``: the position whose gradient the
    ``forces`` loss squares; ``trained``: positions ``forces`` differentiates the loss with respect to."""

    arrays: tuple
    differentiable: tuple
    force: int
    trained: tuple


def host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key: random inputs drawn on the host compile nothing (``jax.random`` compiles
    one kernel per shape, about a second each on a small CPU, which dominated the tiny suite)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def host_normal(rng: np.random.Generator, shape, dtype) -> jax.Array:
    """Standard normal values of ``shape`` and ``dtype``, drawn by ``rng``."""
    return jnp.asarray(rng.standard_normal(shape), dtype)


def cotangent_like(forward: Callable, inputs: Inputs, key) -> jax.Array:
    """A fixed random array of the forward output's shape and dtype (the shape computed abstractly)."""
    shape = jax.eval_shape(forward, *inputs.arrays)
    return host_normal(host_rng(key), shape.shape, shape.dtype)


def derived_passes(forward: Callable, inputs: Inputs) -> dict:
    """``{pass name: function of (*inputs.arrays, cotangent)}`` for a forward returning one array."""

    def energy(*args):
        *arrays, cotangent = args
        return jnp.sum(forward(*arrays) * cotangent)

    def fwd(*args):
        return forward(*args[:-1])

    def fwd_bwd(*args):
        return jax.value_and_grad(energy, argnums=inputs.differentiable)(*args)

    def force_loss(*args):
        gradient = jax.grad(energy, argnums=inputs.force)(*args)
        return jnp.sum(gradient**2)

    def forces(*args):
        return jax.value_and_grad(force_loss, argnums=inputs.trained)(*args)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "forces": forces}
