"""How bench/report.py measures: the timers, the first call, peak memory, copy bandwidth.

A timed interval holds exactly one call of an implementation: its inputs exist
before the clock starts, and its outputs are freed after the clock stops.
"""
from __future__ import annotations

import ctypes
import gc
import time

import numpy as np
import torch

MB = 2 ** 20
# Bytes of the copy-bandwidth buffer (well above the last-level cache) and of the
# buffer written before each CUDA timing to evict the features from L2.
COPY_BYTES = {"cpu": 256 * MB, "cuda": 1024 * MB}
L2_FLUSH_BYTES = 256 * MB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ timers
def _elapsed_cpu(call) -> float:
    start = time.perf_counter()
    out = call()
    ms = (time.perf_counter() - start) * 1e3
    del out  # freeing the outputs is not part of the call
    return ms


class _CudaTimer:
    """CUDA-event time of one call, L2 evicted before it (so the features come from
    memory). The flush is finished (synchronize) before the start event is recorded:
    the interval holds the call's host-side launch overhead, not the flush."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, call) -> float:
        self.flush.zero_()
        torch.cuda.synchronize(self.device)
        self.start.record()
        out = call()
        self.end.record()
        self.end.synchronize()
        del out
        return self.start.elapsed_time(self.end)


def make_timer(device: torch.device):
    """A function: call -> milliseconds of that one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return _CudaTimer(device)
    return _elapsed_cpu


def first_call(call, device: torch.device) -> tuple[object, float]:
    """(output, wall-clock ms) of the first call of an implementation: what a user
    waits for before the steady state - torch.compile's tracing and compilation (of the
    backward too, for fwd+bwd), Triton's JIT, lazy initialisation."""
    sync(device)
    start = time.perf_counter()
    out = call()
    sync(device)
    return out, (time.perf_counter() - start) * 1e3


def interleaved_ms(calls: dict, device: torch.device, reps: int) -> dict[object, list[float]]:
    """Milliseconds of ``reps`` calls of each of ``calls`` (warmed up already), taken in
    turns - one call of each, then the next round - so that a change in the machine's
    load over the run touches every implementation alike."""
    timer = make_timer(device)
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            times[key].append(timer(call))
    return times


def summary(times: list[float]) -> dict:
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return dict(median_ms=float(median), spread=dict(
        q25_ms=float(q25), q75_ms=float(q75), min_ms=min(times), max_ms=max(times)),
        reps=len(times))


# ------------------------------------------------------------------------ memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _cpu_peak_mb(call) -> float | None:
    """Growth of the resident set during one call: VmHWM, reset to the current RSS first
    (Linux /proc/self/clear_refs), after returning freed heap to the OS. None elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except (OSError, AttributeError, KeyError):
        return None
    out = call()
    peak = _status_kb("VmHWM")
    del out
    return (peak - before) / 1024


def _cuda_peak_mb(call, device: torch.device) -> float:
    """Memory allocated at the peak of one call above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = call()
    torch.cuda.synchronize(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - before) / MB


def peak_memory_mb(call, device: torch.device) -> float | None:
    return _cuda_peak_mb(call, device) if device.type == "cuda" else _cpu_peak_mb(call)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth_gbs(device: torch.device, reps: int) -> float:
    """dst.copy_(src) on a large float32 buffer: GB/s counting the read and the write."""
    src = torch.randn(COPY_BYTES[device.type] // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = interleaved_ms({"copy": lambda: dst.copy_(src)}, device, reps=max(reps, 5))["copy"]
    return 2 * src.numel() * 4 / (np.median(times) * 1e-3) / 1e9
