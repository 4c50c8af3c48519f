"""Config validation: params.yaml is the single source of defaults, every
value is checked on load, and each error names the key, the offending value and what is allowed."""
from __future__ import annotations

import csv
import dataclasses
import re

import pytest
from helpers import CORE_SECTIONS, PARAMS, tiny_config

from dino_core.config import Config, load_params, merge
from pipelines.params import apply_profile, grid_cells, load_all, load_study


def core_params() -> dict:
    return {k: v for k, v in load_params(PARAMS).items() if k in CORE_SECTIONS}


def with_value(section: str, key: str, value) -> dict:
    d = core_params()
    d[section][key] = value
    return d


def test_params_yaml_loads_and_covers_every_field():
    cfg = Config.from_dict(core_params())
    d = core_params()
    # every dataclass field comes from params.yaml (the dataclasses have no defaults of their own)
    for sec in dataclasses.fields(Config):
        sub = getattr(cfg, sec.name)
        assert {f.name for f in dataclasses.fields(sub)} == set(d[sec.name])
        for f in dataclasses.fields(sub):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    # a few values as written in params.yaml, typed (lists become tuples, ints stay ints)
    assert cfg.loss.student_temp == d["loss"]["student_temp"]
    assert cfg.crops.global_scale == tuple(d["crops"]["global_scale"])
    assert isinstance(cfg.train.epochs, int) and isinstance(cfg.optim.lr, float)
    # round trip
    assert Config.from_dict(cfg.to_dict()) == cfg
    # the pipeline sections of params.yaml are accepted only when declared as extra sections
    extra = tuple(k for k in load_params(PARAMS) if k not in CORE_SECTIONS)
    if extra:
        assert Config.from_dict(load_params(PARAMS), extra_sections=extra) == cfg
        with pytest.raises(ValueError, match="unknown section"):
            Config.from_dict(load_params(PARAMS))


def test_dataclasses_are_frozen():
    cfg = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.student_temp = 0.2  # type: ignore[misc]
    # replace() returns a validated copy
    assert cfg.replace("loss", student_temp=0.2).loss.student_temp == 0.2
    with pytest.raises(ValueError, match=r"loss\.student_temp"):
        cfg.replace("loss", student_temp=-1.0)


def test_unknown_section():
    d = core_params()
    d["modle"] = {"depth": 2}
    with pytest.raises(ValueError, match=r"unknown section.*'modle'.*allowed:.*'model'"):
        Config.from_dict(d)


def test_missing_section():
    d = core_params()
    del d["head"]
    with pytest.raises(ValueError, match=r"missing section.*'head'"):
        Config.from_dict(d)


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ValueError, match=r"model: unknown key.*'dept'.*allowed:.*'depth'"):
        Config.from_dict(with_value("model", "dept", 3))


def test_missing_key():
    d = core_params()
    del d["loss"]["student_temp"]
    with pytest.raises(ValueError, match=r"loss: missing key.*'student_temp'"):
        Config.from_dict(d)


