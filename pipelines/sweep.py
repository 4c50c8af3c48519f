"""Recorded recipe search: run named variants (diffs over params.yaml) as grid cells and
append one row per finished variant to a trials table (the evidence behind the CPU recipe).

    python -m pipelines.sweep --sweep experiments/recipe_search/sweep.yaml --out experiments/recipe_search/trials.csv
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd
import yaml

from dino_core.checkpoint import atomic_write_text
from dino_core.config import Config, merge

from .baselines import random_init, raw_pixels
from .cell import run_cell
from .params import ROOT, apply_diff, load_all, resolve_profile
from .store import cell_dir

log = logging.getLogger(__name__)
KEEP = ("status", "wall_time_s", "knn20_top1", "knn20_top5", "teacher_entropy", "teacher_mean_entropy",
        "kl_teacher_student", "prototypes_used", "effective_rank", "feature_std", "collapsed", "jaccard_best_head")


def run_sweep(base: dict, variants: list[dict], store: Path, out: Path) -> pd.DataFrame:
    rows = pd.read_csv(out).to_dict("records") if out.is_file() else []
    done = {r["variant"] for r in rows}
    for v in variants:
        if v["name"] in done:
            continue
        params = apply_diff(base, v.get("diff") or {}, f"variant {v['name']}")
        cfg = Config.from_dict(params)
        summary = run_cell(str(cell_dir(store, cfg)), params)
        log_path = cell_dir(store, cfg) / "log.jsonl"
        last = pd.read_json(log_path, lines=True).iloc[-1] if log_path.is_file() else {}
        rnd = random_init(cfg, linear=False)["knn20_top1"]
        row = {"variant": v["name"], "diff": yaml.safe_dump(v.get("diff") or {}, default_flow_style=True).strip(),
               "dataset": cfg.data.dataset, "epochs": cfg.train.epochs,
               "final_loss_over_lnK": float(last.get("loss", math.nan)) / math.log(cfg.head.out_dim),
               "random_init_knn20": rnd, **{k: summary.get(k) for k in KEEP}}
        rows.append(row)
        log.info("variant %s: %s", v["name"], row)
        atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--raw-pixels", action="store_true", help="also log the raw-pixel k-NN of the base data")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_all(args.params)
    spec = yaml.safe_load(Path(args.sweep).read_text())
    base = merge(resolve_profile(params), spec.get("base") or {}, "sweep base")
    if args.raw_pixels:
        log.info("raw-pixel k-NN: %s", raw_pixels(Config.from_dict(base), linear=False))
    run_sweep(base, spec["variants"], ROOT / params["grid"]["store"], Path(args.out))


if __name__ == "__main__":
    main()
