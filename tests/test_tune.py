"""Stage `tune` (pipelines/tune/): an optuna study of the temperatures, on tiny trials.

Every trial is a 1-2 epoch pre-training of a 2-block 32-d ViT on 64 shapes images (16 px), a few
seconds on one CPU thread. The stage runs on temporary params files; the study lives in a journal
file under tmp_path.
"""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from dino_core.config import Config, load_params, merge
from dino_core.data.shapes import prepare_shapes
from pipelines import tune
from pipelines.params import apply_diff, load_all, resolve_profile
from helpers import PARAMS, TINY

SPACE = Path(__file__).resolve().parents[1] / "ablations" / "tune_space.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
TEMPS = """params:
  - {name: teacher_temp, key: loss.teacher_temp, low: 0.02, high: 0.1, log: true}
  - {name: student_temp, key: loss.student_temp, low: 0.05, high: 0.3, log: true}
"""   # 1-epoch trials: the repository space's warm-up range [0, 0.5*epochs] would be empty


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "shapes"
    prepare_shapes(root, num_train=64, num_val=32, image_size=16, seed=0)
    return root


def write_params(tmp: Path, shapes_root: Path, space: Path | str = SPACE, **tune_over) -> Path:
    """params.yaml (core sections + TINY + the tiny shapes data) with a `tune:` section in tmp."""
    repo = load_params(PARAMS)
    core = {k: v for k, v in repo.items() if k not in ("profile", "grid", "tune")}
    core = merge(core, TINY, "TINY")
    core = merge(core, {"data": {"dataset": "shapes", "root": str(shapes_root), "num_train": 64,
                                 "num_val": 32, "image_size": 16}})
    t = dict(repo["tune"])
    t.update(study_name="tiny", storage=str(tmp / "study" / "journal.log"), space=str(space),
             n_trials=2, n_workers=1, epochs=2, startup_trials=2, pruner_startup_trials=2,
             pruner_warmup_epochs=0, runs=str(tmp / "runs"), out=str(tmp / "results"))
    t.update(tune_over)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({**core, "profile": "default", "tune": t}, sort_keys=False))
    return path


