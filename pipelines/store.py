"""The run store: one directory per grid cell, named by the hash of its resolved config.

runs/cells/<hash>/ holds config.yaml, log.jsonl, checkpoint.pth, metrics.json (training),
eval.json (evaluation) and DONE, written last and atomically: a cell without DONE is
unfinished (it resumes from its checkpoint), never read as finished. Identical cells of
different studies share one directory and run once. Launcher settings are not part of the
hash, so moving from the laptop to a cluster never changes a cell's identity.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dino_core.checkpoint import atomic_write_json, atomic_write_text
from dino_core.config import Config

DONE = "DONE"
HISTORY = "history.jsonl"   # one line per grid invocation: when, how long, cells run / reused


# Keys that cannot change a result: loader workers (augmentations are seeded per sample) and
# the progress-line interval. They are left out of a cell's identity.
NEUTRAL = (("data", "num_workers"), ("train", "log_every"))


def cell_hash(cfg: Config) -> str:
    """sha256 of the canonical JSON of the resolved config (the seed is train.seed), 16 hex."""
    d = cfg.to_dict()
    for section, key in NEUTRAL:
        d[section].pop(key)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_dir(store: Path, cfg: Config) -> Path:
    return Path(store) / "cells" / cell_hash(cfg)


def is_done(path: Path) -> bool:
    return (Path(path) / DONE).is_file()


def mark_done(path: Path, summary: dict) -> None:
    atomic_write_json(Path(path) / DONE, summary)


def read_done(path: Path) -> dict:
    return json.loads((Path(path) / DONE).read_text())


def append_history(store: Path, entry: dict) -> None:
    """Add one grid invocation to <store>/history.jsonl (rewritten atomically)."""
    path = Path(store) / HISTORY
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(entry, sort_keys=True) + "\n")


def read_history(store: Path) -> list[dict]:
    path = Path(store) / HISTORY
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
