"""Progress of the tune stage while its workers run: trials done / tune.n_trials with an ETA.

The workers run in other processes (or SLURM jobs) and log into their own files; the stage's
own log would otherwise say nothing until the last worker ends. A thread of the stage reads the
study's storage every ``poll_s`` seconds and logs a line when a trial finishes (and at least
once a minute). The ETA is the time per trial finished since the stage started times the trials
still to run, so parallel workers and resumed studies are both accounted for.
"""
from __future__ import annotations

import logging
import threading
import time

from optuna.trial import TrialState

from .settings import TuneSettings
from .study import counted, open_study

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
QUIET_S = 60.0   # at least one line a minute, even when no trial finished


def trial_counts(settings: TuneSettings) -> dict[str, int]:
    """{"done": finished counted trials, "running": RUNNING ones, "COMPLETE"/"PRUNED"/"FAIL": per state}."""
    trials = open_study(settings)[0].get_trials(deepcopy=False)
    out = {s.name: sum(t.state == s and t.user_attrs.get("status") != "stale" for t in trials) for s in FINISHED}
    out["running"] = sum(t.state == TrialState.RUNNING for t in trials)
    out["done"] = counted(trials) - out["running"]
    return out


def progress_line(counts: dict[str, int], total: int, done_at_start: int, elapsed: float) -> str:
    """'trials done 3/8 (complete 2, pruned 1, failed 0, running 2), elapsed 40s, ETA 67s'."""
    finished_here, remaining = counts["done"] - done_at_start, max(0, total - counts["done"])
    eta = f"{elapsed / finished_here * remaining:.0f}s" if finished_here > 0 else "-"
    return (f"trials done {counts['done']}/{total} (complete {counts['COMPLETE']}, pruned {counts['PRUNED']}, "
            f"failed {counts['FAIL']}, running {counts['running']}), elapsed {elapsed:.0f}s, ETA {eta}")


class TrialProgress:
    """``with TrialProgress(settings, poll_s):`` logs progress lines while the block runs."""

    def __init__(self, settings: TuneSettings, poll_s: float) -> None:
        self.settings, self.poll_s = settings, max(0.5, float(poll_s))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tune-progress", daemon=True)
        self.t0, self.done_at_start = time.monotonic(), 0

    def __enter__(self) -> "TrialProgress":
        self.t0, self.done_at_start = time.monotonic(), trial_counts(self.settings)["done"]
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.log_line()

    def log_line(self) -> int:
        counts = trial_counts(self.settings)
        log.info("tune: %s", progress_line(counts, self.settings.n_trials, self.done_at_start,
                                            time.monotonic() - self.t0))
        return counts["done"]

    def _loop(self) -> None:
        last_done, last_log = -1, 0.0
        while not self.stop.wait(self.poll_s):
            try:
                counts = trial_counts(self.settings)
            except Exception as e:  # noqa: BLE001 - a storage read racing a writer must not stop the stage
                log.debug("tune progress: storage not readable now (%s)", e)
                continue
            if counts["done"] != last_done or time.monotonic() - last_log > QUIET_S:
                log.info("tune: %s", progress_line(counts, self.settings.n_trials, self.done_at_start,
                                                    time.monotonic() - self.t0))
                last_done, last_log = counts["done"], time.monotonic()
