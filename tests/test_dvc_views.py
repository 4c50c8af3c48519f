"""DVC's views of the experiment: `dvc params diff` lists what a profile changes (real git + DVC on
a copy of the pipeline files), and the views stage's metrics and curves per study row."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.views import collapse_epochs, row_curves, row_metrics, write_views

ROOT = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")


def sh(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r.stdout


def set_profile(repo: Path, name: str) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "profile": name}, sort_keys=False))
    sh(repo, sys.executable, "-m", "pipelines.cli", "params", "--params", "params.yaml", "--out", "results/params.yaml")


@pytest.mark.skipif(not Path(DVC).exists() or shutil.which("git") is None, reason="needs dvc and git")
def test_dvc_params_diff_between_profiles_lists_the_values_that_differ(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "ablations" / "profiles", repo / "ablations" / "profiles")
    sh(repo, "git", "init", "-q")
    sh(repo, DVC, "init", "-q")
    set_profile(repo, "quick")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "quick")
    set_profile(repo, "tiny")
    diff = json.loads(sh(repo, DVC, "params", "diff", "--json"))
    diff = {path: {k: {"old": v["old"], "new": v["new"]} for k, v in d.items()} for path, d in diff.items()}
    assert diff["params.yaml"] == {"profile": {"old": "quick", "new": "tiny"}}   # all DVC saw before
    resolved = diff["results/params.yaml"]
    assert resolved["profile"] == {"old": "quick", "new": "tiny"}
    assert resolved["model.embed_dim"] == {"old": 128, "new": 32}
    assert resolved["train.epochs"] == {"old": 20, "new": 2}
    assert resolved["head.use_bn"] == {"old": True, "new": False}
    assert resolved["grid.seeds"] == {"old": "protocol", "new": "[0]"}         # DVC shows lists as text
    assert "optim.lr" not in resolved                                   # unchanged values stay out


def _cells_and_curves(ln_k: float = math.log(64)) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = pd.DataFrame([
        {"study": "s", "row": "dino", "seed": 0, "cell": "a", "ln_k": ln_k, "collapsed": False,
         "knn20_top1": 60.0, "linear_top1": 70.0},
        {"study": "s", "row": "dino", "seed": 1, "cell": "b", "ln_k": ln_k, "collapsed": False,
         "knn20_top1": 62.0, "linear_top1": 72.0},
        {"study": "s", "row": "flat", "seed": 0, "cell": "c", "ln_k": ln_k, "collapsed": True,
         "knn20_top1": 10.0, "linear_top1": 20.0},
    ])
    rows = []
    for cell, row, seed in (("a", "dino", 0), ("b", "dino", 1), ("c", "flat", 0)):
        for epoch in range(5):
            at = 1.0 if cell == "c" and epoch >= 1 else 0.5   # c sits at ln K from epoch 1: 4 epochs
            rows.append({"study": "s", "row": row, "seed": seed, "cell": cell, "epoch": epoch,
                         "loss": at * ln_k, "teacher_entropy": at * ln_k, "teacher_batch_entropy": ln_k})
    return cells, pd.DataFrame(rows)


def test_metrics_are_means_over_seeds_per_study_and_row():
    cells, curves = _cells_and_curves()
    got = row_metrics(cells, collapse_epochs(curves, cells))
    assert got == {"s": {"dino": {"knn20_top1": 61.0, "linear_top1": 71.0, "collapsed": 0.0, "collapse_epochs": 0.0},
                         "flat": {"knn20_top1": 10.0, "linear_top1": 20.0, "collapsed": 1.0, "collapse_epochs": 4.0}}}


def test_curves_have_one_line_per_row_in_fractions_of_ln_k(tmp_path):
    cells, curves = _cells_and_curves()
    table = row_curves(curves, cells)["s"]
    assert list(table.columns) == ["epoch", "row", "teacher_entropy", "loss"]
    assert table.groupby("row").size().to_dict() == {"dino": 5, "flat": 5}     # seeds averaged
    assert table[table.row == "flat"].teacher_entropy.tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    cells.to_csv(tmp_path / "cells.csv", index=False)
    curves.to_csv(tmp_path / "curves.csv", index=False)
    (tmp_path / "dvc" / "curves").mkdir(parents=True)
    (tmp_path / "dvc" / "curves" / "gone.csv").write_text("epoch,row\n")   # a study no longer in the grid
    write_views(tmp_path, tmp_path / "dvc")
    assert sorted(p.name for p in (tmp_path / "dvc" / "curves").iterdir()) == ["s.csv"]
    assert json.loads((tmp_path / "dvc" / "metrics.json").read_text())["s"]["flat"]["collapse_epochs"] == 4.0
