"""cuequivariance-jax implementations of the workloads, for the ``cuequivariance`` backend (API ``"cuequivariance"``).

Registered with :func:`bench.workloads.add_builder` when this module is imported (the runner imports it only when
``cuequivariance_jax`` is importable).  Each builder computes the same operation as the e3nn-API forward, from the same
input arrays, with cuequivariance's descriptors:

* channelwise convolutions: ``cue.descriptors.channelwise_tensor_product(x1, x2, filter)`` with the per-edge weights
  (one per path and channel, as many as the e3nn forward's ``w``);
* fully connected products: ``cue.descriptors.fully_connected_tensor_product`` with per-edge or shared weights;
* spherical harmonics ``l <= 3``: ``cuex.spherical_harmonics``.

cuequivariance lays irreps out ``(irrep, mul)`` and orders its outputs its own way, so its outputs are not compared
numerically with e3nn-jax's (the runner compares only backends of the same API); sizes and FLOPs are the same.
On a GPU the ``uniform_1d`` CUDA method is used when the polynomial supports it, else the ``naive`` JAX one.
"""

from __future__ import annotations

import jax.numpy as jnp

from bench import devices, workloads

API = "cuequivariance"


def _evaluate(cuex, polynomial, inputs):
    """``cuex.equivariant_polynomial`` with the CUDA method on an accelerator, the naive one otherwise (or when the
    CUDA method rejects the polynomial: the choice happens while tracing, so the fallback costs nothing at run time)."""
    if devices.is_accelerator():
        try:
            return cuex.equivariant_polynomial(polynomial, inputs, method="uniform_1d")
        except Exception:  # noqa: BLE001 - not every polynomial fits uniform_1d
            pass
    return cuex.equivariant_polynomial(polynomial, inputs, method="naive")


def _rep(cuex, operand, array):
    return cuex.RepArray(operand, array)


def channelwise(in1: str, in2: str, filter_out: str):
    """Builder for ``tensor_product(x1, x2, filter_ir_out) * w``."""

    def build(cuex):
        import cuequivariance as cue

        polynomial = cue.descriptors.channelwise_tensor_product(
            cue.Irreps("O3", in1), cue.Irreps("O3", in2), cue.Irreps("O3", filter_out))
        polynomial = polynomial.squeeze_modes().flatten_coefficient_modes()

        def forward(x1, x2, w):
            if w.shape[-1] != polynomial.inputs[0].dim:
                raise ValueError(f"cuequivariance expects {polynomial.inputs[0].dim} weights per edge, "
                                 f"the workload has {w.shape[-1]}")
            inputs = [w, _rep(cuex, polynomial.inputs[1], x1), _rep(cuex, polynomial.inputs[2], x2)]
            return _evaluate(cuex, polynomial, inputs).array

        return forward

    return build


def fully_connected(in1: str, in2: str, out: str):
    """Builder for the fully connected product, weights per sample ``(n, W)`` or shared ``(W,)``."""

    def build(cuex):
        import cuequivariance as cue

        polynomial = cue.descriptors.fully_connected_tensor_product(
            cue.Irreps("O3", in1), cue.Irreps("O3", in2), cue.Irreps("O3", out))

        def forward(x1, x2, w):
            if w.shape[-1] != polynomial.inputs[0].dim:
                raise ValueError(f"cuequivariance expects {polynomial.inputs[0].dim} weights, the workload has "
                                 f"{w.shape[-1]}")
            weights = w if w.ndim == 2 else jnp.broadcast_to(w, (x1.shape[0], w.shape[-1]))
            inputs = [weights, _rep(cuex, polynomial.inputs[1], x1), _rep(cuex, polynomial.inputs[2], x2)]
            return _evaluate(cuex, polynomial, inputs).array

        return forward

    return build


def spherical_harmonics(lmax: int):
    def build(cuex):
        import cuequivariance as cue

        def forward(vectors):
            return cuex.spherical_harmonics(list(range(lmax + 1)),
                                            cuex.RepArray(cue.Irreps("O3", "1o"), vectors, cue.ir_mul),
                                            normalize=True).array

        return forward

    return build


CONVOLUTIONS = {
    "mace-large": ("128x0e+128x1o+128x2e", workloads.MACE_SH, "0e+1o+2e+3o"),
    "mace-medium": ("128x0e+128x1o", workloads.MACE_SH, "0e+1o+2e"),
    "nequip-benzene": (workloads.repeat(64, "0o+0e+1o+1e+2o+2e+3o+3e"), workloads.MACE_SH, "0o+0e+1o+1e+2o+2e+3o+3e"),
    "nequip-water": (workloads.repeat(32, "0o+0e+1o+1e"), "0e+1o", "0o+0e+1o+1e"),
    "sevennet-l3i5": ("128x0e+64x1e+32x2e+32x3e", "0e+1e+2e+3e", "0e+1e+2e+3e"),
    "high-l5": ("128x5e", "1x3e", "5e"),
    "high-l7": ("128x7e", "1x7e", "7e"),
}
FULLY_CONNECTED = {
    "diffdock": ("10x1o+10x1e+48x0e+48x0o", "0e+1o+2e", "10x1o+10x1e+48x0e+48x0o"),
    "fctp": ("128x0e+128x1e+128x2e", "128x0e+128x1e+128x2e", "128x0e+128x1e+128x2e"),
}


def register_builders() -> None:
    """Add the cuequivariance builders to the workload registry (idempotent)."""
    for name, spec in CONVOLUTIONS.items():
        workloads.add_builder(name, API, channelwise(*spec))
    for name, spec in FULLY_CONNECTED.items():
        workloads.add_builder(name, API, fully_connected(*spec))
    workloads.add_builder("sh-l3", API, spherical_harmonics(3))
    # No sh-l8: cuequivariance evaluates Y_8 as a degree-8 polynomial of the vector with the naive JAX method, whose
    # compilation did not finish in 10 minutes on the 2-core CPU; re-add it when it is known to compile on a GPU.


register_builders()
