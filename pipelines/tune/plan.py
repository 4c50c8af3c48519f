"""Plan: everything a worker needs, picklable (settings, space, the trial's base params)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


from dino_core.config import Config, merge

from ..params import ROOT, resolve_profile
from .settings import tune_settings, TuneSettings
from .space import load_space, Space


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
        # of the eval section the objective reads only the k-NN temperature (tune.knn_k is its k)
        base["eval"] = {"knn_temp": base["eval"]["knn_temp"]}
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
