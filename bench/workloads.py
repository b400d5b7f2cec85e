"""The workload registry: what the harness measures, with the sizes of each suite.

Irreps and sizes come from published models so that numbers compare with other benchmarks (the ``full`` suite, for a
GPU; ``quick`` scales the batch down for a CPU in a few minutes; ``tiny`` is for the harness's own tests):

======================= ================================================================================= ===========
name                    operation                                                                          full size
======================= ================================================================================= ===========
mace-large              ``128x0e+128x1o+128x2e (x) 0e+1o+2e+3o -> 128x(0e+1o+2e+3o)``, per-edge weights      160k edges
mace-medium             ``128x0e+128x1o (x) 0e+1o+2e+3o -> 128x(0e+1o+2e)``, per-edge weights                160k edges
nequip-benzene          ``64x(0o+0e+1o+1e+2o+2e+3o+3e) (x) 0e+1o+2e+3o``, ``l <= 3``, per-edge weights       50k edges
nequip-water            ``32x(0o+0e+1o+1e) (x) 0e+1o``, ``l <= 1``, per-edge weights                         50k edges
diffdock                fully connected ``10x1o+10x1e+48x0e+48x0o (x) 0e+1o+2e -> 10x1o+10x1e+48x0e+48x0o``  50k edges
                        with per-edge weights (DiffDock's score-model convolution)
sevennet-l3i5           ``128x0e+64x1e+32x2e+32x3e (x) 0e+1e+2e+3e``, ``l <= 3``, per-edge weights           32k edges
high-l5                 ``128x5e (x) 1x3e -> 128x5e`` (one path), per-edge weights                           200k edges
high-l7                 ``128x7e (x) 1x7e -> 128x7e`` (one path), per-edge weights                           200k edges
fctp                    e3nn-jax's FCTP benchmark: fully connected ``128x0e+128x1e+128x2e`` squared into     1024
                        itself, shared weights
sh-l3 / sh-l8           ``spherical_harmonics(l <= 3 / 8, normalize=True)`` of random vectors                1M vectors
nequip-train            a NequIP-style training step with forces on rMD17 aspirin, or on EMT copper MD       64 frames
                        generated offline when that file is absent (:mod:`bench.model`)
mp-* / sc-mace          e3nn_fast's fused message passing and symmetric contraction against the op by op     see
                        composition (:mod:`bench.fused`)                                                     there
======================= ================================================================================= ===========

The convolutions are written as their models write them with e3nn-jax's API: ``tensor_product(x, sh,
filter_ir_out=...)`` times one per-edge weight per output channel (the channelwise ``uvu`` product with per-edge
weights that the radial MLP produces).  The fully connected ones use ``legacy.FunctionalFullyConnectedTensorProduct``
with ``jax.vmap(tp.left_right)`` over the batch.

Extending: :func:`register` adds a workload; :func:`add_builder` adds an implementation of an existing workload for
another backend API (e.g. cuequivariance-jax's, or e3nn_fast's fused ops in :mod:`bench.fused`); a backend runs
exactly the workloads that have a builder for its API.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from bench import costs, model
from bench.passes import Inputs, derived_passes

SUITES = ("tiny", "quick", "full")
E3NN_API = "e3nn"  # the public API of e3nn-jax 0.21, spoken by e3nn_jax and e3nn_fast alike


@dataclasses.dataclass
class Workload:
    """One benchmarked operation.

    ``builders`` maps a backend API to ``build(lib) -> forward`` where ``forward(*inputs.arrays)`` is the operation;
    ``passes(forward, inputs)`` turns it into the timed passes; ``cost(size, itemsize)`` gives FLOPs and bytes (or
    None when there is no description to count from); ``unavailable()`` says why it cannot run here (or None);
    ``details(size)`` adds facts about a size to results.json (e.g. the node count of a graph of ``size`` edges);
    ``published_floor`` is a published lower bound on a pass's time that the runner reports the fraction of."""

    name: str
    group: str
    summary: str
    unit: str
    sizes: dict
    make_inputs: Callable[[int, object, jax.Array], Inputs]
    builders: dict
    passes: Callable = derived_passes
    cost: Optional[Callable[[int, int], Optional[costs.Cost]]] = None
    unavailable: Callable[[], Optional[str]] = lambda: None
    details: Optional[Callable[[int], dict]] = None
    published_floor: Optional["PublishedFloor"] = None

    def size(self, suite: str) -> int:
        if suite not in self.sizes:
            raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
        return self.sizes[suite]


