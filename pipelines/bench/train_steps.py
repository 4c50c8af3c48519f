"""Training steps on the real data: loader + multi-crop augmentation + train_step, as in a cell.

What a grid cell pays per step, measured apart from the grid: its epoch times are taken while
another cell shares the cores, so Table 8's time and memory are measured here (stage ``cost``).
"""
from __future__ import annotations

import statistics
import time
from typing import Iterator

import torch

from dino_core.config import Config
from dino_core.data.registry import NORMALIZATION
from dino_core.train import Run, setup, train_step
from .measuring import PeakMemory


def _batches(run: Run, epoch: int) -> Iterator[list[torch.Tensor]]:
    """The loader's batches from ``epoch`` on, across epochs (a small dataset has few steps)."""
    while True:
        run.loader.sampler.set_epoch(epoch)
        run.loader.dataset.set_epoch(epoch)
        for crops, _ in run.loader:
            yield [c.to(run.device, non_blocking=True) for c in crops]
        epoch += 1


def bench_train_steps(cfg: Config, warmup: int, steps: int) -> dict:
    """Median wall and process-CPU seconds per step (data / step parts), steps per epoch, the
    process peak memory (MB, absolute: as a cell's ``peak_mem_mb``) of ``steps`` real steps, and each
    step's process-CPU seconds (``cpu_s_steps``: the protocol's cost test compares rows on them)."""
    from pipelines.cell import pretrain_dataset   # the cell's own dataset (limit, split, root)
    run = setup(cfg, pretrain_dataset(cfg), *NORMALIZATION[cfg.data.dataset])
    n = len(run.loader)
    epoch = min(cfg.head.freeze_last_layer, cfg.train.epochs - 1)   # past the last-layer freeze
    batches, last_it = _batches(run, epoch), len(run.sched.lr) - 1
    wall, cpu, data = [], [], []
    with PeakMemory(run.device) as mem:
        for i in range(warmup + steps):
            c0, t0 = time.process_time(), time.perf_counter()
            crops = next(batches)
            t1 = time.perf_counter()
            float(train_step(run, crops, min(epoch * n + i, last_it), epoch)[0])
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                data.append(t1 - t0)
    return {"s_per_step": statistics.median(wall), "cpu_s_per_step": statistics.median(cpu),
            "data_s_per_step": statistics.median(data), "steps_per_epoch": n,
            "cpu_s_per_epoch": statistics.median(cpu) * n, "peak_mem_mb": mem.total_mb,
            "precision": run.precision, "threads": torch.get_num_threads(), "steps": steps,
            "cpu_s_steps": [round(c, 5) for c in cpu]}
