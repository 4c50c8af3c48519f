"""Stage `evaluate`: gather the evaluation of every grid cell, plus the reference points.

Each cell already evaluated itself in its job (k-NN, collapse metrics, Jaccard: eval.json);
this stage collects them into results/cells.csv and results/curves.csv, computes the k-NN of
random-init features and raw pixels for the default configuration, draws the default model's
attention maps, and exports its teacher (models/default.pth, DVC-cached).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import torch

import dino_core
from dino_core.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from dino_core.config import Config, merge
from dino_core.data.registry import NORMALIZATION
from dino_core.evaluate.attention import attention_jaccard, save_attention_overlays
from dino_core.evaluate.protocol import eval_sets
from dino_core.networks import build_network

from .baselines import random_init, raw_pixels
from .cell import ATTENTION_MAPS
from .grid import plan
from .params import ROOT, grid_cells, load_all, load_study, resolve_profile
from .store import cell_dir, cell_summary, is_done, needs_eval, read_history, read_teacher

log = logging.getLogger(__name__)
N_OVERLAYS = 4


def collect(table: pd.DataFrame, store: Path, params: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells: one row per study,row,seed with the cell's summary and evaluation; curves: one row
    per epoch). params: cell hash -> its resolved config (grid.plan), to check that each
    evaluation is current."""
    cells, curves = [], []
    for r in table.itertuples(index=False):
        path = store / "cells" / r.cell
        base = {"study": r.study, "row": r.row, "seed": r.seed, "cell": r.cell}
        if not is_done(path):
            cells.append({**base, "status": "missing"})
            continue
        if needs_eval(path, Config.from_dict(params[r.cell])):
            raise SystemExit(f"cell {path}: its eval.json is missing or stale (eval section or EVAL_VERSION "
                             "changed): run the grid stage, which re-evaluates finished cells")
        log_df = pd.read_json(path / "log.jsonl", lines=True) if (path / "log.jsonl").stat().st_size else None
        extra = {}
        if log_df is not None and len(log_df):
            extra = {"epoch_time_s": log_df.epoch_time_s.mean(), "peak_mem_mb": log_df.peak_mem_mb.max(),
                     "final_loss": log_df.loss.iloc[-1]}
            curves += [{**base, **row} for row in log_df.to_dict("records")]
        cells.append({**base, **cell_summary(path), **extra, "cell": r.cell})
    return pd.DataFrame(cells), pd.DataFrame(curves)


def default_config(params: dict, seed: int = 0) -> Config:
    return Config.from_dict(merge(resolve_profile(params), {"train": {"seed": seed}}))


def attention_of_default(cfg: Config, cell: Path, out: Path) -> dict:
    """Overlays of a few report-split images and the Jaccard (%) of the 60%-mass masks (datasets with
    masks), beside the same architecture's at random init."""
    backbone = read_teacher(cell, build_network(cfg, False).backbone)
    sets = eval_sets(cfg.data, cfg.eval.batch_size, with_masks=True)
    report = sets.report.dataset
    images = torch.stack([report[i][0] for i in range(N_OVERLAYS)])
    save_attention_overlays(backbone, images, out, cfg.eval.attn_threshold, *NORMALIZATION[cfg.data.dataset])
    if not sets.has_masks:
        return {}
    loader = sets.report
    out = attention_jaccard(backbone, loader, cfg.eval.attn_threshold)
    torch.manual_seed(cfg.train.seed)      # the reference: the same ViT at its initialisation
    rand = attention_jaccard(build_network(cfg, False).backbone, loader, cfg.eval.attn_threshold)
    return {**out, "random_init_jaccard_best_head": rand["jaccard_best_head"],
            "random_init_jaccard_mean_head": rand["jaccard_mean_head"]}


def copy_attention_maps(table: pd.DataFrame, store: Path, out: Path) -> None:
    """The per-head maps (cell.ATTENTION_MAPS) of the seed-0 cell of each row of the studies that
    draw them (`attention_maps: true` in the study file) -> out/<study>__<row>.json."""
    for r in table[table.seed == 0].itertuples(index=False):
        if not load_study(r.study).get("attention_maps"):
            continue
        src = store / "cells" / r.cell / ATTENTION_MAPS
        if not src.is_file():
            log.warning("%s/%s: cell %s has no %s (evaluated before it existed, or no masks)",
                        r.study, r.row, r.cell, ATTENTION_MAPS)
            continue
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{r.study}__{r.row}.json", src.read_text())


def environment(params: dict, cells: pd.DataFrame, history: list[dict]) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    return {"git_sha": sha, "torch": torch.__version__, "python": platform.python_version(),
            "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "profile": params.get("profile", "default"), "seeds": params["grid"]["seeds"],
            "cells_wall_time_s": float(cells.drop_duplicates("cell").wall_time_s.sum()),
            "grid_runs": history, "grid_wall_time_s": float(sum(h.get("wall_time_s", 0.0) for h in history)),
            "dino_core": str(Path(dino_core.__file__).parent.relative_to(ROOT))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--models", default=str(ROOT / "models"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params, results = load_all(args.params), Path(args.results)
    store = ROOT / params["grid"]["store"]
    table, unique = plan(grid_cells(params), store)
    cells, curves = collect(table, store, unique)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "cells.csv", cells.to_csv(index=False))
    atomic_write_text(results / "curves.csv", curves.to_csv(index=False))
    cfg = default_config(params)
    default_cell = cell_dir(store, cfg)
    if not is_done(default_cell):
        raise SystemExit(f"the default cell {default_cell} has not finished: run the grid stage first")
    atomic_write_json(results / "baselines.json", {"random_init": random_init(cfg), "raw_pixels": raw_pixels(cfg)})
    shutil.rmtree(results / "attention", ignore_errors=True)
    att = attention_of_default(cfg, default_cell, results / "attention")
    atomic_write_json(results / "attention" / "attention.json", att)
    copy_attention_maps(table, store, results / "attention" / "maps")
    atomic_write_json(results / "env.json", environment(params, cells, read_history(store)))
    # `dvc metrics show`: the default configuration, mean over its seeds
    hashes = {cell_dir(store, cfg.replace("train", seed=int(s))).name for s in set(cells.seed)}
    default_rows = cells[cells.cell.isin(hashes)].drop_duplicates("cell")
    summary = default_rows.mean(numeric_only=True).drop(["seed"], errors="ignore").round(4)
    atomic_write_json(results / "metrics.json", {"default": json.loads(summary.to_json()),
                                                 "n_seeds": int(len(default_rows))})
    export_teacher(cfg, default_cell, Path(args.models) / "default.pth")


def export_teacher(cfg: Config, cell: Path, out: Path) -> None:
    """The default model for users: the teacher backbone as a bare state dict with the official key
    names (the layout of the released dino_deitsmall16_pretrain.pth), fp32 from the cell's fp16 weights."""
    backbone = read_teacher(cell, build_network(cfg, False).backbone)
    atomic_write(out, lambda tmp: torch.save(backbone.state_dict(), tmp))


if __name__ == "__main__":
    main()
