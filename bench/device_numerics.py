"""On-device numerics check of every Pallas kernel family, through the public e3nn_fast ops.

Each *case* calls one public op (``message_passing``, ``tensor_product``, ``symmetric_contraction``, ...) under
``e3nn_fast.backend(KERNEL)`` and compares it with the same op under ``e3nn_fast.backend("reference")`` evaluated in
float64.  ``KERNEL`` is ``"pallas"`` on a GPU/TPU and ``"pallas-interpret"`` on a CPU or with ``tiny=True``.

Checks, one per (case, dtype, pass):

========== =========================== ==================================================================== ==========
dtype      pass                        what is compared                                                     tolerance
========== =========================== ==================================================================== ==========
float32    ``fwd``                     the op's output                                                      2e-3
float32    ``grad``                    gradient of ``E = sum(out * c)`` w.r.t. every float input            2e-3
float32    ``grad2``                   gradient w.r.t. the trained inputs of ``sum(dE/dp ** 2)``, ``p`` the 5e-3
                                       positions-like input (harmonics, ``x2``, node features): the double
                                       backward of force training
float64    ``fwd``, ``grad``           as above                                                             1e-9
bfloat16   ``fwd``                     the op's output                                                      3e-2
========== =========================== ==================================================================== ==========

``c`` is a fixed random cotangent.  The error is ``||ours - ref|| / ||ref||`` over all leaves together (float64
numpy); a NaN or inf fails.  The float32 tolerances leave room for TF32 matrix products on Hopper (~3e-4).

Every input is drawn at random and rounded to bfloat16 *before* the checks, then held in float64: the three dtypes
see exactly the same numbers, so one float64 reference per (case, pass) serves them all (cached), and the bfloat16
error measures the kernel's rounding rather than the rounding of its inputs.

A check also asserts the kernel really ran: the function is traced inside
:func:`e3nn_fast.dispatch.recorded_choices`, and every executor the dispatcher picked for the case's op must be a
Pallas one (a forced ``pallas`` backend silently falls back to ``jnp`` for a configuration the kernels do not
implement).  Otherwise the check fails with status ``"fallback"``.

Checks run in tiers, most important first: float32 (what models train in, all three passes) for every case, then
float64, then bfloat16; within a tier, cases in the order of :data:`CASES` (fused message passing, the channelwise
convolution, the symmetric contraction, then the other families).  Under a time budget the checks that matter most
are therefore the ones that run.  An exception in one check (a compile error, an OOM) is recorded and the next check
starts; once ``budget_s`` is spent, no new check starts and one ``{"skipped": [...]}`` record lists the rest.

Use::

    from bench import device_numerics
    ok = device_numerics.run(sink, tiny=False, budget_s=240)     # sink(record) once per finished check

    python -m bench.device_numerics --out numerics.jsonl [--tiny] [--budget S] [--cases NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import e3nn_fast as e3nn
from e3nn_fast import dispatch
from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct, FunctionalTensorProduct

PART = "numerics"

# (dtype, passes) in the order they run: float32 first, since it is what models train in.
TIERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("float32", ("fwd", "grad", "grad2")),
    ("float64", ("fwd", "grad")),
    ("bfloat16", ("fwd",)),
)

TOLERANCES: Dict[Tuple[str, str], float] = {
    ("float64", "fwd"): 1e-9,
    ("float64", "grad"): 1e-9,
    ("float32", "fwd"): 2e-3,
    ("float32", "grad"): 2e-3,
    ("float32", "grad2"): 5e-3,
    ("bfloat16", "fwd"): 3e-2,
}

DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


# --- cases ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """One instance of a case: a forward function and its inputs.

    ``forward(**floats, **ints)`` returns the op's output as plain arrays (a pytree).  ``floats`` are float64 numpy
    arrays holding bfloat16-exact values (cast to the checked dtype per check); ``ints`` (graph indices, species)
    stay int32.  ``position`` names the positions-like input whose gradient the ``grad2`` loss squares; ``trained``
    names the inputs that loss is differentiated with respect to.
    """

    forward: Callable
    floats: Dict[str, np.ndarray]
    ints: Dict[str, np.ndarray]
    position: str
    trained: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Case:
    """A named check of one kernel family through one public op (``op``: the dispatcher op that must run kernels)."""

    name: str
    family: str
    op: str
    build: Callable[[bool, np.random.Generator], Problem]  # (tiny, rng) -> Problem


def random_floats(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Standard normal values rounded to bfloat16, held in float64 (so every dtype sees the same numbers)."""
    values = rng.standard_normal(tuple(shape))
    return values.astype(jnp.bfloat16).astype(np.float64)


