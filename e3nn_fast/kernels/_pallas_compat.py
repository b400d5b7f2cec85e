"""Every JAX-version-dependent import of the kernels, and the one table that picks each kernel family's lowering.

Pallas moves fast: the Triton compiler parameters were renamed and moved (``TritonCompilerParams`` in ``pallas.gpu``
or ``pallas`` became ``jax.experimental.pallas.triton.CompilerParams`` in JAX 0.7), the Triton lowering is deprecated
since JAX 0.11 in favour of Mosaic GPU (whose ``pallas_call`` entry point is itself deprecated for ``plgpu.kernel``),
and the primitive-extension API (``jax.extend.core.Primitive``, ``jax.interpreters.ad``/``batching``/``mlir``)
keeps losing aliases.  The other kernel modules import these names from here only, so that a JAX upgrade touches one
file (checked: JAX 0.10.2 here; the GPU image has 0.11).

Lowering choice (:data:`LOWERING`; ``E3NN_FAST_PALLAS_LOWERING`` overrides it): the tensor-product kernels read and
write column slices of their row blocks at offsets fixed at trace time (one component plane of one segment each) and
combine them with elementwise products, lane/row reductions and small matrix products.  The Triton lowering handles
that directly: a block is only a base pointer, and each slice is one load or store.  The Mosaic GPU lowering of
``pallas_call`` instead copies whole blocks into shared memory with TMA, which rejects these blocks (at most 256
elements per dimension, and the weight matrices exceed shared memory); it would need kernels written for
``plgpu.kernel`` with per-plane copies.  So every family uses ``"triton"``.  Triton demands power-of-two sizes for
every array a kernel loads, stores or computes: the kernels' packed layout pads multiplicities to powers of two, and
the batch is padded to a whole number of row blocks (see :mod:`e3nn_fast.kernels.layout`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.experimental import pallas as pl

# --- Triton and Mosaic GPU compiler parameters ------------------------------------------------------------------

try:  # JAX >= 0.7
    from jax.experimental.pallas import triton as _pl_triton
except ImportError:  # pragma: no cover - very old JAX
    _pl_triton = None

try:
    from jax.experimental.pallas import mosaic_gpu as _pl_mosaic_gpu
except ImportError:  # pragma: no cover - JAX without Mosaic GPU
    _pl_mosaic_gpu = None


def _find_attr(candidates: list[tuple[Any, str]]):
    for module, name in candidates:
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    return None


def _gpu_module():
    try:
        from jax.experimental.pallas import gpu  # removed in JAX 0.6.1, kept for older versions
    except ImportError:
        return None
    return gpu


_TritonParams = _find_attr(
    [(_pl_triton, "CompilerParams"), (_pl_triton, "TritonCompilerParams"), (_gpu_module(), "TritonCompilerParams"),
     (pl, "TritonCompilerParams")]
)
_MosaicGpuParams = _find_attr([(_pl_mosaic_gpu, "CompilerParams"), (_pl_mosaic_gpu, "GPUCompilerParams")])

# Kernel family -> GPU lowering.  The one place to switch a family to "mosaic_gpu" once its kernel supports it.
LOWERING: dict[str, str] = {
    "aligned": "triton",  # channelwise (uvu, uvuv with a mul-1 operand) and elementwise (uuu, uuw) products
    "fully_connected": "triton",  # uvw with shared weights: products, and the weight gradient
    "message_passing": "triton",  # fused gather + channelwise TP + segment sum (kernels/message_passing.py)
    "symmetric_contraction": "triton",  # MACE product basis: per-node polynomials over (node, channel) planes
}

# Triton launch parameters per family: warps per program, and software-pipelining stages (0: Pallas's default).
# Defaults only: ``E3NN_FAST_TUNE`` (:mod:`e3nn_fast.kernels.tuning`) overrides them at trace time.
TRITON_WARPS: dict[str, int] = {"aligned": 4, "fully_connected": 4, "message_passing": 4, "symmetric_contraction": 4}
TRITON_STAGES: dict[str, int] = {"aligned": 0, "fully_connected": 0, "message_passing": 0, "symmetric_contraction": 0}


def lowering(family: str) -> str:
    """The GPU lowering of ``family``; ``E3NN_FAST_PALLAS_LOWERING`` overrides the table for every family."""
    chosen = os.environ.get("E3NN_FAST_PALLAS_LOWERING") or LOWERING[family]
    if chosen not in ("triton", "mosaic_gpu"):
        raise ValueError(f"Unknown Pallas GPU lowering {chosen!r}; expected 'triton' or 'mosaic_gpu'")
    return chosen


def compiler_params(family: str):
    """The ``compiler_params`` of ``pallas_call`` that select the lowering of ``family`` on GPU."""
    if lowering(family) == "triton":
        if _TritonParams is None:
            raise ImportError("This JAX has no Pallas Triton compiler parameters; set the family to 'mosaic_gpu'")
        from e3nn_fast.kernels import tuning

        warps = tuning.value(f"{family}.num_warps", TRITON_WARPS[family])
        stages = tuning.value(f"{family}.num_stages", TRITON_STAGES[family])
        return _TritonParams(num_warps=warps, num_stages=stages or None)
    if _MosaicGpuParams is None:
        raise ImportError("This JAX has no Pallas Mosaic GPU lowering")
    return _MosaicGpuParams()


def pallas_call(kernel, *, family: str, interpret: bool, **kwargs):
    """``pl.pallas_call`` with the family's compiler parameters, chosen per platform when the call is lowered.

    Interpret mode takes no parameters.  Otherwise the GPU branches get :func:`compiler_params` (the family's
    lowering) and TPU gets none (Mosaic TPU is its only lowering); ``jax.lax.platform_dependent`` picks the branch
    for the platform being lowered, so one traced program lowers for CUDA and for TPU alike.  The CPU branch holds
    no kernel, only outputs of the right shapes marked by :func:`e3nn_fast.dispatch.require_accelerator`: lowering
    it raises the dispatcher's "pallas needs a GPU or TPU, use pallas-interpret" error (tracing it never fails).
    """
    if interpret:
        return _per_shard(lambda kw: pl.pallas_call(kernel, interpret=True, **kw), kwargs)
    return _per_shard(lambda kw: _platform_call(kernel, family, kw), kwargs)


def _per_shard(make, kwargs):
    """The call ``make(kwargs)`` builds, usable inside ``shard_map(..., check_vma=True)``: there the operands are
    marked as varying over one set of mesh axes and ``out_shape`` is declared to vary over the same (elsewhere it
    changes nothing; see :mod:`e3nn_fast._shard_compat`)."""
    from e3nn_fast import _shard_compat

    def call(*args):
        args = _shard_compat.match_varying(args)
        out_shape = kwargs.get("out_shape")
        if not args or out_shape is None:
            return make(kwargs)(*args)
        out_shape = jax.tree_util.tree_map(lambda s: _shard_compat.struct_like(s, args[0]), out_shape)
        return make(dict(kwargs, out_shape=out_shape))(*args)

    return call


def _platform_call(kernel, family: str, kwargs):
    gpu_call = pl.pallas_call(kernel, compiler_params=compiler_params(family), **kwargs)
    plain_call = pl.pallas_call(kernel, **kwargs)

    def cpu_call(*args):
        from e3nn_fast.dispatch import require_accelerator

        shapes = jax.eval_shape(plain_call, *args)
        zeros = jax.tree_util.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
        return require_accelerator(zeros, f"the Pallas kernel family {family!r}")

    def call(*args):
        return jax.lax.platform_dependent(*args, cuda=gpu_call, rocm=gpu_call, cpu=cpu_call, default=plain_call)

    return call


BlockSpec = pl.BlockSpec
ds = pl.ds
program_id = pl.program_id


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# --- primitive-extension API ------------------------------------------------------------------------------------

try:
    from jax.extend.core import Primitive
except ImportError:  # pragma: no cover
    from jax.core import Primitive  # type: ignore[attr-defined,no-redef]

from jax.interpreters import ad as _ad
from jax.interpreters import batching as _batching
from jax.interpreters import mlir as _mlir


def _ad_attr(name: str):
    value = getattr(_ad, name, None)
    if value is None:  # pragma: no cover - moved out of the public alias module
        from jax._src.interpreters import ad as private_ad

        value = getattr(private_ad, name)
    return value


primitive_jvps = _ad_attr("primitive_jvps")
primitive_transposes = _ad_attr("primitive_transposes")
Zero = _ad_attr("Zero")
UndefinedPrimal = _ad_attr("UndefinedPrimal")
is_undefined_primal = _ad_attr("is_undefined_primal")
instantiate_zeros = _ad_attr("instantiate_zeros")
primitive_batchers = getattr(_batching, "primitive_batchers", None)
if primitive_batchers is None:  # pragma: no cover
    from jax._src.interpreters import batching as _private_batching

    primitive_batchers = _private_batching.primitive_batchers
register_lowering = _mlir.register_lowering
lower_fun = _mlir.lower_fun


def symbolic_zero_like(value):
    """A symbolic-zero tangent/cotangent with ``value``'s shape and dtype."""
    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)  # pragma: no branch
    to_tangent = getattr(aval, "to_tangent_aval", None)
    return Zero(to_tangent() if to_tangent is not None else aval)


ShapedArray = getattr(jax.core, "ShapedArray", None)
if ShapedArray is None:  # pragma: no cover
    from jax._src.core import ShapedArray  # type: ignore[no-redef]
