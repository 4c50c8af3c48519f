"""Is a shapes cell short of images or of signal? k-NN@20 of a kept budget.yaml run's teacher, and of the
raw pixels, against the labelled bank of another data root (same val split, same k-NN protocol).

    python -m experiments.recipe_search.trajectory --trial G40n10k --every 10  # keeps budget/runs/G40n10k
    python -m experiments.recipe_search.bank_probe G40n10k --root data/prototypes/shapes_v3 --num-train 2000

The shapes generator draws image ``idx`` of a split from ``(seed, split, idx)`` only, so the first
2,000 training images of a 10,000-image root are the 2,000 of the default root and the 1,000 val
images are the same: a run pre-trained without labels on 10,000 images is read here with the
2,000-image bank that the default cell and raw pixels use. A bigger bank alone lifts raw pixels far
more than it lifts features (10,000 images: raw pixels 84.0 against 63.4, random init 27.2 against
24.6), so the bank is held fixed and only the pre-training images change. Prints one JSON line per
run: ``{"trial", "bank", "knn20_top1", ..., "raw_pixels_knn20_top1", ...}`` (every eval.knn_k).
Measured (budget.yaml): G40n10k with the 2,000-image bank 63.2 (raw pixels 63.4; the
default run G200t3gs5m996, pre-trained on those 2,000 only, 63.4); G200t3gs5m996 with the
10,000-image bank 67.2 (raw pixels 84.0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

from pipelines.baselines import raw_pixels
from pipelines.cell import eval_loaders, knn_of, load_trained
from experiments.recipe_search.trajectory import kept_config


def probe(cell: Path, root: str, num_train: int) -> dict:
    """k-NN of the teacher backbone of the finished run ``cell`` and of raw pixels with the bank ``root``
    (its first ``num_train`` training images) against the val split of the run's own config."""
    cfg = kept_config(cell)
    bank = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root, num_train=num_train))
    _, teacher, _ = load_trained(cfg, cell)
    train_loader, val_loader = eval_loaders(bank)
    ours = knn_of(teacher.backbone.eval(), bank, train_loader, val_loader, "cpu")
    raw = raw_pixels(bank, linear=False)
    return {"trial": cell.name, "pretrain_root": cfg.data.root, "pretrain_images": cfg.data.num_train, "bank": root,
            "bank_images": num_train, **{k: v for k, v in ours.items() if k.endswith("_top1")},
            **{f"raw_pixels_{k}": v for k, v in raw.items() if k.endswith("_top1")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trials", nargs="+", help="names in budget.yaml with a kept run")
    ap.add_argument("--root", required=True, help="the data root whose train split is the k-NN bank")
    ap.add_argument("--num-train", type=int, required=True, help="images of the bank (the first of the split)")
    args = ap.parse_args()
    if args.num_train < 0:
        ap.error(f"--num-train must be >= 0 (0 = the whole train split of --root), got {args.num_train}")
    if not Path(args.root).is_dir():
        ap.error(f"--root {args.root} is not a directory (a prepared data root, e.g. data/prototypes/shapes_v3)")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    for name in args.trials:
        try:
            row = probe(HERE / "budget" / "runs" / name, args.root, args.num_train)
        except FileNotFoundError as e:
            ap.error(e.args[0])
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
