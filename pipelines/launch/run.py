"""run_cells: every cell out through one executor, never waiting forever; outcomes in order."""
from __future__ import annotations

import logging
import time
import typing as tp
from pathlib import Path


from .config import LaunchConfig
from .executors import CellFailed, local_setup, make_executor, Resumable, stop_on_signals, SubmissionError
from .jobs import Bound, cancel, JobCell, log_progress, run_debug
from .local import local_width, next_gpu
from .poll import give_up, poll_once

log = logging.getLogger(__name__)


def run_cells(
    fn: tp.Callable[..., tp.Any],
    args_list: tp.Sequence[tp.Sequence[tp.Any]],
    cfg: LaunchConfig,
    folder: tp.Union[str, Path, None] = None,
    *,
    poll_s: tp.Optional[float] = None,
    stale_s: tp.Optional[float] = None,
    name: tp.Optional[str] = None,
    checkpointable: bool = True,
    all_tasks: bool = False,
    on_submit: tp.Optional[tp.Callable[[tp.List[tp.Any]], None]] = None,
    max_wait_s: tp.Optional[float] = None,
    raise_on_failure: bool = False,
    note: tp.Optional[tp.Callable[[], str]] = None,
) -> tp.List[tp.Any]:
    """Run ``fn(*args)`` for each ``args`` in ``args_list``; one outcome per cell, in order.

    Each element of ``args_list`` is a tuple (or list) of positional arguments; any other value
    is the single argument of its cell. ``fn`` must be importable (module-level in a package):
    submitit pickles it by reference.

    An outcome is the cell's return value (with ``all_tasks=True``: the list of every task's
    return value, for multi-task jobs), or a :class:`CellFailed` naming the job's stderr log.
    A failed cell does not stop the others. ``note()``, when given, is appended to every progress line.

    - ``slurm``: all cells go out as ONE job array (``array_parallelism`` at once). Every
      ``poll_s`` seconds result files are checked and ``squeue`` is asked for the states; a job
      in a final state or gone from squeue for ``stale_s`` seconds without a result has failed
      (cancelled, out of memory, node failure): the grid never waits forever.
      Requeued jobs (pre-emption, timeout with checkpoint) are waited for.
    - ``local``: at most ``local_parallelism(cfg)`` cells at once (submitit's local executor
      would start them all together); on several GPUs each one-task cell sees the least busy one.
    - ``debug``: in-process, one after another.

    ``checkpointable`` wraps each call in :class:`Resumable` (requeue on timeout/pre-emption).
    ``on_submit(jobs)`` is called with the submitted submitit jobs (e.g. to record job ids).
    ``max_wait_s`` bounds the whole wait (remaining jobs are cancelled and reported failed).
    On KeyboardInterrupt or any error while waiting, the submitted jobs are cancelled.
    """
    args_list = [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in args_list]
    name = name or getattr(fn, "__name__", "cells")
    poll = float(poll_s if poll_s is not None else cfg.poll_s)
    stale = float(stale_s if stale_s is not None else cfg.stale_s)
    if not args_list:
        return []
    with stop_on_signals():
        if cfg.executor == "debug":
            outcomes = run_debug(fn, args_list, cfg, folder, name, on_submit, all_tasks, checkpointable, note)
        else:
            outcomes = _run_pool(fn, args_list, cfg, folder, name, poll, stale, checkpointable,
                                 all_tasks, on_submit, max_wait_s, note)
    failures = [o for o in outcomes if isinstance(o, CellFailed)]
    if failures:
        log.error("[%s] %d/%d cells failed:\n%s", name, len(failures), len(outcomes),
                  "\n".join(str(f).splitlines()[0] + (f"  (stderr: {f.stderr})" if f.stderr else "")
                            for f in failures))
        if raise_on_failure:
            raise RuntimeError(f"{len(failures)}/{len(outcomes)} cells failed; first: {failures[0]}")
    return outcomes


