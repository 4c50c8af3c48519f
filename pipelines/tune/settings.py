"""Constants of the study and params.yaml `tune:` -> TuneSettings (validated)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import TrialState


from ..params import ROOT

DIRECTION = "maximize"
LOW_VALUE = 0.0                     # objective of diverged and collapsed trials (k-NN top-1 is in [0, 100])
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
COLLAPSE_ATTRS = ("collapsed", "collapse_reason", "teacher_entropy", "teacher_mean_entropy", "kl_teacher_student",
                  "cross_entropy", "prototypes_used", "log_K", "effective_rank", "feature_std")
CONTOUR_KEYS = ("loss.teacher_temp", "loss.student_temp")
PLOTS = ("optimization_history.png", "contour_temperatures.png", "param_importances.png")


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
