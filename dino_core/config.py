"""Typed, validated view of params.yaml: Config (its sections are in sections.py), reading,
merging and saving params files.

params.yaml is the single source of defaults: the section dataclasses have no defaults of
their own, every field must be given, and every value is checked (type, range, choices)
before any work starts (schema.py). Errors name the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .schema import build, check_cross_fields
from .sections import (CropsConfig, DataConfig, EvalConfig, HeadConfig, LossConfig, ModelConfig, OptimConfig,
                       TeacherConfig, TrainConfig)


# Keys added after runs were stored, each with the value that reproduces those runs. A stored
# config (a run folder's config.yaml) may lack them: `Config.from_stored` reads it as that value,
# and the run store's cell hash (pipelines/store.py) leaves such a key out while it holds that
# value, so cells trained before the key existed keep their identity. params.yaml must give them.
LATER_KEYS: dict[tuple[str, str], Any] = {("crops", "rotation"): 0, ("crops", "backend"): "pil",
                                          ("data", "num_test"): 0, ("data", "test_skip"): 0,
                                          ("train", "objective"): "dino", ("train", "compile"): False}


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    head: HeadConfig
    loss: LossConfig
    teacher: TeacherConfig
    crops: CropsConfig
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, section: str, **kw: Any) -> "Config":
        """Copy with some fields of one section changed (validated)."""
        d = self.to_dict()
        d[section].update(kw)
        return Config.from_dict(d)

    @staticmethod
    def from_dict(d: dict, source: str = "params", extra_sections: tuple[str, ...] = ()) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(Config)}
        unknown = set(d) - set(sections) - set(extra_sections)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: "
                             f"{sorted(sections) + sorted(extra_sections)}")
        missing = set(sections) - set(d)
        if missing:
            raise ValueError(f"{source}: missing section(s) {sorted(missing)}")
        hints = typing.get_type_hints(Config)
        cfg = Config(**{name: build(hints[name], d[name], f"{source}:{name}") for name in sections})
        check_cross_fields(cfg, source)
        return cfg

    @staticmethod
    def from_stored(d: dict, source: str) -> "Config":
        """A config written by an earlier version: keys it predates (LATER_KEYS) read as off."""
        d = {name: dict(v) if isinstance(v, dict) else v for name, v in d.items()}
        for (section, key), value in LATER_KEYS.items():
            if isinstance(d.get(section), dict):
                d[section].setdefault(key, value)
        return Config.from_dict(d, source)


def load_params(path: str | Path) -> dict:
    """Read params.yaml into a plain dict (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with open(path) as fh:
        d = yaml.safe_load(fh)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return d


def merge(base: dict, diff: dict, where: str = "diff") -> dict:
    """Deep-merge a YAML diff into params; a diff may only change keys that exist."""
    out = json.loads(json.dumps(base))
    for k, v in diff.items():
        if k not in out:
            raise ValueError(f"{where}: unknown key {k!r}; allowed: {sorted(out)}")
        if isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs (atomically)."""
    from .checkpoint import atomic_write_text   # checkpoint imports torch; config stays light
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=True))
