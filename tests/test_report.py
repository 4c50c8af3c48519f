"""The report stage on a tiny fake run store built here.

EVERYTHING BELOW IS SYNTHETIC: cells.csv / curves.csv rows are made up by this test (numbers
chosen so that means, stds and verdicts can be computed by hand); they are not results. The
study files are copies of the repository's real ablations/*.yaml (the paper's numbers).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines import report as R

ROOT = Path(__file__).resolve().parents[1]
LN_K = math.log(1024)
STUDIES = ("table7_components", "fig7_collapse", "teacher_temperature", "multicrop")
PNG = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------- synthetic run store
# (study, row) -> per-seed (knn20_top1, collapsed, status, epoch_time_s, peak_mem_mb); the number of
# seeds of each row is the one ablations/protocol.yaml registers (5 for the "small difference" rows)
ok = (lambda knn, coll=False, t=10.0, m=100.0: (knn, coll, "ok", t, m))
DIVERGED = (float("nan"), float("nan"), "diverged", float("nan"), float("nan"))
DINO = [71.0, 71.5, 72.0, 72.5, 73.0]                                              # 72.0 ± 0.79
SYNTHETIC = {
    ("table7_components", "dino"): [ok(v) for v in DINO],                           # reference
    ("table7_components", "no_momentum"): [ok(10.0, True)] * 3,                    # collapse: reproduced
    ("table7_components", "sinkhorn"): [ok(v) for v in (72.0, 72.1, 71.9, 72.0, 72.0)],  # TOST ±2: reproduced
    ("table7_components", "no_multicrop"): [ok(60.0), ok(61.0), ok(62.0)],         # paper -4.9: reproduced
    ("table7_components", "mse"): [ok(75.0), ok(76.0), ok(77.0)],                  # paper -20.2, ours +4: not
    ("table7_components", "predictor"): [ok(71.5), ok(72.0), ok(72.5), DIVERGED, DIVERGED],  # 3 of 5: pending
    ("table7_components", "byol"): [ok(11.0, True)] * 3,                           # paper -6.2: reproduced
    ("table7_components", "swav"): [ok(71.0), ok(73.0), ok(72.0)],                 # paper -8.1, ours 0: not
    # mocov2: no cells (pending)
    ("fig7_collapse", "sharpening_only"): [ok(12.0, True)] * 3,
    ("fig7_collapse", "centering_only"): [ok(11.0, True)] * 3,
    ("fig7_collapse", "both"): [ok(50.0), ok(52.0), ok(54.0)],
    ("teacher_temperature", "tt_0.02"): [ok(v) for v in (60.0, 61.0, 62.0, 63.0, 64.0)],  # paper -2.9: reproduced
    ("teacher_temperature", "tt_0.04"): [ok(70.0)] * 5,                            # default, std 0
    ("teacher_temperature", "tt_0.08"): [ok(10.0, True), ok(10.0, True), ok(40.0, False)],  # 2/3: reproduced
    ("teacher_temperature", "tt_warmup"): [ok(v) for v in (70.1, 70.0, 69.9, 70.0, 70.0)],  # ≈: reproduced
    # tt_0.06: no cells (pending)
    ("multicrop", "mc_2"): [ok(60.0, t=10.0, m=100.0), ok(61.0, t=11.0, m=100.0), ok(62.0, t=12.0, m=100.0)],
    ("multicrop", "mc_2x2_2"): [ok(63.0, t=13.0, m=120.0)] * 3,
    ("multicrop", "mc_2x2_6"): [ok(66.0, t=16.0, m=150.0), ok(67.0, t=17.0, m=150.0), ok(68.0, t=18.0, m=150.0)],
    ("multicrop", "mc_2x2_10"): [ok(67.0, t=20.0, m=180.0), ok(68.0, t=21.0, m=180.0), ok(69.0, t=22.0, m=180.0)],
}
FINAL_ENTROPY = {"sharpening_only": 0.05, "centering_only": 0.98, "both": 0.5}   # x ln K, + 0.01 per seed
CELL_COLS = ["study", "row", "seed", "cell", "status", "knn10_top1", "knn10_top5", "knn20_top1", "knn20_top5",
             "knn100_top1", "knn100_top5", "knn200_top1", "knn200_top5", "teacher_entropy", "teacher_mean_entropy",
             "kl_teacher_student", "prototypes_used", "log_K", "feature_std", "effective_rank", "feature_dim",
             "collapsed", "collapse_reason", "jaccard_best_head", "jaccard_mean_head", "wall_time_s", "epoch_time_s",
             "peak_mem_mb", "linear_top1"]
LINEAR_GAIN = 5.0   # synthetic linear probe = k-NN + 5 (same deltas)


def fake_cells(spec: dict = SYNTHETIC) -> pd.DataFrame:
    """SYNTHETIC cells.csv rows (one per study, row, seed)."""
    rows = []
    for (study, row), seeds in spec.items():
        for seed, (knn, coll, status, t, m) in enumerate(seeds):
            r = dict.fromkeys(CELL_COLS, float("nan"))
            r.update(study=study, row=row, seed=seed, cell=f"fake-{study}-{row}-{seed}",
                     status=status, knn20_top1=knn, knn20_top5=knn, linear_top1=knn + LINEAR_GAIN,
                     log_K=LN_K, feature_dim=128, teacher_entropy=LN_K * (FINAL_ENTROPY.get(row, 0.6) + 0.01 * seed),
                     collapsed=coll, collapse_reason="synthetic", wall_time_s=100.0, epoch_time_s=t, peak_mem_mb=m)
            rows.append(r)
    return pd.DataFrame(rows, columns=CELL_COLS)


def fake_curves(cells: pd.DataFrame, epochs: int = 4) -> pd.DataFrame:
    """SYNTHETIC curves.csv: entropy goes linearly from 0.9 ln K to its final value."""
    rows = []
    for r in cells.itertuples():
        end = FINAL_ENTROPY.get(r.row, 0.6) + 0.01 * r.seed
        for e in range(epochs):
            h = LN_K * (0.9 + (end - 0.9) * e / (epochs - 1))
            rows.append(dict(study=r.study, row=r.row, seed=r.seed, cell=r.cell, epoch=e, loss=h + 0.5, ce=h + 0.5,
                             teacher_entropy=h, teacher_batch_entropy=LN_K * 0.95, kl=0.5 / (e + 1), lr=1e-4,
                             wd=0.04, momentum=0.99, teacher_temp=0.04, epoch_time_s=r.epoch_time_s,
                             peak_mem_mb=r.peak_mem_mb))
    return pd.DataFrame(rows)


def make_store(tmp: Path, studies=STUDIES, spec: dict = SYNTHETIC) -> tuple[Path, Path]:
    results, ablations = tmp / "results", tmp / "ablations"
    results.mkdir(parents=True)
    ablations.mkdir(parents=True)
    for s in (*studies, "protocol"):
        shutil.copy(ROOT / "ablations" / f"{s}.yaml", ablations / f"{s}.yaml")
    cells = fake_cells({k: v for k, v in spec.items() if k[0] in studies})
    cells.to_csv(results / "cells.csv", index=False)
    fake_curves(cells).to_csv(results / "curves.csv", index=False)
    return results, ablations


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    results, ablations = make_store(tmp_path_factory.mktemp("report"))
    R.main(["--results", str(results), "--ablations", str(ablations)])
    return results, ablations


def table(results: Path, study: str) -> pd.DataFrame:
    return pd.read_csv(results / "tables" / f"{study}.csv", dtype={"row": str}).set_index("row")


# --------------------------------------------------------------------------------- tables
def test_tables_equal_inputs(store):
    results, _ = store
    t = table(results, "table7_components")
    assert list(t.index) == ["dino", "no_momentum", "sinkhorn", "no_multicrop", "mse", "predictor", "byol",
                             "mocov2", "swav"]                                     # the study file's order
    assert t.loc["dino", "knn20_mean"] == pytest.approx(72.0)
    assert t.loc["dino", "knn20_std"] == pytest.approx(math.sqrt(0.625))          # (1+.25+0+.25+1)/4
    assert (t.loc["dino", "n"], t.loc["dino", "n_target"]) == (5, 5)
    assert t.loc["dino", "linear_mean"] == pytest.approx(77.0)
    assert t.loc["mse", "knn20_std"] == pytest.approx(1.0) and t.loc["mse", "n_target"] == 3
    assert (t.loc["predictor", "n"], t.loc["predictor", "n_seeds"]) == (3, 5)    # 2 diverged: not averaged
    assert "2 diverged" in t.loc["predictor", "note"]
    assert t.loc["mocov2", "n"] == 0 and t.loc["mocov2", "verdict"] == "pending"
    assert t.loc["dino", "paper_knn"] == 72.8 and t.loc["dino", "paper_linear"] == 76.1
    assert t.loc["no_momentum", "n_collapsed"] == 3
    m = table(results, "multicrop")
    assert m.loc["mc_2", "time_mean_s"] == pytest.approx(11.0) and m.loc["mc_2", "time_std_s"] == pytest.approx(1.0)
    assert m.loc["mc_2x2_10", "peak_mem_mb_mean"] == pytest.approx(180.0)
    assert m.loc["mc_2", "paper_time_h"] == 15.3 and m.loc["mc_2", "paper_mem_gb"] == 9.3
    assert math.isnan(m.loc["mc_2", "paper_knn"]) and m.loc["mc_2", "paper_linear"] == 67.8
    f = table(results, "fig7_collapse")
    assert f.loc["sharpening_only", "entropy_last_over_lnK_mean"] == pytest.approx(0.06)   # 0.05 + mean(0, .01, .02)
    assert f.loc["both", "entropy_last_over_lnK_std"] == pytest.approx(0.01)


def test_table_statistics_equal_scipy(store):
    """Δ, its 95 % Welch CI and the one-sided / TOST p-values of a row against its default, and Holm
    over the table's tested rows, as scipy and the protocol give them."""
    from scipy import stats as st
    results, _ = store
    t = table(results, "table7_components")
    mse = [75.0, 76.0, 77.0]
    want = st.ttest_ind(mse, DINO, equal_var=False)
    assert t.loc["mse", "delta"] == pytest.approx(4.0)
    assert (t.loc["mse", "ci_low"], t.loc["mse", "ci_high"]) == pytest.approx(tuple(want.confidence_interval(0.95)))
    assert t.loc["mse", "p"] == pytest.approx(st.ttest_ind(mse, DINO, equal_var=False, alternative="less").pvalue)
    sk = [72.0, 72.1, 71.9, 72.0, 72.0]
    tost = max(st.ttest_ind([x + 2 for x in sk], DINO, equal_var=False, alternative="greater").pvalue,
               st.ttest_ind([x - 2 for x in sk], DINO, equal_var=False, alternative="less").pvalue)
    assert t.loc["sinkhorn", "p"] == pytest.approx(tost) and t.loc["sinkhorn", "test"] == "equivalence"
    tested = t[t["test"] != "none"]["p"].dropna().sort_values()
    assert t.loc[tested.index[0], "p_holm"] == pytest.approx(min(1.0, len(tested) * tested.iloc[0]))
    assert t.loc["dino", "test"] == "none" and t.loc["no_momentum", "test"] == "collapse"


