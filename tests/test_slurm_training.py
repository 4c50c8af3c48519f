"""Real training cells through the submitit launcher on the real single-node SLURM (ci/slurm/).

- a 2-task DDP job (tasks_per_node=2, gloo, per-task batch B) ends with the weights of the local
  single-process run with batch 2B;
- a job array of 3 cells completes, two at a time on the 2 CPUs;
- pre-emption: a job requeued (`scontrol requeue`) after its first checkpoint resumes from it
  and ends with the weights of the uninterrupted local run;
- a training job cancelled mid-run makes the launcher report the cell failed, with its stderr.

Every cell is `pipelines.ddp_entry.train_cell_ddp` (train + evaluate, DONE marker), on a tiny
`shapes` set generated into the test's temporary folder. No mocks: the tests skip, with a
reason, only when sbatch is absent (tests/conftest.py).

Tolerance for "equal weights" (ATOL, derived as in tests/test_distributed.py): the DDP job sums
each gradient in another fp32 order (per task over B samples, then gloo adds the 2 partial sums)
than the local run over 2B samples; a reordered sum of n terms differs by up to (n-1) u sum|x_i|,
u = 2^-24 ~ 6e-8. Relative to the gradient that is ~n u ~ 5e-7 where the terms agree in sign,
but unbounded where they cancel, and AdamW normalises every coordinate (|m_hat / sqrt(v_hat)| <~ 1):
on a coordinate whose gradient cancels to rounding level the two runs can take steps of opposite
sign, a difference of up to one whole step, lr_t <= lr_peak. Such coordinates are few and their
flips of random sign, so the weights may differ by at most one peak step:
ATOL = lr_peak = optim.lr x 2B / 256 = 0.004 x 8 / 256 = 1.25e-4. A real error (another sample
split, a missing all-reduce, a wrong lr scaling) changes every coordinate's step at every one of
the S = 48 steps, ~S x lr_peak = 6e-3, 48 times the bound. Measured: student 1.0e-5 on an AVX512-BF16
EPYC (teacher 3.8e-7, center 2.4e-7), under 2e-7 on AVX2 EPYC. The teacher (an EMA of the student)
and the center (an EMA of teacher outputs) differ less than the student; the loss curve, a mean of
per-sample losses of a few nats, is held to the same bound. The requeue test compares two single
process runs in the same order, expected equal; it keeps the same bound.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from pipelines.launch import CellFailed, launch_config_from_dict, run_cells
from pipelines.store import cell_summary

pytestmark = pytest.mark.slurm

N_TRAIN, N_VAL, B, EPOCHS = 96, 16, 4, 4     # 96 / 8 = 12 steps per epoch, 48 steps
ATOL = tiny_config().optim.lr * 2 * B / 256  # one peak AdamW step (module docstring): 1.25e-4
MAX_WAIT_S = 300                             # no test waits forever, even if detection broke
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SUBMITIT_EXECUTOR")

# 1 CPU and 1 GB per task; a 10 min limit (submitit's USR2 needs >= 5 min); fast polling.
SLURM_TEST = {"executor": "slurm", "poll_s": 1, "stale_s": 5,
              "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10, "signal_delay_s": 30}}


def slurm_cfg(**slurm_overrides):
    data = json.loads(json.dumps(SLURM_TEST))
    data["slurm"].update(slurm_overrides)
    return launch_config_from_dict(data, source="test")


def cell_params(data_root: Path, batch: int, *, seed: int = 0, epochs: int = EPOCHS) -> dict:
    """Tiny cell (tests/helpers.py) on the generated shapes set; no drop path (DDP equivalence)."""
    return tiny_config(
        data={"dataset": "shapes", "root": str(data_root), "num_train": N_TRAIN, "num_val": N_VAL,
              "image_size": 16, "download": False},
        model={"drop_path_rate": 0.0},
        optim={"batch_size": batch, "warmup_epochs": 1},
        train={"epochs": epochs, "seed": seed, "saveckp_freq": 1},
        eval={"knn_k": [5], "batch_size": 64, "linear_epochs": 0},
    ).to_dict()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from dino_core.data.shapes import prepare_shapes

    root = tmp_path_factory.mktemp("slurm_data") / "shapes"
    prepare_shapes(root, num_train=N_TRAIN, num_val=N_VAL, image_size=16)
    return root


def _local_cell(cell_dir: str, params: dict) -> None:
    torch.set_num_threads(1)
    for k in DIST_VARS:
        os.environ.pop(k, None)
    from pipelines.ddp_entry import train_cell_ddp

    train_cell_ddp(cell_dir, params)


def _reference(tmp_path_factory, params: dict) -> Path:
    """The local, uninterrupted, single-process run of `params` (forked: torch is loaded)."""
    cell = tmp_path_factory.mktemp("slurm_ref") / "cell"
    p = mp.get_context("fork").Process(target=_local_cell, args=(str(cell), params))
    t0 = time.time()
    p.start()
    p.join(300)
    if p.is_alive():
        p.kill()
        p.join()
    assert p.exitcode == 0 and (cell / "DONE").is_file(), f"local reference run failed (exit {p.exitcode})"
    print(f"local reference cell ({params['train']['epochs']} epochs): {time.time() - t0:.1f}s")
    return cell


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_root):
    """Single process, batch 2B, EPOCHS epochs."""
    return _reference(tmp_path_factory, cell_params(shapes_root, 2 * B))


@pytest.fixture
def slurm_jobs(slurm):
    """Collects submitted jobs (pass .record as on_submit); scancels leftovers at teardown."""

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


def load_ckpt(cell: Path) -> dict:
    return torch.load(cell / "checkpoint.pth", map_location="cpu", weights_only=False)


def weight_diffs(a: Path, b: Path, epochs: int = EPOCHS) -> dict:
    ca, cb = load_ckpt(a), load_ckpt(b)
    out = {}
    for key in ("student", "teacher"):
        assert ca[key].keys() == cb[key].keys()
        out[key] = max(float((ca[key][n].float() - cb[key][n].float()).abs().max()) for n in ca[key])
    out["center"] = float((ca["dino_loss"]["center"] - cb["dino_loss"]["center"]).abs().max())
    assert ca["epoch"] == cb["epoch"] == epochs
    return out


def loss_curve(cell: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (cell / "log.jsonl").read_text().splitlines()]


def _wait_for(pred, timeout_s: float, what: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _in_background(fn) -> list:
    """Runs fn in a daemon thread; the returned list collects its exception, if any."""
    errors: list = []

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threading.Thread(target=target, daemon=True).start()
    return errors


# ----- DDP job ---------------------------------------------------------------------------------


def test_slurm_two_task_ddp_training_equals_local_run(tmp_path, shapes_root, reference, slurm_jobs):
    from pipelines.ddp_entry import train_cell_ddp

    cell = tmp_path / "cell"
    t0 = time.time()
    (res,) = run_cells(train_cell_ddp, [(str(cell), cell_params(shapes_root, B))],
                       slurm_cfg(tasks_per_node=2, mem_gb=2), tmp_path / "sub", all_tasks=True,
                       on_submit=slurm_jobs.record, name="test-ddp-train", max_wait_s=MAX_WAIT_S)
    elapsed = time.time() - t0
    assert not isinstance(res, CellFailed), str(res)
    summary, rank1 = res                       # task 0: the cell summary; task 1: its train metrics
    assert summary["status"] == "ok" and rank1["status"] == "ok"
    assert cell_summary(cell) == summary                       # DONE (training) + eval.json
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    diffs = weight_diffs(reference, cell)
    print(f"slurm 2-task DDP cell: {elapsed:.1f}s; max |diff| vs local batch {2 * B}: {diffs}")
    assert all(d <= ATOL for d in diffs.values()), diffs
    assert loss_curve(cell) == pytest.approx(loss_curve(reference), abs=ATOL)
    ref = cell_summary(reference)
    assert summary["knn5_top1"] == pytest.approx(ref["knn5_top1"], abs=1e-6)   # rank 0 evaluated


# ----- job array -------------------------------------------------------------------------------


def _slurm_start_times(job_ids: list[str]) -> dict[str, float]:
    """{array task id: start time} from squeue (finished jobs stay listed for MinJobAge)."""
    masters = sorted({i.split("_")[0] for i in job_ids})
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%S",
                          "--jobs=" + ",".join(masters)], capture_output=True, text=True, timeout=60)
    times = {}
    for line in out.stdout.split():
        jid, start = line.split("|")
        try:
            times[jid] = datetime.fromisoformat(start).timestamp()   # local time, 1 s resolution
        except ValueError:
            pass
    return times


def test_slurm_job_array_of_three_training_cells(tmp_path, shapes_root, slurm_jobs):
    from pipelines.ddp_entry import train_cell_ddp

    cells = [tmp_path / f"cell{s}" for s in range(3)]
    args = [(str(c), cell_params(shapes_root, 2 * B, seed=s, epochs=1)) for s, c in enumerate(cells)]
    t0 = time.time()
    out = run_cells(train_cell_ddp, args, slurm_cfg(), tmp_path / "sub", on_submit=slurm_jobs.record,
                    name="test-train-array", max_wait_s=MAX_WAIT_S)
    elapsed = time.time() - t0
    failed = [o for o in out if isinstance(o, CellFailed)]
    assert not failed, "\n".join(map(str, failed))
    assert [o["status"] for o in out] == ["ok"] * 3
    assert [cell_summary(c) for c in cells] == out
    # one job array <id>_0.._2, and the seeds really differ
    assert len({i.split("_")[0] for i in slurm_jobs.ids}) == 1
    assert sorted(i.split("_")[1] for i in slurm_jobs.ids) == ["0", "1", "2"]
    assert len({tuple(loss_curve(c)) for c in cells}) == 3
    # a cell runs from its SLURM start to its DONE file (written last, by the job itself)
    starts = _slurm_start_times(slurm_jobs.ids)
    spans = [(starts[i], (c / "DONE").stat().st_mtime) for i, c in zip(slurm_jobs.ids, cells) if i in starts]
    overlaps = sum(a[0] < b[1] and b[0] < a[1] for k, a in enumerate(spans) for b in spans[k + 1:])
    print(f"slurm array of 3 training cells: {elapsed:.1f}s; overlapping pairs {overlaps}; spans {spans}")
    if len(spans) == 3 and (os.cpu_count() or 1) >= 2:
        assert overlaps >= 1, f"no two cells ran at the same time: {spans}"


# ----- pre-emption and cancellation ------------------------------------------------------------


# On `scontrol requeue` SLURM sends SIGTERM, which submitit's job ignores (it waits for USR2),
# and SIGKILL KillWait seconds later (5 s in ci/slurm/start.sh): the training must still be
# running by then, so this run is longer than the others: 63 epochs left after the first
# checkpoint, ~1 s each on the AVX2 EPYC, 0.23 s on a Xeon without AMX (2026-11-27, where 15 epochs, 3.5 s,
# ended inside KillWait and the job finished instead of being requeued).
PREEMPT_EPOCHS = 64


@pytest.mark.slow
def test_slurm_requeued_training_resumes_and_equals_uninterrupted_run(tmp_path, tmp_path_factory,
                                                                      shapes_root, slurm_jobs):
    """`scontrol requeue` after the first checkpoint: the job restarts, resumes, same weights."""
    from pipelines.ddp_entry import train_cell_ddp

    params = cell_params(shapes_root, 2 * B, epochs=PREEMPT_EPOCHS)
    uninterrupted = _reference(tmp_path_factory, params)
    cell = tmp_path / "cell"
    seen: dict = {}

    def requeue_after_first_checkpoint(jobs):
        slurm_jobs.record(jobs)
        job_id = str(jobs[0].job_id)

        def go():
            _wait_for(lambda: (cell / "checkpoint.pth").is_file(), 240, "the first checkpoint")
            seen["finished_before"] = (cell / "metrics.json").is_file()
            subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, timeout=60)
            seen["at"] = time.time()
            seen["epochs_logged"] = len((cell / "log.jsonl").read_text().splitlines())

        seen["errors"] = _in_background(go)

    t0 = time.time()
    (res,) = run_cells(train_cell_ddp, [(str(cell), params)], slurm_cfg(),
                       tmp_path / "sub", on_submit=requeue_after_first_checkpoint,
                       name="test-requeue-train", max_wait_s=MAX_WAIT_S)
    assert not seen["errors"], seen["errors"]
    assert "at" in seen, "the test could not requeue the job"
    assert not seen["finished_before"], "training ended before the requeue: the test proves nothing"
    assert seen["epochs_logged"] < PREEMPT_EPOCHS, seen
    assert not isinstance(res, CellFailed), str(res)
    assert res["status"] == "ok"
    log = slurm_jobs.jobs[0].paths.stderr.read_text()
    assert "resumed from" in log, ("the requeued job did not resume from a checkpoint (did the first "
                                   "run finish within SLURM's KillWait?):\n" + log[-3000:])
    resumed_at = int(log.split("resumed from")[1].split("at epoch")[1].split()[0])
    assert 1 <= resumed_at < PREEMPT_EPOCHS
    epochs = [json.loads(x)["epoch"] for x in (cell / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(PREEMPT_EPOCHS))
    diffs = weight_diffs(uninterrupted, cell, PREEMPT_EPOCHS)
    print(f"requeue: done {time.time() - t0:.1f}s after submission (requeued after {seen['epochs_logged']} "
          f"epoch(s), resumed at epoch {resumed_at}); max |diff| vs uninterrupted: {diffs}")
    assert all(d <= ATOL for d in diffs.values()), diffs
    assert loss_curve(cell) == pytest.approx(loss_curve(uninterrupted), abs=ATOL)


@pytest.mark.slow
def test_slurm_cancelled_training_job_is_reported(tmp_path, shapes_root, slurm_jobs):
    from pipelines.ddp_entry import train_cell_ddp

    cell = tmp_path / "cell"
    seen: dict = {}

    def cancel_after_first_checkpoint(jobs):
        slurm_jobs.record(jobs)
        job_id = str(jobs[0].job_id)

        def go():
            _wait_for(lambda: (cell / "checkpoint.pth").is_file(), 240, "the first checkpoint")
            subprocess.run(["scancel", job_id], check=True, capture_output=True, timeout=60)
            seen["at"] = time.time()

        seen["errors"] = _in_background(go)

    (res,) = run_cells(train_cell_ddp, [(str(cell), cell_params(shapes_root, 2 * B, epochs=40))],
                       slurm_cfg(), tmp_path / "sub", on_submit=cancel_after_first_checkpoint,
                       name="test-cancel-train", max_wait_s=MAX_WAIT_S)
    detected = time.time()
    assert not seen["errors"], seen["errors"]
    assert "at" in seen, "the test could not cancel the job"
    assert isinstance(res, CellFailed), res
    assert res.state in ("CANCELLED", "GONE"), res.state
    assert res.stderr is not None and str(res.stderr) in str(res) and res.job_id in str(res)
    assert not (cell / "DONE").exists()
    assert detected - seen["at"] < 120, f"took {detected - seen['at']:.0f}s to notice"
    print(f"cancelled training job reported {detected - seen['at']:.1f}s after scancel: "
          f"{str(res).splitlines()[0]}")
