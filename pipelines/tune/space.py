"""The search space (ablations/tune_space.yaml) -> Space of ParamSpecs, validated against params.yaml."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dino_core.config import Config, merge

from ..params import expr


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
    key, section, field = _searched_key(e, name, base, fixed, where)
    kind = _kind_of(e, base[section][field], key, where)
    log_ = e.get("log", False)
    if not isinstance(log_, bool):
        raise ValueError(f"{where}: log must be true/false, got {log_!r}")
    if kind == "categorical":
        spec = _categorical(e, name, key, log_, where)
        values = list(spec.choices)
    else:
        spec = _numeric(e, name, key, kind, log_, base, where)
        values = [spec.low, spec.high]
    for v in values:   # every bound / choice must be a value params.yaml accepts
        try:
            Config.from_dict(merge(base, {section: {field: v}}), source=where)
        except ValueError as err:
            raise ValueError(f"{where}: value {v!r} is not allowed for {key}: {err}") from None
    return spec


def _searched_key(e: dict, name: str, base: dict, fixed: dict, where: str) -> tuple[str, str, str]:
    """(key, section, field) of an entry: `key:` or found by name; a params.yaml key, not fixed."""
    key = e.get("key") or _find_key(name, base, where)
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) != 2 or not isinstance(base.get(parts[0]), dict) or parts[1] not in base[parts[0]]:
        raise ValueError(f"{where}: unknown key {key!r}: not a key of params.yaml (section.field)")
    section, field = parts
    if field in (fixed.get(section) or {}):
        raise ValueError(f"{where}: key {key} is both searched and set in `fixed:`")
    return key, section, field


def _kind_of(e: dict, current: Any, key: str, where: str) -> str:
    """`type:`, else int / float / categorical from the current value in params.yaml."""
    is_int_key = isinstance(current, int) and not isinstance(current, bool)
    kind = e.get("type")
    if kind is None:
        kind = "int" if is_int_key else "float" if isinstance(current, float) else "categorical"
    if kind not in _TYPES:
        raise ValueError(f"{where}: type {kind!r} is not allowed; allowed: {list(_TYPES)}")
    if kind == "float" and is_int_key:
        raise ValueError(f"{where}: {key} is an integer in params.yaml: use type int (or categorical)")
    if kind in ("float", "int") and not (_num(current)):
        raise ValueError(f"{where}: {key} = {current!r} is not a number: use type categorical with choices")
    return kind


def _categorical(e: dict, name: str, key: str, log_: bool, where: str) -> ParamSpec:
    choices = e.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{where}: categorical needs a non-empty list `choices:`, got {choices!r}")
    if any(k in e for k in ("low", "high", "step")) or log_:
        raise ValueError(f"{where}: low/high/step/log do not apply to a categorical entry")
    return ParamSpec(name, key, "categorical", choices=tuple(choices))


def _numeric(e: dict, name: str, key: str, kind: str, log_: bool, base: dict, where: str) -> ParamSpec:
    """An int / float range: low < high (numbers or `=expressions` of params.yaml), log, step."""
    if "choices" in e:
        raise ValueError(f"{where}: choices only apply to type categorical")
    bounds = {b: _bound(e, b, kind, base, where) for b in ("low", "high")}
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
    return ParamSpec(name, key, kind, low, high, log_, step)


def _bound(e: dict, b: str, kind: str, base: dict, where: str) -> int | float:
    if b not in e:
        raise ValueError(f"{where}: missing `{b}:`")
    v = e[b]
    if isinstance(v, str) and v.startswith("="):
        v = expr(v[1:], base, f"{where}: {b}")
        if kind == "int":
            v = int(round(v))
    if not _num(v) or not math.isfinite(v):
        raise ValueError(f"{where}: {b} = {e[b]!r} is not a finite number")
    if kind == "int" and not float(v).is_integer():
        raise ValueError(f"{where}: {b} = {e[b]!r} is not an integer (type int)")
    return int(v) if kind == "int" else float(v)
