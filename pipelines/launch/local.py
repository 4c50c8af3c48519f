"""How many cells the local executor runs at once, with how many threads each, and on which GPU.

Without GPUs, cells share the CPU cores: ``max_parallel`` at once, bounded by the cores. With
``local.gpus_per_node >= 1`` a cell is mostly kernel launches waiting on the GPU, so the GPU takes
``local.cells_per_gpu`` processes at once per GPU, bounded by the cores as one core per process.
"""
from __future__ import annotations

import os
import typing as tp

from .config import LaunchConfig


def cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_width(cfg: LaunchConfig) -> tp.Tuple[int, str]:
    """(cells run at once by the local executor, why that differs from launch.yaml's ask, or "")."""
    loc = cfg.local
    tasks = max(1, loc.tasks_per_node)
    by_cores = max(1, cores() // tasks)   # one core per process
    if loc.gpus_per_node < 1:
        n = min(cfg.max_parallel, by_cores)
        notes = [f"local.cells_per_gpu={loc.cells_per_gpu} ignored: local.gpus_per_node is 0"] \
            if loc.cells_per_gpu != 1 else []
        if n < cfg.max_parallel:
            notes.append(f"max_parallel={cfg.max_parallel} bounded to {n} by the CPU cores")
        return n, "; ".join(notes)
    notes = []
    per_gpu = loc.cells_per_gpu
    if per_gpu == "auto":   # needs a cell config to measure: the grid driver resolves it before submitting
        per_gpu = 1
        notes.append("local.cells_per_gpu=auto is resolved by the grid driver only; 1 per GPU here")
    # a DDP cell puts one process on each of its tasks' GPUs: cells_per_gpu counts processes per GPU
    want = max(1, per_gpu * loc.gpus_per_node // tasks)
    n = min(want, by_cores)
    if n < want:
        notes.append(f"cells_per_gpu={per_gpu} x gpus_per_node={loc.gpus_per_node} = {want} cells at once "
                     f"capped to {n} by the {cores()} CPU cores (one core per cell process)")
    return n, "; ".join(notes)


def local_parallelism(cfg: LaunchConfig) -> int:
    """Cells run at once by the local executor (see local_width)."""
    return local_width(cfg)[0]


def local_threads(cfg: LaunchConfig) -> str:
    """The setup line exporting OMP_NUM_THREADS for a local job."""
    # cells share the cores: each process gets cores / (cells at once x tasks) intra-op threads,
    # not torch's default of one per core each, which oversubscribes the machine
    per_task = max(1, cores() // (local_parallelism(cfg) * max(1, cfg.local.tasks_per_node)))
    return f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{per_task}}}"


def next_gpu(cfg: LaunchConfig, running: tp.Sequence[int]) -> tp.Optional[int]:
    """The GPU the next one-task cell gets (the one with the fewest running cells), or None where
    every job sees all of them: submitit's local executor shows each job GPUs 0..gpus_per_node-1,
    and a one-task cell computes on the first it sees, so on several GPUs each cell is shown one."""
    loc = cfg.local
    if loc.gpus_per_node < 2 or loc.tasks_per_node != 1:
        return None
    return min(range(loc.gpus_per_node), key=lambda g: (list(running).count(g), g))