def sorted_random_graph(rng: np.random.Generator, nodes: int, edges: int) -> Tuple[np.ndarray, np.ndarray]:
    """(senders, receivers): random int32 edges with receivers sorted, as neighbour lists come."""
    receivers = np.sort(rng.integers(0, nodes, edges)).astype(np.int32)
    senders = rng.integers(0, nodes, edges).astype(np.int32)
    return senders, receivers


def build_message_passing(tiny: bool, rng: np.random.Generator) -> Problem:
    """MACE/NequIP convolution: ``message_passing(x, sh, w, senders, receivers)`` on a random graph."""
    if tiny:
        irreps_x, irreps_sh, keep, nodes, edges = "2x0e+2x1o", "0e+1o+2e", "0e+1o+2e", 6, 14
    else:  # edge and node counts off the block sizes: padded tails on the device
        irreps_x, irreps_sh, keep, nodes, edges = "32x0e+32x1o+32x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", 401, 3001
    irreps_out = e3nn.message_passing_irreps_out(irreps_x, irreps_sh, keep)
    senders, receivers = sorted_random_graph(rng, nodes, edges)

    def forward(x, sh, w, senders, receivers):
        out = e3nn.message_passing(e3nn.IrrepsArray(irreps_x, x), e3nn.IrrepsArray(irreps_sh, sh), w, senders,
                                   receivers, nodes, filter_ir_out=keep)
        return out.array

    floats = {
        "x": random_floats(rng, (nodes, e3nn.Irreps(irreps_x).dim)),
        "sh": random_floats(rng, (edges, e3nn.Irreps(irreps_sh).dim)),
        "w": random_floats(rng, (edges, irreps_out.num_irreps)),
    }
    return Problem(forward, floats, {"senders": senders, "receivers": receivers}, position="sh", trained=("x", "w"))


def build_channelwise_conv(tiny: bool, rng: np.random.Generator) -> Problem:
    """``tensor_product(x1, x2, filter_ir_out) * w`` with one weight per row and output channel (a MACE/NequIP
    convolution's messages, written op by op)."""
    if tiny:
        irreps1, irreps2, keep, rows = "3x0e+2x1o", "0e+1o", "0e+1o+1e", 11
    else:
        irreps1, irreps2, keep, rows = "32x0e+32x1o+16x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", 1999
    irreps_out = e3nn.tensor_product(e3nn.Irreps(irreps1), e3nn.Irreps(irreps2), filter_ir_out=keep)

    def forward(x1, x2, w):
        out = e3nn.tensor_product(e3nn.IrrepsArray(irreps1, x1), e3nn.IrrepsArray(irreps2, x2), filter_ir_out=keep)
        return (out * w).array

    floats = {
        "x1": random_floats(rng, (rows, e3nn.Irreps(irreps1).dim)),
        "x2": random_floats(rng, (rows, e3nn.Irreps(irreps2).dim)),
        "w": random_floats(rng, (rows, irreps_out.num_irreps)),
    }
    return Problem(forward, floats, {}, position="x2", trained=("x1", "w"))