def write_space(tmp: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def run(path: Path, tmp: Path, **launch) -> tune.TuneResult:
    return tune.run_tune(load_all(path), launch_overrides={"executor": "debug", "folder": str(tmp / "submitit"),
                                                           **launch})


def load(path: Path) -> optuna.Study:
    s = tune.tune_settings(load_all(path))
    return tune.open_study(s)[0]


# ----------------------------------------------------------------------------------------------

def test_stage_writes_outputs_and_resumes(tmp_path, shapes_root):
    path = write_params(tmp_path, shapes_root, n_trials=2)
    res = run(path, tmp_path)
    out = tmp_path / "results"
    assert sorted(p.name for p in out.iterdir()) == sorted(["best_params.yaml", "trials.csv", *tune.PLOTS])
    for name in tune.PLOTS:
        assert (out / name).read_bytes().startswith(PNG)
    table = pd.read_csv(out / "trials.csv")
    assert list(table.number) == [0, 1]
    assert set(table.state) <= {"COMPLETE", "PRUNED"}
    for col in ("value", "params_teacher_temp", "params_student_temp", "params_warmup_teacher_temp",
                "params_warmup_teacher_temp_epochs", "status", "collapsed", "teacher_entropy", "duration_s"):
        assert col in table.columns
    for n in (0, 1):
        run_dir = tmp_path / "runs" / "tiny" / f"trial_{n}"
        assert (run_dir / "metrics.json").is_file()
    study = load(path)
    first = {t.number: (t.params, t.value, t.state) for t in study.trials}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)

    # best_params.yaml is a diff that applies to params.yaml
    diff = yaml.safe_load((out / "best_params.yaml").read_text())
    assert set(diff) == {"loss"}
    assert set(diff["loss"]) == {"teacher_temp", "warmup_teacher_temp", "student_temp", "warmup_teacher_temp_epochs"}
    assert res.best is not None and diff["loss"]["teacher_temp"] == res.best["params"]["teacher_temp"]
    Config.from_dict(apply_diff(resolve_profile(load_params(PARAMS)), diff, "best_params.yaml"))
    assert 0.02 <= diff["loss"]["teacher_temp"] <= 0.1
    assert 0 <= diff["loss"]["warmup_teacher_temp_epochs"] <= 1   # "=0.5*train.epochs" of 2-epoch trials

    # re-running with a larger budget continues the same study: same trials, one more, no duplicate
    path = write_params(tmp_path, shapes_root, n_trials=3)
    run(path, tmp_path)
    study = load(path)
    numbers = [t.number for t in study.trials]
    assert numbers == [0, 1, 2]
    assert {t.number: (t.params, t.value, t.state) for t in study.trials if t.number < 2} == first
    assert len(pd.read_csv(out / "trials.csv")) == 3

    # re-running at the budget runs nothing and rewrites byte-identical outputs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run(path, tmp_path)
    assert res.workers == [] and len(load(path).trials) == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_two_local_workers_share_one_journal(tmp_path, shapes_root):
    """Two local processes, one journal file: exactly n_trials trials, each run by one worker."""
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=4, n_workers=2,
                        epochs=1)
    res = run(path, tmp_path, executor="local", max_parallel=2, poll_s=0.5)
    assert all(isinstance(o, dict) for o in res.workers), res.workers
    by_worker = [[n for n, _ in o["trials"]] for o in res.workers]
    ran = sorted(n for ns in by_worker for n in ns)
    assert ran == [0, 1, 2, 3], by_worker                 # none lost, none duplicated
    study = load(path)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert {t.user_attrs["worker"] for t in study.trials} <= {0, 1}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4   # distinct samples
    assert not list((tmp_path / "runs" / "tiny" / "workers").glob("*.json"))  # no claim left
    assert len(pd.read_csv(tmp_path / "results" / "trials.csv")) == 4


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_array_workers_share_one_journal(tmp_path, shapes_root, slurm):
    """Two workers as a SLURM job array (ci/slurm): an odd budget, every trial run exactly once."""
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=3, n_workers=2,
                        epochs=1)
    res = run(path, tmp_path, executor="slurm", poll_s=1, stale_s=5, **{
        "slurm.cpus_per_task": 1, "slurm.mem_gb": 1, "slurm.timeout_min": 5, "slurm.signal_delay_s": 30})
    assert all(isinstance(o, dict) for o in res.workers), res.workers
    ran = sorted(n for o in res.workers for n, _ in o["trials"])
    assert ran == [0, 1, 2]
    assert sorted(t.number for t in load(path).trials) == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in load(path).trials)


def test_collapsed_trial_is_recorded_with_a_low_value(tmp_path, shapes_root):
    # no centering and a ~0 teacher temperature: every image picks the same prototype (one-hot collapse)
    space = write_space(tmp_path, "params:\n  - {name: teacher_temp, low: 0.001, high: 0.002}\n"
                                  "fixed: {loss: {normalization: none}}\n")
    path = write_params(tmp_path, shapes_root, space=space, n_trials=1, epochs=1)
    res = run(path, tmp_path)
    (t,) = load(path).trials
    assert t.state == TrialState.COMPLETE
    assert t.value == tune.LOW_VALUE
    assert t.user_attrs["status"] == "collapsed" and t.user_attrs["collapsed"] is True
    assert "collapse" in t.user_attrs["collapse_reason"]
    for k in ("teacher_entropy", "teacher_mean_entropy", "kl_teacher_student", "effective_rank", "feature_std"):
        assert isinstance(t.user_attrs[k], float)
    assert t.user_attrs["teacher_mean_entropy"] < 0.05 * math.log(64)
    row = res.trials.iloc[0]
    assert row.status == "collapsed" and bool(row.collapsed) and row.value == tune.LOW_VALUE
    assert res.best is None       # a collapsed trial is never the best: best_params.yaml is empty
    assert yaml.safe_load((tmp_path / "results" / "best_params.yaml").read_text()) == {}


