"""A budget.yaml trial with its trajectory: k-NN of the teacher at random init and every few epochs.

    python ablations/recipe_search/trajectory.py --trial G6t2 [--every 5] [--threads 1]

The trial's ``set`` list (budget.yaml, beside this file) is applied to params.yaml exactly as
``python -m pipelines.pretrain --set ...`` does (profile first, then the overrides); the run is the
same training, with the teacher's weighted k-NN (eval.knn_k, eval.knn_temp) measured before the
first step (``epoch: -1``, the random-init network of the same seed) and after every ``--every``
epochs and the last. One JSON line per measurement, with loss / ln K, teacher entropy / ln K and
KL(teacher || student) of that epoch, goes to ``budget/<trial>.jsonl`` (written to a .tmp file,
renamed when the run ends); the run folder stays in ``budget/runs/<trial>/`` (not tracked).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from dino_core.config import Config  # noqa: E402
from dino_core.data.registry import NORMALIZATION  # noqa: E402
from dino_core.train import build_network, train  # noqa: E402
from pipelines.cell import eval_loaders, knn_of, pretrain_dataset  # noqa: E402
from pipelines.pretrain import build_params  # noqa: E402


def trial_sets(name: str) -> list[str]:
    """The ``set`` overrides of trial ``name`` in budget.yaml."""
    trials = {t["name"]: t for t in yaml.safe_load((HERE / "budget.yaml").read_text())["trials"]}
    if name not in trials:
        raise KeyError(f"budget.yaml has no trial {name!r} (known: {sorted(trials)})")
    return list(trials[name]["set"])


def run(name: str, every: int, out_dir: Path) -> Path:
    """Train trial ``name`` from params.yaml + its overrides; returns the trajectory file."""
    cfg = Config.from_dict(build_params(HERE.parents[1] / "params.yaml", trial_sets(name)))
    train_loader, val_loader = eval_loaders(cfg)
    cpu = torch.device("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp, ln_k = out_dir / f"{name}.jsonl.tmp", math.log(cfg.head.out_dim)
    with open(tmp, "w") as fh:
        torch.manual_seed(cfg.train.seed)
        knn0 = knn_of(build_network(cfg, False).backbone, cfg, train_loader, val_loader, cpu)
        fh.write(json.dumps({"epoch": -1, "knn": knn0}) + "\n")
        t0 = time.time()

        def on_epoch_end(epoch: int, res: dict, state) -> None:
            if (epoch + 1) % every and epoch + 1 != cfg.train.epochs:
                return
            knn = knn_of(state.teacher_net.backbone, cfg, train_loader, val_loader, cpu)
            fh.write(json.dumps({"epoch": epoch, "t": round(time.time() - t0), "loss_lnK": res["loss"] / ln_k,
                                 "H_lnK": res["teacher_entropy"] / ln_k, "kl": res["kl"], "knn": knn}) + "\n")
            fh.flush()
        run_dir = out_dir / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        mean, std = NORMALIZATION[cfg.data.dataset]
        train(cfg, run_dir, pretrain_dataset(cfg), mean, std, on_epoch_end=on_epoch_end)
    return tmp.replace(out_dir / f"{name}.jsonl")   # a trajectory that reads as finished is one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial", required=True, help="a name in budget.yaml")
    ap.add_argument("--every", type=int, default=5, help="measure k-NN every this many epochs (and the last)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        trial_sets(args.trial)
    except KeyError as e:
        ap.error(e.args[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    logging.getLogger(__name__).info("wrote %s", run(args.trial, args.every, HERE / "budget"))


if __name__ == "__main__":
    main()
