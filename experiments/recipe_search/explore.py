"""Exploratory recipe trials (the first search for a CPU recipe): train one variant with k-NN@20 of the teacher every few epochs.

    python -m experiments.recipe_search.explore --variant L2 [--knn-every 4] [--threads 1]

A variant is a diff over explore_base.yaml (params.yaml of commit ccad37b), listed in explore.yaml beside
this file; the trajectory goes to experiments/recipe_search/explore/<variant>.jsonl (one line per
evaluated epoch: loss / ln K, teacher entropy / ln K, KL(teacher||student), k-NN@20 top-1;
epoch -1 is the random-initialised network). The table of all trials: explore_trials.csv
(`--summarize`). The trained run (checkpoint.pth) stays in explore/runs/<variant>/ (not tracked)
for probes such as colour_probe.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

HERE = Path(__file__).resolve().parent

from dino_core.config import Config
from dino_core.data.registry import NORMALIZATION
from dino_core.networks import build_network
from dino_core.train import train
from pipelines.cell import eval_loaders, knn_of, pretrain_dataset
from pipelines.params import apply_diff


def load_variants() -> dict[str, dict]:
    """explore.yaml's variants by name."""
    return {v["name"]: v for v in yaml.safe_load((HERE / "explore.yaml").read_text())["variants"]}


def config_of(name: str, diff: dict) -> Config:
    """The resolved config of a variant: its diff over explore_base.yaml (params.yaml of ccad37b:
    keys added since read as off, Config.from_stored)."""
    base, where = yaml.safe_load((HERE / "explore_base.yaml").read_text()), f"explore.yaml variant {name}"
    return Config.from_stored(apply_diff(base, diff, where), where)


def record_trajectory(name: str, cfg: Config, every: int, out_dir: Path,
                      knn_fields: Callable[[dict], dict], until: int | None = None) -> Path:
    """Train ``cfg`` into out_dir/runs/<name> with the teacher's k-NN measured at random init
    (``epoch: -1``, same seed) and every ``every`` epochs and the last: one JSON line each (loss /
    ln K, teacher entropy / ln K, KL, and ``knn_fields`` of knn_of's dict) to out_dir/<name>.jsonl,
    written to a .tmp file and renamed when the run ends. ``until``: stop after that many epochs
    (the schedules stay those of cfg.train.epochs: a screen of the early phase of the full run) and
    write out_dir/<name>.partial.jsonl instead. Returns the trajectory file."""
    last = cfg.train.epochs if until is None else min(until, cfg.train.epochs)
    train_loader, val_loader = eval_loaders(cfg)
    cpu = torch.device("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp, ln_k = out_dir / f"{name}.jsonl.tmp", math.log(cfg.head.out_dim)
    with open(tmp, "w") as fh:
        torch.manual_seed(cfg.train.seed)
        knn0 = knn_of(build_network(cfg, False).backbone, cfg, train_loader, val_loader, cpu)
        fh.write(json.dumps({"epoch": -1, **knn_fields(knn0)}) + "\n")
        t0 = time.time()

        def on_epoch_end(epoch: int, res: dict, state) -> bool | None:
            if (epoch + 1) % every and epoch + 1 != last:
                return None
            # on the teacher's own device: extract_features moves the model to the device it is given
            dev = next(state.teacher_net.backbone.parameters()).device
            knn = knn_of(state.teacher_net.backbone, cfg, train_loader, val_loader, dev)
            fh.write(json.dumps({"epoch": epoch, "t": round(time.time() - t0, 1), "loss_lnK": res["loss"] / ln_k,
                                 "H_lnK": res["teacher_entropy"] / ln_k, "kl": res["kl"], **knn_fields(knn)}) + "\n")
            fh.flush()
            early_stop = last < cfg.train.epochs and epoch + 1 == last
            return not early_stop   # False ends the training (dino_core.train: status "stopped")
        run_dir = out_dir / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        mean, std = NORMALIZATION[cfg.data.dataset]
        train(cfg, run_dir, pretrain_dataset(cfg), mean, std, on_epoch_end=on_epoch_end)
    final = out_dir / (f"{name}.jsonl" if last == cfg.train.epochs else f"{name}.partial.jsonl")
    return tmp.replace(final)   # a trajectory that reads as finished is one


def run(name: str, diff: dict, knn_every: int, out_dir: Path) -> None:
    """One explore.yaml variant; its lines carry k-NN@20 top-1 only (``knn20``)."""
    record_trajectory(name, config_of(name, diff), knn_every, out_dir, lambda k: {"knn20": k["knn20_top1"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", help="a name in explore.yaml")
    ap.add_argument("--knn-every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarize", action="store_true", help="write explore_trials.csv from the trajectories")
    args = ap.parse_args()
    variants = load_variants()
    if args.summarize:
        import pandas as pd
        rows = []
        for v in variants.values():
            path = HERE / "explore" / f"{v['name']}.jsonl"
            if not path.is_file():
                continue
            traj = pd.read_json(path, lines=True)
            last = traj.iloc[-1]
            rows.append({"variant": v["name"], "dataset": v.get("dataset", ""), "note": v.get("note", ""),
                         "epochs": int(last["epoch"]) + 1, "random_init_knn20": traj.iloc[0]["knn20"],
                         "final_knn20": last["knn20"], "best_knn20": traj["knn20"].max(),
                         "final_loss_over_lnK": last["loss_lnK"], "final_H_over_lnK": last["H_lnK"],
                         "final_kl": last["kl"], "wall_s": last["t"]})
        pd.DataFrame(rows).to_csv(HERE / "explore_trials.csv", index=False)
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.variant not in variants:
        ap.error(f"--variant {args.variant!r} is not in explore.yaml (known: {sorted(variants)})")
    v = variants[args.variant]
    run(v["name"], v.get("diff") or {}, args.knn_every, HERE / "explore")


if __name__ == "__main__":
    main()
