"""Self-distillation with no labels: the training loop (Algorithm 1 of the paper).

setup builds the Run (networks, teacher, loss, optimiser, schedules, loader); the step itself is
dino_core/step.py. Schedules (lr, wd, momentum) are per-step arrays; tau_t is per epoch.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed as D
from .checkpoint import atomic_write_json, load_checkpoint, save_checkpoint, truncate_log
from .config import Config, save_config
from .device import resolve_device, resolve_precision
from .monitor import CollapseMonitor, read_log
from .multicrop import MultiCropAugmentation, MultiCropDataset
from .networks import build_loss, build_network, model_shapes
from .optim import Schedules, build_optimizer, peak_memory_mb
from .step import Run, run_step_checked
from .teacher import Teacher

log = logging.getLogger(__name__)


def setup(cfg: Config, dataset: Dataset, mean, std) -> Run:
    device = resolve_device(cfg.train.device)
    D.init_distributed(device.type)
    torch.manual_seed(cfg.train.seed)   # identical initial weights on every process
    student_mod, teacher_net = build_network(cfg, True).to(device), build_network(cfg, False).to(device)
    if torch.distributed.is_initialized() and cfg.head.use_bn and device.type == "cuda":
        # official: BatchNorm in the head sees the global batch; SyncBatchNorm has no CPU kernel,
        # so under gloo each process normalises over its own batch (docs/deviations.md)
        student_mod = nn.SyncBatchNorm.convert_sync_batchnorm(student_mod)
        teacher_net = nn.SyncBatchNorm.convert_sync_batchnorm(teacher_net)
    if cfg.train.compile:
        # in place: the modules keep their parameters and state_dict keys (checkpoints, EMA, evaluation)
        student_mod.compile()
        teacher_net.compile()
    teacher = Teacher(teacher_net, student_mod, cfg.teacher.variant)
    student = student_mod
    if torch.distributed.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        student = nn.parallel.DistributedDataParallel(student_mod, device_ids=ids)
    data = MultiCropDataset(dataset, MultiCropAugmentation(cfg.crops, mean, std), cfg.train.seed)
    # One sampler for every world size: rank r of W takes perm[r::W], so W processes with batch B
    # see exactly the samples one process with batch W*B sees (DDP equivalence).
    sampler = DistributedSampler(data, num_replicas=D.world_size(), rank=torch.distributed.get_rank()
                                 if torch.distributed.is_initialized() else 0, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(data, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"optim.batch_size {cfg.optim.batch_size} x {D.world_size()} processes exceeds "
                         f"the dataset size {len(dataset)}: no full batch")
    optimizer = build_optimizer(cfg.optim, student_mod, device)
    precision, probe = resolve_precision(cfg.train.precision, device, model_shapes(cfg, student_mod.backbone.embed_dim))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    sched = Schedules.build(cfg, len(loader), D.world_size())
    return Run(cfg, device, student, student_mod, teacher_net, teacher, build_loss(cfg).to(device),
               optimizer, scaler, precision, probe, sched, loader)


def train_one_epoch(run: Run, epoch: int, t0: float, start_epoch: int) -> dict:
    """Returns the epoch's mean stats, or {'diverged': ...} on a non-finite loss."""
    cfg, n = run.cfg, len(run.loader)
    run.loader.sampler.set_epoch(epoch)
    run.loader.dataset.set_epoch(epoch)
    torch.manual_seed(cfg.train.seed * 1000 + epoch)   # drop-path draws: fixed per epoch for resume
    sums: dict[str, torch.Tensor] = {}
    last_finite = run.last_finite_loss   # a divergence at step 0 reports the previous epoch's last loss
    for i, (crops, _) in enumerate(run.loader):
        it = epoch * n + i
        crops = [c.to(run.device, non_blocking=True) for c in crops]
        loss, stats = run_step_checked(run, crops, it, epoch)
        if loss is None:
            return {"diverged": True, "epoch": epoch, "step": i, "last_finite_loss": last_finite}
        last_finite = run.last_finite_loss = float(loss)
        for k, v in {"loss": loss, **stats}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        if D.is_main() and ((i + 1) % cfg.train.log_every == 0 or i + 1 == n):
            done = (epoch - start_epoch) * n + i + 1
            eta = (time.time() - t0) / done * ((cfg.train.epochs - start_epoch) * n - done)
            log.info("epoch %d/%d step %d/%d loss %.4f (%.3f ln K) H(Pt) %.3f KL %.4f lr %.2e ETA %.0fs",
                     epoch + 1, cfg.train.epochs, i + 1, n, float(loss), float(loss) / math.log(cfg.head.out_dim),
                     float(stats["teacher_entropy"]), float(stats["kl"]), run.sched.lr[it], eta)
    means = {k: float(D.all_reduce_sum(v.reshape(1)) / (n * D.world_size())) for k, v in sums.items()}
    it_last = (epoch + 1) * n - 1
    means.update(lr=float(run.sched.lr[it_last]), wd=float(run.sched.wd[it_last]),
                 momentum=float(run.sched.momentum[it_last]),
                 teacher_temp=float(run.loss.teacher_temps[epoch]))
    return means


