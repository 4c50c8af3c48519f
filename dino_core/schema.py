"""Validation of the YAML files (params.yaml, launch.yaml, the tune section and search space): a
dataclass declares each key, its type (the annotation) and what is allowed (``spec``).

``spec(lo, hi, choices, open_lo, open_hi=, pattern=, default=)`` declares a field's range, choices
or string pattern, and a default for a key that may be left out; ``build(cls, raw, where)`` checks
a YAML mapping against the dataclass (unknown / missing keys, type, range, choices, pattern) and
builds it. Types: bool, int, float, str, Any, ``X | None``, a union of scalars, tuples (a YAML list),
nested dataclasses (a YAML mapping) and ``tuple[tuple[str, V], ...]`` (a YAML mapping kept as
sorted pairs, so that a frozen config stays hashable). ``check_cross_fields(cfg)`` checks what
only keys of params.yaml together can say (patch vs crop sizes, heads vs width).
Every error names the file, the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import types
import typing
from dataclasses import field
from typing import Any

INF = float("inf")
# String patterns for spec(pattern=...): (regex the whole value must match, what it allows).
NAME = (r"[A-Za-z0-9_.\-]+", "a name of [A-Za-z0-9_.-]")
NON_EMPTY = (r"(?s).*\S.*", "a non-empty string")

_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null",
               datetime.date: "a date"}
_YAML_EXPONENT = re.compile(r"[+-]?\d+[eE][+-]?\d+")   # YAML 1.1 reads 1e-4 (no dot) as a string


def spec(lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
         open_lo: bool = False, *, open_hi: bool = False, pattern: tuple[str, str] | None = None,
         default: Any = dataclasses.MISSING) -> Any:
    """A field with validation metadata: range [lo, hi] (open at an end with open_lo / open_hi),
    choices, a (regex, description) pattern; with a default the key may be left out."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "open_lo": open_lo, "open_hi": open_hi, "pattern": pattern}
    return field(default=default, metadata=meta)


def key_of(where: str, name: str) -> str:
    """The full name of key `name` of the mapping at `where`: ``file:name`` for a file's top
    level, ``file:section.name`` below it."""
    return f"{where}.{name}" if ":" in where else f"{where}:{name}"


def build(cls: type, raw: Any, where: str) -> Any:
    """The dataclass `cls` from the mapping `raw` (the mapping at `where`), every field checked."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        given = ", ".join(f"{key_of(where, str(k))} = {raw[k]!r}" for k in unknown)
        raise ValueError(f"{where}: unknown key(s) {unknown} ({given}); allowed: {sorted(fields)}")
    missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: check(key_of(where, k), raw[k], hints[k], f.metadata) for k, f in fields.items() if k in raw})


def check(key: str, value: Any, typ: Any, meta: dict) -> Any:
    """`value` of `key` checked against its type hint and spec(); returns it converted (lists ->
    tuples, integers -> floats for a number, mappings -> their dataclass)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        arms = typing.get_args(typ)
        typ = next((a for a in arms if _matches(value, a)), None)
        if typ is None:
            *most, last = [_type_name(a) for a in arms]
            raise ValueError(f"{key}: expected {', '.join(most)} or {last}, got {value!r}")
    elif not _matches(value, typ):
        raise ValueError(f"{key}: expected {_type_name(typ)}, got {value!r}")
    if value is None or typ is Any:
        return value
    if dataclasses.is_dataclass(typ):
        return build(typ, value, key)
    if _is_pairs(typ):
        return _check_pairs(key, value, typing.get_args(typing.get_args(typ)[0])[1], meta)
    if typing.get_origin(typ) is tuple:
        return _check_tuple(key, value, typing.get_args(typ), meta)
    return _check_allowed(key, float(value) if typ is float else value, meta)


def _is_pairs(typ: Any) -> bool:
    """``tuple[tuple[str, V], ...]``: a YAML mapping of names to values of type V."""
    args = typing.get_args(typ)
    return (typing.get_origin(typ) is tuple and len(args) == 2 and args[1] is Ellipsis
            and typing.get_origin(args[0]) is tuple and typing.get_args(args[0])[0] is str
            and len(typing.get_args(args[0])) == 2)


