"""The run store: one directory per grid cell, named by the hash of its resolved training config.

<store>/cells/<hash>/ holds config.yaml, log.jsonl, checkpoint.pth, metrics.json (training),
collapse.json (the collapse metrics of teacher and student at the end of training), teacher_backbone.pth
(the teacher backbone in fp16: what re-evaluation needs), DONE (the training summary, written last
and atomically: a cell without DONE is unfinished, it resumes from its checkpoint and is never read
as finished) and eval.json (the evaluation of teacher_backbone.pth, with the `eval_key` it was
computed under). A finished cell without checkpoint.pth (a clone of the repository, which keeps
every file but the checkpoint) is complete: it re-evaluates from teacher_backbone.pth. Identical
cells of different studies share one directory and run once. The hash covers what changes the
trained weights only: launcher settings, the `eval` section and the val-set size are left out, so
moving to a cluster keeps a cell's identity and a change of the evaluation re-evaluates finished
cells instead of re-training them. A folder is bound to its run's training config by run_folder.py.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from dino_core.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from dino_core.config import LATER_KEYS, Config

DONE = "DONE"
TEACHER = "teacher_backbone.pth"   # fp16 state dict of the teacher backbone
COLLAPSE = "collapse.json"
TRAINING_KEYS = ("cell", "status", "ln_k", "wall_time_s", "precision")   # what DONE records of the training
HISTORY = "history.jsonl"   # one line per grid invocation: when, how long, cells run / reused


# Keys that cannot change the trained weights: loader workers (augmentations are seeded per
# sample), the progress-line interval, and what only the evaluation reads (the val-set size).
NEUTRAL = (("data", "num_workers"), ("train", "log_every"), ("data", "num_val"), ("data", "num_test"),
           ("data", "test_skip"))
# The version of the evaluation protocol (pipelines/cell.py evaluate_cell and dino_core.evaluate):
# bump it when a change alters any number in eval.json, and every finished cell is re-evaluated
# (not re-trained) by the next grid run. 3: select and report splits (dino_core.evaluate.protocol):
# the linear probe's lr and epoch chosen on the select split, every number measured on the report split.
EVAL_VERSION = 3


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def training_part(cfg: Config) -> dict:
    """What can change the trained weights: the resolved config without the `eval` section, the
    NEUTRAL keys and any LATER_KEYS key at its value from before it existed."""
    d = cfg.to_dict()
    d.pop("eval")
    for section, key in NEUTRAL:
        d[section].pop(key)
    for (section, key), before in LATER_KEYS.items():
        if d[section].get(key, before) == before:   # NEUTRAL keys are already gone
            d[section].pop(key, None)
    return d


def cell_hash(cfg: Config) -> str:
    """sha256 of the canonical JSON of training_part (the seed is train.seed), 16 hex."""
    return _digest(training_part(cfg))


def eval_key(cfg: Config) -> str:
    """Identity of a cell's evaluation: the `eval` section, the evaluation sets and EVAL_VERSION."""
    d = cfg.data
    return _digest({"eval": cfg.to_dict()["eval"], "num_val": d.num_val, "num_test": d.num_test,
                    "test_skip": d.test_skip, "version": EVAL_VERSION})


def cell_dir(store: Path, cfg: Config) -> Path:
    return Path(store) / "cells" / cell_hash(cfg)


def is_done(path: Path) -> bool:
    return (Path(path) / DONE).is_file()


def mark_done(path: Path, summary: dict) -> None:
    atomic_write_json(Path(path) / DONE, summary)


def read_done(path: Path) -> dict:
    return json.loads((Path(path) / DONE).read_text())


def read_eval(path: Path) -> dict | None:
    """The cell's eval.json, or None if it has none."""
    f = Path(path) / "eval.json"
    return json.loads(f.read_text()) if f.is_file() else None


def needs_eval(path: Path, cfg: Config) -> bool:
    """A finished (DONE) cell that trained ok but whose eval.json is missing or was computed under
    another eval_key (another `eval` section, val size or EVAL_VERSION)."""
    if not is_done(path) or read_done(path).get("status") != "ok":
        return False
    ev = read_eval(path)
    return ev is None or ev.get("eval_key") != eval_key(cfg)


def cell_summary(path: Path) -> dict:
    """The training fields of DONE with the scalar metrics of collapse.json and eval.json."""
    out = {k: v for k, v in read_done(path).items() if k in TRAINING_KEYS}
    for name in (COLLAPSE, "eval.json"):
        f = Path(path) / name
        ev = json.loads(f.read_text()) if f.is_file() else {}
        out.update({k: v for k, v in ev.items() if isinstance(v, (int, float, bool, str))})
    return out


def write_teacher(path: Path, backbone: torch.nn.Module) -> None:
    """The teacher backbone's weights in fp16 (atomically): all that evaluating the cell again needs."""
    weights = {k: v.detach().to("cpu", torch.float16) for k, v in backbone.state_dict().items()}
    atomic_write(Path(path) / TEACHER, lambda tmp: torch.save(weights, tmp))


def read_teacher(path: Path, backbone: torch.nn.Module) -> torch.nn.Module:
    """``backbone`` with the cell's fp16 teacher weights loaded (as fp32)."""
    sd = torch.load(Path(path) / TEACHER, map_location="cpu", weights_only=True)
    backbone.load_state_dict({k: v.float() for k, v in sd.items()})
    return backbone.eval()


def append_history(store: Path, entry: dict) -> None:
    """Add one grid invocation to <store>/history.jsonl (rewritten atomically)."""
    path = Path(store) / HISTORY
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(entry, sort_keys=True) + "\n")


def read_history(store: Path) -> list[dict]:
    path = Path(store) / HISTORY
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def training_status(metrics: dict) -> str:
    """The training's own status of a metrics.json ("ok", "diverged", "stopped"), also when a
    failed evaluation has marked it (record_eval_failure)."""
    return metrics.get("train_status", metrics["status"])


@contextmanager
def eval_failure_recorded(path: Path) -> Iterator[None]:
    """Around a cell's evaluation: if it raises, metrics.json reads "status": "eval_failed" with
    the error (the training stays usable: a rerun only evaluates again); once it succeeds the
    status is the training's again. A cell that failed in evaluation never reads as ok."""
    f = Path(path) / "metrics.json"
    try:
        yield
    except Exception as e:
        if f.is_file():
            m = json.loads(f.read_text())
            m.update(status="eval_failed", train_status=training_status(m), eval_error=f"{type(e).__name__}: {e}")
            atomic_write_json(f, m)
        raise
    if f.is_file():
        m = json.loads(f.read_text())
        if "train_status" in m:
            m["status"] = m.pop("train_status")
            m.pop("eval_error", None)
            atomic_write_json(f, m)
