"""Constants of the study and params.yaml `tune:` -> TuneSettings (validated)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from optuna.trial import TrialState

from dino_core.schema import INF, NAME, NON_EMPTY, build, spec

from ..params import ROOT

DIRECTION = "maximize"
LOW_VALUE = 0.0                     # objective of diverged and collapsed trials (k-NN top-1 is in [0, 100])
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
COLLAPSE_ATTRS = ("collapsed", "collapse_reason", "teacher_entropy", "teacher_mean_entropy", "kl_teacher_student",
                  "cross_entropy", "prototypes_used", "log_K", "effective_rank", "feature_std")
CONTOUR_KEYS = ("loss.teacher_temp", "loss.student_temp")
PLOTS = ("optimization_history.png", "contour_temperatures.png", "param_importances.png")


# The path keys take any non-empty string; each one's pattern says what it names.
_PATH = NON_EMPTY[0]


@dataclass(frozen=True)
class TuneSettings:
    """params.yaml `tune:`, every key checked by dino_core.schema; tune_settings makes the paths absolute."""
    study_name: str = spec(pattern=NAME)
    storage: str = spec(pattern=(_PATH, "a journal file path or an RDB URL"))   # absolute journal path or an RDB URL
    space: str = spec(pattern=(_PATH, "a path to the search-space YAML"))       # absolute path
    n_trials: int = spec(1, INF)
    n_workers: int = spec(1, INF)
    seed: int = spec(0, INF)
    startup_trials: int = spec(0, INF)
    pruner: str = spec(choices=("median", "none"))
    pruner_startup_trials: int = spec(0, INF)
    pruner_warmup_epochs: int = spec(0, INF)
    epochs: int | None = spec(1, INF)       # null: the profile's train.epochs
    split: str = spec(choices=("val", "holdout"))
    holdout_fraction: float = spec(0, 1, open_lo=True, open_hi=True)
    knn_k: int = spec(1, INF)
    runs: str = spec(pattern=(_PATH, "a directory"))   # absolute; trial dirs are <runs>/<study_name>/trial_<n>
    out: str = spec(pattern=(_PATH, "a directory"))    # absolute

    @property
    def study_dir(self) -> Path:
        return Path(self.runs) / self.study_name

    @property
    def is_journal(self) -> bool:
        return not is_url(self.storage)


def is_url(storage: str) -> bool:
    return "://" in storage


def _abs(path: str, root: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else root / p)


def tune_settings(params: dict, root: Path = ROOT) -> TuneSettings:
    """The validated `tune:` section; relative paths are relative to the repository root."""
    t = params.get("tune")
    if not isinstance(t, dict):
        raise ValueError(f"params.yaml: a `tune:` section (a mapping) is required; keys: "
                         f"{sorted(f.name for f in fields(TuneSettings))}")
    s = build(TuneSettings, t, "params.yaml:tune")
    paths = {k: _abs(getattr(s, k), root) for k in ("space", "runs", "out")}
    if s.is_journal:
        paths["storage"] = _abs(s.storage, root)
    return replace(s, **paths)
