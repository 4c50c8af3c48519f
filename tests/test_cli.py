"""`dino` (pipelines/cli.py): one entry point, one override style (--set SECTION.KEY=VALUE) for every
stage that reads params.yaml; a real tiny pretrain and a real tiny tune through it."""
from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dino_core.config import load_params, merge
from dino_core.data.shapes import prepare_shapes
from helpers import PARAMS, TINY
from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
PARAM_COMMANDS = sorted(n for n, c in cli.COMMANDS.items() if c.params)
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def dry_run(capsys, *argv: str) -> dict:
    assert cli.main([*argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_pyproject_installs_the_dino_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert EntryPoint("dino", scripts["dino"], "console_scripts").load() is cli.main


def test_every_stage_reading_params_lists_the_same_set_syntax(capsys):
    assert PARAM_COMMANDS == ["budget", "cost", "eval", "grid", "params", "precision", "prepare", "pretrain", "tune"]
    for name in PARAM_COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and "--set SECTION.KEY=VALUE" in text, name
        assert "loss.teacher_temp=0.04" in text     # the knobs' advice, where the user meets them


@pytest.mark.parametrize("command", PARAM_COMMANDS)
def test_set_reaches_every_stage_and_wins_over_the_profile(capsys, command):
    got = dry_run(capsys, command, "--set", "profile=tiny", "--set", "optim.lr=0.002", "--set", "train.epochs=3",
                  "--set", "grid.seeds=[0,1]", "--set", "tune.n_trials=5")
    assert got["profile"] == "tiny" and got["model"]["embed_dim"] == 32        # the profile applied
    assert got["optim"]["lr"] == 0.002 and got["train"]["epochs"] == 3         # tiny sets epochs 2: --set wins
    assert got["grid"]["seeds"] == [0, 1] and got["tune"]["n_trials"] == 5


@pytest.mark.parametrize("command", PARAM_COMMANDS)
@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key 'lrr'"),
    ("optim.lr=abc", "optim.lr: expected a number, got 'abc'"),
    ("profile=nope", "profile 'nope' not found"),
    ("optim.lr", "expected section.key=value"),
])
def test_bad_override_fails_naming_key_value_and_allowed(capsys, command, override, message):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--set", override, "--dry-run"])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "bench", "check"])
def test_commands_without_params_refuse_set(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([command, "--set", "optim.lr=1"])
    assert f"dino {command} reads no parameters of params.yaml" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory) -> Path:
    """params.yaml: the repository's + TINY on 64 shapes images, profile default, tune in tmp."""
    tmp = tmp_path_factory.mktemp("cli")
    prepare_shapes(tmp / "shapes", num_train=64, num_val=32, image_size=16, seed=0)
    repo = load_params(PARAMS)
    core = merge({k: v for k, v in repo.items() if k not in ("profile", "grid", "tune")}, TINY, "TINY")
    core = merge(core, {"data": {"dataset": "shapes", "root": str(tmp / "shapes"), "num_train": 64, "num_val": 32,
                                 "image_size": 16}, "eval": {"linear_epochs": 0, "knn_k": [5]}})
    tune = {**repo["tune"], "storage": str(tmp / "study" / "journal.log"), "runs": str(tmp / "runs"),
            "out": str(tmp / "results"), "epochs": 1, "n_trials": 3, "pruner": "none", "startup_trials": 1}
    tune["space"] = str(tmp / "space.yaml")
    (tmp / "space.yaml").write_text("params:\n  - {name: teacher_temp, key: loss.teacher_temp, low: 0.02, high: 0.1}\n")
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({**core, "profile": "default", "grid": repo["grid"], "tune": tune}))
    return path


def test_pretrain_through_dino_with_set(tiny_params, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["pretrain", "--params", str(tiny_params), "--out", str(out), "--set", "train.epochs=1",
                     "--set", "loss.teacher_temp=0.05"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["loss"]["teacher_temp"] == 0.05


def test_tune_through_dino_with_set(tiny_params, monkeypatch):
    monkeypatch.setenv("DINO_LAUNCH_EXECUTOR", "debug")
    assert cli.main(["tune", "--params", str(tiny_params), "--set", "tune.n_trials=1"]) == 0
    trials = pd.read_csv(Path(yaml.safe_load(tiny_params.read_text())["tune"]["out"]) / "trials.csv")
    assert len(trials) == 1 and trials["epochs_run"].tolist() == [1]


def test_params_writes_the_resolved_view(tmp_path):
    out = tmp_path / "params.yaml"
    assert cli.main(["params", "--set", "profile=paper", "--out", str(out)]) == 0
    got = yaml.safe_load(out.read_text())
    assert got["profile"] == "paper" and got["head"]["norm_last_layer"] is False and got["grid"]["seeds"] == [0]
