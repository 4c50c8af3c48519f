"""Optimiser, parameter groups, per-step schedules, per-parameter gradient clipping."""
from __future__ import annotations

import resource
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import Config
from .schedules import cosine_schedule, lr_base
from .sections import OptimConfig


def param_groups(model: nn.Module) -> list[dict]:
    """Group 0: weights (weight decay); group 1: biases and all 1-D params (norms), wd = 0."""
    reg, not_reg = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (not_reg if name.endswith(".bias") or p.ndim == 1 else reg).append(p)
    return [{"params": reg}, {"params": not_reg, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model)
    if cfg.name == "adamw":
        # fused: one kernel over all parameters (CPU and CUDA); numerically AdamW
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=True)
    return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=0.0, foreach=True)


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> None:
    """Official per-parameter clipping: g <- g * min(1, clip / (||g||_2 + 1e-6)) for each tensor."""
    if clip <= 0:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """During the first `freeze_last_layer` epochs the prototypes (last layer) do not move."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@dataclass(frozen=True)
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray

    @staticmethod
    def build(cfg: Config, niter_per_ep: int, world_size: int) -> "Schedules":
        o, e = cfg.optim, cfg.train.epochs
        lr = cosine_schedule(lr_base(o.lr, o.batch_size, world_size), o.min_lr, e, niter_per_ep, o.warmup_epochs)
        wd = cosine_schedule(o.weight_decay, o.weight_decay_end, e, niter_per_ep)
        # cosine from m to 1 for the EMA teacher; the other variants do not use a momentum
        mom = cosine_schedule(cfg.teacher.momentum, 1.0, e, niter_per_ep) if cfg.teacher.variant == "ema" \
            else np.zeros(e * niter_per_ep)
        return Schedules(lr, wd, mom)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> None:
        """Set step ``it``'s lr on every parameter group and its weight decay on group 0."""
        for i, g in enumerate(optimizer.param_groups):
            g["lr"] = float(self.lr[it])   # plain floats: the checkpoint loads with weights_only=True
            if i == 0:   # only the regularised group follows the weight-decay schedule
                g["weight_decay"] = float(self.wd[it])


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
