"""One step of self-distillation (Algorithm 1's loop body) and the Run it works on.

Teacher on the 2 global views, student on all views, DINO loss, backward, per-parameter gradient
clipping, last-layer freezing, optimiser step, teacher update (EMA of the student).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed as D
from .config import Config
from .device import autocast
from .head import MultiCropWrapper
from .loss import DINOLoss
from .optim import Schedules, cancel_last_layer_grads, clip_gradients
from .teacher import Teacher


@dataclass
class Run:
    """Everything the step needs, built once."""
    cfg: Config
    device: torch.device
    student: nn.Module            # DDP-wrapped when distributed
    student_mod: MultiCropWrapper
    teacher_net: MultiCropWrapper
    teacher: Teacher
    loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    precision: str
    precision_probe: dict          # how `precision` was decided (device.resolve_precision)
    sched: Schedules
    loader: DataLoader
    last_finite_loss: float = float("nan")   # carried across epochs for the divergence message


def train_step(run: Run, crops: list[torch.Tensor], it: int, epoch: int) -> tuple[torch.Tensor, dict]:
    cfg, opt = run.cfg, run.optimizer
    run.sched.apply(opt, it)
    with autocast(run.device, run.precision):
        with torch.no_grad():
            t_out = run.teacher_net(crops[:2])
        s_out = run.student(crops)
    loss, stats = run.loss(s_out, t_out, epoch)
    opt.zero_grad(set_to_none=True)
    (run.scaler.scale(loss) if run.scaler else loss).backward()
    if run.scaler:
        run.scaler.unscale_(opt)
    clip_gradients(run.student_mod, cfg.optim.clip_grad)
    cancel_last_layer_grads(run.student_mod, epoch, cfg.head.freeze_last_layer)
    run.teacher.before_step()
    if run.scaler:
        run.scaler.step(opt)
        run.scaler.update()
    else:
        opt.step()
    run.teacher.after_step(float(run.sched.momentum[it]))
    return loss.detach(), stats


def run_step_checked(run: Run, crops, it: int, epoch: int):
    loss, stats = train_step(run, crops, it, epoch)
    finite = torch.isfinite(loss).float().reshape(1)
    if float(D.all_reduce_sum(finite)) < D.world_size():   # every process stops together
        return None, None
    return loss, stats
