"""The live collapse signal (dino_core/monitor.py) through the real training loop.

Tiny runs (tests/helpers.py TINY: 2-block 32-d ViT, K = 64) of 8 epochs x 8 steps on 64 random
images, one thread, a few seconds each. Measured per epoch (loss / ln K, h(Pt) / ln K):
  default        loss 0.23 0.60 0.99 1.21 1.25 1.27 1.29 1.32   h(Pt) 0.18 0.47 0.73 0.85 0.89 0.89 0.90 0.90
  no sharpening  loss 0.75 1.03 1.13 1.12 1.12 1.12 1.13 1.13   h(Pt) 0.69 0.92 0.97 0.99 0.99 0.99 0.99 0.99
  no centering   h(mean Pt) 0.11 0.08 0.06 0.04 0.03 0.03 0.03 0.02
so no sharpening sits at ln K from epoch 3 (6 epochs), no centering at one-hot from epoch 4 (5
epochs), and the default run's teacher stays below 0.97 ln K.
"""
from __future__ import annotations

import json
import logging
import math

import pytest

from dino_core.monitor import (PATIENCE_EPOCHS, CollapseMonitor, count_flagged, epoch_state, run_flagged)
from dino_core.train import train
from helpers import MEAN, STD, random_images, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py
EPOCHS = 8
RUNS = {"default": {}, "no_sharpening": {"sharpening": False}, "no_centering": {"normalization": "none"}}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train(out, loss: dict, on_epoch_end=None) -> tuple[dict, list[str]]:
    images = [(img, 0) for img in random_images(64, size=16, seed=3)]
    handler = Captured()
    logger = logging.getLogger("dino_core.monitor")
    logger.addHandler(handler)
    try:
        metrics = train(tiny_config(loss=loss, train={"epochs": EPOCHS}), out, images, MEAN, STD,
                        on_epoch_end=on_epoch_end)
    finally:
        logger.removeHandler(handler)
    return metrics, handler.messages


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {name: (root / name, *_train(root / name, loss)) for name, loss in RUNS.items()}


def test_signal_fires_once_on_a_run_at_ln_k(runs):
    _, metrics, messages = runs["no_sharpening"]
    assert len(messages) == 1
    assert messages[0].startswith("collapse signal: uniform collapse for 3 epochs (epochs 3-5")
    assert "loss.teacher_temp" in messages[0] and "loss.sharpening" in messages[0]   # what usually helps
    assert metrics["collapse_uniform_epochs"] == 6 and metrics["collapse_one_hot_epochs"] == 0
    assert metrics["collapse_signal"] == "uniform"


def test_signal_stays_quiet_on_the_default_tiny_run(runs):
    _, metrics, messages = runs["default"]
    assert messages == []
    assert metrics["collapse_uniform_epochs"] == 0 and metrics["collapse_one_hot_epochs"] == 0
    assert metrics["collapse_signal"] == "none"


def test_signal_fires_on_a_one_hot_run(runs):
    _, metrics, messages = runs["no_centering"]
    assert len(messages) == 1 and messages[0].startswith("collapse signal: one-hot collapse for 3 epochs")
    assert "loss.normalization is centering" in messages[0]
    assert metrics["collapse_one_hot_epochs"] == 5 and metrics["collapse_uniform_epochs"] == 0


def test_resumed_run_counts_all_epochs_and_says_it_once(tmp_path, runs):
    # stop after epoch 5 (the signal has fired), then resume from the checkpoint
    first, said = _train(tmp_path, RUNS["no_sharpening"], on_epoch_end=lambda e, s, r: e != 5)
    assert first["status"] == "stopped" and first["collapse_uniform_epochs"] == 4 and len(said) == 1
    again, said_again = _train(tmp_path, RUNS["no_sharpening"])
    assert said_again == []
    assert again["collapse_uniform_epochs"] == runs["no_sharpening"][1]["collapse_uniform_epochs"] == 6


def test_grid_count_reads_metrics_or_the_running_log(runs, tmp_path):
    k = tiny_config().head.out_dim
    dirs = [(runs[name][0], k) for name in RUNS]
    assert count_flagged(dirs) == 2
    # a running cell has no metrics.json yet: its log.jsonl so far decides
    running = tmp_path / "running"
    running.mkdir()
    lines = (runs["no_sharpening"][0] / "log.jsonl").read_text().splitlines()
    (running / "log.jsonl").write_text("\n".join(lines[:5]) + "\n")   # epochs 2-4 at ln K
    assert run_flagged(running, k)
    (running / "log.jsonl").write_text("\n".join(lines[:4]) + "\n")   # epochs 2-3 only
    assert not run_flagged(running, k)


@pytest.mark.parametrize("stats, state", [
    ({"loss": 0.97, "teacher_entropy": 0.97, "teacher_batch_entropy": 1.0}, "uniform"),
    ({"loss": 1.30, "teacher_entropy": 0.96, "teacher_batch_entropy": 1.0}, None),    # sharpened teacher
    ({"loss": 0.96, "teacher_entropy": 0.99, "teacher_batch_entropy": 1.0}, None),
    ({"loss": 0.05, "teacher_entropy": 0.04, "teacher_batch_entropy": 0.05}, "one_hot"),
    ({"loss": 0.05, "teacher_entropy": 0.04, "teacher_batch_entropy": 0.06}, None),
])
def test_thresholds_are_fractions_of_ln_k(stats, state):
    log_k = math.log(64)
    assert epoch_state({k: v * log_k for k, v in stats.items()}, log_k) == state


def test_state_counts_only_after_patience_epochs():
    m, log_k = CollapseMonitor(64), math.log(64)
    at_ln_k = {"loss": log_k, "teacher_entropy": log_k, "teacher_batch_entropy": log_k}
    healthy = {"loss": log_k, "teacher_entropy": 0.5 * log_k, "teacher_batch_entropy": log_k}
    for epoch, stats in enumerate([at_ln_k, at_ln_k, healthy] + [at_ln_k] * PATIENCE_EPOCHS + [healthy]):
        m.update(epoch, stats, quiet=True)
    assert m.metrics() == {"collapse_uniform_epochs": PATIENCE_EPOCHS, "collapse_one_hot_epochs": 0,
                           "collapse_signal": "none"}
    assert json.dumps(m.metrics())   # plain types: written into metrics.json
