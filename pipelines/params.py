"""params.yaml -> resolved configs: profile, study diffs, seeds. Everything is validated
before any cell runs; errors name the file, the key, the value and the allowed values.

A profile (`profile:` in params.yaml) is a diff in ablations/profiles/<name>.yaml applied to
the core sections. Study rows are diffs too; a string value "=<expr>" is computed from the
profile's values, e.g. "=0.3*train.epochs" or "=head.out_dim/64" (rounded for integer keys).
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from pathlib import Path

import yaml

from dino_core.config import Config, load_params, merge

from .protocol import load_protocol, row_seeds

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_SECTIONS = ("profile", "grid", "tune")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def core_dict(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in PIPELINE_SECTIONS}


def apply_profile(params: dict, root: Path = ROOT) -> dict:
    """params with the profile's diff applied (it may change core sections and `grid`)."""
    name = params.get("profile", "default")
    if not isinstance(name, str):
        raise ValueError(f"params.yaml: profile must be a name, got {name!r}")
    path = root / "ablations" / "profiles" / f"{name}.yaml"   # default.yaml: the empty diff
    if not path.is_file():
        allowed = sorted(p.stem for p in (root / "ablations" / "profiles").glob("*.yaml"))
        raise ValueError(f"params.yaml: profile {name!r} not found ({path}); allowed: {allowed}")
    return merge(params, yaml.safe_load(path.read_text()) or {}, str(path))


def resolve_profile(params: dict, root: Path = ROOT) -> dict:
    """Core sections of params with the profile's diff applied (validated)."""
    core = core_dict(apply_profile(params, root))
    Config.from_dict(core, source=f"params.yaml (profile {params.get('profile', 'default')})")
    return core


def expr(text: str, base: dict, where: str) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            try:
                return base[node.value.id][node.attr]
            except KeyError:
                raise ValueError(f"{where}: unknown key {node.value.id}.{node.attr} in {text!r}") from None
        raise ValueError(f"{where}: unsupported expression {text!r} (numbers, + - * /, section.key)")
    return ev(ast.parse(text, mode="eval").body)


def apply_diff(base: dict, diff: dict, where: str) -> dict:
    """merge() with "=expr" values computed from `base`."""
    def resolve(d: dict, b: dict, path: str) -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = resolve(v, b.get(k, {}), f"{path}.{k}")
            elif isinstance(v, str) and v.startswith("="):
                val = expr(v[1:], base, f"{path}.{k}")
                out[k] = int(round(val)) if isinstance(b.get(k), int) else val
            else:
                out[k] = v
        return out
    return merge(base, resolve(diff, base, where), where)


@dataclass(frozen=True)
class Cell:
    study: str
    row: str
    seed: int
    params: dict


def load_study(name: str, root: Path = ROOT) -> dict:
    path = root / "ablations" / f"{name}.yaml"
    if not path.is_file():
        allowed = sorted(p.stem for p in (root / "ablations").glob("*.yaml"))
        raise ValueError(f"params.yaml: grid.studies: unknown study {name!r}; allowed: {allowed}")
    study = yaml.safe_load(path.read_text())
    names = [r["name"] for r in study["rows"]]
    if study["default"] not in names:
        raise ValueError(f"{path}: default row {study['default']!r} is not one of {names}")
    study["path"] = str(path)
    return study


def grid_cells(params: dict, root: Path = ROOT) -> list[Cell]:
    """Every (study, row, seed) of grid.studies x grid.seeds (a list, or 'protocol': the seeds
    ablations/protocol.yaml gives each row), each validated."""
    grid = apply_profile(params, root).get("grid")
    if not isinstance(grid, dict) or set(grid) != {"studies", "seeds", "store"}:
        raise ValueError("params.yaml: grid must have exactly the keys studies, seeds, store")
    seeds = grid["seeds"]
    if seeds != "protocol" and (not isinstance(seeds, list) or not seeds
                                or not all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise ValueError(f"params.yaml: grid.seeds must be 'protocol' (ablations/protocol.yaml) or a non-empty "
                         f"list of integers >= 0, got {seeds!r}")
    protocol = load_protocol(root) if seeds == "protocol" else None
    base = resolve_profile(params, root)
    cells = []
    for name in grid["studies"]:
        study = load_study(name, root)
        for row in study["rows"]:
            where = f"{study['path']}: row {row['name']}"
            resolved = apply_diff(base, row.get("diff") or {}, where)
            for seed in (row_seeds(protocol, study, row) if protocol else seeds):
                p = merge(resolved, {"train": {"seed": seed}})
                Config.from_dict(p, source=where)
                cells.append(Cell(name, row["name"], seed, p))
    return cells


def load_all(path: str | Path = ROOT / "params.yaml") -> dict:
    params = load_params(path)
    unknown = set(params) - set(PIPELINE_SECTIONS) - {f for f in Config.__dataclass_fields__}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}")
    return params