def build_symmetric_contraction(tiny: bool, rng: np.random.Generator) -> Problem:
    """MACE's product basis: ``symmetric_contraction(x, species, weights, (1, 2, 3), keep)``, per-species weights."""
    if tiny:
        irreps, keep, nodes, channels, species_count = "0e+1o", "0e+1o", 5, 3, 3
    else:  # MACE: A-features with the harmonics' irreps, hidden irreps 0e+1o
        irreps, keep, nodes, channels, species_count = "0e+1o+2e+3o", "0e+1o", 301, 32, 5
    orders = (1, 2, 3)
    shapes = e3nn.symmetric_contraction_weight_shapes(irreps, channels, species_count, orders, keep)
    names = sorted(shapes)

    def forward(x, species, **weights):
        out = e3nn.symmetric_contraction(e3nn.IrrepsArray(irreps, x), species, weights, orders, keep)
        return out.array

    floats = {"x": random_floats(rng, (nodes, channels, e3nn.Irreps(irreps).dim))}
    floats.update({name: random_floats(rng, shapes[name]) for name in names})
    species = rng.integers(0, species_count, nodes).astype(np.int32)
    return Problem(forward, floats, {"species": species}, position="x", trained=tuple(names))


def build_channelwise_sh(tiny: bool, rng: np.random.Generator) -> Problem:
    """``tensor_product(x, sh)``: every channel of ``x`` with spherical-harmonics-like inputs (``uvuv``, mul 1)."""
    if tiny:
        irreps_x, irreps_sh, rows = "2x0e+3x1o", "0e+1o", 9
    else:
        irreps_x, irreps_sh, rows = "16x0e+16x1o+16x2e", "0e+1o+2e+3o", 1003

    def forward(x, sh):
        return e3nn.tensor_product(e3nn.IrrepsArray(irreps_x, x), e3nn.IrrepsArray(irreps_sh, sh)).array

    floats = {
        "x": random_floats(rng, (rows, e3nn.Irreps(irreps_x).dim)),
        "sh": random_floats(rng, (rows, e3nn.Irreps(irreps_sh).dim)),
    }
    return Problem(forward, floats, {}, position="sh", trained=("x",))


def build_elementwise(tiny: bool, rng: np.random.Generator) -> Problem:
    """``elementwise_tensor_product(x1, x2)``: the n-th irrep of ``x1`` with the n-th of ``x2`` (``uuu``)."""
    if tiny:
        irreps1, irreps2, rows = "3x0e+2x1o", "3x1o+2x1e", 9
    else:
        irreps1, irreps2, rows = "32x0e+32x1o+16x2e", "32x1o+32x1e+16x2o", 1999

    def forward(x1, x2):
        return e3nn.elementwise_tensor_product(e3nn.IrrepsArray(irreps1, x1), e3nn.IrrepsArray(irreps2, x2)).array

    floats = {
        "x1": random_floats(rng, (rows, e3nn.Irreps(irreps1).dim)),
        "x2": random_floats(rng, (rows, e3nn.Irreps(irreps2).dim)),
    }
    return Problem(forward, floats, {}, position="x2", trained=("x1",))


def build_fully_connected(tiny: bool, rng: np.random.Generator) -> Problem:
    """Legacy ``FunctionalFullyConnectedTensorProduct.left_right`` vmapped over rows, weights shared (``uvw``)."""
    if tiny:
        irreps1, irreps2, irreps_out, rows = "3x0e+2x1o", "2x0e+1o", "4x0e+3x1o", 9
    else:
        irreps1, irreps2, irreps_out, rows = "32x0e+16x1o", "16x0e+1o", "32x0e+32x1o", 1001
    tp = FunctionalFullyConnectedTensorProduct(e3nn.Irreps(irreps1), e3nn.Irreps(irreps2), e3nn.Irreps(irreps_out))
    num_weights = sum(math.prod(ins.path_shape) for ins in tp.instructions if ins.has_weight)

    def forward(w, x1, x2):
        def one(a, b):
            return tp.left_right(w, e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b)).array

        return jax.vmap(one)(x1, x2)

    floats = {
        "w": random_floats(rng, (num_weights,)),
        "x1": random_floats(rng, (rows, e3nn.Irreps(irreps1).dim)),
        "x2": random_floats(rng, (rows, e3nn.Irreps(irreps2).dim)),
    }
    return Problem(forward, floats, {}, position="x2", trained=("w", "x1"))


