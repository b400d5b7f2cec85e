"""Offline sm_90 (Hopper) resource check of every Pallas kernel: registers, spills, shared memory, launch grid.

No GPU is needed.  For every kernel family, each case calls one public op under ``e3nn_fast.backend("pallas")``
and is lowered for CUDA from this (CPU) process in three passes:

========= ===========================================================================================================
``fwd``   the op's output
``grad``  ``jax.grad`` of the sum of the outputs w.r.t. every float input
``grad2`` forces-style double backward: the gradient w.r.t. the trained inputs of ``sum((dE/dp)**2)``,
          ``E = sum(sin(out))`` and ``p`` the positions-like input (harmonics, ``x2``, node features)
========= ===========================================================================================================

Inputs are ``jax.ShapeDtypeStruct`` s only (nothing is allocated), so MACE-large sizes (160,000 edges) lower in
seconds.  Every ``stablehlo.custom_call`` whose target names Triton is one kernel launch: its ``mhlo.backend_config``
holds the Triton IR (MLIR bytecode), ``num_warps``, ``num_stages``, the grid and the kernel's name.  The bytecode is
re-parsed with jaxlib's own MLIR (``jaxlib.triton.dialect``; pip triton cannot read jaxlib's bytecode) and printed
as text; pip ``triton`` then runs its ``make_ttir`` passes (as XLA's Triton pipeline does before the GPU passes:
without them, ``make_ttgir`` is several times slower on Pallas's unsimplified IR) and compiles it with
``triton.compile(..., target=GPUTarget("cuda", 90, 32))``.  Registers and spill bytes come from the ``ptxas -v``
log of the ptxas Triton ships (same flags as Triton's own), shared memory from the compiled kernel's metadata plus
ptxas's static shared memory.  Compiled results are cached per process (a kernel that appears in several passes or
cases compiles once); Triton's own disk cache (``~/.triton/cache``, ``TRITON_CACHE_DIR``) makes reruns fast.

A row per distinct kernel launch of each (case, pass) reports ``ir`` (the start of the TTIR's sha256: kernels of
one name differ per path or slot), ``n`` (how many times the pass launches it), ``loop`` (``xN``: the launch sits in
a ``while`` loop run N times, e.g. the ``lax.map`` of a vmapped kernel that cannot fold the batch into its rows; the
grid is then per iteration), the grid, the programs it launches, programs per SM of a 132-SM H100/H200, the
programs one SM can hold at once (``res/SM``: from registers, warps and shared memory, as the CUDA occupancy
calculator counts them), warps, stages, registers (``*``: at the 255 cap), spill bytes (stores + loads) and shared
memory (dynamic + static).  A
violation is a spill above ``--max-spill`` bytes, shared memory above ``--max-smem`` bytes (227 KiB, what one
Hopper thread block may use), a kernel that fails to compile, or a case whose op did not run Pallas kernels (a
forced ``pallas`` falls back to ``jnp`` for configurations its kernels do not implement).

Caveat: on a real GPU, XLA compiles the same IR with its own Triton fork and ptxas, so register counts are close,
not exact (triton 3.6 and 3.9 differ by up to 16 registers).  "Spills" and "at the 255 cap" are reliable signals;
pin one triton version (the ``test`` extra) where numbers are compared.

Kernel knobs (``E3NN_FAST_TUNE`` / :func:`e3nn_fast.kernels.tuning.override`) apply as in a model: every row
records the overrides in effect (``knobs``) and the resolved block-size knobs of its kernel family.

Use::

    python -m bench.sm90_resources [--sizes test|mace-large|all] [--jsonl FILE] [--max-spill 0 --max-smem 232448]
                                   [--cases NAME ...] [--passes fwd grad grad2] [--dtype float32]
                                   [--precision default|highest|tensorfloat32]

Exit status 1 when any row violates a limit, 2 when ``triton`` is missing.  :func:`check` returns the rows to
Python (the test suite runs the ``test`` sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

import e3nn_fast as e3nn
from e3nn_fast import dispatch
from e3nn_fast.kernels import tuning

from bench.device_numerics import vmapped_uvu_product

# --- sm_90 (H100 / H200 SXM) limits ---------------------------------------------------------------------------------

SM_COUNT = tuning.SM_COUNT  # streaming multiprocessors of an H100 / H200 SXM
MAX_SMEM = 227 * 1024  # 232448: shared memory one thread block may use (opt-in maximum)
SMEM_PER_SM = 228 * 1024  # shared memory of one SM
SMEM_RESERVED_PER_BLOCK = 1024  # taken by the system per resident block
REGISTERS_PER_SM = 65536
REGISTER_CAP = 255  # per thread
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
ARCH = 90

PASSES = ("fwd", "grad", "grad2")
SIZES = ("test", "mace-large")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}

# Kernel name prefix -> kernel family (the ``family.*`` knobs of :mod:`e3nn_fast.kernels.tuning`).
KERNEL_FAMILIES = (
    ("e3nn_aligned_", "aligned"),
    ("e3nn_fully_connected_", "fully_connected"),
    ("e3nn_message_passing_", "message_passing"),
    ("e3nn_symmetric_contraction_", "symmetric_contraction"),
)

# Block-size knob -> (module, constant) holding its default, for recording the resolved value with each row.
KNOB_DEFAULTS = {
    "aligned.tile_elements": ("e3nn_fast.kernels.layout", "TARGET_TILE_ELEMENTS"),
    "aligned.max_block_rows": ("e3nn_fast.kernels.layout", "MAX_BLOCK_ROWS"),
    "aligned.live_elements": ("e3nn_fast.kernels._aligned", "LIVE_ELEMENTS"),
    "aligned.target_programs": ("e3nn_fast.kernels._aligned", "TARGET_PROGRAMS"),
    "aligned.channel_block": ("e3nn_fast.kernels._aligned", "CHANNEL_BLOCK"),
    "fully_connected.tile_elements": ("e3nn_fast.kernels.fully_connected", "TILE_ELEMENTS"),
    "fully_connected.block_rows": ("e3nn_fast.kernels.fully_connected", "BLOCK_ROWS"),
    "fully_connected.min_block_rows": ("e3nn_fast.kernels.fully_connected", "MIN_BLOCK_ROWS"),
    "fully_connected.planes_per_program": ("e3nn_fast.kernels.fully_connected", "PLANES_PER_PROGRAM"),
    "fully_connected.accumulator_elements": ("e3nn_fast.kernels.fully_connected", "ACCUMULATOR_ELEMENTS"),
    "fully_connected.target_programs": ("e3nn_fast.kernels.fully_connected", "TARGET_PROGRAMS"),
    "fully_connected.max_splits": ("e3nn_fast.kernels.fully_connected", "MAX_SPLITS"),
    "message_passing.block_rows": ("e3nn_fast.kernels.message_passing", "BLOCK_ROWS"),
    "message_passing.channel_block": ("e3nn_fast.kernels.message_passing", "CHANNEL_BLOCK"),
    "message_passing.target_programs": ("e3nn_fast.kernels.message_passing", "TARGET_PROGRAMS"),
    "message_passing.edge_tile": ("e3nn_fast.kernels.message_passing", "EDGE_TILE"),
    "symmetric_contraction.tile_elements": ("e3nn_fast.kernels.symmetric_contraction", "TILE_ELEMENTS"),
    "symmetric_contraction.max_channel_block": ("e3nn_fast.kernels.symmetric_contraction", "MAX_CHANNEL_BLOCK"),
    "symmetric_contraction.load_group_planes": ("e3nn_fast.kernels.symmetric_contraction", "LOAD_GROUP_PLANES"),
}

INSTALL_HINT = ("the offline sm_90 check needs the `triton` package (its compiler and ptxas; no GPU): install the "
                "test extras, `python -m pip install -e '.[test]'` (or `python -m pip install triton==3.6.0`)")


# --- cases ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """One lowering problem: ``forward(**floats, **ints)`` returns the op's output (arrays); ``floats`` / ``ints``
    map input names to shapes (float inputs take the checked dtype, int inputs are int32).  ``position`` names the
    positions-like input whose gradient the ``grad2`` loss squares, ``trained`` the inputs it is differentiated by."""

    forward: Callable
    floats: Dict[str, Tuple[int, ...]]
    ints: Dict[str, Tuple[int, ...]]
    position: str
    trained: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Case:
    """A public op at one size: ``name`` (unique), ``op`` (the dispatcher op that must run Pallas kernels), ``sizes``
    (``test`` or ``mace-large``), ``config`` (what is computed, for the report) and ``build() -> Problem``."""

    name: str
    op: str
    sizes: str
    config: str
    build: Callable[[], Problem]


def _dim(irreps) -> int:
    return e3nn.Irreps(irreps).dim


def message_passing_case(irreps_x, irreps_sh, keep, nodes, edges):
    def build():
        irreps_out = e3nn.message_passing_irreps_out(irreps_x, irreps_sh, keep)

        def forward(x, sh, w, senders, receivers):
            with e3nn.backend("pallas"):
                out = e3nn.message_passing(e3nn.IrrepsArray(irreps_x, x), e3nn.IrrepsArray(irreps_sh, sh), w,
                                           senders, receivers, nodes, filter_ir_out=keep)
            return out.array

        floats = {"x": (nodes, _dim(irreps_x)), "sh": (edges, _dim(irreps_sh)), "w": (edges, irreps_out.num_irreps)}
        return Problem(forward, floats, {"senders": (edges,), "receivers": (edges,)}, "sh", ("x", "w"))

    keep_text = f" keep {keep}" if keep else ""
    return build, f"{irreps_x} (x) {irreps_sh}{keep_text}, {nodes} nodes / {edges} edges"


def channelwise_sh_case(irreps_x, irreps_sh, keep, rows):
    """``tensor_product(x, sh)``: every channel of ``x`` with a multiplicity-1 operand (``uvuv``)."""
    def build():
        def forward(x, sh):
            with e3nn.backend("pallas"):
                return e3nn.tensor_product(e3nn.IrrepsArray(irreps_x, x), e3nn.IrrepsArray(irreps_sh, sh),
                                           filter_ir_out=keep).array

        return Problem(forward, {"x": (rows, _dim(irreps_x)), "sh": (rows, _dim(irreps_sh))}, {}, "sh", ("x",))

    keep_text = f" keep {keep}" if keep else ""
    return build, f"{irreps_x} (x) {irreps_sh}{keep_text}, {rows} rows"


def legacy_uvu_case(irreps1, irreps2, keep, rows):
    """Legacy ``FunctionalTensorProduct`` with weighted ``uvu`` instructions, vmapped over rows including the
    weights (one weight vector per row: the channelwise kernel with per-row weights)."""
    def build():
        product, weights = vmapped_uvu_product(irreps1, irreps2, keep)

        def forward(w, x1, x2):
            with e3nn.backend("pallas"):
                return product(w, x1, x2)

        floats = {"w": (rows, weights), "x1": (rows, _dim(irreps1)), "x2": (rows, _dim(irreps2))}
        return Problem(forward, floats, {}, "x2", ("w", "x1"))

    return build, f"{irreps1} (x) {irreps2} -> uvu {keep}, per-row weights, {rows} rows"


def elementwise_case(irreps1, irreps2, rows):
    def build():
        def forward(x1, x2):
            with e3nn.backend("pallas"):
                return e3nn.elementwise_tensor_product(e3nn.IrrepsArray(irreps1, x1),
                                                       e3nn.IrrepsArray(irreps2, x2)).array

        return Problem(forward, {"x1": (rows, _dim(irreps1)), "x2": (rows, _dim(irreps2))}, {}, "x2", ("x1",))

    return build, f"{irreps1} (.) {irreps2}, {rows} rows"


def fully_connected_case(irreps1, irreps2, irreps_out, rows):
    """Legacy ``FunctionalFullyConnectedTensorProduct.left_right`` vmapped over rows, weights shared (``uvw``)."""
    def build():
        from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct

        i1, i2, io = e3nn.Irreps(irreps1), e3nn.Irreps(irreps2), e3nn.Irreps(irreps_out)
        tp = FunctionalFullyConnectedTensorProduct(i1, i2, io)
        weights = sum(math.prod(ins.path_shape) for ins in tp.instructions if ins.has_weight)

        def forward(w, x1, x2):
            def one(a, b):
                return tp.left_right(w, e3nn.IrrepsArray(i1, a), e3nn.IrrepsArray(i2, b)).array

            with e3nn.backend("pallas"):
                return jax.vmap(one)(x1, x2)

        floats = {"w": (weights,), "x1": (rows, i1.dim), "x2": (rows, i2.dim)}
        return Problem(forward, floats, {}, "x2", ("w", "x1"))

    return build, f"{irreps1} (x) {irreps2} -> {irreps_out}, shared weights, {rows} rows"


def linear_case(irreps_in, irreps_out, rows):
    """``FunctionalLinear.apply`` on a batch, one weight array per instruction (what the Linear modules call).
    Linear in its input: the ``grad2`` loss depends on the weights only."""
    def build():
        lin = e3nn.FunctionalLinear(e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out))
        names = [f"w{k}" for k in range(len(lin.instructions))]

        def forward(x, **weights):
            with e3nn.backend("pallas"):
                return lin.apply([weights[name] for name in names], e3nn.IrrepsArray(irreps_in, x)).array

        floats = {"x": (rows, _dim(irreps_in))}
        floats.update({name: tuple(ins.path_shape) for name, ins in zip(names, lin.instructions)})
        return Problem(forward, floats, {}, "x", tuple(names))

    return build, f"{irreps_in} -> {irreps_out}, {rows} rows"


def symmetric_contraction_case(irreps, channels, orders, keep, species_count, nodes):
    def build():
        shapes = e3nn.symmetric_contraction_weight_shapes(irreps, channels, species_count, orders, keep)
        names = sorted(shapes)

        def forward(x, species, **weights):
            with e3nn.backend("pallas"):
                out = e3nn.symmetric_contraction(e3nn.IrrepsArray(irreps, x), species, weights, orders, keep)
            return out.array

        floats = {"x": (nodes, channels, _dim(irreps))}
        floats.update({name: tuple(shapes[name]) for name in names})
        return Problem(forward, floats, {"species": (nodes,)}, "x", tuple(names))

    order_text = ",".join(str(o) for o in orders)
    return build, (f"{channels}x({irreps}) orders {order_text} keep {keep}, {species_count} species, "
                   f"{nodes} nodes")


def _case(name, op, sizes, made):
    build, config = made
    return Case(name, op, sizes, config, build)


MACE_X = "128x0e+128x1o+128x2e"
MACE_SH = "0e+1o+2e+3o"

# Test sizes: the configurations of the test suite (tests/test_tuning.py, tests/test_kernels.py's lowering cases,
# tests/test_symmetric_contraction.py), through the public ops.  MACE-large: the sizes of a MACE-large model on a
# 3,000-atom system (160,000 edges) for message passing and the op-by-op convolution, 5,000 nodes for node-wise ops.
CASES: Tuple[Case, ...] = (
    _case("message_passing", "message_passing", "test",
          message_passing_case("4x0e+4x1o+4x2e", "0e+1o+2e", None, 5, 13)),
    _case("channelwise_uvuv", "tensor_product", "test", channelwise_sh_case("4x0e+4x1o", "0e+1o", None, 16)),
    _case("channelwise_uvu", "tensor_product", "test",
          legacy_uvu_case("5x0e+33x1o+3x2e", "0e+1o+2e", "0e+1o+2e", 37)),
    _case("elementwise", "tensor_product", "test", elementwise_case("7x0e+2x1o", "7x1o+2x2e", 37)),
    _case("fully_connected", "tensor_product", "test",
          fully_connected_case("20x0e+5x1o", "16x0e+1o", "24x0e+24x1o", 37)),
    _case("linear", "linear", "test", linear_case("12x0e+3x1o+5x1o", "7x0e+4x1o", 37)),
    _case("symmetric_contraction", "symmetric_contraction", "test",
          symmetric_contraction_case("0e+1o+2e", 4, (1, 2, 3), "0e+1o", 3, 9)),
    # MACE-large
    _case("message_passing", "message_passing", "mace-large",
          message_passing_case(MACE_X, MACE_SH, MACE_SH, 3000, 160000)),
    _case("channelwise_uvuv", "tensor_product", "mace-large", channelwise_sh_case(MACE_X, MACE_SH, MACE_SH, 160000)),
    _case("channelwise_uvu", "tensor_product", "mace-large", legacy_uvu_case(MACE_X, MACE_SH, MACE_SH, 160000)),
    _case("elementwise", "tensor_product", "mace-large", elementwise_case(MACE_X, MACE_X, 5000)),
    _case("fully_connected", "tensor_product", "mace-large",
          fully_connected_case("64x0e+64x1o+64x2e", "0e+1o+2e", "64x0e+64x1o+64x2e", 5000)),
    _case("linear", "linear", "mace-large", linear_case(MACE_X, MACE_X, 5000)),
    _case("symmetric_contraction", "symmetric_contraction", "mace-large",
          symmetric_contraction_case(MACE_SH, 128, (1, 2, 3), "0e+1o+2e", 10, 5000)),
)


def cases_for(sizes: str, names: Optional[Iterable[str]] = None) -> List[Case]:
    """The cases of ``sizes`` (``test``, ``mace-large`` or ``all``), optionally only those named."""
    if sizes not in SIZES + ("all",):
        raise ValueError(f"unknown sizes {sizes!r}; expected one of {', '.join(SIZES + ('all',))}")
    chosen = [case for case in CASES if sizes in ("all", case.sizes)]
    if names:
        names = list(names)
        unknown = sorted(set(names) - {case.name for case in CASES})
        if unknown:
            raise ValueError(f"unknown cases {unknown}; known: {sorted({case.name for case in CASES})}")
        chosen = [case for case in chosen if case.name in names]
    return chosen


# --- passes ---------------------------------------------------------------------------------------------------------


def _total(tree, transform=lambda a: a):
    return sum(jnp.sum(transform(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def pass_function(problem: Problem, pass_name: str) -> Callable:
    """``(floats, ints) -> pytree`` computing one pass of ``problem`` (see the module docstring)."""
    if pass_name == "fwd":
        return lambda floats, ints: problem.forward(**floats, **ints)
    if pass_name == "grad":
        return lambda floats, ints: jax.grad(lambda f: _total(problem.forward(**f, **ints)))(floats)
    if pass_name == "grad2":
        def double_backward(floats, ints):
            def force_loss(trained):
                merged = {**floats, **trained}

                def energy(p):
                    return _total(problem.forward(**{**merged, problem.position: p}, **ints), jnp.sin)

                forces = jax.grad(energy)(merged[problem.position])
                return jnp.sum(forces.astype(jnp.float32) ** 2)

            return jax.grad(force_loss)({name: floats[name] for name in problem.trained})

        return double_backward
    raise ValueError(f"unknown pass {pass_name!r}; expected one of {', '.join(PASSES)}")


# --- lowering and kernel extraction ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _project_lowering():
    """``lower_for_platform`` of the project's ``tests/pallas_lowering.py`` (it supplies the abstract H100-class
    device that JAX >= 0.11 needs to lower Pallas for CUDA without a GPU), or None outside a checkout."""
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "pallas_lowering.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_e3nn_fast_pallas_lowering", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lower_for_platform


def lower_for_cuda(fn: Callable, args: tuple):
    """``fn`` traced and lowered for CUDA from this process (no GPU)."""
    lower = _project_lowering()
    if lower is not None:
        return lower(fn, args, "cuda")
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))  # JAX <= 0.10 without the helper


@dataclasses.dataclass(frozen=True)
class Launch:
    """One Triton kernel launch found in a lowered module: its IR as text and its launch parameters."""

    name: str
    ttir: str
    num_warps: int
    num_stages: int
    grid: Tuple[int, int, int]
    loop_trips: Tuple[Optional[int], ...] = ()  # trip counts of the while loops around the launch (None: unknown)

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.ttir.encode()).hexdigest()
        return f"{digest}:{self.num_warps}:{self.num_stages}"


def triton_launches(lowered) -> List[Launch]:
    """Every Triton custom call of ``lowered`` (a ``jax.stages.Lowered`` for CUDA), in program order."""
    from jaxlib.mlir import ir
    from jaxlib.triton import dialect as tt_dialect

    found = []
    functions = {}

    def visit(op, trips, stack):
        op = op.operation
        if op.name == "stablehlo.custom_call" and "call_target_name" in op.attributes:
            target = ir.StringAttr(op.attributes["call_target_name"]).value
            if "triton" in target.lower() and "mhlo.backend_config" in op.attributes:
                found.append((ir.DictAttr(op.attributes["mhlo.backend_config"]), trips))
        if op.name == "func.call":  # follow calls: a loop body often calls a private function
            callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
            if callee in functions and callee not in stack:
                visit(functions[callee], trips, stack + (callee,))
            return
        if op.name == "stablehlo.while":  # lax.map / scan / fori_loop: the launches inside repeat
            trips = trips + (_trip_count(ir, op),)
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    visit(inner, trips, stack)

    module = lowered.compiler_ir("stablehlo")
    with module.context:
        for op in module.body.operations:
            if op.operation.name == "func.func":
                functions[ir.StringAttr(op.operation.attributes["sym_name"]).value] = op
        roots = [name for name, op in functions.items()
                 if "sym_visibility" not in op.operation.attributes
                 or ir.StringAttr(op.operation.attributes["sym_visibility"]).value == "public"]
        for name in roots or list(functions):
            visit(functions[name], (), (name,))
        raw = []
        for config, trips in found:
            number = lambda key: int(ir.IntegerAttr(config[key]).value) if key in config else 1
            raw.append((ir.StringAttr(config["name"]).value, ir.StringAttr(config["ir"]).value_bytes,
                        number("num_warps"), number("num_stages"),
                        (number("grid_x"), number("grid_y"), number("grid_z")), trips))
    launches = []
    texts: Dict[bytes, str] = {}
    for name, blob, warps, stages, grid, trips in raw:
        if blob not in texts:
            with ir.Context() as context, ir.Location.unknown():
                tt_dialect.register_dialect(context)
                context.allow_unregistered_dialects = True
                texts[blob] = ir.Module.parse(blob).operation.get_asm(enable_debug_info=False)
        launches.append(Launch(name, texts[blob], warps, stages, grid, trips))
    return launches


def _trip_count(ir, while_op) -> Optional[int]:
    """The trip count of a ``stablehlo.while`` lowered from ``lax.map`` / ``scan`` / ``fori_loop`` with static
    bounds: its condition compares the counter with the one scalar integer constant it holds (None otherwise)."""
    try:
        values = []
        for inner in while_op.regions[0].blocks[0].operations:
            inner = inner.operation
            if inner.name == "stablehlo.constant":
                attr = ir.DenseIntElementsAttr(inner.attributes["value"])
                if attr.is_splat and not ir.ShapedType(attr.type).shape:
                    values.append(int(ir.IntegerAttr(attr.get_splat_value()).value))
        return values[0] if len(values) == 1 else None
    except Exception:  # noqa: BLE001 - a loop of another shape: trip count unknown
        return None


# --- compiling for sm_90 --------------------------------------------------------------------------------------------


def triton_missing() -> Optional[str]:
    """Why the check cannot run here (``triton`` not importable), or None."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure means the check cannot run
        return f"{INSTALL_HINT} ({type(error).__name__}: {error})"
    return None