def test_median_pruner_prunes_a_bad_trial(tmp_path, shapes_root):
    path = write_params(tmp_path, shapes_root, n_trials=4, epochs=2, pruner_startup_trials=2,
                        pruner_warmup_epochs=0)
    s = tune.tune_settings(load_all(path))
    plan = tune.make_plan(load_all(path))
    study, _ = tune.open_study(s, create=True)
    dists = {p.name: p.distribution() for p in plan.space.params}
    good = {"teacher_temp": 0.04, "warmup_teacher_temp": 0.03, "student_temp": 0.1, "warmup_teacher_temp_epochs": 0}
    for _ in range(3):   # three finished trials that reached 99 % at every epoch
        study.add_trial(optuna.trial.create_trial(params=good, distributions=dists, value=99.0,
                                                  intermediate_values={0: 99.0, 1: 99.0}))
    res = run(path, tmp_path)
    t = load(path).trials[3]
    assert t.state == TrialState.PRUNED
    assert list(t.intermediate_values) == [0] and t.intermediate_values[0] < 99.0
    assert t.user_attrs["status"] == "pruned" and t.user_attrs["epochs_run"] == 1
    assert "teacher_entropy" in t.user_attrs              # pruned trials keep their collapse metrics
    assert res.trials.state.tolist() == ["COMPLETE"] * 3 + ["PRUNED"]


def test_stale_trial_is_replaced_and_claimed_trial_is_resumed(tmp_path, shapes_root):
    """A RUNNING trial of a dead worker is failed as stale (not counted); a RUNNING trial that
    worker 0 claims (pre-empted job) is resumed by worker 0 from its run directory."""
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=2, epochs=1)
    s = tune.tune_settings(load_all(path))
    study, _ = tune.open_study(s, create=True)
    stale = study.ask()                                 # trial 0: no claim
    claimed = study.ask()                               # trial 1: claimed by worker 0
    claimed.suggest_float("teacher_temp", 0.02, 0.1, log=True)
    claim = tmp_path / "runs" / "tiny" / "workers" / "worker_0.json"
    claim.parent.mkdir(parents=True)
    claim.write_text('{"number": %d}' % claimed.number)
    run(path, tmp_path)
    trials = {t.number: t for t in load(path).trials}
    assert trials[stale.number].state == TrialState.FAIL
    assert trials[stale.number].user_attrs["status"] == "stale"
    assert trials[claimed.number].state == TrialState.COMPLETE
    assert trials[claimed.number].params["teacher_temp"] == claimed.params["teacher_temp"]
    assert sorted(trials) == [0, 1, 2]                  # the stale one was replaced by trial 2
    assert trials[2].state == TrialState.COMPLETE
    assert not claim.exists()


def test_holdout_split_is_disjoint(tmp_path, shapes_root):
    params = load_all(write_params(tmp_path, shapes_root))
    cfg = Config.from_dict({k: v for k, v in params.items() if k not in ("profile", "tune")})
    bank, queries = tune.objective_loaders(cfg, "holdout", 0.25)
    b, q = set(bank.dataset.indices), set(queries.dataset.indices)
    assert len(q) == 16 and len(b) == 48 and not (b & q)


# ----- bad input: a clear error before any trial ----------------------------------------------