@pytest.mark.parametrize("section,key,value,pattern", [
    ("model", "depth", "4", r"model\.depth: expected an integer, got '4'"),          # string for int
    ("model", "depth", True, r"model\.depth: expected an integer, got True"),        # bool for int
    ("train", "epochs", 2.5, r"train\.epochs: expected an integer, got 2\.5"),       # float for int
    ("loss", "student_temp", "0.1", r"loss\.student_temp: expected a number, got '0\.1'"),
    ("loss", "student_temp", False, r"loss\.student_temp: expected a number, got False"),
    ("loss", "sharpening", 1, r"loss\.sharpening: expected true/false, got 1"),      # int for bool
    ("data", "root", 3, r"data\.root: expected a string, got 3"),
    ("crops", "global_scale", 0.4, r"crops\.global_scale: expected a list, got 0\.4"),
    ("crops", "global_scale", [0.4, 0.6, 1.0], r"crops\.global_scale: expected 2 values, got 3"),
    ("eval", "linear_lr", [], r"eval\.linear_lr: expected at least one value, got an empty list"),
    ("eval", "linear_lr", 0.001, r"eval\.linear_lr: expected a list, got 0\.001"),
])
def test_wrong_type(section, key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config.from_dict(with_value(section, key, value))


@pytest.mark.parametrize("section,key,value,pattern", [
    # temperatures are open at 0: (0, 10]
    ("loss", "student_temp", 0.0, r"loss\.student_temp: 0\.0 is out of range \(0, 10\]"),
    ("loss", "teacher_temp", -0.04, r"loss\.teacher_temp: -0\.04 is out of range \[0, 10\]"),   # 0: argmax
    ("loss", "warmup_teacher_temp", -0.01, r"loss\.warmup_teacher_temp: -0\.01 is out of range \[0, 10\]"),
    ("loss", "student_temp", float("nan"), r"loss\.student_temp: nan is out of range \(0, 10\]"),
    # momenta in [0, 1]
    ("teacher", "momentum", 1.5, r"teacher\.momentum: 1\.5 is out of range \[0, 1\]"),
    ("teacher", "momentum", -0.1, r"teacher\.momentum: -0\.1 is out of range \[0, 1\]"),
    ("loss", "center_momentum", 1.01, r"loss\.center_momentum: 1\.01 is out of range \[0, 1\]"),
    # counts
    ("crops", "local_number", -1, r"crops\.local_number: -1 is out of range \[0, 64\]"),
    ("train", "epochs", 0, r"train\.epochs: 0 is out of range \[1, inf\]"),
    ("optim", "batch_size", 0, r"optim\.batch_size: 0 is out of range \[1, "),
    ("crops", "global_scale", [0.4, 1.5], r"crops\.global_scale\[1\]: 1\.5 is out of range \[0, 1\]"),
    # choices
    ("loss", "normalization", "center", r"loss\.normalization: 'center' is not allowed; allowed: "
                                        r"\['centering', 'none', 'sinkhorn_knopp', 'softmax_batch'\]"),
    ("teacher", "variant", "swa", r"teacher\.variant: 'swa' is not allowed; allowed: \['ema', "),
])
def test_out_of_range_or_choice(section, key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config.from_dict(with_value(section, key, value))


@pytest.mark.parametrize("key", ["global_scale", "local_scale"])
def test_inverted_scale_range(key):
    with pytest.raises(ValueError) as e:
        Config.from_dict(with_value("crops", key, [0.9, 0.4]))
    msg = str(e.value)
    assert f"crops.{key}" in msg and "0.9" in msg and "0.4" in msg and "allowed" in msg


def test_valid_edge_values_accepted():
    cfg = tiny_config(teacher={"momentum": 1.0}, loss={"center_momentum": 0.0},
                      crops={"local_number": 0, "global_scale": [1.0, 1.0]}, optim={"clip_grad": 0})
    assert cfg.teacher.momentum == 1.0 and cfg.crops.local_number == 0
    assert isinstance(cfg.optim.clip_grad, float)    # an int for a float field is converted


def test_merge_rejects_unknown_keys_with_path():
    base = core_params()
    with pytest.raises(ValueError, match=re.escape("diff.loss: unknown key 'studnet_temp'")):
        merge(base, {"loss": {"studnet_temp": 0.2}})
    with pytest.raises(ValueError, match=re.escape("diff: unknown key 'lossy'")):
        merge(base, {"lossy": {}})
    with pytest.raises(ValueError, match=re.escape("my.yaml.crops: unknown key 'n_local'")):
        merge(base, {"crops": {"n_local": 2}}, "my.yaml")


def test_merge_is_deep_and_does_not_mutate():
    base = core_params()
    out = merge(base, {"loss": {"student_temp": 0.2}, "crops": {"global_scale": [0.14, 1.0]}})
    assert out["loss"]["student_temp"] == 0.2 and out["loss"]["teacher_temp"] == base["loss"]["teacher_temp"]
    assert out["crops"]["global_scale"] == [0.14, 1.0]
    assert base["loss"]["student_temp"] == load_params(PARAMS)["loss"]["student_temp"]


def test_load_params_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_cell_identity_is_training_only_and_eval_key_tracks_the_evaluation():
    from pipelines import store
    base = tiny_config()
    # the evaluation (eval section, val size) never changes a cell's identity, only its eval_key
    for changed in (base.replace("eval", knn_temp=0.1), base.replace("eval", linear_lr=(0.5,)),
                    base.replace("data", num_val=7)):
        assert store.cell_hash(changed) == store.cell_hash(base)
        assert store.eval_key(changed) != store.eval_key(base)
    # what changes the trained weights changes the identity (and not the eval_key)
    for changed in (base.replace("loss", teacher_temp=0.05), base.replace("train", seed=1),
                    base.replace("data", num_train=64)):
        assert store.cell_hash(changed) != store.cell_hash(base)
        assert store.eval_key(changed) == store.eval_key(base)
    assert store.cell_hash(base.replace("train", log_every=3)) == store.cell_hash(base)


def test_later_keys_keep_stored_runs_and_cell_identities():
    """A key added after runs were stored (crops.rotation) reads as off in their config.yaml, and
    while it is off the cells keep the hashes they were trained (and committed) under."""
    from pipelines import store
    from pipelines.params import grid_cells
    base = tiny_config()
    stored = base.to_dict()
    del stored["crops"]["rotation"]
    assert Config.from_stored(stored, "old config.yaml") == base
    with pytest.raises(ValueError, match="rotation"):   # params.yaml itself must still give it
        Config.from_dict(stored, "params.yaml")
    assert store.cell_hash(base.replace("crops", rotation=30.0)) != store.cell_hash(base)
    # the committed grid (results/grid.csv, trained before crops.rotation existed) keeps its cells
    committed = {(r["study"], r["row"], int(r["seed"])): r["cell"]
                 for r in csv.DictReader((PARAMS.parent / "results" / "grid.csv").open())}
    cells = {(c.study, c.row, c.seed): store.cell_hash(Config.from_dict(c.params)) for c in grid_cells(load_all(PARAMS))}
    assert {k: cells.get(k) for k in committed} == committed


def test_needs_eval_and_cell_summary(tmp_path):
    from dino_core.checkpoint import atomic_write_json
    from pipelines import store
    cfg, cell = tiny_config(), tmp_path / "c"
    cell.mkdir()
    assert not store.needs_eval(cell, cfg)                    # not finished: train first
    store.mark_done(cell, {"cell": "c", "status": "ok", "ln_k": 1.0, "wall_time_s": 2.0, "knn20_top1": 50.0})
    assert store.needs_eval(cell, cfg)                        # finished, never evaluated
    atomic_write_json(cell / "eval.json", {"eval_key": store.eval_key(cfg), "knn20_top1": 61.5, "arr": [1]})
    assert not store.needs_eval(cell, cfg)
    assert store.needs_eval(cell, cfg.replace("eval", knn_temp=0.2))
    # the summary: DONE's training fields, the evaluation from eval.json (an older DONE-held one dropped)
    assert store.cell_summary(cell) == {"cell": "c", "status": "ok", "ln_k": 1.0, "wall_time_s": 2.0,
                                        "eval_key": store.eval_key(cfg), "knn20_top1": 61.5}
    store.mark_done(cell, {"cell": "c", "status": "diverged", "ln_k": 1.0, "wall_time_s": 2.0})
    assert not store.needs_eval(cell, cfg.replace("eval", knn_temp=0.2))   # nothing to evaluate


PROFILES = sorted(p.stem for p in (PARAMS.parent / "ablations" / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_every_study_cell(profile):
    """`dvc exp run -S profile=<p>` must not stop at a study row: every row's diff (K/64 included)
    gives a valid config under every profile (the tiny profile's K = 64 once made K/64 = 1)."""
    params = load_all(PARAMS)
    params["profile"] = profile
    grid = apply_profile(params)["grid"]
    cells = grid_cells(params)   # validates every cell's config (raises on the first bad one)
    rows = {(s, r["name"]) for s in grid["studies"] for r in load_study(s)["rows"]}
    assert {(c.study, c.row) for c in cells} == rows
    if grid["seeds"] != "protocol":
        assert len(cells) == len(rows) * len(grid["seeds"])


@pytest.mark.parametrize("section, key, value, pattern", [   # params.yaml: 32-px global crops and eval, patch 8
    ("model", "patch_size", 7, r"^params: model\.patch_size: 7 does not divide crops\.global_size 32, "
                               r"data\.image_size 32 \(the border would be dropped\); "
                               r"allowed: a divisor of every crop size, \[1, 2, 4, 8, 16, 32\]$"),
    ("model", "num_heads", 5, r"^params: model\.num_heads: 5 does not divide model\.embed_dim 128; "
                              r"allowed: a divisor of embed_dim, \[1, 2, 4, 8, 16, 32, 64\]$"),
])
def test_cross_field_checks_name_both_keys_and_what_is_allowed(section, key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config.from_dict(with_value(section, key, value))
    d = with_value("crops", "local_number", 2)   # local crops too: 12 px is not whole 8-px patches
    d["crops"]["local_size"] = 12
    with pytest.raises(ValueError, match=r"patch_size: 8 does not divide crops\.local_size 12 \(the border"):
        Config.from_dict(d)


def test_cross_field_checks_skip_what_is_not_built():
    d = with_value("crops", "local_size", 12)
    d["crops"]["local_number"] = 0              # no local views are cut
    assert Config.from_dict(d).crops.local_size == 12
    d = with_value("model", "num_heads", 5)
    d["model"]["arch"] = "vit_small"            # its heads come from Table 1, embed_dim is unused
    assert Config.from_dict(d).model.num_heads == 5


def test_a_run_folder_is_bound_to_its_training_config(tmp_path):
    from dino_core.config import save_config
    from pipelines.run_folder import RunMismatch, check_same_config, config_differences
    cfg = tiny_config()
    check_same_config(tmp_path, cfg)              # no config.yaml: no run yet
    save_config(cfg, tmp_path / "config.yaml")
    check_same_config(tmp_path, cfg.replace("eval", knn_k=[3]).replace("data", num_workers=3))   # not training
    other = cfg.replace("optim", lr=0.001).replace("teacher", momentum=0.9)
    assert config_differences(cfg, other) == ["optim.lr: 0.004 -> 0.001", "teacher.momentum: 0.996 -> 0.9"]
    with pytest.raises(RunMismatch, match=r"holds a run of another config \(2 key\(s\) differ: optim\.lr: 0\.004 "
                                          r"-> 0\.001; teacher\.momentum: 0\.996 -> 0\.9\)"):
        check_same_config(tmp_path, other)
