"""Stage `tune`: optuna search of the DINO temperatures on the user's own data.

    python -m pipelines.tune [--params params.yaml]        (or: dvc repro tune)

Settings: the ``tune:`` section of params.yaml; search space: a data file (``tune.space``,
default ablations/tune_space.yaml), validated before any trial. Every trial pre-trains the
resolved profile (``tune.epochs`` epochs) with the sampled values and reports, after every
epoch, the weighted k-NN top-1 (k = ``tune.knn_k``, %) of the teacher backbone on the
``tune.split`` queries (the val split, or a held-out part of the train split) to the pruner
(median by default); the objective is the last epoch's value (maximised).

Study: ``study_name`` in ``storage`` (a journal file by default, or an RDB URL), created with
``load_if_exists``, so re-running continues the same study up to ``n_trials`` trials in total
(COMPLETE + PRUNED + FAIL). Samplers are not stored by optuna: every load passes a TPESampler
seeded with (seed, trial number), so a resumed study samples what one uninterrupted run would.

Workers: ``n_workers`` submitit jobs (pipelines.launch.run_cells: local processes, a SLURM job
array, or in-process with executor debug) share the storage. A worker creates a trial only
under a lock file (``<runs>/<study>/ask.lock``, O_EXCL: NFS-safe), after counting the trials,
so that the study ends with exactly ``n_trials`` trials whatever the number of workers. A worker
notes its running trial in ``<runs>/<study>/workers/worker_<i>.json``: when it is requeued
(SLURM timeout or pre-emption) or the stage is re-run, it resumes that trial from the trial's
checkpoint. Running trials no worker claims (journal storage has no heartbeats) are failed
as ``stale`` when the stage starts and are not counted, so re-running replaces them. The stage
must therefore be the only driver of its study while it runs.

Trials never crash the study: a diverged or collapsed trial is COMPLETE with the value 0.0 and
its collapse metrics (user attrs; status ``diverged`` / ``collapsed``); a trial that raises is
FAIL with status ``error`` and the message; a pruned one is PRUNED (status ``pruned``).
Run directory of trial n: ``<runs>/<study_name>/trial_<n>``.

Outputs (``tune.out``, atomic writes): best_params.yaml (a diff for params.yaml, best
non-collapsed COMPLETE trial), trials.csv, optimization_history.png, contour_temperatures.png
(teacher x student temperature), param_importances.png (a placeholder image with a logged note
when there are too few complete trials).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from torch.utils.data import DataLoader, Subset

from dino_core.checkpoint import CHECKPOINT, atomic_write_text
from dino_core.config import Config, merge
from dino_core.data.registry import NORMALIZATION, build_dataset, eval_transform
from dino_core.evaluate.collapse import collapse_metrics
from dino_core.train import resolve_device, train

from .cell import eval_loaders, knn_of, load_networks, pretrain_dataset
from .launch import CellFailed, cores, load_launch_config, local_parallelism, run_cells
from .params import ROOT, _expr, load_all, resolve_profile

log = logging.getLogger(__name__)

DIRECTION = "maximize"
LOW_VALUE = 0.0                     # objective of diverged and collapsed trials (k-NN top-1 is in [0, 100])
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
COLLAPSE_ATTRS = ("collapsed", "collapse_reason", "teacher_entropy", "teacher_mean_entropy", "kl_teacher_student",
                  "cross_entropy", "prototypes_used", "log_K", "effective_rank", "feature_std")
CONTOUR_KEYS = ("loss.teacher_temp", "loss.student_temp")
PLOTS = ("optimization_history.png", "contour_temperatures.png", "param_importances.png")


# ---------------------------------------------------------------------------------------------
# Settings (params.yaml `tune:`)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuneSettings:
    study_name: str
    storage: str            # absolute journal path or an RDB URL
    space: str              # absolute path
    n_trials: int
    n_workers: int
    seed: int
    startup_trials: int
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    epochs: int | None
    split: str
    holdout_fraction: float
    knn_k: int
    runs: str               # absolute; trial dirs are <runs>/<study_name>/trial_<n>
    out: str                # absolute

    @property
    def study_dir(self) -> Path:
        return Path(self.runs) / self.study_name

    @property
    def is_journal(self) -> bool:
        return not is_url(self.storage)


def _int(lo: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"an integer >= {lo}")


_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RULES = {
    "study_name": (lambda v: isinstance(v, str) and bool(_NAME.match(v)), "a name of [A-Za-z0-9_.-]"),
    "storage": (lambda v: isinstance(v, str) and bool(v.strip()), "a journal file path or an RDB URL"),
    "space": (lambda v: isinstance(v, str) and bool(v.strip()), "a path to the search-space YAML"),
    "n_trials": _int(1),
    "n_workers": _int(1),
    "seed": _int(0),
    "startup_trials": _int(0),
    "pruner": (lambda v: v in ("median", "none"), "median | none"),
    "pruner_startup_trials": _int(0),
    "pruner_warmup_epochs": _int(0),
    "epochs": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
               "null (the profile's train.epochs) or an integer >= 1"),
    "split": (lambda v: v in ("val", "holdout"), "val | holdout"),
    "holdout_fraction": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                         "a number in (0, 1)"),
    "knn_k": _int(1),
    "runs": (lambda v: isinstance(v, str) and bool(v.strip()), "a directory"),
    "out": (lambda v: isinstance(v, str) and bool(v.strip()), "a directory"),
}


def is_url(storage: str) -> bool:
    return "://" in storage


def _abs(path: str, root: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else root / p)


def tune_settings(params: dict, root: Path = ROOT) -> TuneSettings:
    """The validated `tune:` section; relative paths are relative to the repository root."""
    t = params.get("tune")
    if not isinstance(t, dict):
        raise ValueError(f"params.yaml: a `tune:` section (a mapping) is required; keys: {sorted(_RULES)}")
    unknown, missing = sorted(set(t) - set(_RULES)), sorted(set(_RULES) - set(t))
    if unknown:
        raise ValueError(f"params.yaml: unknown key(s) tune.{unknown[0]} ({unknown}); allowed: {sorted(_RULES)}")
    if missing:
        raise ValueError(f"params.yaml: missing key(s) {['tune.' + m for m in missing]}")
    for k, (ok, allowed) in _RULES.items():
        if not ok(t[k]):
            raise ValueError(f"params.yaml: tune.{k} = {t[k]!r} is not allowed (allowed: {allowed})")
    d = dict(t)
    d["holdout_fraction"] = float(d["holdout_fraction"])
    for k in ("space", "runs", "out"):
        d[k] = _abs(d[k], root)
    if not is_url(d["storage"]):
        d["storage"] = _abs(d["storage"], root)
    return TuneSettings(**d)


# ---------------------------------------------------------------------------------------------
# Search space (ablations/tune_space.yaml)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSpec:
    name: str
    key: str                # section.field of params.yaml
    type: str               # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def distribution(self) -> BaseDistribution:
        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    path: str
    params: tuple[ParamSpec, ...]
    fixed: dict

    def diff(self, values: dict) -> dict:
        """{section: {field: value}} of the sampled values (keys of params.yaml)."""
        out: dict = {}
        for p in self.params:
            if p.name in values:
                section, field = p.key.split(".")
                out.setdefault(section, {})[field] = values[p.name]
        return out

    def by_key(self, key: str) -> ParamSpec | None:
        return next((p for p in self.params if p.key == key), None)


_ENTRY_KEYS = {"name", "key", "type", "low", "high", "log", "step", "choices"}
_TYPES = ("float", "int", "categorical")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_space(path: str | Path, base: dict) -> Space:
    """Read and validate a search-space file against `base` (the trial's params).

    Every problem raises ValueError naming the file, the entry and what is wrong, before any trial.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tune.space: search-space file {path} not found")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or "params" not in raw:
        raise ValueError(f"{path}: expected a mapping with `params:` (a list of entries) and optional `fixed:`")
    extra = sorted(set(raw) - {"params", "fixed"})
    if extra:
        raise ValueError(f"{path}: unknown top-level key(s) {extra}; allowed: ['fixed', 'params']")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ValueError(f"{path}: fixed must be a mapping (a diff of params.yaml), got {fixed!r}")
    try:
        base = merge(base, fixed, f"{path}: fixed")
        Config.from_dict(base, source=f"{path}: fixed")
    except ValueError as e:
        raise ValueError(f"{path}: fixed: {e}") from None
    entries = raw["params"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: params must be a non-empty list of entries")
    specs: list[ParamSpec] = []
    for i, e in enumerate(entries):
        specs.append(_param_spec(e, i, path, base, fixed))
    names, keys = [s.name for s in specs], [s.key for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"{path}: parameter name {n!r} appears {names.count(n)} times")
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"{path}: key {k!r} is searched by several entries "
                             f"{[s.name for s in specs if s.key == k]}")
    return Space(str(path), tuple(specs), fixed)


def _find_key(name: str, base: dict, where: str) -> str:
    hits = sorted(f"{s}.{name}" for s, sec in base.items() if isinstance(sec, dict) and name in sec)
    if not hits:
        raise ValueError(f"{where}: unknown parameter name {name!r}: no section of params.yaml has a key "
                         f"{name!r}; give `key: section.field`")
    if len(hits) > 1:
        raise ValueError(f"{where}: parameter name {name!r} is ambiguous ({hits}); give `key:`")
    return hits[0]


def _param_spec(e: Any, i: int, path: Path, base: dict, fixed: dict) -> ParamSpec:
    if not isinstance(e, dict) or "name" not in e:
        raise ValueError(f"{path}: params[{i}] must be a mapping with at least `name:`, got {e!r}")
    name = e["name"]
    where = f"{path}: params[{i}] ({name})"
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ValueError(f"{path}: params[{i}]: name {name!r} must be an identifier")
    unknown = sorted(set(e) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
    key = e.get("key") or _find_key(name, base, where)
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) != 2 or not isinstance(base.get(parts[0]), dict) or parts[1] not in base[parts[0]]:
        raise ValueError(f"{where}: unknown key {key!r}: not a key of params.yaml (section.field)")
    section, field = parts
    if field in (fixed.get(section) or {}):
        raise ValueError(f"{where}: key {key} is both searched and set in `fixed:`")
    current = base[section][field]
    kind = e.get("type")
    if kind is None:
        kind = "int" if isinstance(current, int) and not isinstance(current, bool) else \
            "float" if isinstance(current, float) else "categorical"
    if kind not in _TYPES:
        raise ValueError(f"{where}: type {kind!r} is not allowed; allowed: {list(_TYPES)}")
    is_int_key = isinstance(current, int) and not isinstance(current, bool)
    if kind == "float" and is_int_key:
        raise ValueError(f"{where}: {key} is an integer in params.yaml: use type int (or categorical)")
    if kind in ("float", "int") and not (_num(current)):
        raise ValueError(f"{where}: {key} = {current!r} is not a number: use type categorical with choices")
    log_ = e.get("log", False)
    if not isinstance(log_, bool):
        raise ValueError(f"{where}: log must be true/false, got {log_!r}")
    if kind == "categorical":
        choices = e.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: categorical needs a non-empty list `choices:`, got {choices!r}")
        if any(k in e for k in ("low", "high", "step")) or log_:
            raise ValueError(f"{where}: low/high/step/log do not apply to a categorical entry")
        spec = ParamSpec(name, key, kind, choices=tuple(choices))
        values = list(choices)
    else:
        if "choices" in e:
            raise ValueError(f"{where}: choices only apply to type categorical")
        bounds = {}
        for b in ("low", "high"):
            if b not in e:
                raise ValueError(f"{where}: missing `{b}:`")
            v = e[b]
            if isinstance(v, str) and v.startswith("="):
                v = _expr(v[1:], base, f"{where}: {b}")
                if kind == "int":
                    v = int(round(v))
            if not _num(v) or not math.isfinite(v):
                raise ValueError(f"{where}: {b} = {e[b]!r} is not a finite number")
            if kind == "int" and not float(v).is_integer():
                raise ValueError(f"{where}: {b} = {e[b]!r} is not an integer (type int)")
            bounds[b] = int(v) if kind == "int" else float(v)
        low, high = bounds["low"], bounds["high"]
        if low >= high:
            what = "empty" if low == high else "inverted"
            shown = {b: f"{bounds[b]}" + (f" (from {e[b]!r})" if isinstance(e[b], str) else "") for b in bounds}
            raise ValueError(f"{where}: {what} range: low {shown['low']} >= high {shown['high']}")
        if log_ and low <= 0:
            raise ValueError(f"{where}: log scale needs low > 0, got low {low}")
        step = e.get("step")
        if step is not None:
            if not _num(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
                what = "integer" if kind == "int" else "number"
                raise ValueError(f"{where}: step {step!r} must be a positive {what}")
            if log_:
                raise ValueError(f"{where}: step and log cannot be combined")
            step = int(step) if kind == "int" else float(step)
        spec = ParamSpec(name, key, kind, low, high, log_, step)
        values = [low, high]
    for v in values:   # every bound / choice must be a value params.yaml accepts
        try:
            Config.from_dict(merge(base, {section: {field: v}}), source=where)
        except ValueError as err:
            raise ValueError(f"{where}: value {v!r} is not allowed for {key}: {err}") from None
    return spec


# ---------------------------------------------------------------------------------------------
# Plan: everything a worker needs (picklable)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    settings: TuneSettings
    space: Space
    base: dict              # resolved profile + tune.epochs (+ the space's fixed diff)
    threads: int | None     # torch threads per worker (local executor), None: torch's default

    def trial_params(self, values: dict) -> dict:
        return merge(self.base, self.space.diff(values), "trial")

    def fingerprint(self) -> str:
        """Hash of what a trial computes apart from the sampled values: the trial params (searched
        keys left out), the space, the objective. Budget, workers, seed and pruner are not in it."""
        base = json.loads(json.dumps(self.base))
        for p in self.space.params:
            section, field = p.key.split(".")
            base[section].pop(field, None)
        s = self.settings
        blob = {"base": base, "space": [dataclasses.asdict(p) for p in self.space.params],
                "objective": [s.split, s.holdout_fraction if s.split == "holdout" else None, s.knn_k]}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()[:16]


def trial_base(params: dict, settings: TuneSettings, root: Path = ROOT) -> dict:
    base = resolve_profile(params, root)
    if settings.epochs is not None:
        base = merge(base, {"train": {"epochs": settings.epochs}})
    cfg = Config.from_dict(base, source="params.yaml (tune base)")
    if cfg.optim.warmup_epochs > cfg.train.epochs:
        raise ValueError(f"params.yaml: optim.warmup_epochs {cfg.optim.warmup_epochs} > the {cfg.train.epochs} "
                         "epochs of a trial (tune.epochs): lower one or raise the other")
    return base


def make_plan(params: dict, root: Path = ROOT, threads: int | None = None) -> Plan:
    """Validate settings and search space (no trial runs before this passes)."""
    settings = tune_settings(params, root)
    base = trial_base(params, settings, root)
    space = load_space(settings.space, base)
    return Plan(settings, space, merge(base, space.fixed), threads)


# ---------------------------------------------------------------------------------------------
# Study, sampler, pruner
# ---------------------------------------------------------------------------------------------

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


def _lock(s: TuneSettings):
    from optuna.storages.journal import JournalFileOpenLock
    s.study_dir.mkdir(parents=True, exist_ok=True)
    return JournalFileOpenLock(str(s.study_dir / "ask"), grace_period=60)


def counted(trials: list) -> int:
    """Trials that count towards n_trials: all but waiting ones and stale (abandoned) failures."""
    return sum(1 for t in trials if t.state in COUNTED and t.user_attrs.get("status") != "stale")


def _claim_path(s: TuneSettings, worker: int) -> Path:
    return s.study_dir / "workers" / f"worker_{worker}.json"


def _read_claim(path: Path) -> int | None:
    """Number of the trial a worker noted as its running one, or None."""
    try:
        return int(json.loads(path.read_text())["number"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trial_id(storage: optuna.storages.BaseStorage, s: TuneSettings, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(s.study_name), number)


def claimed_running(study: optuna.Study, s: TuneSettings) -> dict[int, int]:
    """{worker: trial number} of the RUNNING trials that workers 0..n_workers-1 claim (to resume)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    out = {}
    for w in range(s.n_workers):
        n = _read_claim(_claim_path(s, w))
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
        tid = _trial_id(storage, s, t.number)
        storage.set_trial_user_attr(tid, "status", "stale")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        stale.append(t.number)
    if stale:
        log.warning("tune: failed %d stale RUNNING trial(s) %s left by dead workers (they will be replaced)",
                    len(stale), stale)
    return stale


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------

def objective_loaders(cfg: Config, split: str, holdout_fraction: float) -> tuple[DataLoader, DataLoader]:
    """(k-NN bank, queries): train/val, or train minus a seeded holdout / the holdout."""
    if split == "val":
        return eval_loaders(cfg)
    d = cfg.data
    full = build_dataset(d.dataset, d.root, "train", eval_transform(d.dataset, d.image_size),
                         limit=d.num_train if d.num_train > 0 else None)
    n = len(full)
    n_q = min(n - 1, max(1, round(holdout_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
    kw = dict(batch_size=cfg.eval.batch_size, shuffle=False, num_workers=d.num_workers)
    return DataLoader(Subset(full, sorted(perm[n_q:])), **kw), DataLoader(Subset(full, sorted(perm[:n_q])), **kw)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def objective(trial: optuna.Trial, plan: Plan, worker: int, fresh: bool) -> float:
    """Pre-train with the trial's values; report k-NN top-1 every epoch; return the final one."""
    s = plan.settings
    values = {p.name: p.suggest(trial) for p in plan.space.params}
    cfg = Config.from_dict(plan.trial_params(values), source=f"trial {trial.number}")
    run_dir = s.study_dir / f"trial_{trial.number}"
    if fresh and run_dir.exists():   # a leftover of an earlier study of the same name: never resume it
        log.warning("trial %d: removing the stale run directory %s", trial.number, run_dir)
        shutil.rmtree(run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("epochs", cfg.train.epochs)
    device = resolve_device(cfg.train.device)
    knn_cfg = cfg.replace("eval", knn_k=(s.knn_k,))
    bank, queries = objective_loaders(cfg, s.split, s.holdout_fraction)
    metric = f"knn{s.knn_k}_top1"
    seen: dict = {"run": None, "epoch": None, "knn": {}}

    def on_epoch_end(epoch: int, stats: dict, run) -> bool:
        seen["run"], seen["epoch"] = run, epoch
        value = knn_of(run.teacher_net.backbone, knn_cfg, bank, queries, device)[metric]
        seen["knn"][epoch] = value
        trial.report(value, epoch)
        log.info("trial %d epoch %d: %s %.2f (loss %.4f)", trial.number, epoch, metric, value,
                 stats.get("loss", float("nan")))
        if trial.should_prune():
            log.info("trial %d pruned at epoch %d", trial.number, epoch)
            return False
        return True

    mean, std = NORMALIZATION[cfg.data.dataset]
    metrics = train(cfg, run_dir, pretrain_dataset(cfg), mean, std, on_epoch_end=on_epoch_end)
    status = {"ok": "ok", "stopped": "pruned", "diverged": "diverged"}[metrics["status"]]
    last = cfg.train.epochs - 1
    attrs: dict = {"epochs_run": (seen["epoch"] + 1) if seen["epoch"] is not None else None}
    # networks for the collapse metrics: the live run, or (resumed after the last epoch) the checkpoint
    nets = None
    if seen["run"] is not None:
        r = seen["run"]
        nets = (r.student_mod, r.teacher_net, r.loss.center, float(r.loss.teacher_temps[min(seen["epoch"], last)]))
    elif status == "ok" and (run_dir / CHECKPOINT).is_file():
        st, te, center = load_networks(cfg, run_dir)
        nets = (st, te, center, cfg.loss.teacher_temp if cfg.loss.sharpening else cfg.loss.student_temp)
        attrs["epochs_run"] = cfg.train.epochs
    if status == "ok" and last not in seen["knn"] and nets is not None:
        seen["knn"][last] = knn_of(nets[1].backbone, knn_cfg, bank, queries, device)[metric]
    knn = seen["knn"][max(seen["knn"])] if seen["knn"] else None
    attrs[metric] = knn
    if nets is not None:
        student, teacher, center, tau_t = nets
        try:
            cm = collapse_metrics(student, teacher, queries,
                                  center if cfg.loss.normalization == "centering" else 0.0,
                                  cfg.loss.student_temp, tau_t, device)
            attrs.update({k: cm[k] for k in COLLAPSE_ATTRS if k in cm})
        except Exception as e:  # noqa: BLE001 - e.g. non-finite weights of a diverged run
            attrs["collapse_error"] = f"{type(e).__name__}: {e}"
    if status == "ok" and attrs.get("collapsed"):
        status = "collapsed"
    attrs["status"] = status
    if status == "diverged":
        attrs["diverged_epoch"] = metrics.get("final_epoch")
    for k, v in attrs.items():
        trial.set_user_attr(k, _clean(v))
    if status == "pruned":
        raise optuna.TrialPruned(f"pruned at epoch {seen['epoch']} ({metric} {knn})")
    if status in ("diverged", "collapsed") or knn is None:
        log.warning("trial %d %s: objective %.1f (%s)", trial.number, status, LOW_VALUE,
                    attrs.get("collapse_reason", "non-finite loss"))
        return LOW_VALUE
    return float(knn)


def run_trial(study: optuna.Study, trial: optuna.Trial, plan: Plan, worker: int, fresh: bool) -> TrialState:
    """Run one trial and tell the study; only KeyboardInterrupt/SystemExit (pre-emption) escape,
    leaving the trial RUNNING and claimed so that the requeued worker resumes it."""
    try:
        value = objective(trial, plan, worker, fresh)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except Exception as e:  # noqa: BLE001 - a failing trial must not crash the study
        log.exception("trial %d failed", trial.number)
        trial.set_user_attr("status", "error")
        trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, value)
    log.info("trial %d finished: value %.3f, params %s", trial.number, value, trial.params)
    return TrialState.COMPLETE


# ---------------------------------------------------------------------------------------------
# Worker (what run_cells ships to a process / SLURM array task)
# ---------------------------------------------------------------------------------------------

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
    lock, claim = _lock(s), _claim_path(s, worker)
    claim.parent.mkdir(parents=True, exist_ok=True)
    done: list[list] = []
    trial, fresh = None, True
    mine = claimed_running(study, s).get(worker)
    if mine is not None:
        log.info("worker %d: resuming its trial %d", worker, mine)
        study.sampler = make_sampler(s, mine)
        trial, fresh = optuna.Trial(study, _trial_id(storage, s, mine)), False
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


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def trials_table(study: optuna.Study, space: Space) -> pd.DataFrame:
    rows = []
    metric_keys = sorted({k for t in study.trials for k in t.user_attrs if k.startswith("knn")})
    for t in sorted(study.trials, key=lambda t: t.number):
        dur = t.duration.total_seconds() if t.duration is not None else None
        row = {"number": t.number, "state": t.state.name, "value": t.value}
        row.update({f"params_{p.name}": t.params.get(p.name) for p in space.params})
        row["status"] = t.user_attrs.get("status")
        row.update({k: t.user_attrs.get(k) for k in (*metric_keys, *COLLAPSE_ATTRS)})
        row.update({"epochs_run": t.user_attrs.get("epochs_run"), "duration_s": dur,
                    "worker": t.user_attrs.get("worker"), "error": t.user_attrs.get("error")})
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study):
    """Best COMPLETE trial that neither collapsed nor diverged (ties: lowest number); None if none."""
    ok = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
          if t.user_attrs.get("status", "ok") == "ok" and t.value is not None]
    return max(ok, key=lambda t: (t.value, -t.number)) if ok else None


def best_params_text(study: optuna.Study, space: Space, epochs: int) -> str:
    best = best_trial(study)
    if best is None:
        return ("# tune: no COMPLETE trial that neither collapsed nor diverged; see trials.csv\n"
                + yaml.safe_dump({}, default_flow_style=False))
    diff = space.diff(best.params)
    head = (f"# Best trial {best.number} of study {study.study_name}: objective {best.value:.4f} "
            f"(k-NN top-1 %, {epochs}-epoch trials).\n"
            "# A diff for params.yaml (pipelines.params.apply_diff / dino_core.config.merge).\n")
    if any(p.key == "loss.warmup_teacher_temp_epochs" for p in space.params):
        head += "# warmup_teacher_temp_epochs counts epochs of the trials: rescale it for longer runs.\n"
    return head + yaml.safe_dump(diff, default_flow_style=False, sort_keys=True)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    os.replace(tmp, path)


def _placeholder(path: Path, title: str, note: str) -> None:
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(6, 2))
    fig.text(0.5, 0.6, title, ha="center", va="center", fontsize=12)
    fig.text(0.5, 0.35, note, ha="center", va="center", fontsize=9, wrap=True)
    _save(fig, path)
    plt.close(fig)


def write_plots(study: optuna.Study, space: Space, out: Path) -> dict[str, str]:
    """Optimization history, teacher x student contour, importances; returns {file: 'ok' | note}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    tt, ts = (space.by_key(k) for k in CONTOUR_KEYS)
    jobs = {
        "optimization_history.png": (lambda: ovm.plot_optimization_history(study), 1),
        "contour_temperatures.png": (
            (lambda: ovm.plot_contour(study, params=[tt.name, ts.name])) if tt and ts else None, 2),
        "param_importances.png": (lambda: ovm.plot_param_importances(study), 2),
    }
    notes = {}
    plt.rcParams.update({"figure.figsize": (7, 5), "figure.dpi": 100})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (make, need) in jobs.items():
            path = out / name
            title = name[:-4].replace("_", " ")
            if make is None:
                note = f"skipped: the space does not search both {CONTOUR_KEYS[0]} and {CONTOUR_KEYS[1]}"
            elif len(complete) < need:
                note = f"skipped: {len(complete)} COMPLETE trial(s), {need} needed"
            else:
                try:
                    ax = make()
                    ax = ax.flat[0] if hasattr(ax, "flat") else ax
                    fig = ax.figure
                    fig.tight_layout()
                    _save(fig, path)
                    plt.close(fig)
                    notes[name] = "ok"
                    continue
                except Exception as e:  # noqa: BLE001 - a plot must not fail the stage
                    note = f"skipped: {type(e).__name__}: {e}"
                    plt.close("all")
            log.info("tune: %s %s (placeholder image written)", name, note)
            _placeholder(path, title, note)
            notes[name] = note
    return notes


def write_outputs(study: optuna.Study, plan: Plan) -> dict:
    out = Path(plan.settings.out)
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study, plan.space)
    atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    atomic_write_text(out / "best_params.yaml", best_params_text(study, plan.space, plan.base["train"]["epochs"]))
    notes = write_plots(study, plan.space, out)
    return {"table": table, "plots": notes}


# ---------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------

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
    threads = None                   # torch threads per worker (oversubscribed threads are >10x slower)
    if launch.executor == "local":   # share this machine's cores between the local worker processes
        threads = max(1, cores() // max(1, min(s0.n_workers, local_parallelism(launch))))
    elif launch.executor == "slurm":  # the job's CPUs (torch would take every core of the node)
        threads = launch.slurm.cpus_per_task
    plan = make_plan(params, root, threads)           # raises before any trial on bad input
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
    outcomes = run_cells(run_worker, [(plan, w) for w in workers], launch, root / launch.folder,
                         name="dino-tune") if workers else []
    study, _ = open_study(s)
    res = write_outputs(study, plan)
    best = best_trial(study)
    return TuneResult(s.study_name, res["table"], None if best is None else
                      {"number": best.number, "value": best.value, "params": dict(best.params)}, outcomes,
                      res["plots"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    main()
