"""What the benchmarks run on: device identification, a table of peak compute and bandwidth, a CPU probe.

The achieved fraction of peak is ``achieved / peak`` for FLOP/s and for bytes/s.  GPU peaks are the vendor's dense
non-tensor-core figures (an equivariant tensor product is mostly small contractions that XLA does not send to tensor
cores in fp32), so fractions are comparable between cards.  A CPU has no fixed table entry: its peaks are *measured*
by :func:`probe_cpu`, a large jitted matmul (compute) and a large jitted elementwise update (bandwidth), which is
what XLA can reach on this machine rather than a datasheet number.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DevicePeaks:
    """Peak throughput of one device: FLOP/s per dtype name and memory bandwidth in bytes/s."""

    name: str
    flops: dict  # dtype name ("float32", "float64", "bfloat16") -> FLOP/s
    bandwidth: float  # bytes/s
    source: str  # "datasheet" or "measured"

    def peak_flops(self, dtype: str) -> Optional[float]:
        return self.flops.get(dtype)


# Substring of ``device.device_kind`` -> peaks; the first match wins, so the more specific names come first.
# Datasheet figures (SXM parts unless named): NVIDIA H100 / H200 / A100 product briefs.
PEAKS: tuple[tuple[str, DevicePeaks], ...] = (
    ("H200", DevicePeaks("NVIDIA H200", {"float32": 67e12, "float64": 34e12, "bfloat16": 989e12}, 4.8e12, "datasheet")),
    ("H100 PCIe", DevicePeaks("NVIDIA H100 PCIe", {"float32": 51e12, "float64": 26e12, "bfloat16": 756e12}, 2.0e12,
                              "datasheet")),
    ("H100", DevicePeaks("NVIDIA H100 SXM", {"float32": 67e12, "float64": 34e12, "bfloat16": 989e12}, 3.35e12,
                         "datasheet")),
    ("A100", DevicePeaks("NVIDIA A100 SXM", {"float32": 19.5e12, "float64": 9.7e12, "bfloat16": 312e12}, 2.04e12,
                         "datasheet")),
)


def table_peaks(device_kind: str) -> Optional[DevicePeaks]:
    """The datasheet peaks of a device kind, or None when the table does not know it."""
    for key, peaks in PEAKS:
        if key.lower() in device_kind.lower():
            return peaks
    return None


def _median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_cpu(size: int = 1024, stream_mib: int = 128, repeats: int = 5) -> DevicePeaks:
    """Measure the FLOP/s of a ``size``-square fp32 matmul and the bytes/s of an fp32 ``x * a + b`` over
    ``stream_mib`` MiB (read once, written once), on the default device.  About a second."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    flops = 2 * size**3 / _median_seconds(matmul, (a, a), repeats)
    x = jnp.ones((stream_mib * 2**20 // 4,), jnp.float32)
    stream = jax.jit(lambda v: v * 1.5 + 0.5)
    bandwidth = 2 * x.nbytes / _median_seconds(stream, (x,), repeats)
    # fp64 matmuls run at about half the fp32 rate on the CPUs XLA vectorises for.
    return DevicePeaks(f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                       {"float32": flops, "float64": flops / 2}, bandwidth, "measured")


def probe_copy_bandwidth(gib: float = 2.0, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy of ``gib`` GiB of float32 (``x + 1``: read once, written once), median of
    ``repeats`` runs on the default device: the bandwidth a memory-bound kernel can actually reach here."""
    x = jnp.zeros((int(gib * 2**30) // 4,), jnp.float32) + 1.0
    copy = jax.jit(lambda v: v + 1.0)
    warm_until = time.perf_counter() + 0.5  # an idle GPU clocks down: run it up before timing
    while time.perf_counter() < warm_until:
        jax.block_until_ready(copy(x))
    seconds = _median_seconds(copy, (x,), repeats)
    del x
    return 2 * gib * 2**30 / seconds


def device_peaks(device=None, *, measure_bandwidth: bool = False) -> Optional[DevicePeaks]:
    """Peaks of ``device`` (default: the first default device): measured on a CPU, from :data:`PEAKS` otherwise;
    with ``measure_bandwidth`` an accelerator's bandwidth is :func:`probe_copy_bandwidth`'s instead of the
    datasheet's (floors then count against what a copy reaches on this very device)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return probe_cpu()
    peaks = table_peaks(device.device_kind)
    if measure_bandwidth:
        bandwidth = probe_copy_bandwidth()
        if peaks is None:
            return DevicePeaks(device.device_kind, {}, bandwidth, "measured bandwidth")
        return dataclasses.replace(peaks, bandwidth=bandwidth, source="datasheet FLOP/s, measured bandwidth")
    return peaks


def is_accelerator(device=None) -> bool:
    """True on a GPU or TPU (where the Pallas kernels compile natively)."""
    device = device or jax.devices()[0]
    return device.platform in ("gpu", "cuda", "rocm", "tpu")


def device_description(device=None) -> dict:
    """Platform, kind and count of the default devices, for results.json."""
    device = device or jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device": str(device),
        "device_count": jax.device_count(),
    }


def peak_memory_bytes(device=None) -> Optional[int]:
    """``peak_bytes_in_use`` of the device allocator (GPU/TPU), None where the backend has no memory stats (CPU).

    The allocator's peak is a high-water mark over the whole process; the runner reads it after each pass, so a row's
    figure is an upper bound for that pass (passes run in order of growing cost within a workload)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def machine_description() -> dict:
    """Host machine facts for results.json."""
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
