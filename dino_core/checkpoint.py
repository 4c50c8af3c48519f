"""Training checkpoints (official key layout), exact resume, atomic writes of run files."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CHECKPOINT = "checkpoint.pth"


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``:
    a reader sees the old file or the whole new one, never a part (the one atomic write of the suite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def rng_state() -> dict:
    """torch, numpy and python RNG states in plain types and tensors only, so that a checkpoint
    loads with ``torch.load(weights_only=True)`` (numpy's key array is stored as an int64 tensor)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]   # older checkpoints: keys as a numpy array
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(state["python"]) if isinstance(state["python"], list) else state["python"])


def save_checkpoint(out_dir: Path, *, student, teacher, optimizer, dino_loss, scaler, epoch: int,
                    config: dict, extra: dict | None = None) -> None:
    """Keys as in the official checkpoint.pth: student, teacher, optimizer, epoch (next epoch
    to run), dino_loss (center, queue), fp16_scaler, args; plus our RNG states and the state
    dicts of ``extra`` modules (name -> module, e.g. a supervised run's classifier)."""
    state = {**{k: m.state_dict() for k, m in (extra or {}).items()},
             "student": student.state_dict(), "teacher": teacher.state_dict(),
             "optimizer": optimizer.state_dict(), "dino_loss": dino_loss.state_dict(),
             "fp16_scaler": scaler.state_dict() if scaler is not None else None,
             "epoch": epoch, "args": config, "rng": rng_state()}
    atomic_write(out_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(out_dir: Path, *, student, teacher, optimizer, dino_loss, scaler,
                    extra: dict | None = None) -> int:
    """Restore everything from out_dir/checkpoint.pth (and the ``extra`` modules save_checkpoint
    stored); returns the epoch to start at (0 if none)."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    optimizer.load_state_dict(state["optimizer"])
    dino_loss.load_state_dict(state["dino_loss"])
    for k, m in (extra or {}).items():
        m.load_state_dict(state[k])
    if scaler is not None and state.get("fp16_scaler"):
        scaler.load_state_dict(state["fp16_scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"])


def truncate_log(path: Path, start_epoch: int) -> None:
    """Drop epoch lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] < start_epoch]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
