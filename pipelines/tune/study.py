"""The optuna study: storage, seeded sampler, pruner, fingerprint, claims of running trials."""
from __future__ import annotations

import logging

import dataclasses
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState
from .plan import Plan
from .settings import COUNTED, DIRECTION, is_url, TuneSettings

log = logging.getLogger(__name__)


def make_storage(storage: str) -> optuna.storages.BaseStorage:
    """A journal file (no server, NFS-safe lock) or an RDB URL (sqlite:///..., postgresql://...)."""
    if is_url(storage):
        return optuna.storages.RDBStorage(storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def make_sampler(s: TuneSettings, number: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded by (seed, trial number): a resumed or parallel study draws distinct, reproducible seeds."""
    seed = (s.seed * 1_000_003 + number) % (2 ** 32)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials)


def make_pruner(s: TuneSettings) -> optuna.pruners.BasePruner:
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                       n_warmup_steps=s.pruner_warmup_epochs)


def open_study(s: TuneSettings, create: bool = False) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """(study, its storage), with a sampler and a pruner (optuna stores neither)."""
    storage = make_storage(s.storage)
    kw = dict(study_name=s.study_name, storage=storage, sampler=make_sampler(s), pruner=make_pruner(s))
    if create:
        return optuna.create_study(direction=DIRECTION, load_if_exists=True, **kw), storage
    return optuna.load_study(**kw), storage


def check_fingerprint(study: optuna.Study, plan: Plan) -> None:
    """A study continues only with the setup it was run with (else its trials would not compare)."""
    fp, old = plan.fingerprint(), study.user_attrs.get("fingerprint")
    if old is not None and old != fp:
        raise ValueError(
            f"tune: study {study.study_name!r} in {plan.settings.storage} was run with another setup "
            f"(fingerprint {old}, now {fp}): the profile, tune.epochs, the search space "
            f"({plan.space.path}) or the objective changed. Use a new tune.study_name (or delete the "
            "study) to start over; n_trials, n_workers, seed and pruner may change freely.")
    if old is None:
        study.set_user_attr("fingerprint", fp)
        study.set_user_attr("space", [dataclasses.asdict(p) for p in plan.space.params])
        study.set_user_attr("epochs", plan.base["train"]["epochs"])


def study_lock(s: TuneSettings):
    from optuna.storages.journal import JournalFileOpenLock
    s.study_dir.mkdir(parents=True, exist_ok=True)
    return JournalFileOpenLock(str(s.study_dir / "ask"), grace_period=60)


def counted(trials: list) -> int:
    """Trials that count towards n_trials: all but waiting ones and stale (abandoned) failures."""
    return sum(1 for t in trials if t.state in COUNTED and t.user_attrs.get("status") != "stale")


def claim_path(s: TuneSettings, worker: int) -> Path:
    return s.study_dir / "workers" / f"worker_{worker}.json"


def _read_claim(path: Path) -> int | None:
    """Number of the trial a worker noted as its running one, or None."""
    try:
        return int(json.loads(path.read_text())["number"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trial_id(storage: optuna.storages.BaseStorage, s: TuneSettings, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(s.study_name), number)


def claimed_running(study: optuna.Study, s: TuneSettings) -> dict[int, int]:
    """{worker: trial number} of the RUNNING trials that workers 0..n_workers-1 claim (to resume)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    out = {}
    for w in range(s.n_workers):
        n = _read_claim(claim_path(s, w))
        if n is not None and n in running:
            out[w] = n
    return out


def fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage, s: TuneSettings) -> list[int]:
    """RUNNING trials that no worker 0..n_workers-1 claims (their worker died; journal storage has no
    heartbeat): fail them with status stale, which does not count towards n_trials. Returns their numbers."""
    claimed = set(claimed_running(study, s).values())
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in claimed:
            continue
        tid = trial_id(storage, s, t.number)
        storage.set_trial_user_attr(tid, "status", "stale")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        stale.append(t.number)
    if stale:
        log.warning("tune: failed %d stale RUNNING trial(s) %s left by dead workers (they will be replaced)",
                    len(stale), stale)
    return stale
