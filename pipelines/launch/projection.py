"""The command line of pipelines/launch/sharing.py: cells per hour and the grid's projected wall time.

    python -m pipelines.launch.sharing --params params.yaml [--set SECTION.KEY=VALUE ...] --out cells.json

The cell is params.yaml's core sections under its profile and the --set overrides (what
pipelines.pretrain would train; ``--set profile=default``: a learning-budget cell,
``--set train.compile=true``: compiled). N = 1, 2, 4, ... copies of it train at once on its device
(train.device: a GPU, or the CPU cores shared); the JSON holds the table, the chosen N and why, cells
per hour at that N (aggregate steps/s x 3600 / steps per cell) and the projected wall time of the
grid: every unique cell of params.yaml's `grid` under the same profile, at the measured rate. The
measurement is random crops through the training step: the data path (loading, augmentation) of a
real cell is not in it. The decision is also cached for the grid driver (``cells_per_gpu: auto``).
"""
from __future__ import annotations

import argparse
import logging
import platform
import typing as tp
from pathlib import Path

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config

from ..params import ROOT, grid_cells, load_all
from ..pretrain import add_params_arguments, params_of, parse_override
from .local import cores
from .sharing import STEPS, WARMUP, decide, table_text

log = logging.getLogger(__name__)


def steps_per_cell(cfg: Config) -> int:
    """Training steps of one cell: epochs x full batches of its pre-training set (one process)."""
    n = cfg.data.num_train
    if not n:   # 0: the whole split, whose size only the data knows
        from pipelines.cell import pretrain_dataset
        n = len(pretrain_dataset(cfg))
    return cfg.train.epochs * (n // cfg.optim.batch_size)


def grid_projection(params: dict, steps_per_s: float, root: Path = ROOT) -> dict:
    """The grid's unique cells (and those not finished in its store), their steps and the hours they
    take at ``steps_per_s`` aggregate."""
    from pipelines.grid import plan
    from pipelines.store import is_done
    store = root / params["grid"]["store"]
    _, unique = plan(grid_cells(params, root), store)
    steps = {h: steps_per_cell(Config.from_dict(p)) for h, p in unique.items()}
    pending = [h for h in unique if not is_done(store / "cells" / h)]

    def hours(cells: tp.Iterable[str]) -> float:
        return sum(steps[h] for h in cells) / steps_per_s / 3600
    return {"cells_unique": len(unique), "cells_pending": len(pending), "steps": sum(steps.values()),
            "projected_h": hours(unique), "projected_pending_h": hours(pending), "store": str(store)}


def _grid_params(args: argparse.Namespace) -> dict:
    """params.yaml with the profile of --set profile=... (the other overrides change no cell count)."""
    params = load_all(args.params)
    for parts, value in (parse_override(o) for o in args.overrides):
        if parts == ["profile"]:
            params["profile"] = value
    return params


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.launch.sharing", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_arguments(ap)
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    ap.add_argument("--max-n", type=int, default=None, help="largest N tried (default: the CPU cores)")
    ap.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps per process first")
    ap.add_argument("--steps", type=int, default=STEPS, help="timed steps per process")
    return ap


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> dict:
    ap = _parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = Config.from_dict(params_of(ap, args))
    params = _grid_params(args)
    import torch
    result = decide(cfg, args.max_n or cores(), args.warmup, args.steps, cache=False)
    best = next(r for r in result["table"] if r["n"] == result["choice"]["n"])
    per_cell = steps_per_cell(cfg)
    out = {"device": result.get("device"), "device_mem_mb": result.get("device_mem_mb"),
           "torch": torch.__version__, "python": platform.python_version(), "cores": cores(),
           "overrides": args.overrides, "warmup": args.warmup, "steps": args.steps,
           "cell": {"steps_per_cell": per_cell, "epochs": cfg.train.epochs, "batch_size": cfg.optim.batch_size,
                    "num_train": cfg.data.num_train, "compile": cfg.train.compile,
                    "precision": best.get("precision", cfg.train.precision)},
           "table": result["table"], "choice": result["choice"], "cells_per_hour": None, "grid": None}
    if "error" not in best:
        out["cells_per_hour"] = best["steps_per_s"] * 3600 / per_cell
        out["grid"] = grid_projection(params, best["steps_per_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    log.info("%s on %s:\n%s", args.out, out["device"], table_text(result))
    if out["grid"] is None:
        raise SystemExit(f"not even one cell trained on {out['device']}: {best['error']}")
    g = out["grid"]
    log.info("%.1f cells per hour at N=%d (%d steps per cell); the grid: %d unique cells, %.2f h "
             "(%d not finished: %.2f h)", out["cells_per_hour"], best["n"], per_cell, g["cells_unique"],
             g["projected_h"], g["cells_pending"], g["projected_pending_h"])
    return out
