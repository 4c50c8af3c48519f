"""The precision agreement of ablations/protocol.yaml: which cells form each arm, and the TOST."""
from __future__ import annotations

import json

import pytest
from helpers import PARAMS
from scipy import stats

from dino_core.config import Config
from pipelines.params import load_all
from pipelines.precision import agreement, arm_cells, measure
from pipelines.store import cell_dir, mark_done

SEEDS = [0, 1, 2]


def default_params() -> dict:
    params = load_all(PARAMS)
    params["profile"] = "default"
    return params


def test_each_arm_is_the_default_row_with_its_precision_set(tmp_path):
    arms = arm_cells(default_params(), SEEDS, tmp_path)
    for precision, cells in arms.items():
        assert [s for s, _, _ in cells] == SEEDS
        assert all(p["train"]["precision"] == precision and p["train"]["seed"] == s for s, _, p in cells)
    assert len({d for cells in arms.values() for _, d, _ in cells}) == 2 * len(SEEDS)


def test_a_finished_auto_cell_serves_the_arm_of_the_precision_it_ran_in(tmp_path):
    params = default_params()
    auto = {s: p for s, _, p in arm_cells(params, SEEDS, tmp_path)["fp32"]}
    auto_params = {**auto[1], "train": {**auto[1]["train"], "precision": "auto"}}
    folder = cell_dir(tmp_path, Config.from_dict(auto_params))
    folder.mkdir(parents=True)
    mark_done(folder, {"status": "ok", "precision": "bf16"})
    arms = arm_cells(params, SEEDS, tmp_path)
    assert dict((s, d) for s, d, _ in arms["bf16"])[1] == folder          # reused, not retrained
    assert dict((s, d) for s, d, _ in arms["fp32"])[1] != folder          # fp32 still needs its own cell


def test_agreement_is_welch_tost_at_the_margin():
    bf16, fp32 = [76.0, 75.5, 76.4], [75.8, 76.3, 75.1]
    got = agreement({"bf16": bf16, "fp32": fp32}, margin=2.0)
    assert got["delta"] == pytest.approx(sum(bf16) / 3 - sum(fp32) / 3)
    # TOST by hand with scipy's Welch t-test: both one-sided nulls shifted by the margin
    lower = stats.ttest_ind([x + 2.0 for x in bf16], fp32, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind([x - 2.0 for x in bf16], fp32, equal_var=False, alternative="less").pvalue
    assert got["p_tost"] == pytest.approx(max(lower, upper), rel=1e-9)
    far = agreement({"bf16": [80.0, 80.5, 79.6], "fp32": fp32}, margin=2.0)
    assert far["p_tost"] > 0.5


def test_without_training_the_record_lists_what_is_missing(tmp_path, monkeypatch):
    params = default_params()
    params["grid"]["store"] = str(tmp_path)
    folder = arm_cells(params, SEEDS, tmp_path)["fp32"][0][1]
    folder.mkdir(parents=True)
    mark_done(folder, {"status": "ok", "precision": "fp32", "wall_time_s": 10.0})
    (folder / "eval.json").write_text(json.dumps({"knn20_top1": 75.0}))
    got = measure(params, train=())
    assert got["arms"]["fp32"]["knn20_top1"] == [75.0] and got["arms"]["fp32"]["missing_seeds"] == [1, 2]
    assert got["arms"]["bf16"]["missing_seeds"] == SEEDS and "p_tost" not in got
