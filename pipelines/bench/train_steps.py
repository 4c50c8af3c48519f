"""Training steps on the real data: loader + multi-crop augmentation + train_step, as in a cell.

What a grid cell pays per step, measured apart from the grid: its epoch times are taken while
another cell shares the cores, so Table 8's time and memory are measured here (stage ``cost``).
``bench_data_step``: the data path's share of the step for each ``crops.backend``, the backends'
steps alternated in one process so that both see the same load.
"""
from __future__ import annotations

import statistics
import time
from typing import Iterator

import torch

from dino_core.config import Config
from dino_core.data.registry import NORMALIZATION
from dino_core.step import Run, train_step
from dino_core.train import setup
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


def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_data_step(cfg: Config, warmup: int, steps: int, backends: tuple[str, ...] = ("pil", "tensor")) -> list[dict]:
    """Per backend: median wall and process-CPU seconds of the loader's next batch (data) and of
    train_step, and the data's share of data + step, over ``steps`` alternated steps."""
    from pipelines.cell import pretrain_dataset
    runs = {b: setup(cfg.replace("crops", backend=b), pretrain_dataset(cfg), *NORMALIZATION[cfg.data.dataset])
            for b in backends}
    epoch = min(cfg.head.freeze_last_layer, cfg.train.epochs - 1)
    batches = {b: _batches(r, epoch) for b, r in runs.items()}
    times: dict[str, dict[str, list[float]]] = {b: {"data": [], "data_cpu": [], "step": [], "step_cpu": []}
                                               for b in backends}
    for i in range(warmup + steps):
        for b in (backends if i % 2 == 0 else backends[::-1]):
            run, n = runs[b], len(runs[b].loader)
            crops, dw, dc = _timed(lambda: next(batches[b]))
            _, sw, sc = _timed(lambda: float(train_step(run, crops, min(epoch * n + i, len(run.sched.lr) - 1),
                                                        epoch)[0]))
            if i >= warmup:
                for k, v in (("data", dw), ("data_cpu", dc), ("step", sw), ("step_cpu", sc)):
                    times[b][k].append(v)
    rows = []
    for b, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append({"backend": b, "data_s_per_step": med["data"], "train_step_s": med["step"],
                     "data_cpu_s_per_step": med["data_cpu"], "train_step_cpu_s": med["step_cpu"],
                     "data_fraction": med["data"] / (med["data"] + med["step"]),
                     "data_cpu_fraction": med["data_cpu"] / (med["data_cpu"] + med["step_cpu"]),
                     "batch_size": cfg.optim.batch_size, "crops_per_img": 2 + cfg.crops.local_number,
                     "dataset": cfg.data.dataset, "precision": runs[b].precision, "steps": steps,
                     "threads": torch.get_num_threads(), "data_times_s": [round(x, 5) for x in t["data"]],
                     "step_times_s": [round(x, 5) for x in t["step"]]})
    return rows