BAD_SPACES = {
    "inverted": ("params:\n  - {name: teacher_temp, low: 0.1, high: 0.02, log: true}\n",
                 r"params\[0\] \(teacher_temp\): inverted range: low 0.1 >= high 0.02"),
    "empty": ("params:\n  - {name: student_temp, low: 0.1, high: 0.1}\n",
              r"params\[0\] \(student_temp\): empty range: low 0.1 >= high 0.1"),
    "unknown_name": ("params:\n  - {name: teacher_tmp, low: 0.02, high: 0.1}\n",
                     r"unknown parameter name 'teacher_tmp'"),
    "unknown_key": ("params:\n  - {name: tt, key: loss.teacher_tmp, low: 0.02, high: 0.1}\n",
                    r"params\[0\] \(tt\): unknown key 'loss.teacher_tmp'"),
    "log_nonpositive": ("params:\n  - {name: teacher_temp, low: 0.0, high: 0.1, log: true}\n",
                        r"log scale needs low > 0"),
    "out_of_config_range": ("params:\n  - {name: teacher_temp, low: 0.02, high: 20.0}\n",
                            r"value 20.0 is not allowed for loss.teacher_temp"),
    "float_for_int_key": ("params:\n  - {name: warmup_teacher_temp_epochs, type: float, low: 0, high: 2}\n",
                          r"is an integer in params.yaml"),
    "no_params": ("params: []\n", r"params: expected at least one value, got an empty list"),
    "duplicate": ("params:\n  - {name: teacher_temp, low: 0.02, high: 0.1}\n"
                  "  - {name: t2, key: loss.teacher_temp, low: 0.02, high: 0.1}\n",
                  r"searched by several entries"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_fails_before_any_trial(tmp_path, shapes_root, case):
    text, msg = BAD_SPACES[case]
    space = write_space(tmp_path, text)
    path = write_params(tmp_path, shapes_root, space=space)
    with pytest.raises(ValueError, match=msg) as info:
        tune.main(["--params", str(path)])
    assert str(space) in str(info.value)
    assert not (tmp_path / "study").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("over, msg", [
    ({"n_trials": 0}, r"params.yaml:tune.n_trials: 0 is out of range \[1, inf\]"),
    ({"pruner": "hyperband"}, r"tune.pruner: 'hyperband' is not allowed; allowed: \['median', 'none'\]"),
    ({"split": "test"}, r"tune.split: 'test' is not allowed; allowed: \['val', 'holdout'\]"),
    ({"n_workers": "2"}, r"tune.n_workers: expected an integer, got '2'"),
])
def test_bad_tune_settings_fail_before_any_trial(tmp_path, shapes_root, over, msg):
    path = write_params(tmp_path, shapes_root, **over)
    with pytest.raises(ValueError, match=msg):
        tune.run_tune(load_all(path), launch_overrides={"executor": "debug"})
    assert not (tmp_path / "study").exists()


def test_repository_space_and_settings_are_valid():
    plan = tune.make_plan(load_all(PARAMS))
    assert [p.key for p in plan.space.params] == ["loss.teacher_temp", "loss.warmup_teacher_temp",
                                                  "loss.student_temp", "loss.warmup_teacher_temp_epochs"]
    assert all(p.log for p in plan.space.params[:3])
    e = plan.space.params[3]
    assert (e.type, e.low, e.high) == ("int", 0, round(0.5 * plan.base["train"]["epochs"]))
    assert plan.settings.pruner == "median" and plan.settings.storage.endswith("journal.log")


def test_computed_bound_that_empties_a_range_is_named(tmp_path, shapes_root):
    path = write_params(tmp_path, shapes_root, epochs=1)   # warm-up epochs in [0, round(0.5 * 1)] = [0, 0]
    with pytest.raises(ValueError, match=r"warmup_teacher_temp_epochs\): empty range: low 0 >= high 0 "
                                         r"\(from '=0.5\*train.epochs'\)"):
        tune.run_tune(load_all(path), launch_overrides={"executor": "debug"})


def test_rdb_url_storage(tmp_path, shapes_root):
    """Any RDB URL is accepted (SQLite here; PostgreSQL for many nodes)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), storage=url, n_trials=1,
                        epochs=1)
    res = run(path, tmp_path)
    assert (tmp_path / "study.db").is_file()
    assert res.trials.state.tolist() == ["COMPLETE"]
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 1


def test_changed_setup_does_not_mix_into_a_study(tmp_path, shapes_root):
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS))
    plan = tune.make_plan(load_all(path))
    study, _ = tune.open_study(plan.settings, create=True)
    tune.check_fingerprint(study, plan)                      # as the stage records it
    tune.check_fingerprint(study, tune.make_plan(load_all(write_params(   # budget/seed/pruner: same study
        tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=9, seed=3, pruner="none"))))
    wider = TEMPS.replace("high: 0.3", "high: 0.5")
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, wider, "wider.yaml"))
    with pytest.raises(ValueError, match=r"study 'tiny' .* was run with another setup .* new tune.study_name"):
        run(path, tmp_path)
    assert len(load(path).trials) == 0


def test_failing_trials_are_recorded_and_do_not_crash_the_study(tmp_path, shapes_root):
    # a batch larger than the 64 images: every trial raises in setup -> FAIL with the message
    space = write_space(tmp_path, TEMPS + "fixed: {optim: {batch_size: 128}}\n")
    path = write_params(tmp_path, shapes_root, space=space, n_trials=2, epochs=1)
    res = run(path, tmp_path)
    assert res.trials.state.tolist() == ["FAIL", "FAIL"] and res.trials.status.tolist() == ["error", "error"]
    assert res.trials.error.str.contains("exceeds the dataset size").all()
    assert res.best is None and all(isinstance(o, dict) for o in res.workers)


def test_diverged_trial_is_recorded_with_a_low_value(tmp_path, shapes_root, monkeypatch):
    """A non-finite loss (train() status "diverged") is hard to provoke in a tiny run: the real
    training runs and its result is relabelled, which exercises the stage's bookkeeping."""
    real_train = tune.objective.train

    def diverging_train(*args, **kwargs):
        return {**real_train(*args, **kwargs), "status": "diverged", "final_epoch": 0}

    monkeypatch.setattr(tune.objective, "train", diverging_train)
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=1, epochs=1)
    res = run(path, tmp_path)
    (t,) = load(path).trials
    assert t.state == TrialState.COMPLETE and t.value == tune.LOW_VALUE
    assert t.user_attrs["status"] == "diverged" and t.user_attrs["diverged_epoch"] == 0
    assert "teacher_entropy" in t.user_attrs and res.best is None


def test_local_worker_follows_omp_num_threads(tmp_path, shapes_root, monkeypatch):
    """One local worker process beside other jobs: OMP_NUM_THREADS=1 is the trial's torch thread
    count (the worker must not take every core of the machine over it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=1, epochs=1)
    res = run(path, tmp_path, executor="local", max_parallel=1, poll_s=0.5)
    assert all(isinstance(o, dict) for o in res.workers), res.workers
    (trial,) = load(path).trials
    assert trial.user_attrs["torch_threads"] == 1
    assert pd.read_csv(tmp_path / "results" / "trials.csv")["torch_threads"].tolist() == [1]


def test_worker_threads_share_the_cores_without_omp_num_threads(monkeypatch):
    from pipelines.launch import cores, load_launch_config
    from pipelines.tune.stage import worker_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    local = load_launch_config(None, {"executor": "local", "max_parallel": 2})
    assert worker_threads(local, 1) == cores() and worker_threads(local, 2) == max(1, cores() // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_threads(local, 2) == 3
    assert worker_threads(load_launch_config(None, {"executor": "slurm", "slurm.cpus_per_task": 4}), 1) == 4


def test_stage_logs_trials_done_with_an_eta(tmp_path, shapes_root, caplog):
    from pipelines.tune.progress import progress_line
    counts = {"done": 3, "running": 2, "COMPLETE": 2, "PRUNED": 1, "FAIL": 0}
    assert progress_line(counts, 8, 1, 40.0) == ("trials done 3/8 (complete 2, pruned 1, failed 0, running 2), "
                                                 "elapsed 40s, ETA 100s")          # 20 s per trial, 5 to go
    assert progress_line({**counts, "done": 1}, 8, 1, 5.0).endswith("ETA -")
    path = write_params(tmp_path, shapes_root, space=write_space(tmp_path, TEMPS), n_trials=2, epochs=1)
    with caplog.at_level("INFO", logger="pipelines.tune.progress"):
        run(path, tmp_path, poll_s=0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.tune.progress"]
    assert lines[-1].startswith("tune: trials done 2/2 (complete 2, pruned 0, failed 0, running 0)")
    assert lines[-1].endswith("ETA 0s")
