"""One grid cell: pre-train DINO with a resolved config, then evaluate it.

`run_cell` is what the launcher ships to a process or a SLURM job. It is idempotent: a cell
with DONE returns its summary; an interrupted one resumes from its checkpoint (pre-emption); a
finished one whose evaluation is stale (store.needs_eval) is re-evaluated, not re-trained.
Evaluation (eval.json): dino_core.evaluate.protocol.evaluate_backbone of the teacher backbone
(k-NN and the linear probe, chosen on the select split and measured on the report split; attention
Jaccard where masks exist, with the per-head maps of a few report images: ATTENTION_MAPS) and the
collapse metrics of teacher and student on the report split (DINO runs: the other `train.objective`s
train no DINO head).
"""
from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dino_core.checkpoint import CHECKPOINT, atomic_write_json, atomic_write_text
from dino_core.config import Config
from dino_core.device import resolve_device
from dino_core.distributed import is_main
from dino_core.data.registry import NORMALIZATION, build_dataset, spec
from dino_core.evaluate.attention import cls_attention, mass_mask
from dino_core.evaluate.collapse import collapse_metrics
from dino_core.evaluate.features import knn_and_linear_features
from dino_core.evaluate.knn import knn_classify
from dino_core.evaluate.protocol import EvalSets, eval_sets, evaluate_backbone
from dino_core.networks import build_loss, build_network
from dino_core.train import train

from .lock import cell_lock
from .run_folder import check_same_config
from .store import (COLLAPSE, TEACHER, cell_summary, eval_failure_recorded, eval_key, is_done,
                    mark_done, needs_eval, read_teacher, training_status, write_teacher)

log = logging.getLogger(__name__)
ATTENTION_MAPS = "attention_maps.json"   # the attention figure's input (pipelines/report/render.py)
N_MAPS = 3


def _limit(n: int) -> int | None:
    return n if n > 0 else None


def pretrain_dataset(cfg: Config):
    d = cfg.data
    return build_dataset(d.dataset, d.root, spec(d.dataset).pretrain_split, None, download=d.download,
                         skip_corrupt=d.skip_corrupt, limit=_limit(d.num_train))


def eval_loaders(cfg: Config, with_masks: bool = False) -> tuple[DataLoader, DataLoader]:
    """(bank, select) loaders of dino_core.evaluate.protocol.eval_sets: where tuning and the recipe
    search measure the k-NN (the select split; never the report split)."""
    sets = eval_sets(cfg.data, cfg.eval.batch_size, with_masks=with_masks)
    return sets.bank, sets.select


def knn_of(backbone: torch.nn.Module, cfg: Config, train_loader: DataLoader, val_loader: DataLoader,
           device: torch.device | str) -> dict:
    """Weighted k-NN (eval.knn_k, eval.knn_temp) of the frozen backbone: train_loader's images are
    the bank, val_loader's the queries."""
    e = cfg.eval
    ktr, _, ltr = knn_and_linear_features(backbone, train_loader, device=device)
    kva, _, lva = knn_and_linear_features(backbone, val_loader, device=device)
    return knn_classify(ktr, ltr, kva, lva, ks=e.knn_k, T=e.knn_temp)


