"""One poll of run_cells' submitted jobs: collect the results on disk, fail the jobs that died without
one (SLURM: ended, vanished or never to start; local: the process exited), give up at max_wait_s."""
from __future__ import annotations

import time
import typing as tp

from .executors import CellFailed
from .jobs import cancel, collect, failure_from_job, has_results
from .squeue import FINAL_STATES, HOPELESS_REASONS, squeue_states


def poll_once(cells: list, kind: str, now: float, stale: float, all_tasks: bool,
              failing_since: tp.Optional[float]) -> tp.Optional[float]:
    """One poll: 1) collect the results on disk, 2) fail the jobs that died without one.
    Returns when squeue started failing (slurm; see check_slurm)."""
    active = [c for c in cells if c.job is not None and not c.finished]
    for c in active:
        if has_results(c.job, all_tasks):
            c.outcome, c.finished, c.done_at = collect(c, all_tasks), True, time.time()
    active = [c for c in active if not c.finished]
    if active and kind == "slurm":
        return check_slurm(active, now, stale, all_tasks, failing_since)
    if active and kind == "local":
        check_local(active, now, stale, all_tasks)
    return failing_since


def check_slurm(active: list, now: float, stale: float, all_tasks: bool,
                failing_since: tp.Optional[float]) -> tp.Optional[float]:
    """Fail the cells whose SLURM job ended, vanished or can never start without a result (after
    `stale` s); all of them if squeue keeps failing. Returns when squeue started failing (or None)."""
    states = squeue_states(c.job.job_id for c in active)
    if states is None:
        failing_since = failing_since or now
        if now - failing_since > max(stale, 300.0):
            for c in active:
                c.outcome = failure_from_job(
                    c, "UNKNOWN", f"squeue has failed for {now - failing_since:.0f}s (slurmctld unreachable?)")
                c.finished = True
        return failing_since
    for c in active:
        st, reason = states.get(str(c.job.job_id), (None, ""))
        hopeless = st == "PENDING" and reason in HOPELESS_REASONS
        if not (st is None or st in FINAL_STATES or hopeless):
            c.stale_since = None
            continue
        c.stale_since = c.stale_since or now
        if now - c.stale_since >= stale and not has_results(c.job, all_tasks):
            if hopeless:
                cancel([c.job], "slurm")
                why = f"job can never start (pending, reason {reason}); cancelled"
            elif st is None:
                why = "job is no longer known to squeue, without writing a result"
            else:
                why = f"job ended in state {st} without writing a result"
            c.outcome, c.finished = failure_from_job(c, st or "GONE", why), True
    return None


def check_local(active: list, now: float, stale: float, all_tasks: bool) -> None:
    """Fail the cells whose local controller process exited without writing a result."""
    for c in active:
        if c.job.done():
            c.stale_since = c.stale_since or now
            if now - c.stale_since >= min(stale, 5.0) and not has_results(c.job, all_tasks):
                c.outcome, c.finished = failure_from_job(
                    c, c.job.state, "local job process exited without writing a result"), True


def give_up(cells: list, max_wait_s: float, kind: str) -> None:
    """max_wait_s reached: cancel what runs, fail every unfinished cell."""
    left = [c for c in cells if not c.finished]
    cancel([c.job for c in left if c.job is not None], kind)
    for c in left:
        if c.job is None:
            c.outcome = CellFailed(c.index, "-", "NOT_SUBMITTED", None,
                                   f"max_wait_s={max_wait_s} reached before submission")
        else:
            c.outcome = failure_from_job(c, "CANCELLED", f"max_wait_s={max_wait_s} reached; job cancelled")
        c.finished = True
