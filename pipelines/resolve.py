"""Stage `resolve`: the parameters a stage computes with, written where DVC and a reader see them.

    python -m pipelines.resolve --params params.yaml [--set SECTION.KEY=VALUE ...] [--out results/params.yaml]

params.yaml with its profile (ablations/profiles/<name>.yaml) and the --set values applied, validated;
`dvc params diff` / `dvc exp show` then list the values a profile changes, not only its name
(docs/dvc-views.md). `dino params` is the same command.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from dino_core.checkpoint import atomic_write_text
from dino_core.config import merge

from .params import ROOT, apply_profile, load_all, resolve_profile
from .pretrain import parse_override

log = logging.getLogger(__name__)


def resolved_params(params_path: str | Path, overrides: list[str], root: Path = ROOT) -> dict:
    """params.yaml with the --set values (pipeline sections and profile included), validated.

    A value the profile also sets wins over the profile: the profile is then applied here and the
    stage is handed the resolved values under the empty profile `default`. Raises ValueError
    naming the key when it is unknown or its value invalid."""
    params = load_all(params_path)
    parsed = [parse_override(o) for o in overrides]
    for parts, value in parsed:             # the profile first, as its diff decides what --set must beat
        if parts == ["profile"]:
            params = _set(params, parts, value, params_path)
    others = [(parts, value) for parts, value in parsed if parts != ["profile"]]
    for parts, value in others:
        params = _set(params, parts, value, params_path)
    name = params.get("profile", "default")
    path = root / "ablations" / "profiles" / f"{name}.yaml"   # an unknown name: resolve_profile names it
    diff = (yaml.safe_load(path.read_text()) or {}) if isinstance(name, str) and path.is_file() else {}
    beaten = [".".join(parts) for parts, _ in others if _has(diff, parts)]
    if beaten:
        applied = apply_profile(params, root)
        for parts, value in others:
            applied = _set(applied, parts, value, params_path)
        params = {**applied, "profile": "default"}
        log.info("profile %s applied with --set %s over it; the stage reads the resolved values "
                 "(profile default, the empty diff)", name, ", ".join(beaten))
    resolve_profile(params, root)             # validates the core sections as the stage will read them
    return params


def _set(params: dict, parts: list[str], value: object, params_path: str | Path) -> dict:
    try:
        return merge(params, _nest(parts, value), str(params_path))
    except ValueError as e:
        raise ValueError(f"--set {'.'.join(parts)}={value!r}: {e}") from None


def _has(d: dict, parts: list[str]) -> bool:
    for p in parts:
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return True


def _nest(parts: list[str], value: object) -> dict:
    out: object = value
    for p in reversed(parts):
        out = {p: out}
    return out  # type: ignore[return-value]


def view(params: dict, profile: str, root: Path = ROOT) -> dict:
    """What the stages compute with: the profile chosen, the core sections and `grid` with the profile
    applied, and `tune` (the file DVC reads as the resolved parameters, see docs/dvc-views.md)."""
    applied = apply_profile(params, root)
    out = {"profile": profile, **resolve_profile(params, root)}
    out.update({k: applied[k] for k in ("grid", "tune") if k in applied})
    return out


def resolved_with_profile(params_path: str | Path, overrides: list[str]) -> tuple[dict, str]:
    """(resolved_params, the profile name chosen: the last --set profile=..., else params.yaml's)."""
    params = resolved_params(params_path, overrides)
    chosen = next((parse_override(o)[1] for o in reversed(overrides) if o.split("=")[0].strip() == "profile"),
                  load_all(params_path).get("profile", "default"))
    return params, chosen


def write_view(params: dict, profile: str, out: str | None) -> None:
    """The view as YAML, to ``out`` (written atomically) or to stdout."""
    text = yaml.safe_dump(view(params, profile), sort_keys=False)
    if out:
        atomic_write_text(Path(out), text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", help="write the YAML here instead of printing it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params, chosen = resolved_with_profile(args.params, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    write_view(params, chosen, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
