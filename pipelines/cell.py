"""One grid cell: pre-train DINO with a resolved config, then evaluate it.

`run_cell` is what the launcher ships to a process or a SLURM job. It is idempotent: a cell
with DONE returns its summary; an interrupted one resumes from its checkpoint (pre-emption); a
finished one whose evaluation is stale (store.needs_eval) is re-evaluated, not re-trained.
Evaluation (eval.json): weighted k-NN of the teacher backbone (train split -> val split), the
official linear probe with an lr sweep on cached features, the collapse metrics of teacher and
student on the val split, attention-mask Jaccard where masks exist.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dino_core.checkpoint import CHECKPOINT, atomic_write_json
from dino_core.config import Config
from dino_core.device import resolve_device
from dino_core.distributed import is_main
from dino_core.data.registry import NORMALIZATION, build_dataset, eval_transform, spec
from dino_core.evaluate.attention import attention_jaccard
from dino_core.evaluate.collapse import collapse_metrics
from dino_core.evaluate.features import knn_and_linear_features
from dino_core.evaluate.knn import knn_classify
from dino_core.evaluate.linear import sweep_linear
from dino_core.train import build_loss, build_network, train

from .lock import cell_lock
from .store import (cell_summary, check_same_config, eval_failure_recorded, eval_key, is_done, mark_done,
                    needs_eval, training_status)

log = logging.getLogger(__name__)


def _limit(n: int) -> int | None:
    return n if n > 0 else None


def pretrain_dataset(cfg: Config):
    d = cfg.data
    return build_dataset(d.dataset, d.root, spec(d.dataset).pretrain_split, None, download=d.download,
                         skip_corrupt=d.skip_corrupt, limit=_limit(d.num_train))


def eval_loaders(cfg: Config, with_masks: bool = False) -> tuple[DataLoader, DataLoader]:
    d, tf = cfg.data, eval_transform(cfg.data.dataset, cfg.data.image_size)
    train = build_dataset(d.dataset, d.root, "train", tf, skip_corrupt=d.skip_corrupt, limit=_limit(d.num_train))
    val = build_dataset(d.dataset, d.root, "val", tf, skip_corrupt=d.skip_corrupt, limit=_limit(d.num_val),
                        with_masks=with_masks)
    kw = dict(batch_size=cfg.eval.batch_size, shuffle=False, num_workers=d.num_workers)
    return DataLoader(train, **kw), DataLoader(val, **kw)


def load_trained(cfg: Config, cell: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Student, teacher (backbone + head) and the DINO loss (center, queue) of the cell's checkpoint."""
    state = torch.load(cell / CHECKPOINT, map_location="cpu", weights_only=False)
    student, teacher, loss = build_network(cfg, True), build_network(cfg, False), build_loss(cfg)
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    loss.load_state_dict(state["dino_loss"])
    return student, teacher, loss


def knn_of(backbone: torch.nn.Module, cfg: Config, train_loader, val_loader, device, linear: bool = False) -> dict:
    """Weighted k-NN (eval.knn_k, eval.knn_temp) of the frozen backbone, and with ``linear`` the
    linear probe (linear_probe) on the same pass's last-n-blocks features."""
    e = cfg.eval
    linear = linear and e.linear_epochs > 0
    n, pool = (e.n_last_blocks, e.avgpool_patchtokens) if linear else (1, False)
    ktr, ftr, ltr = knn_and_linear_features(backbone, train_loader, n, pool, device=device)
    kva, fva, lva = knn_and_linear_features(backbone, val_loader, n, pool, device=device)
    out = knn_classify(ktr, ltr, kva, lva, ks=e.knn_k, T=e.knn_temp)
    return {**out, **linear_probe(cfg, ftr, ltr, fva, lva, device)} if linear else out


