"""The paper's references for DINO's attention (Fig. 4): the same ViT trained with labels, and at init.

``train.objective: supervised``: the DINO student's backbone plus a linear classifier on its CLS
token, trained with cross-entropy on the label of the first global crop of the run's own multi-crop
augmentation, with its optimiser (parameter groups, per-parameter clipping), lr and weight-decay
schedules, batch size, precision and epochs. ``train.objective: none``: no step at all; the ViT at its
seeded initialisation (``torch.manual_seed(train.seed)``, the weights a DINO run starts from).

The run files are those of dino_core.train.train: config.yaml, log.jsonl (one line per epoch: loss,
the classifier's top-1 on its training crops, lr, wd, time, memory), checkpoint.pth (the official
keys: ``student`` and ``teacher`` hold the trained backbone with the DINO head at its initialisation,
so a cell's evaluation of the teacher backbone reads it unchanged; ``classifier`` the linear layer)
and metrics.json. It resumes from its checkpoint like a DINO run. One process only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed as D
from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint, truncate_log
from .config import Config, save_config
from .device import autocast, resolve_device, resolve_precision
from .multicrop import MultiCropAugmentation, MultiCropDataset
from .networks import build_loss, build_network, model_shapes
from .optim import Schedules, build_optimizer, clip_gradients, peak_memory_mb

log = logging.getLogger(__name__)


def _loader(cfg: Config, dataset: Dataset, mean, std) -> DataLoader:
    """The DINO run's sampler and augmentation; local crops are not drawn (only crop 0 is used, and
    the global crops are drawn before the local ones, so crop 0 is the DINO run's first view)."""
    crops = dataclasses.replace(cfg.crops, local_number=0)
    data = MultiCropDataset(dataset, MultiCropAugmentation(crops, mean, std), cfg.train.seed)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(data, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers)
    if len(loader) == 0:
        raise ValueError(f"optim.batch_size {cfg.optim.batch_size} exceeds the dataset size {len(dataset)}")
    return loader


def _epoch(model: nn.Module, loader: DataLoader, opt, sched: Schedules, cfg: Config, epoch: int,
           device: torch.device, precision: str, scaler) -> dict:
    """One epoch of cross-entropy steps -> mean loss and train top-1, or {'diverged': True}."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    torch.manual_seed(cfg.train.seed * 1000 + epoch)   # drop-path draws: fixed per epoch for resume
    model.train()
    n, loss_sum, correct, seen = len(loader), 0.0, 0, 0
    for i, (crops, labels) in enumerate(loader):
        sched.apply(opt, epoch * n + i)
        x, y = crops[0].to(device), labels.to(device)
        with autocast(device, precision):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            return {"diverged": True, "epoch": epoch, "step": i}
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        clip_gradients(model, cfg.optim.clip_grad)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        loss_sum += float(loss.detach())
        correct, seen = correct + int((logits.argmax(1) == y).sum()), seen + len(y)
    it = (epoch + 1) * n - 1
    return {"loss": loss_sum / n, "train_top1": 100.0 * correct / seen, "lr": float(sched.lr[it]),
            "wd": float(sched.wd[it])}


def train_reference(cfg: Config, out_dir: str | Path, dataset: Dataset, mean, std) -> dict:
    """Train with labels (objective supervised) or not at all (none); see the module docstring."""
    ranks = D.env_ranks()
    if D.world_size() > 1 or (ranks is not None and ranks[1] > 1):
        raise ValueError(f"train.objective {cfg.train.objective} runs in one process, not under torchrun")
    out_dir, device = Path(out_dir), resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)   # the DINO student's and teacher's initial weights
    net, teacher = build_network(cfg, True).to(device), build_network(cfg, False).to(device)
    classifier = nn.Linear(net.backbone.embed_dim, len(dataset.classes)).to(device)
    model = nn.Sequential(net.backbone, classifier)
    loader = _loader(cfg, dataset, mean, std)
    opt, sched = build_optimizer(cfg.optim, model, device), Schedules.build(cfg, len(loader), 1)
    precision, probe = resolve_precision(cfg.train.precision, device, model_shapes(cfg, net.backbone.embed_dim))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    epochs = cfg.train.epochs if cfg.train.objective == "supervised" else 0
    ckpt = dict(student=net, teacher=teacher, optimizer=opt, dino_loss=build_loss(cfg), scaler=scaler,
                extra={"classifier": classifier})
    start = load_checkpoint(out_dir, **ckpt)
    logfile = out_dir / "log.jsonl"
    if start >= max(epochs, 1) and (out_dir / "metrics.json").is_file():
        log.info("%s: already trained (%s, %d epochs); metrics.json kept", out_dir, cfg.train.objective, epochs)
        return json.loads((out_dir / "metrics.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    truncate_log(logfile, start)
    if not logfile.is_file():
        atomic_write_text(logfile, "")
    t0, status, result = time.time(), "ok", {}
    for epoch in range(start, epochs):
        te = time.time()
        result = _epoch(model, loader, opt, sched, cfg, epoch, device, precision, scaler)
        if result.get("diverged"):
            status = "diverged"
            log.error("non-finite loss at epoch %d step %d: run stopped", epoch, result["step"])
            break
        result.update(epoch=epoch, epoch_time_s=time.time() - te, peak_mem_mb=peak_memory_mb(device))
        log.info("supervised epoch %d/%d loss %.4f train top-1 %.1f %% lr %.2e (%.1f s)", epoch + 1, epochs,
                 result["loss"], result["train_top1"], result["lr"], result["epoch_time_s"])
        with open(logfile, "a") as fh:
            fh.write(json.dumps(result) + "\n")
        _save(ckpt, out_dir, epoch + 1, cfg)
    if epochs == 0:
        _save(ckpt, out_dir, cfg.train.epochs, cfg)   # the initialisation, marked as trained
        log.info("objective none: the ViT at its initialisation (seed %d), no step", cfg.train.seed)
    metrics = {"status": status, "objective": cfg.train.objective, "ln_k": math.log(cfg.head.out_dim),
               "wall_time_s": time.time() - t0, "world_size": 1, "precision": precision,
               "precision_probe": probe, "steps": epochs * len(loader),
               **{f"final_{k}": v for k, v in result.items()}}
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _save(ckpt: dict, out_dir: Path, epoch: int, cfg: Config) -> None:
    """The checkpoint, with the teacher holding the trained student's weights (DINO's Teacher copy)."""
    own = ckpt["teacher"].state_dict()
    ckpt["teacher"].load_state_dict({k: v for k, v in ckpt["student"].state_dict().items() if k in own})
    save_checkpoint(out_dir, **ckpt, epoch=epoch, config=cfg.to_dict())
