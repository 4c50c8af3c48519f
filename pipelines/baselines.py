"""Reference points for k-NN and the linear probe: the same architecture at random init, and raw pixels.

A DINO that learns must beat both (issue: "k-NN vs random init"); a collapsed one does not.
"""
from __future__ import annotations

import torch

from dino_core.config import Config
from dino_core.evaluate.knn import knn_classify
from dino_core.device import resolve_device
from dino_core.train import build_network

from .cell import eval_loaders, knn_of, linear_probe


def random_init(cfg: Config, linear: bool = True) -> dict:
    """k-NN (and the linear probe) of the teacher backbone as initialised with cfg.train.seed."""
    torch.manual_seed(cfg.train.seed)
    net = build_network(cfg, False)
    train_loader, val_loader = eval_loaders(cfg)
    device = resolve_device(cfg.train.device)
    return knn_of(net.backbone, cfg, train_loader, val_loader, device, linear=linear)


def raw_pixels(cfg: Config, linear: bool = True) -> dict:
    """k-NN (and the linear probe) on the normalised, eval-transformed pixels (flattened)."""
    train_loader, val_loader = eval_loaders(cfg)

    def flat(loader):
        xs, ys = zip(*[(x.flatten(1), y) for x, y in loader])
        return torch.cat(xs), torch.cat(ys)
    (ftr, ltr), (fva, lva) = flat(train_loader), flat(val_loader)
    out = knn_classify(ftr, ltr, fva, lva, ks=cfg.eval.knn_k, T=cfg.eval.knn_temp)
    return {**out, **linear_probe(cfg, ftr, ltr, fva, lva)} if linear else out