def linear_probe(cfg: Config, ftr: torch.Tensor, ltr: torch.Tensor, fva: torch.Tensor, lva: torch.Tensor,
                 device: torch.device | str = "cpu") -> dict:
    """The official linear probe (eval_linear.py) with cfg.eval's settings on cached features
    (N, D) -> best of the lr sweep; {} when eval.linear_epochs is 0."""
    e = cfg.eval
    if e.linear_epochs == 0:
        return {}
    return sweep_linear(ftr, ltr, fva, lva, base_lrs=e.linear_lr, epochs=e.linear_epochs,
                        batch_size=e.linear_batch_size, device=device, seed=cfg.train.seed)


def run_targets_collapse(student: torch.nn.Module, teacher: torch.nn.Module, loss: torch.nn.Module, epoch: int,
                         loader: DataLoader, device: torch.device | str) -> dict:
    """collapse_metrics with the run's own teacher targets at `epoch` (DINOLoss.teacher_probs: its
    normalisation, center or not, Sinkhorn-Knopp per batch, its tau_t)."""
    return collapse_metrics(student, teacher, loader, 0.0, loss.student_temp, float(loss.teacher_temps[epoch]),
                            device, targets=lambda t: loss.to(t.device).teacher_probs(t, epoch))


def evaluate_cell(cfg: Config, cell: Path) -> dict:
    """k-NN, linear probe, collapse metrics and (with masks) attention Jaccard of a trained cell
    -> eval.json (with its eval_key).

    The collapse metrics use the run's own teacher targets at the last epoch (DINOLoss.teacher_probs:
    its normalisation, center or not, and its tau_t), so a no-centering row is judged on what its
    student was trained towards, not on a centred teacher it never saw."""
    device = resolve_device(cfg.train.device)
    has_masks = spec(cfg.data.dataset).has_masks
    train_loader, val_loader = eval_loaders(cfg, with_masks=has_masks)
    student, teacher, loss = load_trained(cfg, cell)
    out = {"eval_key": eval_key(cfg), **knn_of(teacher.backbone, cfg, train_loader, val_loader, device, linear=True)}
    out.update(run_targets_collapse(student, teacher, loss, cfg.train.epochs - 1, val_loader, device))
    if has_masks:
        out.update(attention_jaccard(teacher.backbone, val_loader, cfg.eval.attn_threshold, device))
    atomic_write_json(cell / "eval.json", out)
    return out


def run_cell(cell_dir: str, params: dict) -> dict:
    """Train + evaluate one cell; returns its summary (store.cell_summary). Safe to call again:
    a finished cell is reused, re-evaluated if its evaluation is stale, an unfinished one resumes.
    A folder holding a run of another training config is refused (store.RunMismatch); rank 0
    holds the cell's lock (lock.cell_lock) throughout, waiting while another process trains it."""
    cell, cfg = Path(cell_dir), Config.from_dict(params)
    check_same_config(cell, cfg)
    if not is_main():
        return _train_and_evaluate(cell, cfg)
    with cell_lock(cell):
        return _train_and_evaluate(cell, cfg)


def _train_and_evaluate(cell: Path, cfg: Config) -> dict:
    if is_done(cell):
        if needs_eval(cell, cfg) and is_main():   # a DDP job: rank 0 re-evaluates, the others return
            log.info("%s: evaluation stale (eval section or EVAL_VERSION changed): re-evaluating", cell.name)
            with eval_failure_recorded(cell):
                evaluate_cell(cfg, cell)
        return cell_summary(cell)
    cell.mkdir(parents=True, exist_ok=True)
    mean, std = NORMALIZATION[cfg.data.dataset]
    metrics = train(cfg, cell, pretrain_dataset(cfg), mean, std)
    if not is_main():   # DDP: every rank trains, rank 0 evaluates and writes
        return metrics
    summary = {"cell": cell.name, "status": training_status(metrics), "ln_k": math.log(cfg.head.out_dim),
               "wall_time_s": metrics["wall_time_s"]}
    if summary["status"] == "ok":
        with eval_failure_recorded(cell):   # eval.json before DONE: a DONE ok cell always has an evaluation
            evaluate_cell(cfg, cell)
    mark_done(cell, summary)
    return cell_summary(cell)