@dataclasses.dataclass(frozen=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int  # Triton's dynamic shared memory + ptxas's static shared memory
    compile_s: float
    error: Optional[str] = None

    @property
    def spill(self) -> int:
        return self.spill_stores + self.spill_loads


_RESULTS: Dict[str, Resources] = {}  # per-process cache: Launch.key -> Resources


def _ptxas_number(pattern: str, log: str) -> int:
    match = re.search(pattern, log)
    return int(match.group(1)) if match else 0


def _compile(launch: Launch) -> Resources:
    import triton
    from triton._C.libtriton import ir as triton_ir
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler.compiler import make_backend

    start = time.perf_counter()
    target = GPUTarget("cuda", ARCH, 32)
    options = dict(num_warps=launch.num_warps, num_stages=launch.num_stages, num_ctas=1)
    with tempfile.TemporaryDirectory(prefix="sm90_") as folder:
        source = os.path.join(folder, "kernel.ttir")
        with open(source, "w") as handle:
            handle.write(launch.ttir)
        # Triton starts an IR file *after* its stage, so run the TTIR passes (inline, canonicalize, combine, CSE,
        # loop unroll) first, as XLA's Triton pipeline does, and compile their result.
        backend = make_backend(target)
        context = triton_ir.context()
        triton_ir.load_dialects(context)
        backend.load_dialects(context)
        module = triton_ir.parse_mlir_module(source, context)
        module.context = context
        module = backend.make_ttir(module, {}, backend.parse_options(dict(options)), ARCH)
        with open(source, "w") as handle:
            handle.write(str(module))
        kernel = triton.compile(source, target=target, options=options)
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as handle:
            handle.write(kernel.asm["ptx"])
        metadata = kernel.metadata
        command = [get_ptxas(ARCH).path, "-lineinfo", "-v"]
        if not getattr(metadata, "enable_fp_fusion", True):
            command.append("--fmad=false")
        extra = getattr(metadata, "ptx_options", None)
        if extra:
            command += extra.split(" ")
        command += [f"--gpu-name=sm_{ARCH}a", ptx, "-o", os.path.join(folder, "kernel.cubin")]
        log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    static_smem = _ptxas_number(r"(\d+) bytes smem", log)
    return Resources(
        registers=_ptxas_number(r"Used (\d+) registers", log),
        spill_stores=_ptxas_number(r"(\d+) bytes spill stores", log),
        spill_loads=_ptxas_number(r"(\d+) bytes spill loads", log),
        stack=_ptxas_number(r"(\d+) bytes stack frame", log),
        shared=int(metadata.shared) + static_smem,
        compile_s=time.perf_counter() - start,
    )


def resources(launch: Launch) -> Resources:
    """sm_90 resources of ``launch``'s kernel (cached per process by IR, warps and stages)."""
    key = launch.key
    if key not in _RESULTS:
        start = time.perf_counter()
        try:
            _RESULTS[key] = _compile(launch)
        except Exception as error:  # noqa: BLE001 - a kernel that does not compile is a reported violation
            lines = str(error).strip().splitlines()
            _RESULTS[key] = Resources(0, 0, 0, 0, 0, time.perf_counter() - start,
                                      error=f"{type(error).__name__}: {lines[0][:300] if lines else ''}")
    return _RESULTS[key]


def resident_programs(registers: int, warps: int, shared: int) -> int:
    """Programs (thread blocks) one sm_90 SM holds at once, as the CUDA occupancy calculator counts them."""
    if registers <= 0 or warps <= 0:
        return 0
    per_warp = math.ceil(registers * 32 / 256) * 256  # registers are allocated per warp, 256 at a time
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_warps = MAX_WARPS_PER_SM // warps
    by_shared = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_BLOCK)
    return max(0, min(by_registers, by_warps, by_shared, MAX_BLOCKS_PER_SM))


