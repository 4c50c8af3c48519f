"""Job bookkeeping for run_cells: cells and their outcomes, cancellation, the debug runner, progress."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import typing as tp
from pathlib import Path


from .executors import CellFailed, make_executor, Resumable

log = logging.getLogger(__name__)


def _tail(path: tp.Optional[Path], n: int = 15) -> str:
    try:
        if path is None or not path.exists():
            return ""
        lines = path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


class JobCell:
    __slots__ = ("index", "job", "stale_since", "submitted_at", "done_at", "outcome", "finished", "gpu")

    def __init__(self, index: int) -> None:
        self.index = index
        self.job: tp.Any = None
        self.stale_since: tp.Optional[float] = None
        self.submitted_at = 0.0
        self.done_at = 0.0
        self.outcome: tp.Any = None
        self.finished = False
        self.gpu: tp.Optional[int] = None   # the GPU a local job was shown (several GPUs, one task)


def _task_jobs(job: tp.Any, all_tasks: bool) -> tp.List[tp.Any]:
    n = job.num_tasks
    return [job.task(i) for i in range(n)] if all_tasks else [job.task(0)]


def has_results(job: tp.Any, all_tasks: bool) -> bool:
    return all(t.paths.result_pickle.exists() for t in _task_jobs(job, all_tasks))


def _stderr_path(job: tp.Any) -> tp.Optional[Path]:
    try:
        return Path(job.task(0).paths.stderr)
    except Exception:  # pragma: no cover - defensive
        return None


def collect(cell: JobCell, all_tasks: bool) -> tp.Any:
    """Outcome of a cell whose result pickle(s) exist."""
    job = cell.job
    values = []
    for t in _task_jobs(job, all_tasks):
        exc = t.exception()
        if exc is not None:
            detail = str(exc).strip()
            return CellFailed(cell.index, job.job_id, "FAILED", _stderr_path(t),
                              f"the cell raised an exception:\n{detail}")
        values.append(t.result())
    return values if all_tasks else values[0]


def failure_from_job(cell: JobCell, state: str, why: str) -> CellFailed:
    stderr = _stderr_path(cell.job)
    tail = _tail(stderr)
    detail = why + (f"; last lines of stderr:\n{tail}" if tail else "; stderr is empty or missing")
    return CellFailed(cell.index, cell.job.job_id, state, stderr, detail)


def cancel(jobs: tp.Sequence[tp.Any], executor_kind: str) -> None:
    if executor_kind == "slurm":
        ids = sorted({str(j.job_id) for j in jobs})  # "<array>_<task>": only these cells
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
    elif executor_kind == "local":
        _stop_local([p.pid for p in (getattr(j, "_process", None) for j in jobs) if p is not None])


def _stop_local(pids: tp.Sequence[int], grace_s: float = 3.0) -> None:
    """SIGINT to each local job's whole process tree, SIGKILL to what is left after ``grace_s``.
    submitit's own cancel signals only the process it started, which is a shell when a setup is
    given (ours: PYTHONPATH, OMP_NUM_THREADS); the shell waits and the cells would train on."""
    children: tp.Dict[int, tp.List[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue   # not a process, or it has just ended
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for sig in (signal.SIGINT, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while sig == signal.SIGINT and time.time() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_debug(fn, args_list, cfg, folder, name, on_submit, all_tasks, checkpointable, note=None) -> list:
    ex = make_executor(cfg, folder, name=name)
    outcomes: list = []
    t0 = time.time()
    for i, args in enumerate(args_list):
        job = ex.submit(Resumable(fn, *args) if checkpointable else Bound(fn, args))
        if on_submit is not None:
            on_submit([job])
        old = os.environ.get("SUBMITIT_DEBUG_JOB_ID")
        os.environ["SUBMITIT_DEBUG_JOB_ID"] = job.job_id
        try:
            value = job.submission().result()  # in-process; no pdb on failure
            outcomes.append([value] if all_tasks else value)
        except Exception as e:  # noqa: BLE001 - a failed cell must not stop the others
            failed = CellFailed(i, job.job_id, "FAILED", None, f"{type(e).__name__}: {e}")
            failed.__cause__ = e
            outcomes.append(failed)
        finally:
            if old is None:
                os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)
            else:
                os.environ["SUBMITIT_DEBUG_JOB_ID"] = old
        log_progress(name, i + 1, len(args_list), sum(isinstance(o, CellFailed) for o in outcomes),
                     0, t0, note)
    return outcomes


def log_progress(name: str, done: int, total: int, failed: int, running: int, t0: float,
                 note: tp.Optional[tp.Callable[[], str]] = None) -> None:
    """The progress line: cells done / total, failed, running, elapsed, ETA (and ``note()``, e.g. the
    grid's count of collapse-flagged cells)."""
    elapsed = time.time() - t0
    eta = "?"
    if done:
        eta = f"{elapsed / done * (total - done):.0f}s"
    log.info("[%s] cells done %d/%d (failed %d, running %d), elapsed %.0fs, ETA %s%s",
             name, done, total, failed, running, elapsed, eta, f", {note()}" if note else "")


class Bound:
    """Picklable ``fn(*args)`` without checkpointing."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)
