"""A run folder (a store cell or a `pretrain --out` folder) is bound to the training config of the
run it holds: continuing or reusing it under another config is refused, and --restart deletes
exactly the run's files."""
from __future__ import annotations

from pathlib import Path

import yaml

from dino_core.config import Config

from .store import COLLAPSE, DONE, TEACHER, training_part


class RunMismatch(ValueError):
    """A run folder already holds (part of) a run of another training config."""


RUN_FILES = ("config.yaml", "log.jsonl", "checkpoint.pth", "metrics.json", COLLAPSE, TEACHER, "eval.json", DONE)


def config_differences(old: Config, new: Config) -> list[str]:
    """``section.key: old -> new`` for every training key whose value differs."""
    a, b = training_part(old), training_part(new)
    keys = sorted({(s, k) for d in (a, b) for s in d for k in d[s]})
    return [f"{s}.{k}: {a[s].get(k)!r} -> {b[s].get(k)!r}" for s, k in keys if a[s].get(k) != b[s].get(k)]


def check_same_config(path: Path, cfg: Config) -> None:
    """Refuse to continue or reuse the run in `path` under another training config: resuming
    would mix two configs in one set of weights, reusing would label the old result as the new
    one. A folder without config.yaml holds no run yet."""
    stored = Path(path) / "config.yaml"
    if not stored.is_file():
        return
    old = Config.from_stored(yaml.safe_load(stored.read_text()), source=str(stored))
    diffs = config_differences(old, cfg)
    if diffs:
        raise RunMismatch(f"{path}: holds a run of another config ({len(diffs)} key(s) differ: "
                          f"{'; '.join(diffs)}); continue it with its own values, pick another --out, "
                          f"or pass --restart to delete its files and start over")


def start_over(path: Path) -> list[str]:
    """Delete the run files of `path` (RUN_FILES only, nothing else in the folder); their names."""
    gone = [name for name in RUN_FILES if (Path(path) / name).is_file()]
    for name in gone:
        (Path(path) / name).unlink()
    return gone