def build_linear(tiny: bool, rng: np.random.Generator) -> Problem:
    """``FunctionalLinear.apply`` on a batch (what the haiku/linen/nnx ``Linear`` modules call), one array per
    instruction.  Linear in its input, so the ``grad2`` loss depends on the weights only (still a real check)."""
    if tiny:
        irreps_in, irreps_out, rows = "4x0e+3x1o+2x1o", "3x0e+2x1o", 9
    else:
        irreps_in, irreps_out, rows = "64x0e+32x1o+16x2e", "64x0e+32x1o+32x2e", 1999
    lin = e3nn.FunctionalLinear(e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out))
    names = [f"w{k}" for k in range(len(lin.instructions))]

    def forward(x, **weights):
        return lin.apply([weights[name] for name in names], e3nn.IrrepsArray(irreps_in, x)).array

    floats = {"x": random_floats(rng, (rows, e3nn.Irreps(irreps_in).dim))}
    floats.update({name: random_floats(rng, ins.path_shape) for name, ins in zip(names, lin.instructions)})
    return Problem(forward, floats, {}, position="x", trained=tuple(names))


def uvu_instructions(irreps1, irreps2, keep) -> Tuple[e3nn.Irreps, list]:
    """Output irreps and weighted ``uvu`` instructions: every ``in1 x in2 -> ir`` with ``ir`` in ``keep``, each into
    its own output segment of ``in1``'s multiplicity."""
    keep = {ir for _, ir in e3nn.Irreps(keep)}
    outs, instructions = [], []
    for i1, (mul1, ir1) in enumerate(irreps1):
        for i2, (_, ir2) in enumerate(irreps2):
            for ir in ir1 * ir2:
                if ir in keep:
                    instructions.append((i1, i2, len(outs), "uvu", True))
                    outs.append((mul1, ir))
    return e3nn.Irreps(outs), instructions


def vmapped_uvu_product(irreps1, irreps2, keep) -> Tuple[Callable, int]:
    """``(forward(w, x1, x2), weights per row)``: the legacy weighted ``uvu`` product of :func:`uvu_instructions`,
    vmapped over rows including the weights (the channelwise kernel with one weight vector per row)."""
    irreps1, irreps2 = e3nn.Irreps(irreps1), e3nn.Irreps(irreps2)
    irreps_out, instructions = uvu_instructions(irreps1, irreps2, keep)
    tp = FunctionalTensorProduct(irreps1, irreps2, irreps_out, instructions)
    num_weights = sum(math.prod(ins.path_shape) for ins in tp.instructions if ins.has_weight)

    def forward(w, x1, x2):
        def one(w, a, b):
            return tp.left_right(w, e3nn.IrrepsArray(irreps1, a), e3nn.IrrepsArray(irreps2, b)).array

        return jax.vmap(one)(w, x1, x2)

    return forward, num_weights


def build_channelwise_uvu_weighted(tiny: bool, rng: np.random.Generator) -> Problem:
    """Legacy ``FunctionalTensorProduct`` with weighted ``uvu`` instructions, vmapped over rows *including the
    weights*: the channelwise kernel with one weight vector per row (older NequIP convolutions)."""
    if tiny:
        irreps1, irreps2, keep, rows = "3x0e+2x1o", "0e+1o", "0e+1o", 9
    else:
        irreps1, irreps2, keep, rows = "32x0e+32x1o+16x2e", "0e+1o+2e", "0e+1o+2e", 1999
    irreps1, irreps2 = e3nn.Irreps(irreps1), e3nn.Irreps(irreps2)
    forward, num_weights = vmapped_uvu_product(irreps1, irreps2, keep)

    floats = {
        "w": random_floats(rng, (rows, num_weights)),
        "x1": random_floats(rng, (rows, irreps1.dim)),
        "x2": random_floats(rng, (rows, irreps2.dim)),
    }
    return Problem(forward, floats, {}, position="x2", trained=("w", "x1"))


