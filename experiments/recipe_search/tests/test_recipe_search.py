"""The recorded recipe search (experiments/recipe_search/): a trajectory, full and screened (`--until`).

A screen trains the first epochs of a longer schedule and must say so: a `.partial.jsonl` file and
metrics.json status "stopped"; a run that reaches its last epoch is "ok" with a `.jsonl` file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dino_core.data.shapes import prepare_shapes
from experiments.recipe_search.bank_probe import probe
from experiments.recipe_search.explore import config_of, load_variants, record_trajectory
from experiments.recipe_search.trajectory import BASE, load_trials, trial_config, trial_sets
from helpers import PARAMS, tiny_config
from pipelines.baselines import raw_pixels
from pipelines.params import load_all, resolve_profile
from pipelines.pretrain import build_params


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "shapes"
    prepare_shapes(root, num_train=32, num_val=16, image_size=16, seed=0)
    return root


@pytest.mark.parametrize("until, name, epochs_logged, status", [
    (None, "full.jsonl", [-1, 0, 1, 2], "ok"),
    (2, "screen.partial.jsonl", [-1, 0, 1], "stopped"),
])
def test_trajectory_full_and_screened(tmp_path, shapes_root, one_thread, until, name, epochs_logged, status):
    cfg = tiny_config(data={"dataset": "shapes", "root": str(shapes_root), "image_size": 16,
                            "num_train": 32, "num_val": 16},
                      train={"epochs": 3}, eval={"knn_k": [5], "batch_size": 16})
    stem = name.split(".")[0]
    out = record_trajectory(stem, cfg, 1, tmp_path, lambda k: {"knn5": k["knn5_top1"]}, until)
    assert out == tmp_path / name and not list(tmp_path.glob("*.tmp"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == epochs_logged
    assert all(0.0 <= r["knn5"] <= 100.0 for r in rows)
    metrics = json.loads((tmp_path / "runs" / stem / "metrics.json").read_text())
    assert metrics["status"] == status and metrics["final_epoch"] == epochs_logged[-1]


def test_every_recorded_trial_still_resolves():
    """The search behind the recipe is reproducible from its records: every explore.yaml variant
    (a diff over explore_base.yaml, the first params.yaml the search started from) and every budget.yaml trial (`set`
    over budget_base.yaml, as trajectory.py runs it) gives a valid config, however many keys
    dino_core's schema gained since."""
    variants = load_variants()
    assert len(variants) >= 20
    for name, variant in variants.items():
        config_of(name, variant["diff"])
    raw = yaml.safe_load((BASE.parent / "budget.yaml").read_text())["trials"]
    trials = load_trials()
    assert len(trials) >= 100 and len(trials) == len(raw)   # names are unique
    for trial in trials.values():
        assert trial_config(list(trial["set"])).train.epochs >= 1


def test_trials_resolve_over_frozen_profiles():
    """A budget.yaml trial must keep the config it ran with when a profile changes (the shapes
    profile now adds multi-crop and batch 64): FMNIST trials name no profile (budget_base.yaml's,
    the empty default), shapes trials name shapes_2crop, the 2-crop shapes recipe they ran."""
    assert load_all(BASE)["profile"] == "default"
    assert not yaml.safe_load((PARAMS.parent / "ablations" / "profiles" / "default.yaml").read_text())
    named = {s.split("=", 1)[1] for t in load_trials().values() for s in t["set"] if s.startswith("profile=")}
    assert named == {"shapes_2crop"}
    frozen = yaml.safe_load((PARAMS.parent / "ablations" / "profiles" / "shapes_2crop.yaml").read_text())
    assert frozen == {"data": {"dataset": "shapes", "root": "data/prepared/shapes", "num_train": 2000,
                               "num_val": 1000}, "head": {"use_bn": True}}


def test_profiles_are_the_recipes_their_trials_measured():
    """docs/small-scale-recipe.md: params.yaml holds the learning recipe (200 epochs, the official
    head); the `quick` profile that the committed results/ ran at changes six knobs only, back to
    the 20-epoch BatchNorm-head recipe of budget_base.yaml (the frozen base of the budget.yaml trials);
    the default profile equals trial D200nobn and the shapes profile trial G200b64mc6 (its data
    root aside), so the recorded measurements belong to these configs."""
    params = load_all(PARAMS)
    assert params["profile"] == "quick"
    default = resolve_profile({**params, "profile": "default"})
    quick = resolve_profile(params)
    changed = {(s, k): quick[s][k] for s in default for k in default[s] if default[s][k] != quick[s][k]}
    assert changed == {("loss", "teacher_temp"): 0.04, ("loss", "warmup_teacher_temp"): 0.04,
                       ("teacher", "momentum"): 0.99, ("crops", "global_scale"): [0.25, 1.0],
                       ("head", "use_bn"): True, ("train", "epochs"): 20}
    assert quick == resolve_profile(load_all(BASE))
    assert default == build_params(BASE, trial_sets("D200nobn"))
    shapes = resolve_profile({**params, "profile": "shapes"})
    measured = build_params(BASE, trial_sets("G200b64mc6"))
    assert measured["data"].pop("root") == "data/prototypes/shapes_v3"
    assert shapes["data"].pop("root") == "data/prepared/shapes" and shapes == measured


def test_bank_probe_reads_a_run_with_its_own_bank_as_the_run_did(tmp_path, shapes_root, one_thread):
    """bank_probe.py (docs/small-scale-recipe.md, "More images or more steps?"): with the run's own root and images as
    the bank it gives the k-NN the run's trajectory logged at its last epoch and the raw-pixel k-NN of
    pipelines.baselines; a smaller bank is the first images of the split (its raw-pixel k-NN is that of
    a config with that many images)."""
    cfg = tiny_config(data={"dataset": "shapes", "root": str(shapes_root), "image_size": 16,
                            "num_train": 32, "num_val": 16},
                      train={"epochs": 2}, eval={"knn_k": [5], "batch_size": 16})
    out = record_trajectory("probed", cfg, 1, tmp_path, lambda k: {"knn5": k["knn5_top1"]})
    last = json.loads(out.read_text().splitlines()[-1])
    own = probe(tmp_path / "runs" / "probed", str(shapes_root), 32)
    assert own["knn5_top1"] == last["knn5"] and own["pretrain_images"] == own["bank_images"] == 32
    assert own["raw_pixels_knn5_top1"] == raw_pixels(cfg, linear=False)["knn5_top1"]
    small = probe(tmp_path / "runs" / "probed", str(shapes_root), 8)
    few = tiny_config(data={"dataset": "shapes", "root": str(shapes_root), "image_size": 16,
                            "num_train": 8, "num_val": 16}, eval={"knn_k": [5], "batch_size": 16})
    assert small["raw_pixels_knn5_top1"] == raw_pixels(few, linear=False)["knn5_top1"]
    with pytest.raises(FileNotFoundError, match="no finished run"):
        probe(tmp_path / "runs" / "missing", str(shapes_root), 32)
