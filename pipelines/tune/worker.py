"""A worker (what run_cells ships to a process or SLURM array task): ask, run, until n_trials."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import torch

from dino_core.checkpoint import atomic_write_text
from .objective import run_trial
from .plan import Plan
from .settings import TuneSettings
from .study import claim_path, claimed_running, counted, make_sampler, open_study, study_lock, trial_id

log = logging.getLogger(__name__)


def _ask(study: optuna.Study, s: TuneSettings, lock, claim: Path) -> optuna.Trial | None:
    """Under the lock: a new trial if the study has fewer than n_trials counted trials, else None."""
    lock.acquire()
    try:
        trials = study.get_trials(deepcopy=False)
        if counted(trials) >= s.n_trials:
            return None
        study.sampler = make_sampler(s, len(trials))
        trial = study.ask()
        atomic_write_text(claim, json.dumps({"number": trial.number}))
        return trial
    finally:
        lock.release()


def run_worker(plan: Plan, worker: int) -> dict:
    """Run trials until the study holds n_trials counted trials; returns {worker, trials: [[n, state]]}.

    First resumes the RUNNING trial this worker claimed (requeue after pre-emption, re-run stage).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if plan.threads:
        torch.set_num_threads(plan.threads)
    s = plan.settings
    study, storage = open_study(s)
    lock, claim = study_lock(s), claim_path(s, worker)
    claim.parent.mkdir(parents=True, exist_ok=True)
    done: list[list] = []
    trial, fresh = None, True
    mine = claimed_running(study, s).get(worker)
    if mine is not None:
        log.info("worker %d: resuming its trial %d", worker, mine)
        study.sampler = make_sampler(s, mine)
        trial, fresh = optuna.Trial(study, trial_id(storage, s, mine)), False
    while True:
        if trial is None:
            trial, fresh = _ask(study, s, lock, claim), True
            if trial is None:
                break
        state = run_trial(study, trial, plan, worker, fresh)
        done.append([trial.number, state.name])
        claim.unlink(missing_ok=True)
        trial = None
    log.info("worker %d done: trials %s", worker, done)
    return {"worker": worker, "trials": done}