# Most important first: the fused message passing, the convolution's channelwise product and MACE's contraction are
# what MACE/NequIP spend their time in.
CASES: Tuple[Case, ...] = (
    Case("mp-conv", "message_passing", "message_passing", build_message_passing),
    Case("uvu-conv", "channelwise", "tensor_product", build_channelwise_conv),
    Case("sc-mace", "symmetric_contraction", "symmetric_contraction", build_symmetric_contraction),
    Case("uvuv-sh", "channelwise", "tensor_product", build_channelwise_sh),
    Case("uvu-per-row-w", "channelwise", "tensor_product", build_channelwise_uvu_weighted),
    Case("uuu", "elementwise", "tensor_product", build_elementwise),
    Case("fctp", "fully_connected", "tensor_product", build_fully_connected),
    Case("linear", "linear", "linear", build_linear),
)

FAMILIES = tuple(dict.fromkeys(case.family for case in CASES))


# --- passes ---------------------------------------------------------------------------------------------------------


def energy(problem: Problem, floats, ints, cotangent):
    """``E = sum(out * c)``: a fixed random cotangent keeps every output component in the gradient."""
    out = problem.forward(**floats, **ints)
    return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cotangent)))


def pass_function(problem: Problem, pass_name: str) -> Callable:
    """A fresh function ``(floats, ints, cotangent) -> pytree`` computing one pass (fresh: so that ``jax.jit``
    traces it again and the dispatcher's choices are recorded)."""
    if pass_name == "fwd":
        def forward(floats, ints, cotangent):
            del cotangent
            return problem.forward(**floats, **ints)

        return forward
    if pass_name == "grad":
        def gradient(floats, ints, cotangent):
            return jax.grad(lambda f: energy(problem, f, ints, cotangent))(floats)

        return gradient
    if pass_name == "grad2":
        def double_gradient(floats, ints, cotangent):
            def force_loss(trained):
                merged = {**floats, **trained}

                def energy_of_position(p):
                    return energy(problem, {**merged, problem.position: p}, ints, cotangent)

                forces = jax.grad(energy_of_position)(merged[problem.position])
                return jnp.sum(forces**2)

            return jax.grad(force_loss)({name: floats[name] for name in problem.trained})

        return double_gradient
    raise ValueError(f"unknown pass {pass_name!r}")


# --- comparison -----------------------------------------------------------------------------------------------------


def relative_error(ours, reference) -> Tuple[float, float, bool]:
    """``(||ours - ref|| / ||ref||, worst leaf's own relative error, all finite)`` over all leaves, in float64.

    Raises ValueError when the trees or shapes differ."""
    ours_leaves, ours_tree = jax.tree.flatten(ours)
    ref_leaves, ref_tree = jax.tree.flatten(reference)
    if ours_tree != ref_tree:
        raise ValueError(f"output structure {ours_tree} differs from the reference's {ref_tree}")
    diff_sq = ref_sq = 0.0
    worst = 0.0
    finite = True
    for a, b in zip(ours_leaves, ref_leaves):
        a, b = np.asarray(a).astype(np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"output shape {a.shape} differs from the reference's {b.shape}")
        finite &= bool(np.all(np.isfinite(a)))
        d, r = float(np.sum((a - b) ** 2)), float(np.sum(b**2))
        diff_sq, ref_sq = diff_sq + d, ref_sq + r
        worst = max(worst, math.sqrt(d / r) if r > 0 else math.sqrt(d))
    total = math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else math.sqrt(diff_sq)
    return total, worst, finite


