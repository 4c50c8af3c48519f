"""Is the k-NN plateau in the representation or in the choice of feature? k-NN@20 of a trained run
from every feature the backbone offers: the CLS token after each block (each after the final norm),
the average of the last block's patch tokens and all CLS tokens concatenated, for the teacher, the
student and the same architecture at random init (seed of the run).

    OMP_NUM_THREADS=1 python -m pipelines.pretrain --out runs/single/D30 --set train.epochs=30
    python -m experiments.recipe_search.feature_probe runs/single/D30

The run's training config is read from its config.yaml; the evaluation settings (val size, k-NN
temperature) from params.yaml. Measured on D30 (budget.yaml; 2,000 / 1,000 Fashion-MNIST images):
teacher CLS after blocks 1-4: 63.8 / 65.4 / 70.0 / 71.3, patch average 67.7, CLS concat 70.3;
student: 63.1 / 68.1 / 69.4 / 70.4, patch average 67.8; random init: 58.3 / 58.7 / 58.2 / 58.4,
patch average 61.4. The official feature (teacher, last CLS) is already the best one.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

from dino_core.config import Config
from dino_core.evaluate.features import extract_features
from dino_core.evaluate.knn import knn_classify
from dino_core.networks import build_network
from pipelines.cell import eval_loaders, load_trained
from pipelines.params import load_all, resolve_profile

log = logging.getLogger("feature_probe")


def probe(cell: Path, params_path: Path = ROOT / "params.yaml") -> dict[str, float]:
    """{"<net>_cls_block<b>" | "<net>_avgpatch_last" | "<net>_cls_concat_all": k-NN@20 top-1 (%)}."""
    run = yaml.safe_load((cell / "config.yaml").read_text())
    current = resolve_profile(load_all(params_path))
    run["eval"], run["data"]["num_val"] = current["eval"], current["data"]["num_val"]
    cfg = Config.from_stored(run, str(cell / "config.yaml"))
    train_loader, val_loader = eval_loaders(cfg)
    student, teacher, _ = load_trained(cfg, cell)
    torch.manual_seed(cfg.train.seed)
    nets = {"teacher": teacher.backbone, "student": student.backbone, "random": build_network(cfg, False).backbone}
    out = {}
    for name, net in nets.items():
        depth, dim = len(net.blocks), net.embed_dim
        ftr, ltr = extract_features(net, train_loader, n_last_blocks=depth, avgpool=True)
        fva, lva = extract_features(net, val_loader, n_last_blocks=depth, avgpool=True)

        def knn(cols: slice) -> float:
            return knn_classify(ftr[:, cols], ltr, fva[:, cols], lva, ks=[20], T=cfg.eval.knn_temp)["knn20_top1"]
        for b in range(depth):
            out[f"{name}_cls_block{b + 1}"] = knn(slice(b * dim, (b + 1) * dim))
        out[f"{name}_avgpatch_last"] = knn(slice(depth * dim, None))
        out[f"{name}_cls_concat_all"] = knn(slice(0, depth * dim))
        log.info("%s: %s", name, {k: v for k, v in out.items() if k.startswith(name)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", type=Path, help="a run directory with config.yaml and checkpoint.pth")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(json.dumps(probe(a.cell, a.params), indent=1))


if __name__ == "__main__":
    main()
