"""Validation of params.yaml values: every config field carries its allowed range or choices.

``spec(lo, hi, choices)`` declares them on a dataclass field; ``build(cls, raw, where)`` checks a
YAML mapping against the dataclass (unknown / missing keys, type, range, choices) and builds it;
``check_cross_fields(cfg)`` checks what only keys together can say (patch vs crop sizes, heads vs width).
Every error names the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import field
from typing import Any

INF = float("inf")


def spec(lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
         open_lo: bool = False) -> Any:
    """A field with validation metadata: closed range [lo, hi] (or (lo, hi] if open_lo)."""
    return field(metadata={"lo": lo, "hi": hi, "choices": choices, "open_lo": open_lo})


def build(cls: type, raw: Any, where: str) -> Any:
    """The dataclass `cls` from the mapping `raw` (the section at `where`), every field checked."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    missing = set(fields) - set(raw)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: check(f"{where}.{k}", raw[k], hints[k], fields[k].metadata) for k, f in fields.items()})


def check(key: str, value: Any, typ: Any, meta: dict) -> Any:
    """`value` of `key` checked against its type hint and spec(); returns it converted (lists -> tuples)."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
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
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value):
            value = float(value)   # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif typ is str and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: {value!r} is not allowed; allowed: {list(choices)}")
    if lo is not None:
        low_bad = value <= lo if meta.get("open_lo") else value < lo
        if low_bad or value > hi or value != value:   # value != value: NaN passes both comparisons
            lb = "(" if meta.get("open_lo") else "["
            raise ValueError(f"{key}: {value!r} is out of range {lb}{lo}, {hi}]")
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