def wrong_dtypes(tree, dtype) -> List[str]:
    """The dtypes of the leaves that are not ``dtype`` (an op must return its inputs' dtype)."""
    return sorted({str(leaf.dtype) for leaf in jax.tree.leaves(tree) if leaf.dtype != dtype})


def describe_exception(exc: BaseException) -> str:
    """``"Type: first line"`` (XLA errors run to pages; the first line names the problem)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


# --- running --------------------------------------------------------------------------------------------------------


def case_index(case: Case) -> int:
    """The case's position in :data:`CASES` (its random seed), past the end for a case defined elsewhere."""
    return CASES.index(case) if case in CASES else len(CASES)


def x64_enabled() -> bool:
    """Whether float64 is on (read through whichever config accessor this jax has)."""
    read = getattr(jax.config, "read", None)
    return bool(read("jax_enable_x64") if read is not None else jax.config.jax_enable_x64)


def kernel_backend(tiny: bool) -> str:
    """``pallas`` on an accelerator; interpret mode on a CPU (or for the tiny smoke run)."""
    return "pallas-interpret" if tiny or jax.default_backend() == "cpu" else "pallas"


def cast_inputs(problem: Problem, dtype_name: str):
    """Device arrays of the problem's inputs: floats in the checked dtype, indices int32."""
    dtype = DTYPES[dtype_name]
    floats = {k: jnp.asarray(v, dtype) for k, v in problem.floats.items()}
    ints = {k: jnp.asarray(v, jnp.int32) for k, v in problem.ints.items()}
    return floats, ints


# The kernels' own primitives (every Pallas kernel of e3nn_fast is bound through one of them): their count in the
# traced program is the evidence that kernels, not a silent jnp fallback inside an executor, computed the result.
# The jnp executors bind them too (hand-written derivatives), with forms whose ``uses_pallas`` is False.
KERNEL_PRIMITIVES = ("e3nn_fast_multilinear", "e3nn_fast_graph_form")


