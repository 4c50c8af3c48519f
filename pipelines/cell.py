"""One grid cell: pre-train DINO with a resolved config, then evaluate it.

`run_cell` is what the launcher ships to a process or a SLURM job. It is idempotent: a cell
with DONE returns its summary; an interrupted one resumes from its checkpoint (pre-emption).
Evaluation: weighted k-NN of the teacher backbone (train split -> val split), the collapse
metrics of teacher and student on the val split, attention-mask Jaccard where masks exist.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dino_core.checkpoint import CHECKPOINT, atomic_write_json
from dino_core.config import Config
from dino_core.distributed import is_main
from dino_core.data.registry import NORMALIZATION, build_dataset, eval_transform, spec
from dino_core.evaluate.attention import attention_jaccard
from dino_core.evaluate.collapse import collapse_metrics
from dino_core.evaluate.features import extract_features
from dino_core.evaluate.knn import knn_classify
from dino_core.train import build_network, resolve_device, train

from .store import is_done, mark_done, read_done

log = logging.getLogger(__name__)


def _limit(n: int) -> int | None:
    return n if n > 0 else None


def pretrain_dataset(cfg: Config):
    d = cfg.data
    return build_dataset(d.dataset, d.root, spec(d.dataset).pretrain_split, None, download=d.download, skip_corrupt=d.skip_corrupt,
                         limit=_limit(d.num_train))


def eval_loaders(cfg: Config, with_masks: bool = False) -> tuple[DataLoader, DataLoader]:
    d, tf = cfg.data, eval_transform(cfg.data.dataset, cfg.data.image_size)
    train = build_dataset(d.dataset, d.root, "train", tf, limit=_limit(d.num_train))
    val = build_dataset(d.dataset, d.root, "val", tf, limit=_limit(d.num_val), with_masks=with_masks)
    kw = dict(batch_size=cfg.eval.batch_size, shuffle=False, num_workers=d.num_workers)
    return DataLoader(train, **kw), DataLoader(val, **kw)


def load_networks(cfg: Config, cell: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """Student and teacher (backbone + head) and the center from the cell's checkpoint."""
    state = torch.load(cell / CHECKPOINT, map_location="cpu", weights_only=False)
    student, teacher = build_network(cfg, True), build_network(cfg, False)
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    return student, teacher, state["dino_loss"]["center"]


def knn_of(backbone: torch.nn.Module, cfg: Config, train_loader, val_loader, device) -> dict:
    ftr, ltr = extract_features(backbone, train_loader, device=device)
    fva, lva = extract_features(backbone, val_loader, device=device)
    return knn_classify(ftr, ltr, fva, lva, ks=cfg.eval.knn_k, T=cfg.eval.knn_temp)


def evaluate_cell(cfg: Config, cell: Path) -> dict:
    """k-NN, collapse metrics and (shapes) attention Jaccard of a trained cell -> eval.json."""
    device = resolve_device(cfg.train.device)
    has_masks = spec(cfg.data.dataset).has_masks
    train_loader, val_loader = eval_loaders(cfg, with_masks=has_masks)
    student, teacher, center = load_networks(cfg, cell)
    out = knn_of(teacher.backbone, cfg, train_loader, val_loader, device)
    last_tt = cfg.loss.teacher_temp if cfg.loss.sharpening else cfg.loss.student_temp
    out.update(collapse_metrics(student, teacher, val_loader, center, cfg.loss.student_temp, last_tt, device))
    if has_masks:
        out.update(attention_jaccard(teacher.backbone, val_loader, cfg.eval.attn_threshold, device))
    atomic_write_json(cell / "eval.json", out)
    return out


def run_cell(cell_dir: str, params: dict) -> dict:
    """Train + evaluate one cell; returns the DONE summary. Safe to call again (resume/reuse)."""
    cell = Path(cell_dir)
    if is_done(cell):
        return read_done(cell)
    cfg = Config.from_dict(params)
    cell.mkdir(parents=True, exist_ok=True)
    mean, std = NORMALIZATION[cfg.data.dataset]
    metrics = train(cfg, cell, pretrain_dataset(cfg), mean, std)
    if not is_main():   # DDP: every rank trains, rank 0 evaluates and writes
        return metrics
    summary = {"cell": cell.name, "status": metrics["status"], "ln_k": math.log(cfg.head.out_dim),
               "wall_time_s": metrics["wall_time_s"]}
    if metrics["status"] == "ok":
        ev = evaluate_cell(cfg, cell)
        summary.update({k: v for k, v in ev.items() if isinstance(v, (int, float, bool, str))})
    mark_done(cell, summary)
    return summary
