"""What can this backbone learn in a cell's budget when it is given the labels? An upper bound for
the k-NN of a DINO cell with the same architecture, augmentation, optimiser and number of steps.

    python -m experiments.recipe_search.supervised_bound --name shapes_v3 --set profile=shapes_2crop

With ``--name`` the result goes to ``supervised/<name>.json`` beside this file (written to a .tmp
file, then renamed), else to stdout. Each committed JSON holds its ``--set`` list, resolved with the
profiles of its day: ``profile=shapes`` there is today's ``shapes_2crop`` (2 crops, batch 32).

The config is params.yaml with its profile and the --set overrides, as for ``pipelines.pretrain``. The
student backbone of that config plus a linear classifier on its CLS token are trained with
cross-entropy on the first global crop of the cell's own multi-crop augmentation, with the cell's
AdamW, lr / weight-decay schedules, gradient clipping, batch size and epochs. Reported: k-NN@20 of
the trained backbone (the grid's k-NN protocol: eval.knn_k, eval.knn_temp, train -> val split), of
the same backbone at random init and of the raw pixels, and the classifier's top-1 on the val
split. If the supervised k-NN stays near the random-init level, the architecture cannot learn the
class within the budget and no self-supervised recipe will; if it is high, the self-supervised
signal is what is missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

HERE = Path(__file__).resolve().parent

from dino_core.checkpoint import atomic_write_text
from dino_core.config import Config
from dino_core.data.registry import NORMALIZATION
from dino_core.multicrop import MultiCropAugmentation, MultiCropDataset
from dino_core.optim import Schedules, build_optimizer, clip_gradients
from dino_core.networks import build_network
from pipelines.baselines import raw_pixels
from pipelines.cell import eval_loaders, knn_of, pretrain_dataset
from pipelines.pretrain import add_params_arguments, params_of

log = logging.getLogger("supervised_bound")


def train_supervised(cfg: Config) -> dict:
    """{"raw_pixels" | "random_init" | "supervised": k-NN dicts (eval.knn_k), "val_top1": classifier
    top-1 (%) on the val split, "steps", "wall_s"}."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_network(cfg, True).backbone
    dataset = pretrain_dataset(cfg)
    classifier = nn.Linear(backbone.embed_dim, len(dataset.classes))
    model = nn.Sequential(backbone, classifier)
    train_loader, val_loader = eval_loaders(cfg)
    before = knn_of(backbone, cfg, train_loader, val_loader, "cpu")
    data = MultiCropDataset(dataset, MultiCropAugmentation(cfg.crops, *NORMALIZATION[cfg.data.dataset]), cfg.train.seed)
    loader = DataLoader(data, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    opt = build_optimizer(cfg.optim, model, torch.device("cpu"))
    sched = Schedules.build(cfg, len(loader), 1)
    start, it = time.perf_counter(), 0
    for epoch in range(cfg.train.epochs):
        data.set_epoch(epoch)
        model.train()
        for crops, labels in loader:
            sched.apply(opt, it)
            loss = nn.functional.cross_entropy(model(crops[0]), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, cfg.optim.clip_grad)
            opt.step()
            it += 1
        log.info("epoch %d/%d loss %.3f (%.0f s)", epoch + 1, cfg.train.epochs, loss.item(),
                 time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_loader)
    after = knn_of(backbone, cfg, train_loader, val_loader, "cpu")
    return {"raw_pixels": raw_pixels(cfg, linear=False), "random_init": before, "supervised": after,
            "val_top1": 100.0 * correct / len(val_loader.dataset), "steps": it,
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_arguments(ap)
    ap.add_argument("--name", help="write supervised/<name>.json beside this file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = Config.from_dict(params_of(ap, args))
    text = json.dumps({"set": args.overrides, **train_supervised(cfg)}, indent=1) + "\n"
    if args.name is None:
        print(text, end="")
        return
    out = atomic_write_text(HERE / "supervised" / f"{args.name}.json", text)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