def test_table_verdicts(store):
    results, _ = store
    assert table(results, "table7_components")["verdict"].to_dict() == {
        "dino": "reference", "no_momentum": "reproduced", "sinkhorn": "reproduced", "no_multicrop": "reproduced",
        "mse": "not reproduced", "predictor": "pending", "byol": "reproduced", "mocov2": "pending",
        "swav": "not reproduced"}
    assert table(results, "fig7_collapse")["verdict"].to_dict() == {
        "sharpening_only": "reproduced", "centering_only": "reproduced", "both": "reference"}
    assert table(results, "teacher_temperature")["verdict"].to_dict() == {
        "tt_0.02": "reproduced", "tt_0.04": "reference", "tt_0.06": "pending", "tt_0.08": "reproduced",
        "tt_warmup": "reproduced"}
    assert table(results, "multicrop")["verdict"].to_dict() == {
        "mc_2": "reference", "mc_2x2_2": "reproduced", "mc_2x2_6": "reproduced", "mc_2x2_10": "reproduced"}


def test_markdown_and_latex(store):
    results, _ = store
    md = (results / "tables" / "table7_components.md").read_text()
    assert "| DINO " in md and "72.0 ± 0.8" in md and "77.0 ± 0.8" in md and "Protocol" in md
    for col in ("Mom.", "SK", "MC", "Loss", "Pred.", "paper k-NN", "paper linear", "ours k-NN", "ours linear",
                "Δ vs default", "95% CI", "p (Holm)", "verdict"):
        assert col in md
    mc = (results / "tables" / "multicrop.md").read_text()
    assert "time/epoch (s)" in mc and "11.0 ± 1.0" in mc and "15.3" in mc
    tex = (results / "tables" / "table7_components.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"72.0 $\pm$ 0.8" in tex and "Mom." in tex


def test_plots_written(store):
    results, _ = store
    names = {p.name for p in (results / "plots").glob("*.png")}
    assert names == {"fig7_entropy_kl.png", "knn_vs_teacher_temperature.png", "multicrop_cost.png",
                     "training_curves.png"}                                        # no attention, no tune
    for p in (results / "plots").glob("*.png"):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1024, p
    readme = (results / "README.md").read_text()
    assert "(plots/fig7_entropy_kl.png)" in readme and "(tables/multicrop.md)" in readme
    assert "results/env.json is absent." in readme and "optuna" not in readme


def test_rerun_is_byte_identical(store):
    results, ablations = store
    files = sorted(p for p in results.rglob("*") if p.suffix in {".png", ".md", ".tex", ".csv"})
    before = {p: p.read_bytes() for p in files}
    R.main(["--results", str(results), "--ablations", str(ablations)])
    assert {p: p.read_bytes() for p in files} == before
    assert not list(results.rglob(".*.tmp*"))                                      # no temp files left


def test_effects_summary_lines(store):
    results, _ = store
    readme = (results / "README.md").read_text()
    expected = {
        "No momentum (teacher = student copy) collapses": "reproduced",
        "Previous-iteration teacher collapses": "pending",                          # fig6 not run here
        "No centering (sharpening only): teacher entropy -> 0": "reproduced",
        "No sharpening (centering only): teacher entropy -> ln K": "reproduced",
        "Constant tau_t = 0.08 collapses": "reproduced",
        "Center momentum 0.999 collapses": "pending",
        "Multi-crop (2 global + 6 local) beats 2 crops": "reproduced",
        "CE beats MSE": "not reproduced",
        "More crops cost more time and memory": "pending",                          # no per-step costs here
        "Sinkhorn-Knopp ~ centering": "reproduced",
    }
    for text, status in expected.items():
        assert f"- {text}: **{status}** (" in readme, text
    assert "6 reproduced, 1 not reproduced, 4 pending" in readme
    assert "Fashion-MNIST test images: 9,000, after the 1,000 class-balanced ones" in readme


def test_collapse_fallback_to_chance():
    cells = fake_cells({("s", "r"): [ok(12.0), ok(40.0), ok(11.0)]})
    cells["collapsed"] = [float("nan"), float("nan"), True]                        # verdict missing for 2 seeds
    assert R.aggregate(cells).loc[("s", "r"), "n_collapsed"] == 1                  # no num_classes: no fallback
    assert R.aggregate(cells, num_classes=10).loc[("s", "r"), "n_collapsed"] == 2  # 12 <= 10 + 5


def test_ln_k_falls_back_to_run_summary():
    cells = fake_cells({("fig7_collapse", "sharpening_only"): [ok(10.0, True)] * 2})
    cells["ln_k"], cells["log_K"] = LN_K, [LN_K, float("nan")]                   # e.g. no eval for seed 1
    ent = R.final_entropy(fake_curves(cells), cells)
    assert ent.loc[("fig7_collapse", "sharpening_only"), "ent_n"] == 2
    assert ent.loc[("fig7_collapse", "sharpening_only"), "ent_mean"] == pytest.approx(0.055)


# ------------------------------------------------------------------ effects, crafted data
PROTOCOL = yaml.safe_load((ROOT / "ablations" / "protocol.yaml").read_text())


def _effects(spec: dict, cost: dict | None = None, entropy: float | None = None) -> dict[str, str]:
    """Effect verdicts of crafted cells; ``entropy``: every seed's h(Pt) / ln K."""
    studies = {s: yaml.safe_load((ROOT / "ablations" / f"{s}.yaml").read_text()) for s in STUDIES}
    cells = fake_cells(spec)
    if entropy is not None:
        cells["teacher_entropy"] = entropy * LN_K
    return {e.text: e.status for e in R.effects_summary(PROTOCOL, R.seed_level(cells), studies, cost)}


def test_effects_not_reproduced():
    """Each test of the summary says "not reproduced" when its data do not carry the claim."""
    got = _effects({("table7_components", "no_momentum"): [ok(60.0)] * 3,                   # no collapse verdict
                    ("table7_components", "dino"): [ok(v) for v in DINO],
                    ("table7_components", "mse"): [ok(v) for v in (71.0, 72.0, 73.0)],    # Δ 0: no direction
                    ("table7_components", "sinkhorn"): [ok(v) for v in (60.0, 61.0, 60.5, 61.5, 60.0)],  # |Δ| 11
                    ("teacher_temperature", "tt_0.04"): [ok(70.0)] * 5,
                    ("teacher_temperature", "tt_0.08"): [ok(69.0), ok(70.0), ok(71.0)],
                    ("multicrop", "mc_2"): [ok(v) for v in (60.0, 61.0, 62.0)],
                    ("multicrop", "mc_2x2_6"): [ok(v) for v in (60.0, 61.0, 62.0)],
                    ("fig7_collapse", "sharpening_only"): [ok(10.0, True)] * 3,
                    ("fig7_collapse", "centering_only"): [ok(10.0, True)] * 3}, entropy=0.6)
    for text in ("No momentum (teacher = student copy) collapses", "CE beats MSE", "Sinkhorn-Knopp ~ centering",
                 "Constant tau_t = 0.08 collapses", "Multi-crop (2 global + 6 local) beats 2 crops",
                 "No centering (sharpening only): teacher entropy -> 0",
                 "No sharpening (centering only): teacher entropy -> ln K"):
        assert got[text] == "not reproduced", text
    assert got["Center momentum 0.999 collapses"] == "pending"


def test_cost_effect_from_per_step_times():
    """More crops cost more: one-sided Welch on the per-step CPU times of each consecutive pair of rows
    and strictly rising peak memory; a memory dip at one step says "not reproduced"."""
    steps = {"mc_2": [0.10, 0.11, 0.10, 0.12], "mc_2x2_2": [0.15, 0.16, 0.15, 0.17],
             "mc_2x2_6": [0.22, 0.21, 0.23, 0.22], "mc_2x2_10": [0.30, 0.31, 0.29, 0.30]}

    def cost(mem):
        return {"rows": [{"study": "multicrop", "row": r, "cpu_s_steps": v, "cpu_s_per_step": sorted(v)[2],
                          "peak_mem_mb": m} for (r, v), m in zip(steps.items(), mem)]}
    text = "More crops cost more time and memory"
    assert _effects({}, cost([800, 820, 860, 900]))[text] == "reproduced"
    assert _effects({}, cost([800, 790, 860, 900]))[text] == "not reproduced"


# ------------------------------------------------------------------------ optional inputs
def test_optional_inputs_present(tmp_path):
    from PIL import Image
    results, ablations = make_store(tmp_path, studies=("multicrop",))
    (results / "attention").mkdir()
    for i in range(2):
        Image.new("RGB", (120, 60), (40 * i, 90, 200)).save(results / "attention" / f"attn_{i:03d}.png")
    (results / "attention" / "attention.json").write_text(json.dumps(
        {"jaccard_best_head": 43.21, "jaccard_mean_head": 30.0, "jaccard_per_head": [30.0, 43.21], "best_head": 1,
         "random_init_jaccard_best_head": 35.04, "random_init_jaccard_mean_head": 25.0}))
    (results / "tune").mkdir()
    Image.new("RGB", (50, 50)).save(results / "tune" / "optimization_history.png")
    (results / "tune" / "trials.csv").write_text("number,value\n0,1.0\n")
    (results / "env.json").write_text(json.dumps({"git_sha": "abc123", "torch": "2.14.1", "device": "cpu",
                                                  "profile": "default", "seeds": [0, 1, 2], "cells_wall_time_s": 7200,
                                                  "grid_runs": [{"started": "2026-01-01T10:00:00Z",
                                                                 "finished": "2026-01-01T11:30:00Z", "wall_time_s": 5400,
                                                                 "cells_run": 4, "cells_reused": 2, "failed": 0,
                                                                 "executor": "local"}]}))
    (results / "baselines.json").write_text(json.dumps({"random_init": {"knn20_top1": 31.25},
                                                       "raw_pixels": {"knn20_top1": 40.5, "linear_top1": 52.25}}))
    R.main(["--results", str(results), "--ablations", str(ablations)])
    att = (results / "plots" / "attention.png").read_bytes()
    assert att.startswith(PNG) and len(att) > 1024
    readme = (results / "README.md").read_text()
    for s in ("(plots/attention.png)", "(attention/attn_000.png)", "(tune/optimization_history.png)",
              "(tune/trials.csv)", "git_sha: `abc123`", "cells_wall_time_s: `7200 s (2.00 h)`", "random_init: k-NN 31.2\n",
              "raw_pixels: k-NN 40.5, linear 52.2",
              "best head 43.2 %, mean over heads 30.0 % (random-init ViT: best head 35.0 %, mean 25.0 %)",
              "seeds: `[0, 1, 2]`", "ran 1 time(s) on this run store, 1.50 h in all",
              "2026-01-01T10:00:00Z to 2026-01-01T11:30:00Z: 1.50 h, 4 cell(s) run, 2 reused, 0 failed, executor local"):
        assert s in readme, s
    assert {p.name for p in (results / "tables").iterdir()} == {"multicrop.md", "multicrop.tex", "multicrop.csv"}


def test_study_without_cells_is_listed(tmp_path):
    results, ablations = make_store(tmp_path, studies=("multicrop", "center_momentum"))   # no center_momentum cells
    cells, curves = R.read_inputs(results)
    rep = R.build_report(cells, curves, R.load_studies(ablations), R.load_extras(results), PROTOCOL)
    assert [t.study for t in rep.tables] == ["multicrop"]
    assert "studies without results in cells.csv: center_momentum" in rep.readme


def test_cost_stage_numbers_replace_the_grid_times(tmp_path):
    """results/cost.json (stage `cost`, measured apart) replaces the grid's epoch times and memory of
    the rows it measured, in the table, the effect line, the plot data and the README. The grid's
    times here (10-22 s, rising) and the measured ones (CPU s per step x 62, not monotone) differ on purpose."""
    results, ablations = make_store(tmp_path, studies=("multicrop",))
    per_step = {"mc_2": 0.10, "mc_2x2_2": 0.15, "mc_2x2_6": 0.14, "mc_2x2_10": 0.30}   # not monotone
    rows = [{"study": "multicrop", "row": r, "seed": 0, "cpu_s_per_step": s, "s_per_step": s + 0.01,
             "data_s_per_step": 0.02, "steps_per_epoch": 62, "cpu_s_per_epoch": s * 62, "peak_mem_mb": 800.0 + i}
            for i, (r, s) in enumerate(per_step.items())]
    (results / "cost.json").write_text(json.dumps({"rows": rows, "warmup": 3, "steps": 20, "cores": 2,
                                                   "other_cpu_cores": 0.04, "wall_s": 9.0}))
    cells, curves = R.read_inputs(results)
    rep = R.build_report(cells, curves, R.load_studies(ablations), R.load_extras(results), PROTOCOL)
    num = rep.tables[0].numeric.set_index("row")
    assert num.loc["mc_2x2_6", "time_mean_s"] == pytest.approx(0.14 * 62) and num["cost_apart"].all()
    assert num.loc["mc_2x2_10", "peak_mem_mb_mean"] == 803.0 and math.isnan(num.loc["mc_2", "time_std_s"])
    assert "cost stage" in num.loc["mc_2", "note"]
    effect = next(e for e in rep.effects if e.text.startswith("More crops cost"))
    assert effect.status == "pending" and "per-step times of every row needed" in effect.numbers
    plot = next(f for f in rep.figures if f.name == "multicrop_cost.png").data
    assert sorted(plot.loc[plot["row"] == "mc_2x2_10", "time"].unique()) == [pytest.approx(0.30 * 62)]
    assert "other processes used 0.04 of the 2 cores" in rep.readme.lower()
    assert "multicrop/mc_2x2_2: 0.150 CPU s/step (0.160 s wall, data 0.020 s), 62 steps/epoch, peak 801 MB" in rep.readme