# --- rows -----------------------------------------------------------------------------------------------------------


def kernel_family(name: str) -> Optional[str]:
    for prefix, family in KERNEL_FAMILIES:
        if name.startswith(prefix):
            return family
    return None


def family_knobs(family: Optional[str]) -> Dict[str, Optional[int]]:
    """The block-size knobs of ``family`` as a kernel traced now sees them (override, environment or default)."""
    knobs = {}
    for name, (module_name, constant) in KNOB_DEFAULTS.items():
        if family and name.startswith(family + "."):
            try:
                default = getattr(importlib.import_module(module_name), constant)
            except (ImportError, AttributeError):
                default = None
            knobs[name] = tuning.value(name, default)
    return knobs


def violations(row: dict, max_spill: int, max_smem: int) -> List[str]:
    """What is wrong with ``row`` (empty when it passes)."""
    if row.get("error"):
        return [row["error"]]
    found = []
    if row["spill_bytes"] > max_spill:
        found.append(f"spills {row['spill_bytes']} B (stores {row['spill_stores']}, loads {row['spill_loads']})"
                     f" > {max_spill}")
    if row["shared_bytes"] > max_smem:
        found.append(f"shared memory {row['shared_bytes']} B > {max_smem}")
    return found


def case_rows(case: Case, pass_name: str, dtype: str = "float32", *, max_spill: int = 0,
              max_smem: int = MAX_SMEM) -> List[dict]:
    """One row per distinct kernel launch of ``case``'s ``pass_name`` (or one error row)."""
    base = {"sizes": case.sizes, "case": case.name, "op": case.op, "pass": pass_name, "dtype": dtype,
            "config": case.config, "knobs": tuning.current(), "precision": matmul_precision_setting()}
    start = time.perf_counter()
    try:
        problem = case.build()
        floats = {k: jax.ShapeDtypeStruct(shape, DTYPES[dtype]) for k, shape in problem.floats.items()}
        ints = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k, shape in problem.ints.items()}
        with dispatch.recorded_choices() as choices:
            lowered = lower_for_cuda(pass_function(problem, pass_name), (floats, ints))
        launches = triton_launches(lowered)
    except Exception as error:  # noqa: BLE001 - a case that does not lower is a reported violation
        lines = str(error).strip().splitlines()
        row = {**base, "kernel": "-", "error": f"lowering failed: {type(error).__name__}: "
                                              f"{lines[0][:300] if lines else ''}"}
        row["violations"] = violations(row, max_spill, max_smem)
        return [row]
    lower_s = time.perf_counter() - start
    fallbacks = sorted({executor for op, executor in choices if op == case.op and not executor.startswith("pallas")})
    if fallbacks or not launches:
        why = (f"the op {case.op!r} fell back to {fallbacks}" if fallbacks
               else "no Triton kernel in the lowered program")
        row = {**base, "kernel": "-", "error": f"not a Pallas kernel: {why}", "lower_s": round(lower_s, 2)}
        row["violations"] = violations(row, max_spill, max_smem)
        return [row]
    distinct: Dict[tuple, List] = {}
    for launch in launches:
        distinct.setdefault((launch.key, launch.name, launch.grid, launch.loop_trips), [launch, 0])[1] += 1
    rows = []
    for launch, calls in distinct.values():
        result = resources(launch)
        family = kernel_family(launch.name)
        programs = math.prod(launch.grid)
        row = {**base, "kernel": launch.name, "family": family, "calls": calls, "grid": list(launch.grid),
               "programs": programs, "programs_per_sm": round(programs / SM_COUNT, 3),
               "in_loop": bool(launch.loop_trips), "loop_trips": list(launch.loop_trips),
               "num_warps": launch.num_warps, "num_stages": launch.num_stages,
               "family_knobs": family_knobs(family), "lower_s": round(lower_s, 2),
               "compile_s": round(result.compile_s, 2), "ttir_sha256": launch.key.split(":")[0][:16]}
        if result.error:
            row["error"] = f"compile failed: {result.error}"
        else:
            resident = resident_programs(result.registers, launch.num_warps, result.shared)
            row.update(registers=result.registers, at_register_cap=result.registers >= REGISTER_CAP,
                       spill_stores=result.spill_stores, spill_loads=result.spill_loads, spill_bytes=result.spill,
                       stack_bytes=result.stack, shared_bytes=result.shared, resident_per_sm=resident,
                       waves=round(programs / (SM_COUNT * resident), 3) if resident else None)
        row["violations"] = violations(row, max_spill, max_smem)
        rows.append(row)
    return rows