def load_trained(cfg: Config, cell: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Student, teacher (backbone + head) and the DINO loss (center, queue) of the cell's checkpoint."""
    state = torch.load(cell / CHECKPOINT, map_location="cpu", weights_only=False)
    student, teacher, loss = build_network(cfg, True), build_network(cfg, False), build_loss(cfg)
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    loss.load_state_dict(state["dino_loss"])
    return student, teacher, loss


def run_targets_collapse(student: torch.nn.Module, teacher: torch.nn.Module, loss: torch.nn.Module, epoch: int,
                         loader: DataLoader, device: torch.device | str) -> dict:
    """collapse_metrics with the run's own teacher targets at `epoch` (DINOLoss.teacher_probs: its
    normalisation, center or not, Sinkhorn-Knopp per batch, its tau_t)."""
    return collapse_metrics(student, teacher, loader, 0.0, loss.student_temp, float(loss.teacher_temps[epoch]),
                            device, targets=lambda t: loss.to(t.device).teacher_probs(t, epoch))


def evaluate_cell(cfg: Config, cell: Path) -> dict:
    """dino_core.evaluate.protocol.evaluate_backbone of the cell's fp16 teacher backbone
    (store.TEACHER; made by finish_cell from the checkpoint of a run that has none) -> eval.json
    (with its eval_key)."""
    sets = eval_sets(cfg.data, cfg.eval.batch_size, with_masks=True)
    if not (cell / TEACHER).is_file():
        finish_cell(cfg, cell, sets)
    backbone = read_teacher(cell, build_network(cfg, False).backbone)
    out = {"eval_key": eval_key(cfg), **evaluate_backbone(backbone, cfg.eval, sets,
                                                          resolve_device(cfg.train.device), cfg.train.seed)}
    if sets.has_masks:
        save_attention_maps(backbone, sets.report.dataset, cfg.eval.attn_threshold, NORMALIZATION[cfg.data.dataset],
                            out["jaccard_per_head"], cell / ATTENTION_MAPS)
    atomic_write_json(cell / "eval.json", out)
    return out


def _uint8_b64(a: torch.Tensor) -> dict:
    return {"shape": list(a.shape), "uint8": base64.b64encode(a.contiguous().numpy().tobytes()).decode()}


@torch.no_grad()
def save_attention_maps(backbone: torch.nn.Module, report, threshold: float, norm, jaccard: list[float],
                        path: Path) -> None:
    """JSON of the first N_MAPS report images (RGB, (N, H, W, 3)) and their object masks ((N, H, W), 0/1),
    both uint8 arrays as {"shape", "uint8": base64 of the C-order bytes}; each head's last-layer CLS
    attention on the patch grid (N, heads, h, w), summing to 1, and its threshold-mass mask (0/1); and
    each head's Jaccard over the report split."""
    items = [report[i] for i in range(min(N_MAPS, len(report)))]
    x = torch.stack([it[0] for it in items])
    attn = cls_attention(backbone.eval(), x)
    attn = attn / attn.sum(dim=(-2, -1), keepdim=True)
    p, (h, w) = backbone.patch_size, attn.shape[-2:]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in norm)
    rgb = ((x[..., :h * p, :w * p] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    objects = torch.stack([it[2][..., :h * p, :w * p] > 0 for it in items]).to(torch.uint8)
    out = {"threshold": threshold, "patch_size": p, "jaccard_per_head": jaccard, "images": _uint8_b64(rgb),
           "objects": _uint8_b64(objects), "attention": attn.round(decimals=5).tolist(),
           "masks": mass_mask(attn.flatten(2), threshold).view_as(attn).to(torch.uint8).tolist()}
    atomic_write_text(path, json.dumps(out, separators=(",", ":")))


def finish_cell(cfg: Config, cell: Path, sets: EvalSets | None = None) -> None:
    """From the final checkpoint: collapse.json (teacher and student on the report split, with the
    run's own teacher targets at the last epoch: DINOLoss.teacher_probs, its normalisation, center or
    not, and its tau_t, so a no-centering row is judged on what its student was trained towards)
    and the fp16 teacher backbone that every evaluation reads."""
    student, teacher, loss = load_trained(cfg, cell)
    if cfg.train.objective != "dino":   # supervised / none trained no DINO head: no targets to judge
        write_teacher(cell, teacher.backbone)
        return
    sets = sets or eval_sets(cfg.data, cfg.eval.batch_size)
    out = run_targets_collapse(student, teacher, loss, cfg.train.epochs - 1, sets.report,
                               resolve_device(cfg.train.device))
    atomic_write_json(cell / COLLAPSE, out)
    write_teacher(cell, teacher.backbone)


def run_cell(cell_dir: str, params: dict) -> dict:
    """Train + evaluate one cell; returns its summary (store.cell_summary). Safe to call again:
    a finished cell is reused, re-evaluated if its evaluation is stale, an unfinished one resumes.
    A folder holding a run of another training config is refused (run_folder.RunMismatch); rank 0
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
               "wall_time_s": metrics["wall_time_s"], "precision": metrics.get("precision")}
    if summary["status"] == "ok":
        with eval_failure_recorded(cell):   # eval.json before DONE: a DONE ok cell always has an evaluation
            evaluate_cell(cfg, cell)        # first finish_cell: collapse.json and the fp16 teacher
    mark_done(cell, summary)
    return cell_summary(cell)
