"""Shared by the kernel test files: lowering Pallas kernels for an accelerator from the CPU-only test machine.

Why a helper: up to JAX 0.10 the Triton lowering of ``pallas_call`` fell back to compute capability 9.0 when the
process had no GPU, so ``jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))`` just worked on a CPU machine.
From JAX 0.11 the Triton lowering asks ``jax._src.pallas.triton.gpu_info.get_gpu_info()`` for the target GPU, which
reads the ``abstract_device`` of the current abstract mesh (``jax.sharding.get_abstract_mesh()``) and, without one,
the default device (the CPU here), and refuses to lower ("No supported GPU devices found, please specify an abstract
GPU device using AbstractDevice").  :func:`lower_for_platform` therefore traces and lowers inside
``jax.sharding.use_abstract_mesh`` of an *empty* abstract mesh (no axes, so nothing about shardings or device
assignment changes) that only carries an abstract H100/H200-class device (sm_90, Triton arch "9.0", the same target
as the old fallback), or a TPU v6e for ``"tpu"`` (Mosaic TPU reads its chip generation the same way).  JAX versions
without abstract devices lower without the mesh, as before.

A lowering that fails is a test failure (never a skip): the error names the JAX version, the target and the
exception.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import jax
import jax.numpy as jnp

# Per lowering platform: (device_kind, num_cores, device platform) of the abstract accelerator we compile for.
# The kinds are what real devices report (``jax.devices()[0].device_kind``): JAX maps "NVIDIA H100..." / "NVIDIA
# H200..." to compute capability 90, and "TPU v6e" (one TensorCore per chip) to TPU generation 6.  The platform is
# what a real device reports as ``.platform`` ("gpu" for CUDA devices).
ABSTRACT_TARGETS: dict[str, tuple[str, int, str]] = {
    "cuda": ("NVIDIA H100 80GB HBM3", 132, "gpu"),
    "tpu": ("TPU v6e", 1, "tpu"),
}


def _parameters(callable_) -> set[str]:
    try:
        return set(inspect.signature(callable_).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return set()


def abstract_device(platform: str):
    """The abstract device that stands in for ``platform``'s accelerator, or None when this JAX cannot take one
    (no ``AbstractDevice`` / ``use_abstract_mesh`` / ``AbstractMesh(abstract_device=...)``) or the platform has none."""
    sharding = jax.sharding
    device_class = getattr(sharding, "AbstractDevice", None)
    mesh_class = getattr(sharding, "AbstractMesh", None)
    if (platform not in ABSTRACT_TARGETS or device_class is None or mesh_class is None
            or not hasattr(sharding, "use_abstract_mesh") or "abstract_device" not in _parameters(mesh_class)):
        return None
    fields = _parameters(device_class)
    if "device_kind" not in fields:
        return None
    kind, cores, device_platform = ABSTRACT_TARGETS[platform]
    values = {"device_kind": kind, "num_cores": cores, "platform": device_platform}
    return device_class(**{name: value for name, value in values.items() if name in fields})


def target_context(platform: str):
    """A context in which tracing and lowering see ``platform``'s abstract accelerator (a no-op without one)."""
    device = abstract_device(platform)
    if device is None:
        return contextlib.nullcontext()
    # No axes: an empty mesh, so jit keeps its usual (single-device, replicated) treatment of every array.
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device))


def describe_target(platform: str) -> str:
    device = abstract_device(platform)
    where = f"abstract device {device.device_kind!r}" if device is not None else "no abstract device"
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        jaxlib_version = "?"
    return f"jax {jax.__version__} (jaxlib {jaxlib_version}), lowering for {platform!r} with {where}"


def lower_for_platform(fn, args, platform: str):
    """``jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))``, traced and lowered for the abstract
    accelerator of ``platform`` (see the module docstring).  ``fn`` may already be jitted.

    Raises AssertionError naming the JAX version, the target and the original exception when lowering fails.
    """
    jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
    try:
        with target_context(platform):
            return jitted.trace(*args).lower(lowering_platforms=(platform,))
    except Exception as error:  # noqa: BLE001 - reported as a test failure with the cause attached
        raise AssertionError(
            f"{describe_target(platform)} failed: {type(error).__name__}: {error}") from error


@functools.lru_cache(maxsize=None)
def pallas_cannot_lower(platform: str):
    """Why this JAX cannot lower any Pallas kernel for ``platform`` (a copy kernel), or None when it can."""
    from e3nn_fast.kernels import _pallas_compat as compat

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    call = compat.pallas_call(kernel, family="aligned", interpret=False,
                              out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32))
    try:
        lower_for_platform(call, (jnp.zeros((8, 128), jnp.float32),), platform)
    except AssertionError as error:
        return f"this JAX cannot lower even a copy Pallas kernel: {error}"
    return None


def require_pallas_lowering(platform: str) -> None:
    """Fail the calling test (never skip) when this JAX cannot lower Pallas for ``platform`` at all, so that the
    message tells a JAX/environment problem apart from a problem of one of our kernels."""
    import pytest

    reason = pallas_cannot_lower(platform)
    if reason:
        pytest.fail(reason, pytrace=False)
