"""Reference points for k-NN and the linear probe: the same architecture at random init, and raw pixels.

A DINO that learns must beat both; a collapsed one does not. Both are measured as a cell is
(dino_core.evaluate.protocol: chosen on the select split, measured on the report split).
"""
from __future__ import annotations

import torch

from dino_core.config import Config
from dino_core.device import resolve_device
from dino_core.evaluate.knn import knn_classify
from dino_core.evaluate.linear import sweep_linear
from dino_core.evaluate.protocol import eval_sets, evaluate_backbone
from dino_core.networks import build_network


def random_init(cfg: Config, linear: bool = True) -> dict:
    """evaluate_backbone of the teacher backbone as initialised with cfg.train.seed (no linear probe
    unless ``linear``)."""
    if not linear:
        cfg = cfg.replace("eval", linear_epochs=0)
    torch.manual_seed(cfg.train.seed)
    net = build_network(cfg, False)
    sets = eval_sets(cfg.data, cfg.eval.batch_size)
    return evaluate_backbone(net.backbone, cfg.eval, sets, resolve_device(cfg.train.device), cfg.train.seed)


def raw_pixels(cfg: Config, linear: bool = True) -> dict:
    """k-NN (report and select) and the linear probe on the normalised, eval-transformed pixels (flattened)."""
    sets, e = eval_sets(cfg.data, cfg.eval.batch_size), cfg.eval

    def flat(loader):
        xs, ys = zip(*[(x.flatten(1), y) for x, y in loader])
        return torch.cat(xs), torch.cat(ys)
    (fb, yb), (fs, ys), (fr, yr) = flat(sets.bank), flat(sets.select), flat(sets.report)
    out = knn_classify(fb, yb, fr, yr, ks=e.knn_k, T=e.knn_temp)
    out.update({f"select_{k}": v for k, v in knn_classify(fb, yb, fs, ys, ks=e.knn_k, T=e.knn_temp).items()})
    if linear and e.linear_epochs > 0:
        out.update(sweep_linear(fb, yb, (fs, ys), (fr, yr), base_lrs=e.linear_lr, epochs=e.linear_epochs,
                                batch_size=e.linear_batch_size, seed=cfg.train.seed))
    return out
