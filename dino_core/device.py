"""Where and in which number format a run computes: device and mixed precision.

The paper trains in fp16 mixed precision on GPUs; on CPUs bf16 pays only with AMX matrix tiles,
so ``auto`` picks it there and fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """auto: bf16 on GPUs that support it (else fp16); on CPU bf16 only with AMX (``amx_bf16`` in
    ``cpuinfo``, default /proc/cpuinfo). Without AMX the bf16 CPU matmul is slower than fp32: ~50x
    on an AVX2 EPYC, and 2x on a Xeon with AVX512-BF16 but no AMX, where the cpu-toy step took
    4.35 s in bf16 against 2.89 s in fp32 (README, perf)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    return "bf16" if "amx_bf16" in cpuinfo.split() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward passes (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
