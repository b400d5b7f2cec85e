"""cuequivariance-jax implementations of the workloads, for the ``cuequivariance`` backend (API ``"cuequivariance"``).

Registered with :func:`bench.workloads.add_builder` when this module is imported (the runner imports it only when
``cuequivariance_jax`` is importable).  Each builder computes the same operation as the e3nn-API forward, from the same
input arrays, with cuequivariance's descriptors:

* channelwise convolutions: ``cue.descriptors.channelwise_tensor_product(x1, x2, filter)`` with the per-edge weights
  (one per path and channel, as many as the e3nn forward's ``w``);
* fully connected products: ``cue.descriptors.fully_connected_tensor_product`` with per-edge or shared weights;
* spherical harmonics ``l <= 3``: ``cuex.spherical_harmonics``;
* message passing ``mp-*`` (:mod:`bench.fused`): the same channelwise product evaluated in one call that gathers the
  node features by ``senders`` and sums the products into ``receivers`` through the polynomial's ``indices`` (no
  per-edge message array in the program);
* symmetric contraction ``sc-mace``: ``cue.descriptors.symmetric_contraction`` with every node's species weights
  gathered through ``indices`` (never an array of per-node weights); the features are transposed to cuequivariance's
  ``(irrep component, channel)`` layout first, and the weights are only shape-compatible stand-ins (see there);
* ``linear-128``: ``cue.descriptors.linear`` with shared weights.

cuequivariance lays irreps out ``(irrep, mul)`` and orders its outputs its own way, so its outputs are not compared
numerically with e3nn-jax's (the runner compares only backends of the same API); sizes and FLOPs are the same.
On a GPU the ``uniform_1d`` CUDA method is used when the polynomial, its indices and its first and second derivatives
lower with it (checked by lowering at trace time, :func:`uniform_1d_rejection`), else the ``naive`` JAX one.
"""

from __future__ import annotations

import sys

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench import devices, workloads

API = "cuequivariance"

_METHODS: dict = {}  # (polynomial, argument shapes) -> the method chosen for them


def uniform_1d_rejection(compute: Callable, args: Sequence, platforms: Optional[tuple] = None) -> Optional[str]:
    """Why ``compute("uniform_1d", *args)`` cannot run with cuequivariance's CUDA method, or None when it can.

    cuequivariance checks a polynomial against ``uniform_1d`` only when the primitive is *lowered*, i.e. after our
    forward has been traced, so a ``try`` around the call cannot catch a rejection.  Instead the call is lowered here
    on its own, for abstract arguments of the same shapes, together with its second derivative (the ``forces`` pass
    lowers transposed and differentiated polynomials with the same method).  ``platforms=("cuda",)`` lowers for a GPU
    from any machine (used by the tests on a CPU, where the last step, importing the CUDA ops, fails)."""
    abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    floats = tuple(k for k, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))

    def forward(*arrays):
        return compute("uniform_1d", *arrays)

    def energy(*arrays):
        return jnp.sum(forward(*arrays))

    def second_derivative(*arrays):
        def loss(*b):
            return sum(jnp.sum(g**2) for g in jax.grad(energy, argnums=floats)(*b))

        return jax.grad(loss, argnums=floats)(*arrays)

    try:
        for function in (forward, second_derivative):
            jax.jit(function).trace(*abstract).lower(lowering_platforms=platforms)
    except Exception as error:  # noqa: BLE001 - any refusal means: use the naive method
        # cuequivariance's messages draw the polynomial between a header and the reason: keep the reason
        lines = [line.strip() for line in str(error).strip().splitlines()]
        reasons = [line for line in lines
                   if line and line[0] not in "╭│╰" and not line.startswith("Failed to execute")]
        return f"{type(error).__name__}: {' '.join(reasons)[:300]}"
    return None


def _method(key, compute: Callable, args: Sequence) -> str:
    """``"uniform_1d"`` on an accelerator when it takes this call, else ``"naive"``; remembered per key and shapes."""
    if not devices.is_accelerator():
        return "naive"
    cache_key = (key, tuple((a.shape, str(a.dtype)) for a in args))
    if cache_key not in _METHODS:
        reason = uniform_1d_rejection(compute, args)
        _METHODS[cache_key] = "naive" if reason else "uniform_1d"
        # into the run's log: which method a cuequivariance row measured is part of what the number means
        print(f"cuequivariance: {_METHODS[cache_key]} for shapes {cache_key[1]}"
              + (f" (uniform_1d refused: {reason})" if reason else ""), file=sys.stderr)
    return _METHODS[cache_key]


