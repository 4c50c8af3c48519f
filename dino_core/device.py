"""Where and in which number format a run computes: device and mixed precision.

The paper trains in fp16 mixed precision on GPUs; on CPUs bf16 pays only with native bf16
matmul units (AMX / AVX512-BF16), so ``auto`` picks it there and fp32 elsewhere.
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


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it (else fp16); on CPU bf16 only with native bf16 matmul
    (AMX / AVX512-BF16): elsewhere the bf16 CPU matmul is ~50x slower than fp32 (README, perf)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward passes (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
