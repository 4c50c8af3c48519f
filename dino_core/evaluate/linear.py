"""Linear probe of the official ``eval_linear.py`` on frozen, cached features.

Classifier: logits = W f + b with W ~ N(0, 0.01^2), b = 0, trained with cross-entropy,
SGD (momentum 0.9, weight decay 0), lr = base_lr * batch_size / 256 (batch_size = global batch),
CosineAnnealingLR(T_max = epochs, eta_min = 0) stepped once per epoch, evaluated after every
epoch; the best and the last top-1 / top-5 are reported (official keeps the best acc@1).

The paper sweeps the lr per model (App. F: "lr swept per model"); ``sweep_linear`` trains one
classifier per base lr and keeps the one with the best val top-1 (the official script also reports
the best val epoch, so both choices are made on the val split, as in the paper).

DEVIATION (documented): the official train set is augmented (RandomResizedCrop(224) + flip)
and features are recomputed every epoch. Here features are extracted once (eval transform:
resize + center crop) and cached, so there is no train augmentation. This is much faster and
usually gives slightly lower accuracy on ImageNet-scale data (more overfitting), so numbers
are comparable between our runs but can be a little below the official linear numbers.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


@torch.no_grad()
def _accuracy(clf: nn.Module, feats: Tensor, labels: Tensor, batch_size: int) -> tuple[float, float]:
    """(top-1 %, top-5 %) of a classifier; top-5 uses min(5, C) classes."""
    top1 = top5 = 0
    for s in range(0, feats.shape[0], batch_size):
        logits, y = clf(feats[s:s + batch_size]), labels[s:s + batch_size].view(-1, 1)
        pred = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += int((pred[:, :1] == y).sum())
        top5 += int((pred == y).any(dim=1).sum())
    n = max(feats.shape[0], 1)
    return 100.0 * top1 / n, 100.0 * top5 / n


def train_linear(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor, *,
                 epochs: int = 100, base_lr: float = 0.001, batch_size: int = 1024,
                 num_classes: int | None = None, device: torch.device | str = "cpu",
                 seed: int = 0) -> dict[str, float]:
    """Train nn.Linear(D, C) on cached (N, D) features; return
    {"linear_top1_best", "linear_top1_last", "linear_top5_best", "linear_top5_last",
    "linear_best_epoch"} (accuracies in %, top-5 of the best-top-1 epoch; epochs from 1)."""
    if epochs < 1:
        raise ValueError(f"linear probe: epochs must be >= 1, got {epochs}")
    if train_labels is None or val_labels is None or (train_labels < 0).any():
        raise ValueError("linear probe needs labelled train and val datasets")
    device = torch.device(device)
    C = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    xtr, ytr = train_feats.float().to(device), train_labels.long().to(device)
    xva, yva = val_feats.float().to(device), val_labels.long().to(device)
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], C).to(device)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=g) * 0.01)
        clf.bias.zero_()
    lr = base_lr * batch_size / 256
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0)
    best = (-1.0, 0.0, 0)
    for epoch in range(1, epochs + 1):
        clf.train()
        lr_now = opt.param_groups[0]["lr"]
        perm = torch.randperm(xtr.shape[0], generator=g).to(device)
        for s in range(0, xtr.shape[0], batch_size):
            i = perm[s:s + batch_size]
            loss = F.cross_entropy(clf(xtr[i]), ytr[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        clf.eval()
        top1, top5 = _accuracy(clf, xva, yva, batch_size)
        if top1 > best[0]:
            best = (top1, top5, epoch)
        log.info("linear epoch %d/%d lr %.3g loss %.4f val top-1 %.2f top-5 %.2f (best %.2f)",
                 epoch, epochs, lr_now, float(loss.detach()), top1, top5, best[0])
    return {"linear_top1_best": best[0], "linear_top1_last": top1, "linear_top5_best": best[1],
            "linear_top5_last": top5, "linear_best_epoch": best[2]}


def sweep_linear(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor, *,
                 base_lrs: tuple[float, ...] | list[float], **kw) -> dict[str, float]:
    """``train_linear`` for each base lr; the result of the lr with the best ``linear_top1_best``
    (ties: the smaller lr) plus ``linear_lr`` (that base lr). kw: epochs, batch_size, device, seed."""
    if not base_lrs:
        raise ValueError("linear probe: base_lrs is empty")
    runs = [(lr, train_linear(train_feats, train_labels, val_feats, val_labels, base_lr=lr, **kw))
            for lr in sorted(base_lrs)]
    lr, best = max(runs, key=lambda r: r[1]["linear_top1_best"])   # max keeps the first of equals
    log.info("linear probe lr sweep: %s -> base lr %g", {r[0]: r[1]["linear_top1_best"] for r in runs}, lr)
    return {**best, "linear_lr": lr}
