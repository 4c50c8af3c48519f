"""What did DINO learn on grey shapes (generator 3)? k-NN@20 of the teacher backbone of budget.yaml
trials on four labels of the val images: the shape class, and 8 quantile bins (of the train split)
of the object's mean grey, the background's mean grey and the object's area (from the masks).

    python -m experiments.recipe_search.trajectory --trial G100t2s2 --every 10   # keeps budget/runs/G100t2s2
    python -m experiments.recipe_search.grey_probe G100t2 G100t2s1 G100t2s2

The first line printed is the random-init ViT of the first trial's config. Measured (τt 0.02, 100
epochs; chance 12.5 for every label):
random init (seed 0): shape 24.6, object grey 28.0, background grey 51.8, object area 33.3;
G100t2 (seed 0): 56.8, 55.3, 31.3, 54.9; G100t2s1: 54.8, 58.3, 36.1, 55.5;
G100t2s2: 32.6, 52.1, 41.8, 40.4. Every run encodes the object's grey level that both crops share;
seeds 0 and 1 also encode the outline (and the area that goes with it), seed 2 keeps the grey levels
of object and background instead. With 2 + 6 crops the failing seed moves:
G100t2mc6: 36.7, 55.3, 39.6, 33.8; G100t2s1mc6: 55.9, 57.6, 41.0, 37.3; G100t2s2mc6: 58.1, 66.8,
35.6, 37.7 (the random init reads the same on the other CPU these ran on). With global crops of
50-100 % (τt 0.02) the failing seeds learn the outline and let the grey go:
G100t2s2gs5: 61.1, 41.7, 24.7, 63.4; G100t2s4gs5: 60.5, 49.8, 31.5, 65.0. With τt 0.03
(seed 0): G100t3gs5 58.0, 51.0, 28.7, 64.7; with each view turned at random (crops.rotation 180)
G100t3gs5r180 56.7, 54.4, 30.5, 67.2; with the paper's teacher momentum 0.996 G100t3gs5m996 60.5,
55.9, 26.2, 65.3: the area and the object's grey, which both views share, stay encoded throughout.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent

from dino_core.config import Config
from dino_core.data.registry import build_dataset
from dino_core.networks import build_network
from pipelines.cell import eval_loaders, load_trained

from experiments.recipe_search.colour_probe import BINS, knn_on_labels

RUNS = HERE / "budget" / "runs"


def image_stats(cfg: Config, split: str, n: int) -> np.ndarray:
    """(n, 3): object mean grey, background mean grey, object area fraction, from the masks."""
    ds = build_dataset("shapes", cfg.data.root, split, None, limit=n, with_masks=True)
    rows = []
    for i in range(len(ds)):
        image, _, mask = ds[i]
        grey, m = np.asarray(image, dtype=np.float32).mean(axis=2), np.asarray(mask).astype(bool)
        rows.append((grey[m].mean(), grey[~m].mean(), m.mean()))
    return np.array(rows)


def binned(train: np.ndarray, val: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per column, (train bins, val bins) at the train split's octiles."""
    out = []
    for j in range(train.shape[1]):
        edges = np.quantile(train[:, j], np.linspace(0, 1, BINS + 1)[1:-1])
        out.append((torch.tensor(np.digitize(train[:, j], edges)), torch.tensor(np.digitize(val[:, j], edges))))
    return out


def probe(trials: list[str]) -> None:
    """Print the four k-NN@20 readings for random init and for each trial's teacher."""
    cfgs = {t: Config.from_stored(yaml.safe_load((RUNS / t / "config.yaml").read_text()), t) for t in trials}
    cfg = cfgs[trials[0]]
    binned_stats = binned(image_stats(cfg, "train", cfg.data.num_train), image_stats(cfg, "val", cfg.data.num_val))
    labels = dict(zip(("object grey", "background grey", "object area"), binned_stats))
    train_loader, val_loader = eval_loaders(cfg)
    for name in [None] + trials:
        c = cfgs[name or trials[0]]
        if name is None:
            torch.manual_seed(c.train.seed)
            net = build_network(c, False)
        else:
            net = load_trained(c, RUNS / name)[1]   # the teacher
        res = knn_on_labels(net, train_loader, val_loader, labels)
        print(f"{name or 'random init'}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    probe(sys.argv[1:])