def count_kernel_calls(jaxpr) -> int:
    """Binds of :data:`KERNEL_PRIMITIVES` whose form runs Pallas kernels, in ``jaxpr`` and every jaxpr nested in it."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in KERNEL_PRIMITIVES:
            form = eqn.params.get("plan", eqn.params.get("form"))
            count += bool(getattr(form, "uses_pallas", True))
        for param in eqn.params.values():
            for value in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    count += count_kernel_calls(inner)
    return count


def trace_and_run(function: Callable, args: tuple, backend: str) -> Tuple[object, List[tuple], int]:
    """Trace ``function`` under ``backend`` (recording the dispatcher's choices), compile, run: host numpy results,
    the choices, and how many kernel primitives the traced program binds."""
    with dispatch.recorded_choices() as choices, e3nn.backend(backend):
        traced = jax.jit(function).trace(*args)
        lowered = traced.lower()
    kernel_calls = count_kernel_calls(traced.jaxpr.jaxpr)
    out = lowered.compile()(*args)
    return jax.tree.map(np.asarray, jax.block_until_ready(out)), list(choices), kernel_calls


class Checker:
    """Runs the checks of a list of cases, caching each case's problem and float64 references."""

    def __init__(self, cases: Sequence[Case], tiny: bool, seed: int = 0):
        self.cases = list(cases)
        self.tiny = tiny
        self.seed = seed
        self.kernel = kernel_backend(tiny)
        self._problems: Dict[str, object] = {}  # case name -> Problem, or the exception that building raised
        self._references: Dict[Tuple[str, str], object] = {}  # (case, pass) -> numpy tree, or an exception
        self._cotangents: Dict[str, object] = {}

    def problem(self, case: Case) -> Problem:
        if case.name not in self._problems:
            try:  # a seed per case: running a subset of the cases does not change their inputs
                rng = np.random.default_rng([self.seed, case_index(case)])
                self._problems[case.name] = case.build(self.tiny, rng)
            except Exception as exc:  # noqa: BLE001 - recorded on every check of the case
                self._problems[case.name] = exc
        problem = self._problems[case.name]
        if isinstance(problem, Exception):
            raise RuntimeError(f"building the case failed: {describe_exception(problem)}")
        return problem

    def cotangent(self, case: Case, problem: Problem):
        """A random cotangent shaped like the output (float64 numpy, bfloat16-exact), fixed per case."""
        if case.name not in self._cotangents:
            floats, ints = cast_inputs(problem, "float64")
            with e3nn.backend("reference"):
                shapes = jax.eval_shape(lambda f, i: problem.forward(**f, **i), floats, ints)
            rng = np.random.default_rng([self.seed, 1000 + case_index(case)])
            self._cotangents[case.name] = jax.tree.map(lambda s: random_floats(rng, s.shape), shapes)
        return self._cotangents[case.name]

    def reference(self, case: Case, problem: Problem, pass_name: str):
        """The float64 reference result of a pass (computed once per case and pass)."""
        key = (case.name, pass_name)
        if key not in self._references:
            try:
                floats, ints = cast_inputs(problem, "float64")
                cotangent = jax.tree.map(lambda c: jnp.asarray(c, jnp.float64), self.cotangent(case, problem))
                self._references[key], _, _ = trace_and_run(pass_function(problem, pass_name), (floats, ints, cotangent),
                                                         "reference")
            except Exception as exc:  # noqa: BLE001 - recorded on every check that needs it
                self._references[key] = exc
        result = self._references[key]
        if isinstance(result, Exception):
            raise RuntimeError(f"reference failed: {describe_exception(result)}")
        return result

    def check(self, case: Case, dtype_name: str, pass_name: str) -> dict:
        """One check, as a record; never raises."""
        tolerance = TOLERANCES[(dtype_name, pass_name)]
        record = {"part": PART, "family": case.family, "case": case.name, "dtype": dtype_name, "pass": pass_name,
                  "rel_error": None, "tolerance": tolerance, "ok": False, "kernel_used": False, "seconds": None,
                  "error": None, "status": "error", "executor": self.kernel, "executors": [],
                  "worst_leaf_error": None, "reference_seconds": 0.0}
        try:
            problem = self.problem(case)
            start = time.perf_counter()
            expected = self.reference(case, problem, pass_name)
            record["reference_seconds"] = round(time.perf_counter() - start, 3)

            floats, ints = cast_inputs(problem, dtype_name)
            cotangent = jax.tree.map(lambda c: jnp.asarray(c, DTYPES[dtype_name]), self.cotangent(case, problem))
            start = time.perf_counter()
            try:
                ours, choices, kernel_calls = trace_and_run(pass_function(problem, pass_name),
                                                            (floats, ints, cotangent), self.kernel)
            finally:
                record["seconds"] = round(time.perf_counter() - start, 3)
            executors = sorted({name for op, name in choices if op == case.op})
            record["executors"] = executors
            # an empty list would mean the op was never dispatched: no evidence that a kernel ran
            record["kernel_calls"] = kernel_calls
            record["kernel_used"] = (bool(executors) and all(name.startswith("pallas") for name in executors)
                                     and kernel_calls > 0)

            error, worst, finite = relative_error(ours, expected)
            record["rel_error"], record["worst_leaf_error"] = error, worst
            bad_dtypes = wrong_dtypes(ours, DTYPES[dtype_name])
            if not finite:
                # NaN/inf fail; None rather than NaN keeps the JSON line standard
                record["status"], record["rel_error"], record["worst_leaf_error"] = "nonfinite", None, None
            elif bad_dtypes:
                record["status"] = f"wrong dtype {','.join(bad_dtypes)}"
            elif not record["kernel_used"]:
                record["status"] = "fallback"
            elif error > tolerance:
                record["status"] = "inaccurate"
            else:
                record["status"] = "ok"
            record["ok"] = record["status"] == "ok"
        except Exception as exc:  # noqa: BLE001 - a compile error or an OOM must not stop the other checks
            record["error"] = describe_exception(exc)
        return record


def plan(cases: Sequence[Case]) -> List[Tuple[Case, str, str]]:
    """Every (case, dtype, pass) in running order: tier by tier (float32 first), cases in priority order."""
    return [(case, dtype, pass_name) for dtype, passes in TIERS for case in cases for pass_name in passes]


def select_cases(names: Optional[Iterable[str]]) -> List[Case]:
    """The cases named (all when ``names`` is None), in priority order."""
    if names is None:
        return list(CASES)
    names = list(names)
    unknown = sorted(set(names) - {case.name for case in CASES})
    if unknown:
        raise ValueError(f"unknown cases {unknown}; known: {[case.name for case in CASES]}")
    return [case for case in CASES if case.name in names]


def run(sink: Callable[[dict], None], *, tiny: bool, budget_s: float, cases: Optional[Iterable[str]] = None,
        seed: int = 0) -> bool:
    """Run the numerics checks, handing each finished check's record to ``sink``; True when every executed check
    passed.  No check starts after ``budget_s`` seconds; the ones left are listed in one ``skipped`` record.

    ``cases`` restricts the run to the named cases (default: all of :data:`CASES`).  float64 is enabled for the
    duration of the call (every array here has an explicit dtype) and restored afterwards."""
    start = time.perf_counter()
    selected = select_cases(cases)
    previous_x64 = x64_enabled()
    jax.config.update("jax_enable_x64", True)
    all_ok = True
    try:
        checker = Checker(selected, tiny, seed)
        todo = plan(selected)
        for index, (case, dtype, pass_name) in enumerate(todo):
            if time.perf_counter() - start > budget_s:
                skipped = [f"{c.name}/{d}/{p}" for c, d, p in todo[index:]]
                sink({"part": PART, "skipped": skipped, "budget_s": budget_s,
                      "elapsed_s": round(time.perf_counter() - start, 1)})
                break
            record = checker.check(case, dtype, pass_name)
            all_ok &= record["ok"]
            sink(record)
    finally:
        jax.config.update("jax_enable_x64", previous_x64)
    return all_ok


# --- command line ---------------------------------------------------------------------------------------------------


def summary_line(record: dict) -> str:
    """One human-readable line per record."""
    if "skipped" in record:
        return f"numerics: budget of {record['budget_s']:.0f}s spent, skipped {len(record['skipped'])} checks: " \
               + " ".join(record["skipped"])
    error = "-" if record["rel_error"] is None else f"{record['rel_error']:.2e}"
    verdict = "ok  " if record["ok"] else "FAIL"
    line = (f"{verdict} {record['case']:14s} {record['dtype']:8s} {record['pass']:5s} err {error:>8s} "
            f"(tol {record['tolerance']:.0e}) {record['status']:10s} kernel={record['kernel_used']!s:5s} "
            f"{record['seconds'] if record['seconds'] is not None else 0:.1f}s")
    if record["error"]:
        line += f"  {record['error']}"
    return line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_numerics", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append every record to")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, kernels in interpret mode (a smoke run)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds after which no new check starts")
    parser.add_argument("--cases", nargs="+", metavar="NAME", choices=[case.name for case in CASES],
                        help="only these cases (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__}, {jax.default_backend()} {jax.devices()}, kernels: {kernel_backend(args.tiny)}",
          flush=True)
    start = time.perf_counter()
    with open(args.out, "a") as out:
        def sink(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()  # a crash in a later check loses nothing already measured
            print(summary_line(record), flush=True)

        ok = run(sink, tiny=args.tiny, budget_s=args.budget, cases=args.cases, seed=args.seed)
    print(f"numerics: {'PASS' if ok else 'FAIL'} in {time.perf_counter() - start:.0f}s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
