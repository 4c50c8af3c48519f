"""The whole DAG with real DVC on the tiny profile, in a temporary copy of the repo.

Cells run in-process (launcher executor `debug`) so a cell costs about a second.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = ["fig7_collapse", "center_momentum"]   # 7 rows, 6 unique cells (the default is shared)
CELLS = Path("results") / "store" / "cells"      # params.yaml grid.store
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")


def _dvc() -> list[str]:
    return [sys.executable, "-m", "dvc"]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ["dino_core", "pipelines", "ablations", "dvc.yaml", "launch.yaml", "params.yaml", ".dvcignore"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["grid"]["studies"] = STUDIES
    params["tune"].update(n_trials=2, epochs=2, startup_trials=1, pruner_startup_trials=1)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


@pytest.fixture()
def repo(copy: Path) -> Path:
    dst, env = copy, _env(copy)
    for cmd in (["git", "init", "-q"], _dvc() + ["init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True)
    return dst


def _env(repo: Path) -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"   # dvc runs `python`
    return {**os.environ, "PATH": path, "PYTHONPATH": str(repo), "DINO_LAUNCH_EXECUTOR": "debug", "DVC_NO_ANALYTICS": "1",
            "MPLBACKEND": "Agg"}


def _repro(repo: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(_dvc() + ["repro", *args], cwd=repo, env=_env(repo), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _done_cells(repo: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in (repo / CELLS).glob("*/DONE")}


def test_dag_end_to_end_reuse_and_one_cell_change(repo: Path) -> None:
    _repro(repo)
    cells = (repo / "results" / "cells.csv").read_text().splitlines()
    assert len(cells) == 1 + 7                       # header + 7 (study, row, seed) rows
    done = _done_cells(repo)
    assert len(done) == 6                            # identical cells across studies ran once
    for name in ["fig7_collapse", "center_momentum"]:
        assert (repo / "results" / "tables" / f"{name}.md").stat().st_size > 0
    # the exported default model: the teacher backbone, a bare state dict with the official key names
    import torch
    from dino_core.evaluate.checkpoint import backbone_state_dict
    model = torch.load(repo / "models" / "default.pth", map_location="cpu", weights_only=True)
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(backbone_state_dict(model))
    assert all(v.dtype == torch.float32 for v in model.values())
    att = json.loads((repo / "results" / "attention" / "attention.json").read_text())   # shapes has masks
    for key in ("jaccard_best_head", "random_init_jaccard_best_head"):
        assert 0.0 <= att[key] <= 100.0
    # nothing this profile reads changed (another profile's file did: each stage depends on
    # ablations/profiles/${profile}.yaml only): every stage is up to date, no cell recomputed
    other = repo / "ablations" / "profiles" / "quick.yaml"
    other.write_text(other.read_text() + "optim: {lr: 0.001}\n")
    t0 = time.time()
    r = _repro(repo)
    assert "didn't change, skipping" in r.stdout or "up to date" in r.stdout
    assert time.time() - t0 < 60 and _done_cells(repo) == done
    # one row's parameter changes: only that cell is recomputed
    path = repo / "ablations" / "center_momentum.yaml"
    study = yaml.safe_load(path.read_text())
    study["rows"][0]["diff"]["loss"]["center_momentum"] = 0.5
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    _repro(repo)
    after = _done_cells(repo)
    new = set(after) - set(done)
    assert len(new) == 1
    assert all(after[h] == done[h] for h in done if h in after)
    # the wall time of each grid invocation reaches results/README.md (the skipped one has none)
    runs = json.loads((repo / "results" / "env.json").read_text())["grid_runs"]
    assert [(r["cells_run"], r["cells_reused"], r["failed"]) for r in runs] == [(6, 0, 0), (1, 5, 0)]
    assert all(r["wall_time_s"] > 0 and r["started"] <= r["finished"] for r in runs)
    readme = (repo / "results" / "README.md").read_text()
    assert "The grid stage ran 2 time(s)" in readme and "1 cell(s) run, 5 reused, 0 failed" in readme
    # an evaluation parameter changes: every current cell is re-evaluated, none re-trained
    cells_dir = repo / CELLS
    current = set(pd.read_csv(repo / "results" / "cells.csv")["cell"])
    ckpts = {h: (cells_dir / h / "checkpoint.pth").stat().st_mtime for h in after}
    keys = {h: json.loads((cells_dir / h / "eval.json").read_text())["eval_key"] for h in current}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"]["attn_threshold"] = 0.5       # not read by the tune objective: tune stays done
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _repro(repo)
    assert _done_cells(repo) == after
    assert {h: (cells_dir / h / "checkpoint.pth").stat().st_mtime for h in after} == ckpts
    new_keys = {h: json.loads((cells_dir / h / "eval.json").read_text())["eval_key"] for h in current}
    assert len(set(new_keys.values())) == 1 and not set(new_keys.values()) & set(keys.values())
    last = json.loads((repo / "results" / "env.json").read_text())["grid_runs"][-1]
    assert (last["cells_run"], last["cells_reevaluated"], last["cells_reused"]) == (0, 6, 0)
    assert "0 cell(s) run, 0 reused, 6 re-evaluated" in (repo / "results" / "README.md").read_text()


def test_killed_grid_loses_no_finished_cell(repo: Path) -> None:
    subprocess.run(_dvc() + ["repro", "prepare"], cwd=repo, env=_env(repo), check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.grid", "--params", "params.yaml"], cwd=repo,
                            env=_env(repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(_done_cells(repo)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _done_cells(repo)
    assert 2 <= len(before) < 6, "kill the grid while cells remain"
    for h in before:                                 # a DONE cell is complete
        for name in ("eval.json", "collapse.json", "teacher_backbone.pth", "checkpoint.pth"):
            assert (repo / CELLS / h / name).is_file()
    _repro(repo)
    after = _done_cells(repo)
    assert len(after) == 6 and all(after[h] == before[h] for h in before)


@pytest.mark.parametrize("edit, needle", [
    ({"loss": {"teacher_temp": -1.0}}, "loss.teacher_temp"),
    ({"loss": {"bogus": 1}}, "bogus"),
    ({"train": {"saveckp_freq": "ten"}}, "train.saveckp_freq"),
    ({"data": {"dataset": "imagenet21k"}}, "allowed"),
    ({"grid": {"studies": ["no_such_study"]}}, "no_such_study"),
])
def test_bad_params_stop_before_any_cell(copy: Path, edit: dict, needle: str) -> None:
    repo = copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in edit.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if "data" in edit:   # the tiny profile sets the dataset: the bad name must reach the resolved config
        profile = repo / "ablations" / "profiles" / "tiny.yaml"
        diff = yaml.safe_load(profile.read_text())
        diff["data"].update(edit["data"])
        profile.write_text(yaml.safe_dump(diff, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "pipelines.grid", "--params", "params.yaml"], cwd=repo,
                       env=_env(repo), capture_output=True, text=True)
    assert r.returncode != 0 and needle in r.stderr
    assert not (repo / CELLS).exists()


# ----- grid drivers and cell locks: real processes ------------------------------------------------
EPOCHS_LOCKED = 80   # ~30 s per tiny cell: it outlives the ~10 s a new driver needs to reach it


def _grid_copy(copy: Path) -> Path:
    """The copy with one study (3 cells), longer cells and prepared data, run by local processes."""
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["grid"]["studies"] = ["fig7_collapse"]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    profile = copy / "ablations" / "profiles" / "tiny.yaml"
    diff = yaml.safe_load(profile.read_text())
    diff["train"]["epochs"] = EPOCHS_LOCKED
    profile.write_text(yaml.safe_dump(diff, sort_keys=False))
    launch = yaml.safe_load((copy / "launch.yaml").read_text())
    launch.update(poll_s=0.5, max_parallel=2)
    (copy / "launch.yaml").write_text(yaml.safe_dump(launch, sort_keys=False))
    subprocess.run([sys.executable, "-m", "pipelines.prepare", "--params", "params.yaml"], cwd=copy,
                   env=_env(copy), check=True, capture_output=True)
    return copy


def _driver(repo: Path, log: Path) -> subprocess.Popen:
    env = {**_env(repo), "DINO_LAUNCH_EXECUTOR": "local", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.grid", "--params", "params.yaml"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _training_cells(repo: Path) -> list[Path]:
    """Cells that have logged an epoch and are not finished."""
    return [c for c in (repo / CELLS).glob("*") if (c / "log.jsonl").is_file() and not (c / "DONE").exists()]


def _log_sizes(repo: Path) -> dict[str, int]:
    return {c.name: (c / "log.jsonl").stat().st_size for c in (repo / CELLS).glob("*")
            if (c / "log.jsonl").is_file()}


def _wait(pred, timeout_s: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout_s, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.1)


def _epochs_logged(cell: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (cell / "log.jsonl").read_text().splitlines()]


def test_killed_driver_cells_are_rejoined_never_trained_twice(copy: Path, tmp_path: Path) -> None:
    """kill -9 of the driver leaves its cells running; a new driver waits for them under their
    locks and reuses their results: every cell's log holds each epoch exactly once (a second
    trainer in the same folder appends a second run of epochs)."""
    repo = _grid_copy(copy)
    first = _driver(repo, tmp_path / "first.log")
    _wait(lambda: _training_cells(repo), 240, "a cell to train")
    first.send_signal(signal.SIGKILL)   # the driver only: its cell processes live on
    first.wait()
    orphans = _training_cells(repo)
    assert orphans, "kill the driver while a cell trains"
    second = _driver(repo, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    cells = sorted((repo / CELLS).glob("*"))
    assert len(cells) == 3
    for cell in cells:
        assert (cell / "DONE").is_file()
        assert _epochs_logged(cell) == list(range(EPOCHS_LOCKED)), cell.name
    log = (tmp_path / "second.log").read_text()
    assert "is being trained by pid" in log and "waits for it and reuses the result" in log


def test_terminated_driver_stops_its_cells(copy: Path, tmp_path: Path) -> None:
    """SIGTERM (what `kill`, systemd and SLURM send) stops the driver and cancels its cells: within
    seconds no process holds a cell's lock; the next driver resumes them and finishes the grid."""
    repo = _grid_copy(copy)
    first = _driver(repo, tmp_path / "first.log")
    _wait(lambda: _training_cells(repo), 240, "a cell to train")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) != 0
    sizes = _log_sizes(repo)
    time.sleep(5)   # a cell still training logs an epoch every ~0.4 s
    assert _log_sizes(repo) == sizes
    assert not any((c / "DONE").is_file() for c in (repo / CELLS).glob("*"))
    second = _driver(repo, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    for cell in (repo / CELLS).glob("*"):
        assert _epochs_logged(cell) == list(range(EPOCHS_LOCKED)), cell.name


def test_bad_value_from_dvc_exp_run_removes_no_output(repo: Path) -> None:
    """`dvc exp run -S optim.lr=abc` writes `lr: abc` into params.yaml, then runs the DAG: the
    validate stage, on which every other depends, stops it before DVC removes results/grid.csv,
    and its error names the value and how to restore params.yaml."""
    _repro(repo, "grid")
    env = _env(repo)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "grid"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    grid = (repo / "results" / "grid.csv").read_bytes()
    r = subprocess.run(_dvc() + ["exp", "run", "-S", "optim.lr=abc"], cwd=repo, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "optim.lr: expected a number, got 'abc'" in out and "git checkout params.yaml" in out, out[-3000:]
    assert (repo / "results" / "grid.csv").read_bytes() == grid
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())   # the same through `dvc repro`
    params["loss"]["teacher_temp"] = -1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = subprocess.run(_dvc() + ["repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "loss.teacher_temp: -1.0 is out of range" in r.stdout + r.stderr
    assert (repo / "results" / "grid.csv").read_bytes() == grid


# ----- one cell (pipelines/cell.py run_cell, in-process) and pipelines.eval_checkpoint -------------


def _cell_params(data: Path, epochs: int = 2) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import tiny_config
    return tiny_config(data={"dataset": "shapes", "root": str(data), "image_size": 16, "num_train": 64, "num_val": 32,
                             "download": False}, train={"epochs": epochs},
                       eval={"knn_k": [5], "batch_size": 64, "linear_epochs": 0}).to_dict()


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory) -> Path:
    from dino_core.data.shapes import prepare_shapes
    root = tmp_path_factory.mktemp("cell") / "shapes"
    prepare_shapes(root, num_train=64, num_val=32, image_size=16)
    return root


def test_grid_cell_folder_of_another_config_is_refused(tmp_path, shapes16, one_thread):
    from dino_core.config import Config, save_config
    from pipelines.cell import run_cell
    from pipelines.run_folder import RunMismatch
    params = _cell_params(shapes16)
    cell = tmp_path / "cell"
    cell.mkdir()
    save_config(Config.from_dict(_cell_params(shapes16, epochs=3)), cell / "config.yaml")   # e.g. a copied folder
    with pytest.raises(RunMismatch, match=r"1 key\(s\) differ: train\.epochs: 3 -> 2"):
        run_cell(str(cell), params)
    assert sorted(p.name for p in cell.iterdir()) == ["config.yaml"]


def test_a_cell_that_failed_in_evaluation_never_reads_ok(tmp_path, shapes16, one_thread):
    """Training ends, the evaluation dies (its val split is gone): metrics.json says eval_failed
    with the error and no DONE is written; once the data is back, a rerun evaluates without
    re-training and the cell reads ok."""
    from pipelines.cell import run_cell
    data = tmp_path / "shapes"
    shutil.copytree(shapes16, data)
    shutil.move(data / "val", tmp_path / "val")   # only the evaluation reads the val split
    cell = tmp_path / "cell"
    with pytest.raises(FileNotFoundError):
        run_cell(str(cell), _cell_params(data))
    metrics = json.loads((cell / "metrics.json").read_text())
    assert (metrics["status"], metrics["train_status"]) == ("eval_failed", "ok")
    assert str(data / "val") in metrics["eval_error"] and not (cell / "DONE").exists()
    trained = (cell / "checkpoint.pth").stat().st_mtime_ns
    shutil.move(tmp_path / "val", data / "val")
    summary = run_cell(str(cell), _cell_params(data))
    assert summary["status"] == "ok" and "knn5_top1" in summary
    assert (cell / "checkpoint.pth").stat().st_mtime_ns == trained
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["status"] == "ok" and "train_status" not in metrics and "eval_error" not in metrics


def test_eval_checkpoint_tells_not_a_checkpoint_and_checks_out_first(tmp_path):
    import torch
    text = tmp_path / "notes.yaml"
    text.write_text("model: {arch: vit_small}\n")
    ckpt = tmp_path / "ok.pth"
    torch.save({"teacher": {}}, ckpt)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipelines.eval_checkpoint", *a], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    for trusted in ([], ["--trusted"]):
        r = run(str(text), "--out", str(tmp_path / "m.json"), *trusted)
        assert r.returncode == 2 and "notes.yaml: not a checkpoint (neither of torch.save's formats)" in r.stderr
        assert "--trusted" not in r.stderr.splitlines()[-1]
    r = run(str(ckpt), "--out", str(tmp_path))
    assert r.returncode == 2 and f"--out {tmp_path}: {tmp_path} is a folder" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.yaml", "ok.pth"]   # no .tmp left


def test_grid_reports_bad_data_before_any_cell(copy: Path) -> None:
    repo = copy
    subprocess.run([sys.executable, "-m", "pipelines.prepare", "--params", "params.yaml"], cwd=repo, env=_env(repo),
                   check=True, capture_output=True)
    bad = sorted((repo / "data" / "prepared" / "shapes" / "val" / "images").glob("*/*.png"))[0]
    bad.write_bytes(b"not a png")
    r = subprocess.run([sys.executable, "-m", "pipelines.grid", "--params", "params.yaml"], cwd=repo,
                       env=_env(repo), capture_output=True, text=True)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "1 unreadable image(s)" in last and bad.name in last and "data.skip_corrupt" in last
    assert not (repo / "runs").exists()