def _matches(value: Any, typ: Any) -> bool:
    """Whether `value`, as YAML read it, has the type `typ` (bool is never a number: true for a
    count is a typo)."""
    if typ is Any:
        return True
    if dataclasses.is_dataclass(typ) or _is_pairs(typ):
        return isinstance(value, dict)
    if typing.get_origin(typ) is tuple:
        return isinstance(value, (list, tuple))
    if typ is type(None):
        return value is None
    if typ is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if typ is float:
        return isinstance(value, (int, float)) or (isinstance(value, str) and bool(_YAML_EXPONENT.fullmatch(value)))
    return isinstance(value, typ)


def _type_name(typ: Any) -> str:
    if dataclasses.is_dataclass(typ) or _is_pairs(typ):
        return "a mapping"
    if typing.get_origin(typ) is tuple:
        return "a list"
    return _TYPE_NAMES.get(typ, getattr(typ, "__name__", str(typ)))


def _check_tuple(key: str, value: Any, args: tuple, meta: dict) -> tuple:
    n = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)
    if n is not None and len(value) != n:
        raise ValueError(f"{key}: expected {n} values, got {len(value)} ({value!r})")
    if n is None and not value:
        raise ValueError(f"{key}: expected at least one value, got an empty list")
    elem = args[0]
    out = tuple(check(f"{key}[{i}]", v, elem, meta) for i, v in enumerate(value))
    if n == 2 and elem is float and "scale" in key and out[0] > out[1]:
        raise ValueError(f"{key}: lower bound {out[0]} > upper bound {out[1]} in {list(value)!r}; "
                         f"allowed: [lower, upper] with lower <= upper, each in [{meta['lo']}, {meta['hi']}]")
    return out


def _check_pairs(key: str, value: dict, value_type: Any, meta: dict) -> tuple:
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{key}: key {bad[0]!r} is not a string; allowed: a mapping of names to values")
    return tuple(sorted((k, check(f"{key}.{k}", v, value_type, meta)) for k, v in value.items()))


def _check_allowed(key: str, value: Any, meta: dict) -> Any:
    """`value` against the choices, pattern and range of its spec(). A spec with both choices and
    a range (a word or a number, e.g. "auto" or a count >= 1) checks words against the choices and
    numbers against the range."""
    choices, pattern, lo, hi = meta.get("choices"), meta.get("pattern"), meta.get("lo"), meta.get("hi")
    either = choices is not None and lo is not None
    lb, rb = "(" if meta.get("open_lo") else "[", ")" if meta.get("open_hi") else "]"
    allowed = f"; allowed: {list(choices)} or a number in {lb}{lo}, {hi}{rb}" if either else ""
    if either:
        choices, lo = (choices, None) if isinstance(value, str) else (None, lo)
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: {value!r} is not allowed" + (allowed or f"; allowed: {list(choices)}"))
    if pattern is not None and not re.fullmatch(pattern[0], value):
        raise ValueError(f"{key}: {value!r} is not allowed; allowed: {pattern[1]}")
    if lo is not None:
        low_bad = value <= lo if meta.get("open_lo") else value < lo
        high_bad = value >= hi if meta.get("open_hi") else value > hi
        if low_bad or high_bad or value != value:   # value != value: NaN passes both comparisons
            raise ValueError(f"{key}: {value!r} is out of range {lb}{lo}, {hi}{rb}{allowed}")
    return value


def check_cross_fields(cfg: Any, source: str = "params") -> None:
    """Checks between keys that each pass alone: a ViT cuts every view into whole patches (a
    patch that does not divide a crop silently drops the border), and splits its width evenly
    over the heads. ValueError naming the keys, their values and what is allowed."""
    m, c = cfg.model, cfg.crops
    sizes = {"crops.global_size": c.global_size, "crops.local_size": c.local_size,
             "data.image_size": cfg.data.image_size}
    if c.local_number == 0:
        sizes.pop("crops.local_size")   # no local views are cut
    bad = {k: v for k, v in sizes.items() if v % m.patch_size}
    if bad:
        common = [p for p in range(1, min(sizes.values()) + 1) if all(v % p == 0 for v in sizes.values())]
        raise ValueError(f"{source}: model.patch_size: {m.patch_size} does not divide "
                         f"{', '.join(f'{k} {v}' for k, v in bad.items())} (the border would be dropped); "
                         f"allowed: a divisor of every crop size, {common}")
    if m.arch == "vit_custom" and m.embed_dim % m.num_heads:
        divisors = [h for h in range(1, 65) if m.embed_dim % h == 0]
        raise ValueError(f"{source}: model.num_heads: {m.num_heads} does not divide model.embed_dim "
                         f"{m.embed_dim}; allowed: a divisor of embed_dim, {divisors}")
