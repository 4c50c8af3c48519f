"""Our DINO training step on random crops (dino_core.train.setup, dino_core.step.train_step)."""
from __future__ import annotations

import time

import torch
from torch import Tensor

from dino_core.config import Config
from dino_core.step import Run, train_step
from dino_core.train import setup
from .flops import count_flops, distance_to_peak, matmul_peak
from .measuring import PeakMemory, sync, time_calls


class _Placeholder(torch.utils.data.Dataset):
    """setup() wants a dataset for its loader; the bench feeds crop tensors directly."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image
        return Image.new("RGB", (self.size, self.size)), 0


def make_run(cfg: Config) -> Run:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return setup(cfg, _Placeholder(cfg.optim.batch_size, cfg.crops.global_size), mean, std)


def random_crops(cfg: Config, device: torch.device, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, c = cfg.optim.batch_size, cfg.crops
    sizes = [c.global_size] * 2 + [c.local_size] * c.local_number
    return [torch.randn(b, 3, s, s, generator=g).to(device) for s in sizes]


def timed_epoch(cfg: Config) -> tuple[int, int]:
    """(it, epoch) of a regular step: past the last-layer freeze, so every parameter is updated."""
    epoch = min(cfg.head.freeze_last_layer, cfg.train.epochs - 1)
    return epoch, epoch   # setup's loader has 1 step per epoch


def bench_step(cfg: Config, warmup: int, steps: int, compile: bool = False, peak_n: int = 2048) -> dict:
    """Our training step (train.train_step) on random crops: time, FLOPs, share of the matmul peak."""
    run = make_run(cfg)
    crops = random_crops(cfg, run.device)
    it, epoch = timed_epoch(cfg)
    out = {"precision": run.precision, "compile": compile}
    out.update(count_flops(lambda: float(train_step(run, crops, it, epoch)[0])))   # also a warm-up step
    if compile:   # train.compile, as a run sets it: the same weights and crops, compiled in place
        run = make_run(cfg.replace("train", compile=True))
        t0 = time.perf_counter()
        float(train_step(run, crops, it, epoch)[0])   # compiles forward + backward graphs
        sync(run.device)
        out["compile_first_step_s"] = time.perf_counter() - t0
    losses: list[float] = []

    def step() -> None:
        loss, _ = train_step(run, crops, it, epoch)
        losses.append(float(loss))   # the host sync every real loop does (finite check / logging)

    with PeakMemory(run.device) as mem:
        out.update(time_calls(step, warmup, steps, run.device))
    if compile:
        out["compile_s"] = max(0.0, out.pop("compile_first_step_s") - out["s_per_step"])
    out.update(peak_mem_mb=mem.peak_mb, process_mem_mb=mem.total_mb, mem_method=mem.method,
               losses=[round(x, 5) for x in losses])
    out.update(distance_to_peak(out, matmul_peak(run.precision, run.device, peak_n)))
    return out