def _caller(cuex, polynomial, num_inputs: int, indexed: Sequence[int], output_shape) -> Callable:
    """``compute(method, *inputs, *index arrays)``: one ``cuex.equivariant_polynomial`` call; the index arrays go to the
    operand positions ``indexed`` (inputs then outputs); ``output_shape`` (without the last axis) is needed when the
    output is scattered."""

    def compute(method, *arrays):
        inputs, index_arrays = arrays[:num_inputs], arrays[num_inputs:]
        indices = None
        if indexed:
            indices = [None] * polynomial.num_operands
            for position, index in zip(indexed, index_arrays):
                indices[position] = index
        output = None
        if output_shape is not None:
            output = jax.ShapeDtypeStruct(tuple(output_shape) + (polynomial.outputs[0].dim,),
                                          jnp.result_type(*inputs))
        reps = [cuex.RepArray(rep, x) for rep, x in zip(polynomial.inputs, inputs)]
        return cuex.equivariant_polynomial(polynomial, reps, output, indices, method=method).array

    return compute


def _evaluate(cuex, polynomial, inputs, indices: Optional[dict] = None, output_shape=None):
    """The polynomial of ``inputs`` (one array per input operand), with ``indices`` ``{operand position: index
    array}`` gathering inputs / scattering the output; the CUDA method on an accelerator when it takes the call,
    the naive one otherwise (the choice happens while tracing, so it costs nothing at run time)."""
    indices = dict(indices or {})
    positions = sorted(indices)
    compute = _caller(cuex, polynomial, len(inputs), positions, output_shape)
    args = list(inputs) + [indices[p] for p in positions]
    method = _method((polynomial, tuple(positions), output_shape is None), compute, args)
    return compute(method, *args)


def _channelwise_polynomial(in1: str, in2: str, filter_out: str, flatten: bool = True):
    """The channelwise product with its size-1 modes squeezed (one mode left, the channel) and, with ``flatten``, its
    Clebsch-Gordan blocks flattened into one path per coefficient: the form uniform_1d runs.  uniform_1d flattens the
    coefficients itself when it lowers, so ``flatten=False`` runs the same kernel on a GPU, and the naive method keeps
    one dense contraction per path instead of one per coefficient (for nequip-benzene 68 instead of 1,222 paths: the
    forward compiles in 3 s instead of 20 s on the 2-core CPU)."""
    import cuequivariance as cue

    polynomial = cue.descriptors.channelwise_tensor_product(
        cue.Irreps("O3", in1), cue.Irreps("O3", in2), cue.Irreps("O3", filter_out)).squeeze_modes()
    return polynomial.flatten_coefficient_modes() if flatten else polynomial


def _check_weights(polynomial, w, per: str = " per edge") -> None:
    if w.shape[-1] != polynomial.inputs[0].dim:
        raise ValueError(f"cuequivariance expects {polynomial.inputs[0].dim} weights{per}, "
                         f"the workload has {w.shape[-1]}")


def channelwise(in1: str, in2: str, filter_out: str):
    """Builder for ``tensor_product(x1, x2, filter_ir_out) * w``."""

    def build(cuex):
        polynomial = _channelwise_polynomial(in1, in2, filter_out)

        def forward(x1, x2, w):
            _check_weights(polynomial, w)
            return _evaluate(cuex, polynomial, [w, x1, x2])

        return forward

    return build


def fully_connected(in1: str, in2: str, out: str):
    """Builder for the fully connected product, weights per sample ``(n, W)`` or shared ``(W,)``."""

    def build(cuex):
        import cuequivariance as cue

        polynomial = cue.descriptors.fully_connected_tensor_product(
            cue.Irreps("O3", in1), cue.Irreps("O3", in2), cue.Irreps("O3", out))

        def forward(x1, x2, w):
            _check_weights(polynomial, w, "")
            weights = w if w.ndim == 2 else jnp.broadcast_to(w, (x1.shape[0], w.shape[-1]))
            return _evaluate(cuex, polynomial, [weights, x1, x2])

        return forward

    return build


def message_passing(in1: str, in2: str, filter_out: str):
    """Builder for the ``mp-*`` workloads: ``out[r] = sum over edges e with receivers[e] = r of
    tp(x[senders[e]], sh[e]) * w[e]`` as one polynomial call.  Operand order of the channelwise polynomial:
    weights, node features, harmonics, output; so the indices are ``senders`` on operand 1 (a gather of the
    ``(nodes, dim)`` features per edge) and ``receivers`` on operand 3 (a scatter-add into ``(nodes, out_dim)``).
    The features are read as they come, taken to be in cuequivariance's ``(irrep, mul)`` layout (same size; the
    inputs are random, so no transpose is timed); the output is cuequivariance's, paths sorted by irrep (a few
    paths, and so their weights, in another order than e3nn's: ``tests/test_bench_cue.py`` maps them).  Only the
    uniform_1d kernel fuses the gather and the scatter: the naive method (CPU, or a GPU fallback) indexes with jnp,
    so per-edge arrays exist inside its program."""

    def build(cuex):
        polynomial = _channelwise_polynomial(in1, in2, filter_out, flatten=False)

        def forward(x, sh, w, senders, receivers):
            _check_weights(polynomial, w)
            return _evaluate(cuex, polynomial, [w, x, sh], indices={1: senders, 3: receivers},
                             output_shape=(x.shape[0],))

        return forward

    return build


