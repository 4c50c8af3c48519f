"""Linear probe of the official ``eval_linear.py`` on frozen, cached features.

Classifier: logits = W f + b with W ~ N(0, 0.01^2), b = 0, trained with cross-entropy,
SGD (momentum 0.9, weight decay 0), lr = base_lr * batch_size / 256 (batch_size = global batch),
CosineAnnealingLR(T_max = epochs, eta_min = 0) stepped once per epoch, evaluated after every
epoch; the best and the last top-1 / top-5 are reported (official keeps the best acc@1).

The paper sweeps the lr per model (App. F: "lr swept per model") and the official script reports
the best epoch's val top-1: both choices are made on the evaluation split. ``sweep_linear`` makes
them on a select split (a holdout) and reports the chosen classifier's top-1 on a report split
that no choice saw (DEVIATION, documented: the reported number is not the best over epochs).

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
EVAL_CHUNK = 16384   # rows per forward when measuring: one matmul per set and epoch, not one per batch


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


def train_linear(train_feats: Tensor, train_labels: Tensor, evals: dict[str, tuple[Tensor, Tensor]], *,
                 epochs: int = 100, base_lr: float = 0.001, batch_size: int = 1024,
                 num_classes: int | None = None, device: torch.device | str = "cpu",
                 seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """Train nn.Linear(D, C) on cached (N, D) features; after every epoch measure (top-1 %, top-5 %)
    on each evaluation set of ``evals`` (name -> (features (M, D), labels (M,))).
    Returns name -> one (top-1, top-5) per epoch."""
    if epochs < 1:
        raise ValueError(f"linear probe: epochs must be >= 1, got {epochs}")
    if train_labels is None or (train_labels < 0).any() or any(y is None or (y < 0).any() for _, y in evals.values()):
        raise ValueError("linear probe needs labelled train and evaluation datasets")
    device = torch.device(device)
    C = num_classes or int(max([train_labels.max()] + [y.max() for _, y in evals.values()])) + 1
    xtr, ytr = train_feats.float().to(device), train_labels.long().to(device)
    sets = {k: (x.float().to(device), y.long().to(device)) for k, (x, y) in evals.items()}
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], C).to(device)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=g) * 0.01)
        clf.bias.zero_()
    lr = base_lr * batch_size / 256
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0)
    curves: dict[str, list[tuple[float, float]]] = {k: [] for k in sets}
    for epoch in range(1, epochs + 1):
        clf.train()
        perm = torch.randperm(xtr.shape[0], generator=g).to(device)
        for s in range(0, xtr.shape[0], batch_size):
            i = perm[s:s + batch_size]
            loss = F.cross_entropy(clf(xtr[i]), ytr[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        clf.eval()
        for k, (x, y) in sets.items():
            curves[k].append(_accuracy(clf, x, y, EVAL_CHUNK))
        log.debug("linear epoch %d/%d loss %.4f %s", epoch, epochs, float(loss.detach()),
                  {k: c[-1][0] for k, c in curves.items()})
    return curves


def sweep_linear(train_feats: Tensor, train_labels: Tensor, select: tuple[Tensor, Tensor],
                 report: tuple[Tensor, Tensor] | None = None, *, base_lrs: tuple[float, ...] | list[float],
                 **kw) -> dict[str, float]:
    """``train_linear`` for each base lr; the (lr, epoch) with the best top-1 on ``select`` (ties:
    the smaller lr, the earlier epoch) is chosen there, and its top-1 / top-5 on ``report`` are the
    reported numbers (``report`` None: on ``select`` itself, where the choice was made).
    Returns linear_top1, linear_top5 (report), linear_select_top1, linear_lr, linear_epoch.
    kw: epochs, batch_size, device, seed."""
    if not base_lrs:
        raise ValueError("linear probe: base_lrs is empty")
    evals = {"select": select} if report is None else {"select": select, "report": report}
    best = None
    for lr in sorted(base_lrs):
        curves = train_linear(train_feats, train_labels, evals, base_lr=lr, **kw)
        for epoch, (top1, _) in enumerate(curves["select"], start=1):
            if best is None or top1 > best[0]:
                best = (top1, lr, epoch, curves["report" if report is not None else "select"][epoch - 1])
    top1_sel, lr, epoch, (top1, top5) = best
    log.info("linear probe: base lr %g, epoch %d chosen on the select split (top-1 %.2f); reported top-1 %.2f",
             lr, epoch, top1_sel, top1)
    return {"linear_top1": top1, "linear_top5": top5, "linear_select_top1": top1_sel, "linear_lr": lr,
            "linear_epoch": epoch}