# --- report ---------------------------------------------------------------------------------------------------------

COLUMNS = (
    ("sizes", "sizes", "<"), ("op", "case", "<"), ("pass", "pass", "<"), ("kernel", "kernel", "<"),
    ("ir", "ir", "<"), ("calls", "n", ">"), ("loop", "loop", ">"), ("grid", "grid", "<"),
    ("programs", "programs", ">"), ("per_sm", "prog/SM", ">"),
    ("resident", "res/SM", ">"), ("warps", "warps", ">"), ("stages", "stg", ">"), ("regs", "regs", ">"),
    ("spill", "spill B", ">"), ("smem", "smem B", ">"), ("status", "status", "<"),
)


def _cells(row: dict) -> dict:
    error = row.get("error")
    ok = not row["violations"]
    return {
        "sizes": row["sizes"], "op": row["case"], "pass": row["pass"],
        "kernel": row["kernel"].removeprefix("e3nn_"),
        "ir": row.get("ttir_sha256", "")[:6],
        "calls": str(row.get("calls", "")),
        "loop": _loop_cell(row.get("loop_trips", ())),
        "grid": "x".join(str(g) for g in row["grid"]) if "grid" in row else "",
        "programs": str(row.get("programs", "")),
        "per_sm": f"{row['programs_per_sm']:.2f}" if "programs_per_sm" in row else "",
        "resident": str(row.get("resident_per_sm", "")) if not error else "",
        "warps": str(row.get("num_warps", "")), "stages": str(row.get("num_stages", "")),
        "regs": "" if error or "registers" not in row else
        f"{row['registers']}{'*' if row['at_register_cap'] else ''}",
        "spill": "" if error or "spill_bytes" not in row else str(row["spill_bytes"]),
        "smem": "" if error or "shared_bytes" not in row else str(row["shared_bytes"]),
        "status": "ok" if ok else "FAIL: " + "; ".join(row["violations"]),
    }