def symmetric_contraction(irreps_in: str, channels: int, degrees: tuple, keep: str):
    """Builder for ``sc-mace``: inputs ``(x[nodes, channels, irreps_in.dim], species[nodes], *weights)`` with weight
    ``k`` of shape ``(num_species, mul_k, channels)`` (e3nn_fast's per-species parameters).

    cuequivariance's polynomial has operands (weights ``(num_species, cue_mul * channels)`` gathered by ``species``
    through ``indices``, features, output) with channels as its one mode, so:

    * ``x`` is transposed to ``(nodes, irreps_in.dim, channels)`` and flattened (cuequivariance's ``(irrep, mul)``
      layout with one multiplicity ``channels``): a real transpose, timed with the rest;
    * the weights: e3nn_fast's and cuequivariance's bases of the symmetric powers differ, so there is no map between
      their parameters.  The given weights are concatenated along ``mul`` and cut or tiled to cuequivariance's
      ``cue_mul`` (equal, 49, for MACE's ``0e+1o+2e+3o`` orders 1-3), in a fixed order.  This matches the shapes and
      the gradient paths for the timing, not the numbers: the outputs are not comparable with e3nn-jax's;
    * the output is transposed back to the workload's ``(nodes, channels, irreps_out.dim)`` (every backend's pass is
      handed the same cotangent, so the shapes must agree): a second real transpose, also timed."""

    def build(cuex):
        import cuequivariance as cue

        polynomial = cue.descriptors.symmetric_contraction(
            channels * cue.Irreps("O3", irreps_in), channels * cue.Irreps("O3", keep), tuple(degrees))
        cue_mul = polynomial.inputs[0].dim // channels
        out_dim = polynomial.outputs[0].dim // channels

        def forward(x, species, *weights):
            if x.shape[1:] != (channels, polynomial.inputs[1].dim // channels):
                raise ValueError(f"cuequivariance expects x of shape (nodes, {channels}, "
                                 f"{polynomial.inputs[1].dim // channels}), got {x.shape}")
            stacked = jnp.concatenate(weights, axis=1)  # (num_species, sum of mul_k, channels)
            if stacked.shape[2] != channels:
                raise ValueError(f"weights have {stacked.shape[2]} channels, expected {channels}")
            if stacked.shape[1] != cue_mul:  # timing stand-ins, see above
                stacked = jnp.take(stacked, np.arange(cue_mul) % stacked.shape[1], axis=1)
            w = stacked.reshape(stacked.shape[0], cue_mul * channels)
            features = jnp.swapaxes(x, 1, 2).reshape(x.shape[0], -1)
            out = _evaluate(cuex, polynomial, [w, features], indices={0: species}, output_shape=(x.shape[0],))
            return jnp.swapaxes(out.reshape(x.shape[0], out_dim, channels), 1, 2)

        return forward

    return build


def linear(features: str):
    """Builder for ``linear-128``: ``cue.descriptors.linear(features, features)`` with one set of weights shared by
    every row, drawn once (seed 0) like the haiku builder's parameters; ``x`` is read as it comes, taken to be in
    cuequivariance's ``(irrep, mul)`` layout (same size, random inputs)."""

    def build(cuex):
        import cuequivariance as cue

        irreps = cue.Irreps("O3", features)
        polynomial = cue.descriptors.linear(irreps, irreps)
        weights = np.random.default_rng(0).standard_normal(polynomial.inputs[0].dim)

        def forward(x):
            return _evaluate(cuex, polynomial, [jnp.asarray(weights, x.dtype), x])

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

MESSAGE_PASSING = {  # the mp-* workloads of bench.fused: the convolutions above, gathered and scattered
    f"mp-{name}": CONVOLUTIONS[name] for name in ("mace-large", "mace-medium", "nequip-benzene")}


def register_builders() -> None:
    """Add the cuequivariance builders to the workload registry (idempotent)."""
    for name, spec in CONVOLUTIONS.items():
        workloads.add_builder(name, API, channelwise(*spec))
    for name, spec in FULLY_CONNECTED.items():
        workloads.add_builder(name, API, fully_connected(*spec))
    workloads.add_builder("sh-l3", API, spherical_harmonics(3))
    for name, spec in MESSAGE_PASSING.items():
        workloads.add_builder(name, API, message_passing(*spec))
    workloads.add_builder("sc-mace", API, symmetric_contraction("0e+1o+2e+3o", 128, (1, 2, 3), "0e+1o+2e"))
    workloads.add_builder("linear-128", API, linear("128x0e+128x1o+128x2e"))
    # No sh-l8: cuequivariance evaluates Y_8 as a degree-8 polynomial of the vector with the naive JAX method, whose
    # compilation did not finish in 10 minutes on the 2-core CPU; re-add it when it is known to compile on a GPU.


register_builders()
