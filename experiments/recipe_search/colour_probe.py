"""What did DINO learn on shapes? k-NN@20 of the teacher backbone on three labels of the val images:
the shape class, the hue of the object and the hue of the background (8 hue bins each, from the
mean RGB inside / outside the object mask), for random-init and trained weights.

    python -m experiments.recipe_search.explore --variant S7        # trains, keeps explore/runs/S7
    python -m experiments.recipe_search.colour_probe --variant S7

Measured (S7: the default recipe on shapes generator 2, 16 epochs; 2,000 train / 1,000 val):
random init: shape 14.8, object hue 28.2, background hue 37.7; trained: shape 14.0, object hue
51.3, background hue 44.6. DINO learns the colours that both crops share, not the outline.
"""
from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

from dino_core.config import Config
from dino_core.data.registry import build_dataset
from dino_core.evaluate.features import extract_features
from dino_core.evaluate.knn import knn_classify
from dino_core.networks import build_network
from pipelines.cell import eval_loaders

from experiments.recipe_search.explore import config_of, load_variants

BINS = 8


def hue_labels(cfg: Config, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(object hue bin, background hue bin) per image, from the mean colour inside / outside the mask."""
    ds = build_dataset("shapes", cfg.data.root, split, None, limit=n, with_masks=True)
    obj, bg = [], []
    for i in range(len(ds)):
        image, _, mask = ds[i]
        rgb, m = np.asarray(image, dtype=np.float32) / 255, np.asarray(mask).astype(bool)
        for out, sel in ((obj, m), (bg, ~m)):
            h = colorsys.rgb_to_hsv(*rgb[sel].mean(axis=0))[0]
            out.append(int(h * BINS) % BINS)
    return torch.tensor(obj), torch.tensor(bg)


def knn_on_labels(net: torch.nn.Module, train_loader, val_loader,
                  labels: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """k-NN@20 top-1 of ``net``'s backbone features (train split -> val split) on the shape class and
    on each extra (train labels, val labels) pair, each label with BINS classes."""
    cpu = torch.device("cpu")
    ftr, ytr = extract_features(net.backbone, train_loader, device=cpu)
    fva, yva = extract_features(net.backbone, val_loader, device=cpu)
    return {name: knn_classify(ftr, a, fva, b, ks=(20,), num_classes=BINS)["knn20_top1"]
            for name, (a, b) in {"shape": (ytr, yva), **labels}.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, help="a shapes variant of explore.yaml, trained by explore.py")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config_of(args.variant, load_variants()[args.variant]["diff"])
    ckpt = HERE / "explore" / "runs" / args.variant / "checkpoint.pth"
    if not ckpt.is_file():
        ap.error(f"{ckpt} not found: run explore.py --variant {args.variant} first")
    train_loader, val_loader = eval_loaders(cfg)
    labels_tr, labels_va = hue_labels(cfg, "train", cfg.data.num_train), hue_labels(cfg, "val", cfg.data.num_val)
    torch.manual_seed(cfg.train.seed)
    random_init, trained = build_network(cfg, False), build_network(cfg, False)
    trained.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["teacher"])
    hues = {"object hue": (labels_tr[0], labels_va[0]), "background hue": (labels_tr[1], labels_va[1])}
    for name, net in (("random init", random_init), ("trained", trained)):
        res = knn_on_labels(net, train_loader, val_loader, hues)
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