def _loop_cell(trips) -> str:
    """``x160000`` for a launch repeated by loops (``x?`` when a trip count is unknown), empty otherwise."""
    if not trips:
        return ""
    if any(t is None for t in trips):
        return "x?"
    return f"x{math.prod(trips)}"


def format_table(rows: Sequence[dict]) -> str:
    cells = [_cells(row) for row in rows]
    widths = {key: max([len(title)] + [len(c[key]) for c in cells]) for key, title, _ in COLUMNS}

    def line(values):
        parts = []
        for key, _, align in COLUMNS:
            text = values[key]
            parts.append(text if key == "status" else (text.ljust(widths[key]) if align == "<" else
                                                      text.rjust(widths[key])))
        return "  ".join(parts).rstrip()

    header = line({key: title for key, title, _ in COLUMNS})
    return "\n".join([header, "-" * len(header)] + [line(c) for c in cells])


def environment() -> dict:
    """Versions that the numbers depend on."""
    import jaxlib
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(ARCH)
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "triton": triton.__version__,
            "ptxas": str(getattr(tool, "version", "?")).strip().splitlines()[-1], "target": f"sm_{ARCH}a",
            "sm_count": SM_COUNT, "knobs": tuning.current()}


def matmul_precision_setting() -> str:
    """``jax_default_matmul_precision`` as the kernels see it when traced (``default`` when unset): the fully
    connected kernels' ``dot`` s run on tensor cores (TF32) by default and as IEEE float32 FMA loops under
    ``highest``, with different tiles and resources."""
    return str(jax.config.jax_default_matmul_precision or "default")


