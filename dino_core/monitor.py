"""Live collapse signal: says during training, once, that a run sits at one of the two collapses
of the paper's §5.3 (Fig. 7), and records how many epochs it spent there.

The quantities are those of dino_core/evaluate/collapse.py, read from each epoch's mean training
statistics (DINOLoss stats), with K the number of prototypes (head.out_dim):

* uniform (no sharpening): the loss and the per-image teacher entropy h(Pt) both at ln K,
  i.e. ``loss >= UNIFORM_FRACTION * ln K`` and ``teacher_entropy >= UNIFORM_FRACTION * ln K``
  with UNIFORM_FRACTION = 0.97 (collapse.py's uniform threshold): the teacher outputs the uniform
  distribution and the student copies it, so H(Pt, Ps) = h(Pt) + KL = ln K.
* one-hot (no centering): the teacher distribution averaged over the batch, h(mean Pt), sits on a
  few prototypes: ``teacher_batch_entropy <= ONE_HOT_FRACTION * ln K`` with ONE_HOT_FRACTION =
  0.05 (collapse.py's one-hot threshold): one prototype wins for every image.

A state counts once it holds for PATIENCE_EPOCHS = 3 consecutive epochs; the log then says so
once per run, with what it means and what usually helps. Entering the uniform state is not a
verdict: on Fashion-MNIST the default recipe sat at 1.000 ln K for its first ~50 of 200 epochs
and then learned. The run's metrics record ``collapse_uniform_epochs`` and
``collapse_one_hot_epochs`` (every epoch in the state, the first PATIENCE_EPOCHS included once
the state counted) and ``collapse_signal`` (the state of the last epoch, or "none").

The thresholds and the epoch count are constants, not training configuration, so no run's
identity depends on them.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

UNIFORM_FRACTION = 0.97
ONE_HOT_FRACTION = 0.05
PATIENCE_EPOCHS = 3
STATES = ("uniform", "one_hot")

ADVICE = {
    "uniform": ("the teacher's output is uniform over the K prototypes and the student copies it "
                "(no sharpening, paper §5.3): the loss stays at ln K and nothing is learned. A slow "
                "start can sit here for many epochs before learning; if it lasts, lower the teacher "
                "temperature (loss.teacher_temp, e.g. 0.02-0.04; it must stay below 0.06 when held "
                "constant, App. D) or warm it up from a lower loss.warmup_teacher_temp, and check that "
                "loss.sharpening is on"),
    "one_hot": ("one prototype wins for every image: the batch-mean teacher distribution is nearly "
                "one-hot (no centering, paper §5.3) and the features carry no information. Check that "
                "loss.normalization is centering and loss.center_momentum is below 0.999 (App. D); a "
                "higher loss.teacher_temp or a lower optim.lr usually helps"),
}


def epoch_state(stats: dict, log_k: float) -> str | None:
    """'uniform', 'one_hot' or None for one epoch's mean stats (keys loss, teacher_entropy,
    teacher_batch_entropy; absent keys make their check not fire)."""
    loss, h, h_mean = (stats.get(k) for k in ("loss", "teacher_entropy", "teacher_batch_entropy"))
    if loss is not None and h is not None and loss >= UNIFORM_FRACTION * log_k and h >= UNIFORM_FRACTION * log_k:
        return "uniform"
    if h_mean is not None and h_mean <= ONE_HOT_FRACTION * log_k:
        return "one_hot"
    return None


class CollapseMonitor:
    """Feed each epoch's mean stats to :meth:`update`; :meth:`metrics` gives what the run records."""

    def __init__(self, out_dim: int, patience: int = PATIENCE_EPOCHS) -> None:
        self.log_k, self.patience = math.log(out_dim), patience
        self.streak: dict[str, int] = {s: 0 for s in STATES}
        self.epochs: dict[str, int] = {s: 0 for s in STATES}
        self.warned: set[str] = set()
        self.last: str | None = None

    def update(self, epoch: int, stats: dict, quiet: bool = False) -> str | None:
        """Count the epoch; log once per state when it has held for `patience` epochs."""
        state = epoch_state(stats, self.log_k)
        for s in STATES:
            self.streak[s] = self.streak[s] + 1 if s == state else 0
        self.last = state
        if state is None or self.streak[state] < self.patience:
            return state
        # the epochs before the state counted belong to it as well
        self.epochs[state] += self.patience if self.streak[state] == self.patience else 1
        if state not in self.warned:
            self.warned.add(state)
            if not quiet:
                log.warning("collapse signal: %s collapse for %d epochs (epochs %d-%d, loss %.3f ln K, "
                            "h(Pt) %.3f ln K, h(mean Pt) %.3f ln K): %s", state.replace("_", "-"),
                            self.patience, epoch + 2 - self.patience, epoch + 1,
                            stats.get("loss", float("nan")) / self.log_k,
                            stats.get("teacher_entropy", float("nan")) / self.log_k,
                            stats.get("teacher_batch_entropy", float("nan")) / self.log_k, ADVICE[state])
        return state

    def replay(self, log_lines: Iterable[dict]) -> None:
        """Count the epochs of a resumed run's log.jsonl without logging again what it said."""
        for line in log_lines:
            self.update(int(line.get("epoch", 0)), line, quiet=True)

    def metrics(self) -> dict:
        return {"collapse_uniform_epochs": self.epochs["uniform"],
                "collapse_one_hot_epochs": self.epochs["one_hot"], "collapse_signal": self.last or "none"}


def read_log(path: Path) -> list[dict]:
    """The epoch lines of a run's log.jsonl ([] if absent)."""
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def run_flagged(run_dir: Path, out_dim: int) -> bool:
    """Whether a run (finished: metrics.json; running: its log.jsonl so far) spent epochs in a collapse."""
    metrics = Path(run_dir) / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        if "collapse_uniform_epochs" in m:
            return m["collapse_uniform_epochs"] + m["collapse_one_hot_epochs"] > 0
    monitor = CollapseMonitor(out_dim)
    monitor.replay(read_log(Path(run_dir) / "log.jsonl"))
    return sum(monitor.epochs.values()) > 0


def count_flagged(runs: Iterable[tuple[Path, int]]) -> int:
    """How many of the (run folder, K) pairs are collapse-flagged (for a grid's progress line)."""
    return sum(run_flagged(d, k) for d, k in runs)
