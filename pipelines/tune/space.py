"""The search space (ablations/tune_space.yaml) -> Space of ParamSpecs, validated against params.yaml.

The file's structure (keys, types, ranges, choices) is checked by dino_core.schema against
SpaceFile and Entry; what each entry means for params.yaml is checked by param.param_spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dino_core.config import Config, merge
from dino_core.schema import build, spec

from .param import Entry, ParamSpec, param_spec


@dataclass(frozen=True)
class SpaceFile:
    """The search-space file as written: the searched entries and a diff applied to every trial."""
    params: tuple[Entry, ...] = spec()
    fixed: tuple[tuple[str, Any], ...] | None = spec(default=None)   # a diff of params.yaml (a mapping)


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


def load_space(path: str | Path, base: dict) -> Space:
    """Read and validate a search-space file against `base` (the trial's params).

    Every problem raises ValueError naming the file, the entry and what is wrong, before any trial.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tune.space: search-space file {path} not found")
    raw = build(SpaceFile, yaml.safe_load(path.read_text()), str(path))
    fixed = dict(raw.fixed or ())
    try:
        base = merge(base, fixed, f"{path}: fixed")
        Config.from_dict(base, source=f"{path}: fixed")
    except ValueError as e:
        raise ValueError(f"{path}: fixed: {e}") from None
    specs = [param_spec(e, f"{path}: params[{i}] ({e.name})", base, fixed) for i, e in enumerate(raw.params)]
    names, keys = [s.name for s in specs], [s.key for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"{path}: parameter name {n!r} appears {names.count(n)} times")
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"{path}: key {k!r} is searched by several entries "
                             f"{[s.name for s in specs if s.key == k]}")
    return Space(str(path), tuple(specs), fixed)
