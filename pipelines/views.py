"""Stage `views`: the grid as DVC's own commands show it (docs/dvc-views.md).

    python -m pipelines.views --results results        (or: dvc repro views)

From the evaluate stage's results/cells.csv (one line per cell) and results/curves.csv (one line per
cell and epoch) it writes, atomically:

results/dvc/metrics.json
    {study: {row: {knn20_top1, linear_top1, collapsed, collapse_epochs}}}: means over the row's
    seeds of the weighted k-NN top-1 (k = 20, %), the best linear top-1 (%), the fraction of seeds
    judged collapsed after training (dino_core/evaluate/collapse.py), and the epochs the live
    collapse signal counted (dino_core/monitor.py, replayed on the logged epochs). Read by
    `dvc metrics show` (one column per study.row.metric) and `dvc exp show --only-changed`.
results/dvc/curves/<study>.csv
    epoch, row, teacher_entropy, loss: the per-image teacher entropy h(Pt) and the loss as fractions
    of ln K (1 = uniform collapse), means over seeds: one line per study row in `dvc plots show`
    (template .dvc/plots/rows.json colours by row).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import pandas as pd

from dino_core.checkpoint import atomic_write_json, atomic_write_text
from dino_core.monitor import CollapseMonitor

log = logging.getLogger(__name__)
CURVE_COLUMNS = ("teacher_entropy", "loss")


def collapse_epochs(curves: pd.DataFrame, cells: pd.DataFrame) -> pd.Series:
    """Epochs the live collapse signal counts per cell (index: cell hash), from its logged epochs."""
    out = {}
    ln_k = cells.drop_duplicates("cell").set_index("cell")["ln_k"]
    for cell, rows in curves.groupby("cell"):
        monitor = CollapseMonitor(round(math.exp(float(ln_k[cell]))))
        monitor.replay(rows.sort_values("epoch").to_dict("records"))
        out[cell] = sum(monitor.metrics()[k] for k in ("collapse_uniform_epochs", "collapse_one_hot_epochs"))
    return pd.Series(out, dtype=float)


def row_metrics(cells: pd.DataFrame, epochs_in_collapse: pd.Series) -> dict:
    """{study: {row: {metric: mean over seeds}}} in the study files' row order; NaN metrics left out."""
    cells = cells.assign(collapse_epochs=cells["cell"].map(epochs_in_collapse),
                         collapsed=cells["collapsed"].astype(str).str.lower().eq("true").astype(float))
    columns = {"knn20_top1": "knn20_top1", "linear_top1": "linear_top1", "collapsed": "collapsed",
               "collapse_epochs": "collapse_epochs"}
    out: dict = {}
    for (study, row), group in cells.groupby(["study", "row"], sort=False):
        values = {name: round(float(group[col].mean()), 2) for name, col in columns.items()
                  if col in group and group[col].notna().any()}
        out.setdefault(study, {})[row] = values
    return out


def row_curves(curves: pd.DataFrame, cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{study: DataFrame(epoch, row, teacher_entropy, loss)}: fractions of ln K, means over seeds."""
    ln_k = cells.drop_duplicates("cell").set_index("cell")["ln_k"]
    scaled = curves.assign(**{c: curves[c] / curves["cell"].map(ln_k) for c in CURVE_COLUMNS})
    out = {}
    for study, group in scaled.groupby("study", sort=False):
        mean = group.groupby(["row", "epoch"], sort=False)[list(CURVE_COLUMNS)].mean().reset_index()
        out[study] = mean[["epoch", "row", *CURVE_COLUMNS]].round(4)
    return out


def write_views(results: Path, out: Path) -> dict:
    cells, curves = pd.read_csv(results / "cells.csv"), pd.read_csv(results / "curves.csv")
    metrics = row_metrics(cells, collapse_epochs(curves, cells))
    (out / "curves").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    studies = row_curves(curves, cells)
    for study, table in studies.items():
        atomic_write_text(out / "curves" / f"{study}.csv", table.to_csv(index=False))
    for stale in (out / "curves").glob("*.csv"):   # a study no longer in the grid
        if stale.stem not in studies:
            stale.unlink()
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.views", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="folder with cells.csv and curves.csv")
    ap.add_argument("--out", default=None, help="output folder (default: <results>/dvc)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = Path(args.results)
    metrics = write_views(results, Path(args.out) if args.out else results / "dvc")
    log.info("views: %d studies, %d rows; %s", len(metrics), sum(len(r) for r in metrics.values()),
             json.dumps({s: sorted(r) for s, r in metrics.items()})[:300])


if __name__ == "__main__":
    main()
