"""Timing (median of steps after warm-up) and peak memory (CUDA allocator, CPU VmHWM)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block in MB (``.peak_mb``, above the level at entry; ``.total_mb`` absolute)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self.total_mb, self.method = device, float("nan"), float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            try:   # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM after clear_refs"
            except OSError:
                self.method = "ru_maxrss (process peak, not reset)"
            self.base = (_proc_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _proc_status_kb("VmHWM")
            if hwm is None or "ru_maxrss" in self.method:
                import resource
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = hwm * 1024
        self.total_mb, self.peak_mb = peak / 2**20, (peak - self.base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> dict:
    """Wall times of ``fn`` (synchronised): warm-up excluded, median / min / max of ``steps``; and the
    median process CPU time (all threads), less sensitive than wall time to other jobs on the machine."""
    first = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        first.append(time.perf_counter() - t0)
    times, cpu = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"s_per_step": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "cpu_s_per_step": statistics.median(cpu), "times_s": [round(t, 4) for t in times],
            "cpu_times_s": [round(t, 4) for t in cpu], "warmup_times_s": [round(t, 4) for t in first]}