def _submit_slurm_array(ex, calls, cfg: LaunchConfig) -> tp.List[tp.Any]:
    jobs = []
    try:
        with ex.batch():
            for call in calls:
                jobs.append(ex.submit(call))
    except Exception as e:  # submitit raises FailedJobError(stderr of sbatch)
        msg = str(e).strip() or repr(e)
        s = cfg.slurm
        raise SubmissionError(
            f"sbatch refused the job array ({len(calls)} cells; partition={s.partition or '<default>'}, "
            f"nodes={s.nodes}, tasks_per_node={s.tasks_per_node}, cpus_per_task={s.cpus_per_task}, "
            f"gpus_per_node={s.gpus_per_node}, mem_gb={s.mem_gb}, timeout_min={s.timeout_min}): {msg}"
        ) from e
    return jobs


def _submit_local(ex, cfg: LaunchConfig, cells: tp.List[JobCell], idx: tp.List[int], calls: list) -> list:
    jobs = []
    for i in idx:
        gpu = next_gpu(cfg, [c.gpu for c in cells if c.gpu is not None and not c.finished])
        if gpu is not None:   # after submitit's CUDA_VISIBLE_DEVICES=0,..,gpus_per_node-1
            ex.update_parameters(local_setup=local_setup(cfg, gpu))
        cells[i].gpu = gpu
        jobs.append(ex.submit(calls[i]))
    return jobs


def _run_pool(fn, args_list, cfg, folder, name, poll, stale, checkpointable, all_tasks,
              on_submit, max_wait_s, note=None) -> list:
    ex = make_executor(cfg, folder, name=name)
    kind = cfg.executor
    cells = [JobCell(i) for i in range(len(args_list))]
    calls = [Resumable(fn, *a) if checkpointable else Bound(fn, a) for a in args_list]
    total = len(cells)
    t0 = time.time()
    to_start = list(range(total))
    width, why = local_width(cfg) if kind == "local" else (total, "")
    if why:
        log.info("[%s] local: %d cell(s) at once: %s", name, width, why)

    def start_some() -> None:
        running = sum(1 for c in cells if c.job is not None and not c.finished)
        n = min(width - running, len(to_start))
        if n <= 0:
            return
        idx = [to_start.pop(0) for _ in range(n)]
        if kind == "slurm":
            jobs = _submit_slurm_array(ex, [calls[i] for i in idx], cfg)
        else:
            jobs = _submit_local(ex, cfg, cells, idx, calls)
        now = time.time()
        for i, j in zip(idx, jobs):
            cells[i].job, cells[i].submitted_at = j, now
        ids = sorted({str(j.job_id) for j in jobs})
        log.info("[%s] submitted %d cell(s) to %s: job(s) %s; logs in %s", name, len(jobs), kind,
                 ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""), ex.folder)
        if on_submit is not None:
            on_submit(list(jobs))

    last_log, last_done = 0.0, -1
    squeue_failing_since: tp.Optional[float] = None
    try:
        start_some()
        while True:
            now = time.time()
            squeue_failing_since = poll_once(cells, kind, now, stale, all_tasks, squeue_failing_since)
            if max_wait_s is not None and now - t0 > max_wait_s:   # the overall bound
                give_up(cells, max_wait_s, kind)
            done = sum(c.finished for c in cells)
            running = sum(1 for c in cells if c.job is not None and not c.finished)
            if done != last_done or time.time() - last_log > 60:
                log_progress(name, done, total,
                             sum(isinstance(c.outcome, CellFailed) for c in cells if c.finished),
                             running, t0, note)
                last_log, last_done = time.time(), done
            if done == total:
                break
            if to_start:
                start_some()
            time.sleep(poll)
    except BaseException:
        cancel([c.job for c in cells if c.job is not None and not c.finished], kind)
        raise
    return [c.outcome for c in cells]
