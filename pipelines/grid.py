"""Stage `grid`: run every cell of every study in params.yaml `grid` (train + evaluate).

Cells are identified by the hash of their resolved training config; identical cells of several
studies run once; finished cells (DONE) are reused, and re-evaluated when their evaluation is
stale (the `eval` section or store.EVAL_VERSION changed); unfinished ones resume from their
checkpoint. The cells go out through the submitit launcher (launch.yaml: local processes, SLURM
job array or in-process); the launcher is not part of any cell's identity. Output: results/grid.csv.

Before any cell starts, every cell's config, launch.yaml and the data of every distinct data
section are checked (check_grid); a failure is one line on stderr, exit code 2, nothing written.
A cell trains under its lock (pipelines/lock.py): a cell another driver (or the cells of a stopped
one) is training is waited for and its result reused, never trained twice. SIGTERM and SIGHUP
stop this driver like Ctrl-C: its cells are cancelled before it exits.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dino_core.checkpoint import atomic_write_text
from dino_core.config import Config
from dino_core.monitor import count_flagged

from .ddp_entry import train_cell_ddp
from .launch import CellFailed, LaunchConfig, load_launch_config, run_cells
from .launch.sharing import resolve_cells_per_gpu
from .lock import holder
from .params import ROOT, Cell, grid_cells, load_all, resolve_profile
from .store import append_history, cell_dir, is_done, needs_eval, read_done

log = logging.getLogger(__name__)


def plan(cells: list[Cell], store: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(table study,row,seed,cell; unique cell hash -> params)."""
    rows, unique = [], {}
    for c in cells:
        path = cell_dir(store, Config.from_dict(c.params))
        unique.setdefault(path.name, c.params)
        rows.append({"study": c.study, "row": c.row, "seed": c.seed, "cell": path.name})
    return pd.DataFrame(rows), unique


def ranks_per_cell(launch: LaunchConfig) -> int:
    """Processes that share one cell's batch (DDP): tasks per node (x nodes on SLURM)."""
    if launch.executor == "slurm":
        return launch.slurm.nodes * launch.slurm.tasks_per_node
    return launch.local.tasks_per_node if launch.executor == "local" else 1


def check_grid(params: dict, launch_overrides: dict | None = None, root: Path = ROOT) -> list[Cell]:
    """Every check that needs no training: the cells' configs (grid_cells), launch.yaml, and the
    data of each distinct data section of the cells to run or re-evaluate, with its largest batch
    (a grid whose cells are all finished reads no data). ValueError (one line) otherwise."""
    from dino_core.data.check import check_data   # imports torch: after the cheap checks

    cells = grid_cells(params, root)
    launch = load_launch_config(root / "launch.yaml", launch_overrides)
    store = root / params["grid"]["store"]
    largest: dict[str, Config] = {}
    for h, p in plan(cells, store)[1].items():
        cfg = Config.from_dict(p)
        if is_done(store / "cells" / h) and not needs_eval(store / "cells" / h, cfg):
            continue
        key = json.dumps(p["data"], sort_keys=True)
        if key not in largest or cfg.optim.batch_size > largest[key].optim.batch_size:
            largest[key] = cfg
    for cfg in largest.values():
        check_data(cfg, ranks_per_cell(launch))
    return cells


def run_grid(params: dict, launch_overrides: dict | None = None, root: Path = ROOT) -> pd.DataFrame:
    """Run the pending cells; returns one row per (study, row, seed) with the cell's status.
    Each call that gets past validation is appended to the store's history (wall time, cells run,
    cells per GPU)."""
    cells = grid_cells(params, root)                       # validates everything first
    t0, started = time.monotonic(), _now()
    store = root / params["grid"]["store"]
    table, unique = plan(cells, store)
    pending = [h for h in unique if not is_done(store / "cells" / h)]
    stale = [h for h in unique if needs_eval(store / "cells" / h, Config.from_dict(unique[h]))]
    log.info("grid: %d cells (%d unique), %d finished, %d to run, %d to re-evaluate (stale evaluation)",
             len(table), len(unique), len(unique) - len(pending), len(pending), len(stale))
    pending += stale
    for h in pending:
        busy = holder(store / "cells" / h)
        if busy:
            log.info("cell %s is being trained by %s (another driver, or a cell of a stopped one): "
                     "its job waits for it and reuses the result", h, busy)
    outcomes, executor, per_gpu = {}, "none", None
    if pending:
        launch = load_launch_config(root / "launch.yaml", launch_overrides)
        # cells_per_gpu auto: measured on the profile's cell (the grid's common config), cached per machine
        launch = resolve_cells_per_gpu(launch, Config.from_dict(resolve_profile(params, root)))
        executor = launch.executor
        if executor == "local" and launch.local.gpus_per_node:
            per_gpu = launch.local.cells_per_gpu
            log.info("grid: %d cell(s) per GPU on %d GPU(s)", per_gpu, launch.local.gpus_per_node)
        runs = [(store / "cells" / h, unique[h]["head"]["out_dim"]) for h in pending]
        results = run_cells(train_cell_ddp, [(str(store / "cells" / h), unique[h]) for h in pending], launch,
                            root / launch.folder, name="dino-grid",
                            note=lambda: f"collapse-flagged {count_flagged(runs)}")   # dino_core.monitor
        outcomes = dict(zip(pending, results))
    statuses = []
    for h in table["cell"]:
        out = outcomes.get(h)
        if isinstance(out, CellFailed):
            statuses.append(f"failed: {out.stderr}")
        else:
            statuses.append(read_done(store / "cells" / h)["status"] if is_done(store / "cells" / h) else "missing")
    table["status"] = statuses
    append_history(store, {"started": started, "finished": _now(), "wall_time_s": round(time.monotonic() - t0, 1),
                           "cells_unique": len(unique), "cells_run": len(pending) - len(stale),
                           "cells_reevaluated": len(stale),
                           "cells_reused": len(unique) - len(pending), "executor": executor, "cells_per_gpu": per_gpu,
                           "failed": sum(isinstance(o, CellFailed) for o in outcomes.values())})
    return table


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "grid.csv"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_all(args.params)
        check_grid(params)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    table = run_grid(params)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False))
    failed = table[table.status.str.startswith("failed") | (table.status == "missing")]
    diverged = table[table.status == "diverged"]
    log.info("grid done: %d ok, %d diverged, %d failed", (table.status == "ok").sum(), len(diverged), len(failed))
    for _, r in failed.iterrows():
        log.error("cell %s (%s/%s seed %d) %s", r.cell, r.study, r.row, r.seed, r.status)
    if len(failed):
        raise SystemExit(f"{len(failed)} cell(s) failed; see the stderr paths above")


if __name__ == "__main__":
    main()
