"""One searched parameter: its entry in the search-space file (Entry, checked by dino_core.schema)
-> ParamSpec, checked against the trial's params.yaml (key, type, bounds, the values it accepts)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dino_core.config import Config, merge
from dino_core.schema import INF, spec

from ..params import expr

KINDS = ("float", "int", "categorical")
IDENTIFIER = (r"[A-Za-z_][A-Za-z0-9_]*", "an identifier")


@dataclass(frozen=True)
class Entry:
    """One entry of `params:` in the search-space file, as written (see ablations/tune_space.yaml)."""
    name: str = spec(pattern=IDENTIFIER)
    key: str | None = spec(default=None)                       # section.field; None: found by name
    type: str | None = spec(choices=KINDS, default=None)        # None: from the params.yaml value
    low: float | str | None = spec(default=None)                # a number or "=<expr>" of params.yaml
    high: float | str | None = spec(default=None)
    log: bool = spec(default=False)
    step: float | None = spec(0, INF, open_lo=True, default=None)
    choices: tuple[Any, ...] | None = spec(default=None)


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


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def param_spec(e: Entry, where: str, base: dict, fixed: dict) -> ParamSpec:
    """The ParamSpec of entry `e` (named `where` in errors) against `base`, the trial's params
    with `fixed` applied: every bound or choice must be a value params.yaml accepts."""
    key, section, field = _searched_key(e, base, fixed, where)
    kind = _kind_of(e, base[section][field], key, where)
    if kind == "categorical":
        ps = _categorical(e, key, where)
        values = list(ps.choices)
    else:
        ps = _numeric(e, key, kind, base, where)
        values = [ps.low, ps.high]
    for v in values:
        try:
            Config.from_dict(merge(base, {section: {field: v}}), source=where)
        except ValueError as err:
            raise ValueError(f"{where}: value {v!r} is not allowed for {key}: {err}") from None
    return ps


def _find_key(name: str, base: dict, where: str) -> str:
    hits = sorted(f"{s}.{name}" for s, sec in base.items() if isinstance(sec, dict) and name in sec)
    if not hits:
        raise ValueError(f"{where}: unknown parameter name {name!r}: no section of params.yaml has a key "
                         f"{name!r}; give `key: section.field`")
    if len(hits) > 1:
        raise ValueError(f"{where}: parameter name {name!r} is ambiguous ({hits}); give `key:`")
    return hits[0]


def _searched_key(e: Entry, base: dict, fixed: dict, where: str) -> tuple[str, str, str]:
    """(key, section, field) of an entry: `key:` or found by name; a params.yaml key, not fixed."""
    key = e.key or _find_key(e.name, base, where)
    parts = key.split(".")
    if len(parts) != 2 or not isinstance(base.get(parts[0]), dict) or parts[1] not in base[parts[0]]:
        raise ValueError(f"{where}: unknown key {key!r}: not a key of params.yaml (section.field)")
    section, field = parts
    if field in (fixed.get(section) or {}):
        raise ValueError(f"{where}: key {key} is both searched and set in `fixed:`")
    return key, section, field


def _kind_of(e: Entry, current: Any, key: str, where: str) -> str:
    """`type:`, else int / float / categorical from the current value in params.yaml."""
    is_int_key = isinstance(current, int) and not isinstance(current, bool)
    kind = e.type
    if kind is None:
        kind = "int" if is_int_key else "float" if isinstance(current, float) else "categorical"
    if kind == "float" and is_int_key:
        raise ValueError(f"{where}: {key} is an integer in params.yaml: use type int (or categorical)")
    if kind in ("float", "int") and not (_num(current)):
        raise ValueError(f"{where}: {key} = {current!r} is not a number: use type categorical with choices")
    return kind


def _categorical(e: Entry, key: str, where: str) -> ParamSpec:
    if e.choices is None:
        raise ValueError(f"{where}: categorical needs a non-empty list `choices:`")
    if e.low is not None or e.high is not None or e.step is not None or e.log:
        raise ValueError(f"{where}: low/high/step/log do not apply to a categorical entry")
    return ParamSpec(e.name, key, "categorical", choices=e.choices)


def _numeric(e: Entry, key: str, kind: str, base: dict, where: str) -> ParamSpec:
    """An int / float range: low < high (numbers or `=expressions` of params.yaml), log, step."""
    if e.choices is not None:
        raise ValueError(f"{where}: choices only apply to type categorical")
    given = {"low": e.low, "high": e.high}
    bounds = {b: _bound(v, b, kind, base, where) for b, v in given.items()}
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        what = "empty" if low == high else "inverted"
        shown = {b: f"{bounds[b]}" + (f" (from {given[b]!r})" if isinstance(given[b], str) else "") for b in bounds}
        raise ValueError(f"{where}: {what} range: low {shown['low']} >= high {shown['high']}")
    if e.log and low <= 0:
        raise ValueError(f"{where}: log scale needs low > 0, got low {low}")
    step = e.step
    if step is not None:
        if kind == "int" and not step.is_integer():
            raise ValueError(f"{where}: step {step!r} must be a positive integer")
        if e.log:
            raise ValueError(f"{where}: step and log cannot be combined")
        step = int(step) if kind == "int" else step
    return ParamSpec(e.name, key, kind, low, high, e.log, step)


def _bound(given: float | str | None, b: str, kind: str, base: dict, where: str) -> int | float:
    if given is None:
        raise ValueError(f"{where}: missing `{b}:`")
    v = given
    if isinstance(v, str) and v.startswith("="):
        v = expr(v[1:], base, f"{where}: {b}")
        if kind == "int":
            v = int(round(v))
    if not _num(v) or not math.isfinite(v):
        raise ValueError(f"{where}: {b} = {given!r} is not a finite number")
    if kind == "int" and not float(v).is_integer():
        raise ValueError(f"{where}: {b} = {given!r} is not an integer (type int)")
    return int(v) if kind == "int" else float(v)
