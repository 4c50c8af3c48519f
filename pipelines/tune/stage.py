"""The stage: validate, run the workers, write the outputs; main()."""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


from ..launch import CellFailed, cores, load_launch_config, local_parallelism, run_cells
from ..params import ROOT, load_all
from .outputs import best_trial, write_outputs
from .plan import make_plan
from .progress import TrialProgress
from .settings import tune_settings
from .study import check_fingerprint, claimed_running, counted, fail_stale, open_study
from .worker import run_worker

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    study_name: str
    trials: pd.DataFrame
    best: dict | None               # {"number", "value", "params"} of the best usable trial
    workers: list                   # run_cells outcomes (dicts or CellFailed)
    plots: dict


def run_tune(params: dict, root: Path = ROOT, launch_overrides: dict | None = None) -> TuneResult:
    """Validate, run the workers until the study has tune.n_trials trials, write the outputs."""
    s0 = tune_settings(params, root)
    launch = load_launch_config(root / "launch.yaml", {
        **(launch_overrides or {}), "local.tasks_per_node": 1, "slurm.tasks_per_node": 1, "slurm.nodes": 1})
    plan = make_plan(params, root, worker_threads(launch, s0.n_workers))   # raises before any trial on bad input
    s = plan.settings
    if s.storage.startswith("sqlite") and s.n_workers > 1:
        log.warning("tune: SQLite is not meant for parallel workers; use the journal file or PostgreSQL")
    study, storage = open_study(s, create=True)
    check_fingerprint(study, plan)
    fail_stale(study, storage, s)
    have = counted(study.get_trials(deepcopy=False))
    resume = claimed_running(study, s)
    log.info("tune: study %s in %s: %d/%d trials (%d to resume); space %s", s.study_name, s.storage, have,
             s.n_trials, len(resume), [p.name for p in plan.space.params])
    workers = list(range(s.n_workers)) if have < s.n_trials else sorted(resume)
    outcomes = []
    if workers:
        with TrialProgress(s, launch.poll_s):
            outcomes = run_cells(run_worker, [(plan, w) for w in workers], launch, root / launch.folder,
                                 name="dino-tune")
    study, _ = open_study(s)
    res = write_outputs(study, plan)
    best = best_trial(study)
    return TuneResult(s.study_name, res["table"], None if best is None else
                      {"number": best.number, "value": best.value, "params": dict(best.params)}, outcomes,
                      res["plots"])


def worker_threads(launch, n_workers: int) -> int | None:
    """torch threads per worker: the job's CPUs on SLURM (torch would take every core of the node);
    elsewhere OMP_NUM_THREADS where the user set it, else this machine's cores shared between the
    local workers (oversubscribed threads are >10x slower); None: torch's default (debug, in-process)."""
    if launch.executor == "slurm":
        return launch.slurm.cpus_per_task
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    if launch.executor == "local":
        return max(1, cores() // max(1, min(n_workers, local_parallelism(launch))))
    return None


def main(argv: list[str] | None = None) -> None:
    from . import __doc__ as stage_doc
    ap = argparse.ArgumentParser(prog="python -m pipelines.tune", description=stage_doc.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    res = run_tune(load_all(args.params))
    states = res.trials["state"].value_counts().to_dict() if len(res.trials) else {}
    log.info("tune done: %d trials %s; best %s", len(res.trials), states, res.best)
    failed = [o for o in res.workers if isinstance(o, CellFailed)]
    for f in failed:
        log.error("tune worker failed: %s", f)
    if failed:
        raise SystemExit(f"{len(failed)} tune worker(s) failed; see the stderr paths above")
    if not states.get("COMPLETE"):
        raise SystemExit("tune: no trial completed; see trials.csv (columns status, error)")