def check(sizes: str = "test", *, cases: Optional[Iterable[str]] = None, passes: Sequence[str] = PASSES,
          dtype: str = "float32", max_spill: int = 0, max_smem: int = MAX_SMEM,
          sink: Optional[Callable[[dict], None]] = None, precision: Optional[str] = None) -> List[dict]:
    """Rows of every kernel of every chosen case and pass; ``sink(row)`` is called as each row is ready.
    ``precision`` (e.g. ``"highest"``) is set as ``jax.default_matmul_precision`` while the cases are traced.

    Raises RuntimeError naming the fix when ``triton`` is not importable."""
    missing = triton_missing()
    if missing:
        raise RuntimeError(missing)
    rows = []
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        for case in cases_for(sizes, cases):
            for pass_name in passes:
                for row in case_rows(case, pass_name, dtype, max_spill=max_spill, max_smem=max_smem):
                    rows.append(row)
                    if sink is not None:
                        sink(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sm90_resources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=SIZES + ("all",), default="test")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="only these cases (default: every family)")
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--jsonl", metavar="FILE", help="also write one JSON line per row (and a header line)")
    parser.add_argument("--max-spill", type=int, default=0, help="spill bytes (stores + loads) allowed per kernel")
    parser.add_argument("--max-smem", type=int, default=MAX_SMEM, help="shared memory bytes allowed per kernel")
    parser.add_argument("--precision", choices=("default", "highest", "tensorfloat32"), default="default",
                        help="jax_default_matmul_precision while tracing (the fully connected kernels' dots: "
                             "TF32 tensor cores by default, IEEE float32 FMA under highest)")
    args = parser.parse_args(argv)

    missing = triton_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    precision = None if args.precision == "default" else args.precision
    header = {"environment": environment(), "sizes": args.sizes, "dtype": args.dtype,
              "precision": args.precision, "max_spill": args.max_spill, "max_smem": args.max_smem}
    out = open(args.jsonl, "w") if args.jsonl else None
    start = time.perf_counter()
    try:
        if out:
            out.write(json.dumps(header) + "\n")
            out.flush()
        env = header["environment"]
        print(f"sm_90 resources: jax {env['jax']}, triton {env['triton']}, ptxas {env['ptxas']}, "
              f"{SM_COUNT} SMs; knobs {env['knobs'] or 'defaults'}; {args.dtype}, matmul precision "
              f"{args.precision}; limits: spill <= {args.max_spill} B, "
              f"shared memory <= {args.max_smem} B", flush=True)
        rows: List[dict] = []

        def sink(row):
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            print(f"  {row['sizes']} {row['case']} {row['pass']} {row['kernel']}: "
                  f"{'ok' if not row['violations'] else 'FAIL'}", file=sys.stderr, flush=True)

        check(args.sizes, cases=args.cases, passes=args.passes, dtype=args.dtype, max_spill=args.max_spill,
              max_smem=args.max_smem, sink=sink, precision=precision)
    finally:
        if out:
            out.close()
    print(format_table(rows))
    bad = [row for row in rows if row["violations"]]
    capped = sorted({(row["case"], row["kernel"], row["ttir_sha256"]) for row in rows if row.get("at_register_cap")})
    print(f"{len(rows)} kernel rows, {len(_RESULTS)} distinct kernels compiled, {time.perf_counter() - start:.0f} s; "
          f"at the {REGISTER_CAP}-register cap: {len(capped)}; violations: {len(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