def train(cfg: Config, out_dir: str | Path, dataset: Dataset, mean, std,
          on_epoch_end: Callable[[int, dict, Run], bool | None] | None = None) -> dict:
    """Pre-train DINO on `dataset` (items (PIL image, label)); resumes from out_dir/checkpoint.pth.

    Writes (rank 0 only) config.yaml, log.jsonl (one line per epoch) and metrics.json, whose
    `status` is "ok", "diverged" (a non-finite loss stops the run cleanly) or "stopped"
    (`on_epoch_end(epoch, epoch_stats, run)` returned False, e.g. a pruned tuning trial).
    """
    if cfg.train.objective != "dino":   # the attention study's references (dino_core/supervised.py)
        from .supervised import train_reference
        return train_reference(cfg, out_dir, dataset, mean, std)
    out_dir = Path(out_dir)
    run = setup(cfg, dataset, mean, std)
    ckpt = dict(student=run.student_mod, teacher=run.teacher_net, optimizer=run.optimizer,
                dino_loss=run.loss, scaler=run.scaler)
    start = load_checkpoint(out_dir, **ckpt)
    if start >= cfg.train.epochs and (out_dir / "metrics.json").is_file():
        # already trained: keep its metrics (re-running the loop would rewrite them with no epoch stats)
        log.info("%s: already trained for %d epochs; metrics.json kept", out_dir, start)
        D.release()
        return json.loads((out_dir / "metrics.json").read_text())
    logfile = out_dir / "log.jsonl"
    if D.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        truncate_log(logfile, start)
    if start:
        log.info("resumed from %s at epoch %d", out_dir / "checkpoint.pth", start)
    monitor = CollapseMonitor(cfg.head.out_dim)   # live collapse signal (dino_core/monitor.py)
    monitor.replay(ln for ln in read_log(logfile) if ln["epoch"] < start)
    t0, status, result = time.time(), "ok", {}
    for epoch in range(start, cfg.train.epochs):
        te = time.time()
        result = train_one_epoch(run, epoch, t0, start)
        if result.get("diverged"):
            status = "diverged"
            log.error("non-finite loss at epoch %d step %d (last finite loss %.4f): run stopped",
                      epoch, result["step"], result["last_finite_loss"])
            break
        run.teacher.end_of_epoch()
        result.update(epoch=epoch, epoch_time_s=time.time() - te, peak_mem_mb=peak_memory_mb(run.device))
        monitor.update(epoch, result, quiet=not D.is_main())
        if D.is_main():
            with open(logfile, "a") as fh:
                fh.write(json.dumps(result) + "\n")
            if (epoch + 1) % cfg.train.saveckp_freq == 0 or epoch + 1 == cfg.train.epochs:
                save_checkpoint(out_dir, **ckpt, epoch=epoch + 1, config=cfg.to_dict())
        D.barrier()
        if on_epoch_end is not None and on_epoch_end(epoch, result, run) is False:
            status = "stopped"
            break
    metrics = {"status": status, "ln_k": math.log(cfg.head.out_dim), "wall_time_s": time.time() - t0,
               "world_size": D.world_size(), "precision": run.precision, "precision_probe": run.precision_probe,
               **monitor.metrics(), **{f"final_{k}": v for k, v in result.items()}}
    if D.is_main():
        atomic_write_json(out_dir / "metrics.json", metrics)
    D.release()   # DDP: leave the group setup() started; rank 0 evaluates alone afterwards
    return metrics
