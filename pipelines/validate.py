"""Stage `validate`: every value of params.yaml (with its profile, every study row and seed, the
tune section and its search space) and launch.yaml checked before any other stage runs.

The other stages depend on its output (through `prepare`), so `dvc repro` / `dvc exp run` with a
bad value stop here, before DVC removes any other stage's outputs. `dvc exp run -S key=value`
writes the value into params.yaml before any stage runs: the error then names it and says how to
restore the committed file. The output holds no parameter value, so a change that passes leaves
it byte-identical and re-runs no later stage by itself.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from dino_core.checkpoint import atomic_write_text

from .launch import load_launch_config
from .params import ROOT, grid_cells, load_all

log = logging.getLogger(__name__)
OK_TEXT = "params.yaml and launch.yaml passed pipelines/validate.py\n"


def validate(params_path: Path, root: Path = ROOT) -> int:
    """The number of grid cells checked; ValueError / FileNotFoundError on the first bad value."""
    from .tune.plan import make_plan   # optuna: imported only by the stages that use it

    params = load_all(params_path)
    cells = grid_cells(params, root)
    make_plan(params, root)
    load_launch_config(root / "launch.yaml")
    return len(cells)


def restore_hint(params_path: Path) -> str:
    """How to get the committed params.yaml back, when the file differs from git's HEAD (as after
    a failed `dvc exp run -S`); "" when it does not or git cannot tell."""
    try:
        r = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", params_path.name], cwd=params_path.parent,
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if r.returncode != 1:
        return ""
    return (f" ({params_path.name} differs from the last commit: if `dvc exp run -S` wrote this value, "
            f"restore the file with `git checkout {params_path.name}`)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.validate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "validated.txt")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        n = validate(args.params.resolve())
    except (ValueError, FileNotFoundError) as e:
        ap.error(f"{e}{restore_hint(args.params.resolve())}")
    log.info("params valid: %d grid cells, the tune plan and launch.yaml", n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, OK_TEXT)


if __name__ == "__main__":
    sys.exit(main())