@dataclasses.dataclass(frozen=True)
class PublishedFloor:
    """A published lower bound: pass ``pass_name`` of ``size`` items takes at least ``ms`` on the device whose
    :class:`bench.devices.DevicePeaks` is named ``peaks_name``; it scales linearly with the size."""

    peaks_name: str
    pass_name: str
    ms: float
    size: int
    source: str

    def floor_ms(self, size: int) -> float:
        return self.ms * size / self.size


WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    """Add a workload (its name must be new)."""
    if workload.name in WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is already registered")
    missing = set(SUITES) - set(workload.sizes)
    if missing:
        raise ValueError(f"workload {workload.name!r} has no size for suites {sorted(missing)}")
    WORKLOADS[workload.name] = workload
    return workload


def add_builder(name: str, api: str, build: Callable) -> None:
    """Give workload ``name`` an implementation for backends speaking ``api``."""
    WORKLOADS[name].builders[api] = build


def select(patterns: Optional[list[str]]) -> list[Workload]:
    """Workloads whose names match any of the names / shell globs (all of them for None), in registry order."""
    if not patterns:
        return list(WORKLOADS.values())
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in WORKLOADS)]
    if unmatched:
        raise ValueError(f"no workload matches {unmatched}; known workloads: {', '.join(WORKLOADS)}")
    return [w for n, w in WORKLOADS.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


# --------------------------------------------------------------------------------------------- irreps helpers


def irreps(text: str):
    """e3nn_fast Irreps (for counting; the libraries parse the strings themselves)."""
    from e3nn_fast.irreps import Irreps

    return Irreps(text)


def repeat(mul: int, irs: str) -> str:
    """``mul x (a + b + ...)`` written out, ``"64x0o+64x0e+..."`` (the libraries do not parse parentheses)."""
    return "+".join(f"{mul}x{ir.strip()}" for ir in irs.split("+"))


def _random(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)


# ---------------------------------------------------------------------- channelwise convolutions: tp(x, sh) * w


def channelwise_description(in1: str, in2: str, filter_out: str):
    from e3nn_fast.irreps import Irrep
    from e3nn_fast.path_description import describe_full_tensor_product

    keep = tuple(Irrep(ir) for ir in filter_out.split("+"))
    return describe_full_tensor_product(irreps(in1), irreps(in2), keep, "component")


def channelwise_convolution(name: str, in1: str, in2: str, filter_out: str, sizes: dict, summary: str) -> Workload:
    """``tensor_product(x1, x2, filter_ir_out) * w``, ``w`` one per-edge weight per output channel."""
    description = channelwise_description(in1, in2, filter_out)
    num_channels = description.irreps_out.num_irreps
    keep = filter_out.split("+")

    def make_inputs(edges, dtype, key):
        k1, k2, k3 = jax.random.split(key, 3)
        arrays = (
            _random(k1, (edges, irreps(in1).dim), dtype),
            _random(k2, (edges, irreps(in2).dim), dtype),
            _random(k3, (edges, num_channels), dtype),
        )
        return Inputs(arrays, differentiable=(0, 1, 2), force=1, trained=(0, 2))

    def build(lib):
        def forward(x1, x2, w):
            out = lib.tensor_product(lib.IrrepsArray(in1, x1), lib.IrrepsArray(in2, x2), filter_ir_out=keep)
            return (out * w).array

        return forward

    def cost(edges, itemsize):
        return costs.tensor_product_cost(description, edges, itemsize, channel_scale=True)

    return Workload(name, "convolution", summary, "edges", sizes, make_inputs, {E3NN_API: build}, cost=cost)


# ------------------------------------------------------------------------------------------ fully connected (uvw)


def fully_connected_description(in1: str, in2: str, out: str):
    from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct

    return FunctionalFullyConnectedTensorProduct(irreps(in1), irreps(in2), irreps(out)).description


def fully_connected(name: str, in1: str, in2: str, out: str, per_sample: bool, sizes: dict, summary: str) -> Workload:
    """``vmap(FunctionalFullyConnectedTensorProduct.left_right)`` with shared or per-sample flat weights."""
    description = fully_connected_description(in1, in2, out)

    def make_inputs(samples, dtype, key):
        k1, k2, k3 = jax.random.split(key, 3)
        weight_shape = (samples, description.num_weights) if per_sample else (description.num_weights,)
        arrays = (
            _random(k1, (samples, irreps(in1).dim), dtype),
            _random(k2, (samples, irreps(in2).dim), dtype),
            _random(k3, weight_shape, dtype),
        )
        return Inputs(arrays, differentiable=(0, 1, 2), force=1, trained=(0, 2))

    def build(lib):
        tp = lib.legacy.FunctionalFullyConnectedTensorProduct(lib.Irreps(in1), lib.Irreps(in2), lib.Irreps(out))
        product = jax.vmap(tp.left_right, in_axes=(0 if per_sample else None, 0, 0))

        def forward(x1, x2, w):
            return product(w, lib.IrrepsArray(in1, x1), lib.IrrepsArray(in2, x2)).array

        return forward

    def cost(samples, itemsize):
        return costs.tensor_product_cost(description, samples, itemsize, per_sample_weights=per_sample)

    group = "convolution" if per_sample else "tensor product"
    return Workload(name, group, summary, "edges" if per_sample else "samples", sizes, make_inputs,
                    {E3NN_API: build}, cost=cost)


# ------------------------------------------------------------------------------------------- spherical harmonics


def spherical_harmonics(name: str, lmax: int, sizes: dict) -> Workload:
    """``spherical_harmonics(range(lmax + 1), vectors, normalize=True)``; forces differentiate twice in the vectors."""

    def make_inputs(vectors, dtype, key):
        return Inputs((_random(key, (vectors, 3), dtype),), differentiable=(0,), force=0, trained=(0,))

    def build(lib):
        def forward(vectors):
            sh = lib.spherical_harmonics(list(range(lmax + 1)), lib.IrrepsArray("1o", vectors), normalize=True,
                                         normalization="component")
            return sh.array

        return forward

    def cost(vectors, itemsize):
        return costs.spherical_harmonics_cost(lmax, vectors, itemsize)

    return Workload(name, "spherical harmonics", f"Y_l, l <= {lmax}", "vectors", sizes, make_inputs,
                    {E3NN_API: build}, cost=cost)


# --------------------------------------------------------------------- issue 3's CPU workloads (e3nn_fast vs e3nn-jax)


def sh_tensor_product(name: str, features: str, lmax: int, sizes: dict) -> Workload:
    """``tensor_product(x, spherical_harmonics(vectors)) * w``: harmonics computed inside, so ``forces`` (gradient
    w.r.t. the weights of ``|d/dvectors|^2``) is the double backward of force training through both."""
    sh_irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    description = describe_full(features, sh_irreps)
    num_channels = description.irreps_out.num_irreps

    def make_inputs(edges, dtype, key):
        k1, k2, k3 = jax.random.split(key, 3)
        arrays = (_random(k1, (edges, irreps(features).dim), dtype), _random(k2, (edges, 3), dtype),
                  _random(k3, (edges, num_channels), dtype))
        return Inputs(arrays, differentiable=(0, 1, 2), force=1, trained=(2,))

    def build(lib):
        def forward(x, vectors, w):
            sh = lib.spherical_harmonics(list(range(lmax + 1)), lib.IrrepsArray("1o", vectors), normalize=True)
            return (lib.tensor_product(lib.IrrepsArray(features, x), sh) * w).array

        return forward

    def cost(edges, itemsize):
        return costs.tensor_product_cost(description, edges, itemsize, channel_scale=True)

    return Workload(name, "convolution", f"{features} ⊗ Y(l ≤ {lmax}) of the edge vectors, per-edge weights",
                    "edges", sizes, make_inputs, {E3NN_API: build}, cost=cost)


def plain_tensor_product(name: str, in1: str, in2: str, sizes: dict) -> Workload:
    """``tensor_product(x1, x2)``, every path, no weights."""
    description = describe_full(in1, in2)

    def make_inputs(rows, dtype, key):
        k1, k2 = jax.random.split(key)
        arrays = (_random(k1, (rows, irreps(in1).dim), dtype), _random(k2, (rows, irreps(in2).dim), dtype))
        return Inputs(arrays, differentiable=(0, 1), force=1, trained=(0,))

    def build(lib):
        return lambda x1, x2: lib.tensor_product(lib.IrrepsArray(in1, x1), lib.IrrepsArray(in2, x2)).array

    def cost(rows, itemsize):
        return costs.tensor_product_cost(description, rows, itemsize)

    return Workload(name, "tensor product", f"{in1} ⊗ {in2}, all paths", "samples", sizes, make_inputs,
                    {E3NN_API: build}, cost=cost)


def describe_full(in1: str, in2: str):
    from e3nn_fast.path_description import describe_full_tensor_product

    return describe_full_tensor_product(irreps(in1), irreps(in2), None, "component")


def haiku_linear(name: str, features: str, sizes: dict) -> Workload:
    """haiku ``Linear(features)`` on ``features``; parameters initialised once per library with the same key."""

    def make_inputs(rows, dtype, key):
        return Inputs((_random(key, (rows, irreps(features).dim), dtype),), differentiable=(0,), force=0,
                      trained=(0,))

    def build(lib):
        import haiku as hk

        transformed = hk.without_apply_rng(hk.transform(lambda x: lib.haiku.Linear(features)(x)))
        example = lib.IrrepsArray(features, jnp.zeros((1, irreps(features).dim), jnp.float32))
        params = transformed.init(jax.random.PRNGKey(0), example)

        def forward(x):
            p = jax.tree.map(lambda a: a.astype(x.dtype), params)
            return transformed.apply(p, lib.IrrepsArray(features, x)).array

        return forward

    def unavailable():
        try:
            import haiku  # noqa: F401
        except ImportError:
            return "needs dm-haiku"
        return None

    return Workload(name, "linear", f"haiku Linear on {features}", "samples", sizes, make_inputs,
                    {E3NN_API: build}, unavailable=unavailable)


# --------------------------------------------------------------------------------------------------- the registry

MACE_SH = "0e+1o+2e+3o"

register(channelwise_convolution(
    "mace-large", "128x0e+128x1o+128x2e", MACE_SH, "0e+1o+2e+3o",
    {"tiny": 8, "quick": 384, "full": 160_000}, "128x0e+128x1o+128x2e ⊗ 0e+1o+2e+3o → 128x(0e+1o+2e+3o)"))
register(channelwise_convolution(
    "mace-medium", "128x0e+128x1o", MACE_SH, "0e+1o+2e",
    {"tiny": 8, "quick": 1024, "full": 160_000}, "128x0e+128x1o ⊗ 0e+1o+2e+3o → 128x(0e+1o+2e)"))
register(channelwise_convolution(
    "nequip-benzene", repeat(64, "0o+0e+1o+1e+2o+2e+3o+3e"), MACE_SH, "0o+0e+1o+1e+2o+2e+3o+3e",
    {"tiny": 4, "quick": 128, "full": 50_000}, "64x(0o+0e+1o+1e+2o+2e+3o+3e) ⊗ 0e+1o+2e+3o → l ≤ 3"))
register(channelwise_convolution(
    "nequip-water", repeat(32, "0o+0e+1o+1e"), "0e+1o", "0o+0e+1o+1e",
    {"tiny": 8, "quick": 2048, "full": 50_000}, "32x(0o+0e+1o+1e) ⊗ 0e+1o → l ≤ 1"))
register(fully_connected(
    "diffdock", "10x1o+10x1e+48x0e+48x0o", "0e+1o+2e", "10x1o+10x1e+48x0e+48x0o", True,
    {"tiny": 4, "quick": 256, "full": 50_000}, "FC 10x1o+10x1e+48x0e+48x0o ⊗ 0e+1o+2e, per-edge weights"))
register(channelwise_convolution(
    "sevennet-l3i5", "128x0e+64x1e+32x2e+32x3e", "0e+1e+2e+3e", "0e+1e+2e+3e",
    {"tiny": 4, "quick": 256, "full": 32_000}, "128x0e+64x1e+32x2e+32x3e ⊗ 0e+1e+2e+3e → l ≤ 3"))
register(channelwise_convolution(
    "high-l5", "128x5e", "1x3e", "5e", {"tiny": 8, "quick": 2048, "full": 200_000}, "128x5e ⊗ 1x3e → 128x5e"))
register(channelwise_convolution(
    "high-l7", "128x7e", "1x7e", "7e", {"tiny": 8, "quick": 1024, "full": 200_000}, "128x7e ⊗ 1x7e → 128x7e"))
register(fully_connected(
    "fctp", "128x0e+128x1e+128x2e", "128x0e+128x1e+128x2e", "128x0e+128x1e+128x2e", False,
    {"tiny": 1, "quick": 1, "full": 1024}, "FC 128x0e+128x1e+128x2e ⊗ itself → itself, shared weights"))
register(spherical_harmonics("sh-l3", 3, {"tiny": 64, "quick": 50_000, "full": 1_000_000}))
register(spherical_harmonics("sh-l8", 8, {"tiny": 64, "quick": 20_000, "full": 1_000_000}))
register(Workload(
    "nequip-train", "model", "NequIP-style step with forces: rMD17 aspirin, else generated EMT copper", "frames",
    {"tiny": 1, "quick": 2, "full": 64}, model.make_inputs, {E3NN_API: model.energy_function},
    passes=model.training_passes, unavailable=model.unavailable_reason, details=model.details))

register(sh_tensor_product("sh-tp", "32x0e+32x1o+32x2e", 3, {"tiny": 8, "quick": 4_000, "full": 160_000}))
register(plain_tensor_product("tp-16", "16x0e+16x1o+16x2e", "0e+1o+2e", {"tiny": 8, "quick": 4_096, "full": 200_000}))
register(haiku_linear("linear-128", "128x0e+128x1o+128x2e", {"tiny": 8, "quick": 4_096, "full": 200_000}))

# The fused-op workloads register themselves (after the ones above, which they build on).
from bench import fused  # noqa: E402,F401
