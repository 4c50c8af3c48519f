"""The evaluation of a frozen backbone, one entry for every caller (a grid cell, a checkpoint file).

Three sets of eval-transformed, labelled images (``EvalSets``):
    bank    the train split (data.num_train): the k-NN memory bank and the linear probe's train set
    select  the val split (data.num_val): where choices are made (the linear probe's lr and epoch)
    report  the report split (data.num_test after data.test_skip, or the val split where a dataset
            has no separate test split): where the reported numbers are measured

``evaluate_backbone`` -> {"knn{k}_top1": weighted k-NN top-1 on report (eval.knn_k, eval.knn_temp),
"select_knn{k}_top1": the same on select, linear_* (``sweep_linear``: chosen on select, measured on
report), feature_std / effective_rank / feature_dim of the report features, n_bank / n_select /
n_report, and attn_* (Jaccard of the attention masks) when the report set carries masks}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..sections import DataConfig, EvalConfig
from ..data.registry import build_dataset, eval_transform, spec
from .attention import attention_jaccard
from .collapse import feature_metrics
from .features import knn_and_linear_features
from .knn import knn_classify
from .linear import sweep_linear


@dataclass(frozen=True)
class EvalSets:
    bank: DataLoader
    select: DataLoader
    report: DataLoader
    has_masks: bool = False


def eval_sets(d: DataConfig, batch_size: int, with_masks: bool = False) -> EvalSets:
    """The three loaders of ``d`` (class-balanced subsets; 0 = the whole split) with the eval transform;
    masks on the report set when ``with_masks`` and the dataset has them."""
    entry, tf = spec(d.dataset), eval_transform(d.dataset, d.image_size)
    masks = with_masks and entry.has_masks
    separate = entry.report_split != "val"

    def load(split: str, limit: int, skip: int = 0, with_masks: bool = False) -> DataLoader:
        ds = build_dataset(d.dataset, d.root, split, tf, limit=limit or None, skip=skip, with_masks=with_masks,
                           skip_corrupt=d.skip_corrupt)
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=d.num_workers)
    return EvalSets(load("train", d.num_train), load("val", d.num_val),
                    load(entry.report_split, d.num_test, d.test_skip, masks) if separate
                    else load("val", d.num_val, 0, masks), masks)


@torch.no_grad()
def evaluate_backbone(backbone: nn.Module, e: EvalConfig, sets: EvalSets, device: torch.device | str = "cpu",
                      seed: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """k-NN on report and select, the linear probe (if e.linear_epochs > 0), feature statistics and the
    attention Jaccard of a frozen ``backbone`` (see the module docstring for the keys)."""
    linear = e.linear_epochs > 0
    n, pool = (e.n_last_blocks, e.avgpool_patchtokens) if linear else (1, False)
    ex = {"device": device, "precision": precision}
    feats = {k: knn_and_linear_features(backbone, getattr(sets, k), n, pool, **ex) for k in ("bank", "select", "report")}
    (kb, fb, yb), (kv, fs, ys), (kr, fr, yr) = feats["bank"], feats["select"], feats["report"]
    for name, y in (("bank", yb), ("select", ys), ("report", yr)):
        if y is None or bool((y < 0).any()):
            raise ValueError(f"evaluation needs labels, but the {name} set yields unlabelled items")
    out: dict[str, Any] = {"n_bank": len(yb), "n_select": len(ys), "n_report": len(yr)}
    out.update(knn_classify(kb, yb, kr, yr, ks=e.knn_k, T=e.knn_temp))
    out.update({f"select_{k}": v for k, v in knn_classify(kb, yb, kv, ys, ks=e.knn_k, T=e.knn_temp).items()})
    out.update(feature_metrics(kr))
    if linear:
        with torch.enable_grad():
            out.update(sweep_linear(fb, yb, (fs, ys), (fr, yr), base_lrs=e.linear_lr, epochs=e.linear_epochs,
                                    batch_size=e.linear_batch_size, device=device, seed=seed))
    if sets.has_masks:
        out.update(attention_jaccard(backbone, sets.report, e.attn_threshold, device))
    return out
