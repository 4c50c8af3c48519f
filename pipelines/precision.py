"""Do cells trained in different precisions agree? The default row in each precision, seeds of
ablations/protocol.yaml `precision_agreement`, and the TOST of their report-split k-NN@20.

    python -m pipelines.precision --params params.yaml --out results/precision.json [--train fp32,bf16]

`train.precision: auto` resolves per machine (dino_core/device.py), so a grid spread over machines
can hold cells of both precisions. Each arm (fp32, bf16) is the default row (fig6_teacher momentum,
the profile's recipe) at each seed: the grid's own `auto` cell when its DONE says it ran in that
precision (the same computation as setting it), else a cell with the precision set, trained here
through the launcher. Output per arm: k-NN@20 (report split) per seed, seconds per epoch (the last
epoch's wall time, as the cell ran, beside whatever else ran then), wall time; then
delta = mean(bf16) - mean(fp32), its 95 % Welch CI and the TOST p at +-margin points.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config, merge

from .ddp_entry import train_cell_ddp
from .launch import CellFailed, load_launch_config, run_cells
from .params import ROOT, grid_cells, load_all
from .protocol import load_protocol
from .report.stats import ci, p_tost, welch
from .store import cell_dir, cell_summary, is_done, read_done

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")
DEFAULT_ROW = ("fig6_teacher", "momentum")


def arm_cells(params: dict, seeds: list[int], store: Path, root: Path = ROOT) -> dict[str, list[tuple[int, Path, dict]]]:
    """{precision: [(seed, cell folder, params)]}: the grid's auto cell where it ran in that precision."""
    p = merge(params, {"grid": {"studies": [DEFAULT_ROW[0]], "seeds": list(seeds)}})
    default = [c for c in grid_cells(p, root) if (c.study, c.row) == DEFAULT_ROW]
    arms: dict[str, list[tuple[int, Path, dict]]] = {}
    for precision in PRECISIONS:
        arms[precision] = []
        for c in default:
            auto = cell_dir(store, Config.from_dict(c.params))
            if c.params["train"]["precision"] == "auto" and is_done(auto) and read_done(auto).get("precision") == precision:
                arms[precision].append((c.seed, auto, c.params))
                continue
            explicit = merge(c.params, {"train": {"precision": precision}})
            arms[precision].append((c.seed, cell_dir(store, Config.from_dict(explicit)), explicit))
    return arms


def agreement(knn: dict[str, list[float]], margin: float) -> dict:
    """delta = mean(bf16) - mean(fp32) with its 95 % Welch CI and the TOST p at +-margin."""
    a, b = knn["bf16"], knn["fp32"]
    w = welch(a, b)
    return {"delta": None if w is None else w.delta, "ci95": list(ci(a, b)) if w else None,
            "p_tost": p_tost(a, b, margin), "margin": margin}


def measure(params: dict, root: Path = ROOT, train: tuple[str, ...] = PRECISIONS) -> dict:
    """Train the unfinished cells of the arms in ``train``, then record every arm's finished cells."""
    rule = load_protocol(root)["precision_agreement"]
    store = root / params["grid"]["store"]
    arms = arm_cells(params, rule["seeds"], store, root)
    todo = [(str(d), p) for arm in train for _, d, p in arms[arm] if not is_done(d)]
    if todo:
        launch = load_launch_config(root / "launch.yaml")
        failed = [d for (d, _), o in zip(todo, run_cells(train_cell_ddp, todo, launch, root / launch.folder,
                                                          name="dino-precision")) if isinstance(o, CellFailed)]
        if failed:
            raise SystemExit(f"precision: cells failed: {failed}")
    out: dict = {"rule": rule, "arms": {}}
    for precision, cells in arms.items():
        done = [(s, d) for s, d, _ in cells if is_done(d)]
        summaries = [(s, d, cell_summary(d)) for s, d in done]
        out["arms"][precision] = {
            "cells": {str(s): d.name for s, d, _ in summaries},
            "ran_in": sorted({m.get("precision") for *_, m in summaries}),
            "knn20_top1": [m["knn20_top1"] for *_, m in summaries],
            "epoch_time_s": [m.get("final_epoch_time_s") for *_, m in summaries],
            "wall_time_s": [m.get("wall_time_s") for *_, m in summaries],
            "missing_seeds": [s for s, d, _ in cells if not is_done(d)]}
    if all(len(a["knn20_top1"]) == len(rule["seeds"]) for a in out["arms"].values()):
        out.update(agreement({p: a["knn20_top1"] for p, a in out["arms"].items()}, rule["margin"]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "precision.json"))
    ap.add_argument("--train", default=",".join(PRECISIONS),
                    help="arms whose missing cells are trained, comma-separated (fp32,bf16; '' records only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    arms = tuple(a for a in args.train.split(",") if a)
    if set(arms) - set(PRECISIONS):
        ap.error(f"--train: {args.train!r}; allowed: a comma-separated subset of {','.join(PRECISIONS)}")
    result = measure(load_all(args.params), train=arms)
    log.info("precision agreement: delta %s, TOST p %s (%s)", result.get("delta"), result.get("p_tost"),
             atomic_write_json(args.out, result))


if __name__ == "__main__":
    main()
