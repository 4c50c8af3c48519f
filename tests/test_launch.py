"""The submitit launcher (pipelines/launch/), on the real single-node SLURM of ci/slurm/.

Tests marked `slurm` skip only when sbatch is absent; the `slurm` fixture starts the cluster
(ci/slurm/start.sh) when it is not up. No mocks: jobs really go through sbatch/squeue/scancel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines import launch
from pipelines.launch import (
    CellFailed,
    LaunchConfig,
    Resumable,
    SubmissionError,
    launch_config_from_dict,
    load_launch_config,
    make_executor,
    probe_cell,
    probe_counter,
    probe_counter_expected,
    probe_distributed,
    probe_started,
    run_cells,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny jobs for a 2-core machine: 1 CPU, 1 GB, 5 min limit (submitit's USR2 needs >= 5 min).
SLURM_TEST = {
    "executor": "slurm",
    "poll_s": 1,
    "stale_s": 5,
    "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 5, "signal_delay_s": 30},
}


MAX_WAIT_S = 240  # no test waits forever, even if the launcher's own detection broke


def slurm_cfg(**slurm_overrides) -> LaunchConfig:
    data = json.loads(json.dumps(SLURM_TEST))
    data["slurm"].update(slurm_overrides)
    return launch_config_from_dict(data, source="test")


@pytest.fixture
def slurm_jobs(slurm):
    """Collects submitted job ids (pass .record as on_submit); scancels leftovers at teardown."""

    class Jobs:
        def __init__(self):
            self.jobs = []

        def record(self, jobs):
            self.jobs.extend(jobs)

        @property
        def ids(self):
            return [str(j.job_id) for j in self.jobs]

    j = Jobs()
    yield j
    if j.ids:
        subprocess.run(["scancel", *j.ids], capture_output=True, timeout=60)


def _wait_for(pred, timeout_s, what):
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _in_background(fn):
    """Runs fn in a thread; the returned list collects its exception, if any."""
    errors = []

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, errors


# ----- configuration ---------------------------------------------------------------------------


def test_repo_launch_yaml_is_valid_and_defaults_to_local(monkeypatch):
    monkeypatch.delenv("DINO_LAUNCH_EXECUTOR", raising=False)
    cfg = load_launch_config(REPO_ROOT / "launch.yaml")
    assert cfg.executor == "local"
    assert cfg.slurm.gpus_per_node == 0
    hash(cfg)  # frozen and hashable
    with pytest.raises(Exception):
        cfg.executor = "slurm"  # type: ignore[misc]


def test_launch_yaml_is_not_a_params_file():
    """Launcher settings must stay out of params.yaml (result identity, DVC hashes)."""
    params = REPO_ROOT / "params.yaml"
    if params.exists():
        data = yaml.safe_load(params.read_text()) or {}
        assert not {"executor", "slurm", "launch"} & set(data)


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"executr": "local"}, "executr", "allowed: ['executor'"),
        ({"slurm": {"partitoin": "debug"}}, "slurm.partitoin", "allowed: ['additional_parameters'"),
        ({"executor": "k8s"}, "executor", "allowed: ['debug', 'local', 'slurm']"),
        ({"max_parallel": 0}, "max_parallel", "0 is out of range [1, inf]"),
        ({"max_parallel": "2"}, "max_parallel", "expected an integer, got '2'"),
        ({"slurm": {"nodes": True}}, "slurm.nodes", "expected an integer, got True"),
        ({"slurm": {"gpus_per_node": -1}}, "slurm.gpus_per_node", "-1 is out of range [0, inf]"),
        ({"slurm": {"mem_gb": "lots"}}, "slurm.mem_gb", "expected a number or null, got 'lots'"),
        ({"slurm": {"timeout_min": 2.5}}, "slurm.timeout_min", "expected an integer, got 2.5"),
        ({"slurm": {"additional_parameters": ["qos"]}}, "slurm.additional_parameters", "mapping"),
        ({"slurm": {"additional_parameters": {"array": "0-3"}}}, "additional_parameters.array",
         "set by submitit"),
        ({"local": 3}, "local", "expected a mapping"),
        ({"poll_s": 0}, "poll_s", "0.0 is out of range (0, inf)"),
    ],
)
def test_launch_config_validation(data, key, fragment):
    with pytest.raises(ValueError) as e:
        launch_config_from_dict(data, source="launch.yaml")
    msg = str(e.value)
    assert "launch.yaml" in msg and key in msg and fragment in msg, msg


def test_launch_config_bad_value_names_value_and_allowed(tmp_path):
    p = tmp_path / "launch.yaml"
    p.write_text("executor: k8s\n")
    with pytest.raises(ValueError, match=r"executor: 'k8s' is not allowed; allowed: \['debug', 'local', 'slurm'\]"):
        load_launch_config(p)


def test_overrides_and_env(monkeypatch):
    monkeypatch.setenv("DINO_LAUNCH_EXECUTOR", "debug")
    cfg = load_launch_config(REPO_ROOT / "launch.yaml", {"slurm.partition": "gpu"})
    assert cfg.executor == "debug" and cfg.slurm.partition == "gpu"
    cfg2 = cfg.replace(**{"slurm.additional_parameters": {"qos": "high"}})
    assert cfg2.slurm.sbatch_extra() == {"qos": "high"}
    with pytest.raises(ValueError, match="slurm.nodes"):
        cfg.replace(**{"slurm.nodes": 0})


def test_make_executor_passes_cluster_explicitly(tmp_path):
    # srun may be on PATH here: AutoExecutor alone would pick SLURM.
    for kind in ("local", "debug"):
        ex = make_executor(launch_config_from_dict({"executor": kind}), tmp_path / kind)
        assert ex.cluster == kind


# ----- debug and local executors ---------------------------------------------------------------


def test_debug_executor_runs_in_process(tmp_path):
    cfg = launch_config_from_dict({"executor": "debug"})
    out = run_cells(os.getpid, [(), ()], cfg, tmp_path)
    assert out == [os.getpid(), os.getpid()]
    # a failing cell is reported (no pdb) and does not stop the others
    out = run_cells(probe_cell, [(1, str(tmp_path)), (2, str(tmp_path), 0.0, True), (3, str(tmp_path))],
                    cfg, tmp_path)
    assert out[0] == 1 and out[2] == 9
    assert isinstance(out[1], CellFailed) and "failed on purpose" in str(out[1])


def test_local_max_parallel_1_runs_cells_one_after_another(tmp_path):
    cfg = launch_config_from_dict({"executor": "local", "max_parallel": 1, "poll_s": 0.2,
                                   "local": {"timeout_min": 5}})
    cells = tmp_path / "cells"
    t0 = time.time()
    out = run_cells(probe_cell, [(i, str(cells), 0.5) for i in range(3)], cfg, tmp_path / "sub")
    assert out == [0, 1, 4]
    recs = sorted((json.loads((cells / f"cell_{i}.json").read_text()) for i in range(3)),
                  key=lambda r: r["start"])
    for a, b in zip(recs, recs[1:]):
        assert b["start"] >= a["end"], f"cells overlapped with max_parallel=1: {recs}"
    assert len({r["pid"] for r in recs}) == 3  # separate processes
    print(f"local sequential: {time.time() - t0:.1f}s")


def test_local_failed_cell_reports_stderr_and_others_finish(tmp_path):
    cfg = launch_config_from_dict({"executor": "local", "max_parallel": 2, "poll_s": 0.2,
                                   "local": {"timeout_min": 5}})
    out = run_cells(probe_cell, [(0, str(tmp_path)), (1, str(tmp_path), 0.0, True)], cfg,
                    tmp_path / "sub")
    assert out[0] == 0
    assert isinstance(out[1], CellFailed)
    assert out[1].stderr is not None and out[1].stderr.exists()
    assert str(out[1].stderr) in str(out[1]) and "failed on purpose" in str(out[1])


def test_local_two_task_job_gets_ranks_and_all_reduces(tmp_path):
    """DDP on one machine through the local executor: 2 processes, gloo, distributed_env()."""
    cfg = launch_config_from_dict({"executor": "local", "poll_s": 0.5,
                                   "local": {"timeout_min": 5, "tasks_per_node": 2}})
    (res,) = run_cells(probe_distributed, [()], cfg, tmp_path / "sub", all_tasks=True,
                       checkpointable=False)
    assert not isinstance(res, CellFailed), str(res)
    assert sorted(r["rank"] for r in res) == [0, 1]
    assert {r["world_size"] for r in res} == {2} and {r["sum"] for r in res} == {3.0}


def test_resumable_calls_fn_and_checkpoints_itself(tmp_path):
    r = Resumable(probe_cell, 3, str(tmp_path))
    assert r() == 9
    delayed = r.checkpoint()
    assert delayed.function is r and delayed.result() == 9


def test_distributed_env_outside_submitit_is_single_process(monkeypatch):
    for k in ("SUBMITIT_EXECUTOR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    env = launch.distributed_env()
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and "RANK" not in os.environ


# ----- real SLURM ------------------------------------------------------------------------------


@pytest.mark.slurm
def test_slurm_job_array_of_3_cells(tmp_path, slurm_jobs):
    cells = tmp_path / "cells"
    t0 = time.time()
    out = run_cells(probe_cell, [(i, str(cells), 3.0) for i in range(3)], slurm_cfg(),
                    tmp_path / "sub", on_submit=slurm_jobs.record,
                    name="test-array", max_wait_s=MAX_WAIT_S)
    assert out == [0, 1, 4]
    # one job array: <id>_0, <id>_1, <id>_2
    masters = {i.split("_")[0] for i in slurm_jobs.ids}
    assert len(masters) == 1 and sorted(i.split("_")[1] for i in slurm_jobs.ids) == ["0", "1", "2"]
    recs = [json.loads((cells / f"cell_{i}.json").read_text()) for i in range(3)]
    overlaps = sum(a["start"] < b["end"] and b["start"] < a["end"]
                   for k, a in enumerate(recs) for b in recs[k + 1:])
    if (os.cpu_count() or 1) >= 2:
        assert overlaps >= 1, f"no two cells ran at the same time on {os.cpu_count()} cores: {recs}"
    print(f"slurm array of 3: {time.time() - t0:.1f}s, overlapping pairs: {overlaps}")


@pytest.mark.slurm
def test_slurm_two_task_job_gets_ranks_and_all_reduces(tmp_path, slurm_jobs):
    cfg = slurm_cfg(tasks_per_node=2, mem_gb=2)
    t0 = time.time()
    (res,) = run_cells(probe_distributed, [()], cfg, tmp_path / "sub", all_tasks=True,
                       checkpointable=False, on_submit=slurm_jobs.record,
                       name="test-ddp", max_wait_s=MAX_WAIT_S)
    assert not isinstance(res, CellFailed), str(res)
    assert sorted(r["rank"] for r in res) == [0, 1]
    assert {r["world_size"] for r in res} == {2}
    assert sorted(r["local_rank"] for r in res) == [0, 1]
    assert {r["sum"] for r in res} == {3.0}  # (0 + 1) + (1 + 1) through gloo all_reduce
    assert len({r["master"] for r in res}) == 1
    print(f"slurm 2-task gloo job: {time.time() - t0:.1f}s")


@pytest.mark.slurm
def test_slurm_cancelled_job_is_reported_with_stderr_path(tmp_path, slurm_jobs):
    cells = tmp_path / "cells"
    cancelled_at = []

    def cancel_when_started(jobs):
        slurm_jobs.record(jobs)
        job_id = str(jobs[0].job_id)

        def go():
            _wait_for(lambda: (cells / "started_0").exists(), 120, "the cell to start")
            subprocess.run(["scancel", job_id], check=True)
            cancelled_at.append(time.time())

        _in_background(go)

    out = run_cells(probe_started, [(0, str(cells), 300.0)], slurm_cfg(), tmp_path / "sub",
                    on_submit=cancel_when_started, name="test-cancel", max_wait_s=MAX_WAIT_S)
    detected = time.time()
    assert cancelled_at, "the test could not cancel the job"
    (res,) = out
    assert isinstance(res, CellFailed), res
    assert res.state in ("CANCELLED", "GONE")
    assert res.stderr is not None and str(res.stderr) in str(res)
    assert res.job_id in str(res)
    assert detected - cancelled_at[0] < 120, f"took {detected - cancelled_at[0]:.0f}s to notice"
    print(f"cancel detected after {detected - cancelled_at[0]:.1f}s: {str(res).splitlines()[0]}")


@pytest.mark.slurm
def test_slurm_failed_cell_does_not_stop_the_others(tmp_path, slurm_jobs):
    out = run_cells(probe_cell, [(0, str(tmp_path)), (1, str(tmp_path), 0.0, True), (2, str(tmp_path))],
                    slurm_cfg(), tmp_path / "sub", on_submit=slurm_jobs.record,
                    name="test-fail", max_wait_s=MAX_WAIT_S)
    assert out[0] == 0 and out[2] == 4
    assert isinstance(out[1], CellFailed) and "failed on purpose" in str(out[1])
    assert out[1].stderr is not None and out[1].stderr.exists()


@pytest.mark.slurm
def test_slurm_job_that_can_never_start_is_reported_and_cancelled(tmp_path, slurm_jobs):
    """A job pending forever (its dependency failed) is reported instead of waited for."""
    dep = subprocess.run(["sbatch", "--parsable", "--mem=100M", "-o", "/dev/null", "--wrap", "exit 1"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        _wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", dep], capture_output=True,
                                             text=True).stdout.strip(), 60, "the dependency to fail")
        cfg = slurm_cfg(additional_parameters={"dependency": f"afterok:{dep}"})
        t0 = time.time()
        (res,) = run_cells(probe_cell, [(0, str(tmp_path))], cfg, tmp_path / "sub",
                           on_submit=slurm_jobs.record, name="test-never", max_wait_s=MAX_WAIT_S)
        assert isinstance(res, CellFailed), res
        assert "DependencyNeverSatisfied" in str(res) and "never start" in str(res)
        assert time.time() - t0 < 60
        _wait_for(lambda: subprocess.run(["squeue", "-h", "-j", res.job_id, "-o", "%T"],
                                         capture_output=True, text=True).stdout.strip()
                  in ("", "CANCELLED"), 30, "the hopeless job to be cancelled")
    finally:
        subprocess.run(["scancel", dep], capture_output=True)


@pytest.mark.slurm
@pytest.mark.parametrize(
    "overrides, sbatch_says",
    [
        ({"gpus_per_node": 4, "tasks_per_node": 4}, "gres"),  # no GPUs on this cluster
        ({"cpus_per_task": 64}, "more processors requested than permitted"),
        ({"partition": "nope"}, "invalid partition"),
    ],
)
def test_slurm_impossible_request_fails_at_submit_with_sbatch_message(tmp_path, slurm_jobs,
                                                                      overrides, sbatch_says):
    with pytest.raises(SubmissionError) as e:
        run_cells(probe_cell, [(0, str(tmp_path)), (1, str(tmp_path))], slurm_cfg(**overrides),
                  tmp_path / "sub", on_submit=slurm_jobs.record,
                  name="test-bad", max_wait_s=MAX_WAIT_S)
    msg = str(e.value)
    assert "sbatch: error" in msg and sbatch_says in msg.lower(), msg
    assert not slurm_jobs.ids


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("how", ["scontrol_requeue", "usr2_preemption"])
def test_slurm_preempted_job_requeues_and_resumes(tmp_path, slurm_jobs, how):
    """Requeued mid-run, the job restarts and resumes from its progress file: same final value."""
    steps, step_s = 12, 1.0
    progress = tmp_path / "progress.json"
    interrupted_at = []

    def interrupt_midway(jobs):
        slurm_jobs.record(jobs)
        job = jobs[0]

        def go():
            def midway():
                try:
                    return json.loads(progress.read_text())["step"] >= 4
                except (OSError, ValueError):
                    return False

            _wait_for(midway, 120, "the job to reach step 4")
            if how == "scontrol_requeue":
                subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
            else:  # SIGTERM + USR2 as on pre-emption: submitit checkpoints and requeues itself
                job._interrupt(timeout=False)
            interrupted_at.append(time.time())

        _in_background(go)

    t0 = time.time()
    (res,) = run_cells(probe_counter, [(str(progress), steps, step_s)], slurm_cfg(),
                       tmp_path / "sub", on_submit=interrupt_midway,
                       name=f"test-{how}", max_wait_s=MAX_WAIT_S)
    assert interrupted_at, "the test could not interrupt the job"
    assert not isinstance(res, CellFailed), str(res)
    assert res["value"] == probe_counter_expected(steps)  # = an uninterrupted run
    assert res["starts"] == 2, res
    assert res["resumed_from"][0] == 0 and 4 <= res["resumed_from"][1] < steps, res
    if how == "usr2_preemption":
        log = slurm_jobs.jobs[0].paths.stderr.read_text()
        assert "checkpoint requested" in log, log[-2000:]
    print(f"{how}: finished {time.time() - t0:.1f}s after submission, resumed from step "
          f"{res['resumed_from'][1]}")


def test_uninterrupted_counter_matches_expected(tmp_path):
    res = probe_counter(str(tmp_path / "p.json"), 5, 0.0)
    assert res == {"value": probe_counter_expected(5), "starts": 1, "resumed_from": [0]}


# ----- cell locks (pipelines/lock.py): real processes ---------------------------------------------
_HOLD = ("import sys, time; from pipelines.lock import cell_lock\n"
         "with cell_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def _holder_process(cell: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(cell)], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_cell_lock_refuses_or_waits_for_a_live_owner(tmp_path):
    from pipelines.lock import CellBusy, cell_lock, holder
    cell = tmp_path / "cell"
    owner = _holder_process(cell)
    try:
        assert holder(cell).startswith(f"pid {owner.pid} on host ")
        with pytest.raises(CellBusy, match=f"{cell}: is being trained by pid {owner.pid} on host"):
            with cell_lock(cell, wait=False):
                pass
        threading.Timer(1.0, owner.terminate).start()   # the owner ends: the waiting one goes on
        t0 = time.time()
        with cell_lock(cell, wait=True):
            assert time.time() - t0 >= 0.9
            assert holder(cell).startswith(f"pid {os.getpid()} on host ")
    finally:
        owner.kill()
        owner.wait()


def test_cell_lock_of_a_dead_owner_is_taken_over_with_a_log_line(tmp_path, caplog):
    import logging
    import signal as sig
    from pipelines.lock import cell_lock, holder
    cell = tmp_path / "cell"
    owner = _holder_process(cell)
    owner.send_signal(sig.SIGKILL)   # dies holding the lock: the kernel drops the flock, the owner text stays
    owner.wait()
    assert holder(cell) is None and f'"pid": {owner.pid}' in (cell / "LOCK").read_text()
    with caplog.at_level(logging.WARNING, logger="pipelines.lock"):
        with cell_lock(cell, wait=False):
            pass
    (record,) = caplog.records
    assert record.getMessage().startswith(f"cell: taking over the lock of pid {owner.pid} on host "
                                          f"{os.uname().nodename} since ")
    assert record.getMessage().endswith(", which ended without releasing it")
    assert (cell / "LOCK").read_text() == ""   # released cleanly
