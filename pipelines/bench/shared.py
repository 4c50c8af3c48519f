"""One of N processes training a cell at once on one device: K timed steps on random crops.

pipelines/launch/sharing.py starts N of these together to measure how many cells a GPU (or the CPU
cores) takes at once. Each builds its Run and warms up (compiles, with train.compile) first; a
barrier then starts every process's timed steps together, so that the N timings overlap.
"""
from __future__ import annotations

import os
import time

import torch

from dino_core.config import Config
from dino_core.device import cpu_model
from dino_core.step import train_step
from .measuring import PeakMemory, sync
from .step import make_run, random_crops, timed_epoch

# The CUDA context (kernels, cuBLAS workspace) lives outside the caching allocator, so neither
# max_memory_allocated nor max_memory_reserved counts it; ~0.3-0.6 GB per process on recent GPUs.
CUDA_CONTEXT_MB = 512


def device_info(device: torch.device) -> dict:
    """The device's name and memory in MB (a GPU's own; a CPU's: the machine's RAM)."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device),
                "device_mem_mb": torch.cuda.get_device_properties(device).total_memory / 2**20}
    return {"device": f"cpu: {cpu_model()}",
            "device_mem_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20}


def _timed(cfg: Config, rank: int, warmup: int, steps: int, barrier, wait_s: float) -> dict:
    run = make_run(cfg)
    crops = random_crops(cfg, run.device, seed=rank)
    it, epoch = timed_epoch(cfg)
    for _ in range(warmup):
        float(train_step(run, crops, it, epoch)[0])
    with PeakMemory(run.device) as mem:
        barrier.wait(wait_s)
        t0 = time.perf_counter()
        for _ in range(steps):
            float(train_step(run, crops, it, epoch)[0])   # the host sync every real loop does
        sync(run.device)
        elapsed = time.perf_counter() - t0
    out = {"rank": rank, "s": elapsed, "steps": steps, "precision": run.precision, "alloc_mb": mem.total_mb,
           **device_info(run.device)}
    if run.device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_reserved(run.device) / 2**20 + CUDA_CONTEXT_MB
    else:
        out["peak_mem_mb"] = mem.total_mb   # the process's peak resident memory
    return out


def shared_steps(cfg: Config, rank: int, warmup: int, steps: int, threads: int, barrier, results,
                 wait_s: float) -> None:
    """Puts {"rank", "s" (seconds of the timed steps), "steps", "peak_mem_mb" (what the process
    holds), "alloc_mb" (tensors at peak), "precision", "device", "device_mem_mb"} or {"rank", "error"}
    on the queue ``results``."""
    torch.set_num_threads(threads)
    if cfg.train.compile:   # its share of the cores for compiling too: N pools of one worker per core swamp them
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = threads
    try:
        results.put(_timed(cfg, rank, warmup, steps, barrier, wait_s))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the scan
        barrier.abort()   # the others stop waiting for this one
        results.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})
