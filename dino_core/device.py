"""Where and in which number format a run computes: device and mixed precision.

The paper trains in fp16 mixed precision on GPUs. On CPUs the speed of bf16 differs from machine to
machine in ways the CPU flags do not predict (bf16 matmuls ran ~50x slower than fp32 on an AVX2
EPYC, 2x slower on a Xeon with AVX512-BF16, 5.6x faster on an EPYC with AVX512-BF16), so ``auto``
measures: a probe times the model's own matmul shapes in fp32 and bf16 and takes bf16 where it is
at least ``BF16_MIN_SPEEDUP`` times faster. The result is cached per machine, torch version, the
instruction sets torch and oneDNN may use (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``) and shapes,
so every run on a machine resolves the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import atomic_write_json

BF16_MIN_SPEEDUP = 1.2   # "clearly faster": a smaller gain is within the probe's run-to-run noise
PROBE_REPEATS = 5        # best of 5 passes over the shapes per format
# caps on the instruction sets the kernels use (ci/cpu_classes.sh runs a CPU class's code paths
# on another CPU with them); a capped run is another machine for the cache
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def matmul_shapes(tokens: int, batch: int, dim: int, hidden: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(m, k, n) of one transformer block's linear layers on ``tokens`` rows (qkv, proj, mlp in,
    mlp out) and of the projection head's layers on the ``batch`` [CLS] rows (dim -> hidden...)."""
    shapes = [(tokens, dim, 3 * dim), (tokens, dim, dim), (tokens, dim, 4 * dim), (tokens, 4 * dim, dim)]
    widths = (dim, *hidden)
    return shapes + [(batch, a, b) for a, b in zip(widths, widths[1:])]


def _time_shapes(shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> float:
    """Best-of-PROBE_REPEATS seconds for one pass of a @ b over every shape (forward and the two
    backward products), in ``dtype``."""
    mats = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.randn(m, n, dtype=dtype))
            for m, k, n in shapes]
    best = float("inf")
    for _ in range(PROBE_REPEATS + 1):                    # the first pass warms the kernels up
        t0 = time.perf_counter()
        for a, b, g in mats:
            a @ b, g @ b.T, a.T @ g
        best = min(best, time.perf_counter() - t0)
    return best


def probe_bf16(shapes: list[tuple[int, int, int]]) -> dict:
    """{"fp32_s", "bf16_s", "speedup"} of the shapes on this CPU (well under a second for a cell)."""
    fp32, bf16 = _time_shapes(shapes, torch.float32), _time_shapes(shapes, torch.bfloat16)
    return {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), part of every per-machine cache key."""
    return next((ln.split(":", 1)[1].strip() for ln in _cpuinfo().splitlines() if ln.startswith("model name")),
                platform.processor())


def cache_root() -> Path:
    """Where per-machine measurements are kept: $XDG_CACHE_HOME/dino-repro (~/.cache/dino-repro)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dino-repro"


def _cache_file(shapes: list[tuple[int, int, int]]) -> Path:
    isa = [torch.backends.cpu.get_cpu_capability()] + [os.environ.get(v, "") for v in ISA_CAPS]
    key = json.dumps([cpu_model(), torch.__version__, torch.get_num_threads(), shapes]
                     + ([isa] if any(isa[1:]) else []))
    return cache_root() / f"precision-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_precision(shapes: list[tuple[int, int, int]], probe: Callable[[list], dict] = probe_bf16,
                  cache: bool = True) -> tuple[str, dict]:
    """("bf16" | "fp32", the probe's numbers with "cached") for these shapes on this CPU."""
    path = _cache_file(shapes) if cache else None
    if path is not None and path.is_file():
        numbers = {**json.loads(path.read_text()), "cached": True}
    else:
        numbers = {**probe(shapes), "cached": False}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {k: v for k, v in numbers.items() if k != "cached"})
    return ("bf16" if numbers["speedup"] >= BF16_MIN_SPEEDUP else "fp32"), numbers


def resolve_precision(precision: str, device: torch.device, shapes: list[tuple[int, int, int]] | None = None,
                      probe: Callable[[list], dict] = probe_bf16) -> tuple[str, dict]:
    """(the precision a run computes in, how it was decided). Explicit fp32 / bf16 / fp16 are kept;
    auto: bf16 on GPUs that support it (else fp16); on a CPU the measured choice of ``cpu_precision``
    for ``shapes`` (the model's matmuls)."""
    if precision != "auto":
        return precision, {"rule": "explicit"}
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), {"rule": "gpu"}
    chosen, numbers = cpu_precision(shapes or matmul_shapes(544, 32, 128, (512,)), probe)
    return chosen, {"rule": f"probe: bf16 if >= {BF16_MIN_SPEEDUP}x faster", **numbers}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward passes (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
