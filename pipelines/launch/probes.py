"""Cluster probes: tiny importable cells used by the tests and by `python -m pipelines.launch check`
(submitit pickles callables by reference, so they must live in an importable module)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
import typing as tp
from pathlib import Path


from dino_core.checkpoint import atomic_write_text

from .config import DEFAULT_LAUNCH_YAML, EXECUTORS, load_launch_config
from .executors import abs_folder, CellFailed, distributed_env
from .run import run_cells


def probe_cell(i: int, out_dir: str, sleep_s: float = 0.0, fail: bool = False) -> int:
    """Writes ``cell_<i>.json`` with start/end wall-clock times and the GPUs it sees; returns ``i * i``.

    With ``fail=True`` it raises instead (a cell whose code fails).
    """
    start = time.time()
    time.sleep(sleep_s)
    if fail:
        raise RuntimeError(f"probe cell {i} failed on purpose")
    end = time.time()
    rec = {"i": i, "start": start, "end": end, "pid": os.getpid(), "host": os.uname().nodename,
           "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
           "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / f"cell_{i}.json", json.dumps(rec))
    return i * i


def probe_started(i: int, out_dir: str, sleep_s: float) -> int:
    """Marks ``started_<i>`` then behaves like :func:`probe_cell` (for kill/cancel tests)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / f"started_{i}", str(time.time()))
    return probe_cell(i, out_dir, sleep_s)


def probe_fail(message: str) -> None:
    raise RuntimeError(message)


def probe_distributed(timeout_s: float = 120.0) -> tp.Dict[str, tp.Any]:
    """Exports the DDP variables, joins a gloo group and all-reduces ``rank + 1``."""
    import datetime

    import torch
    import torch.distributed as dist

    env = distributed_env()
    dist.init_process_group(backend="gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        return {"rank": dist.get_rank(), "world_size": dist.get_world_size(),
                "local_rank": int(env["LOCAL_RANK"]), "sum": float(t.item()),
                "master": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"}
    finally:
        dist.destroy_process_group()


def _counter_step(value: int, step: int) -> int:
    return (value * 31 + step * step + 7) % 1_000_003


def probe_counter_expected(steps: int) -> int:
    value = 1
    for step in range(steps):
        value = _counter_step(value, step)
    return value


def probe_counter(progress_file: str, steps: int, step_s: float) -> tp.Dict[str, tp.Any]:
    """A resumable 'training loop': one step every ``step_s`` s, progress saved after each step.

    Restarted (requeue), it resumes from the progress file. Returns the final value, the
    number of starts and the step each start resumed from.
    """
    path = Path(progress_file)
    state = {"step": 0, "value": 1, "starts": []}
    if path.exists():
        state = json.loads(path.read_text())
    state["starts"].append(state["step"])
    atomic_write_text(path, json.dumps(state))
    while state["step"] < steps:
        time.sleep(step_s)
        state["value"] = _counter_step(state["value"], state["step"])
        state["step"] += 1
        atomic_write_text(path, json.dumps(state))
    return {"value": state["value"], "starts": len(state["starts"]), "resumed_from": state["starts"]}


def check_cli(argv: tp.Optional[tp.List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.launch",
                                     description="Launcher utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="submit two tiny probe cells with the configured executor")
    chk.add_argument("--config", default=str(DEFAULT_LAUNCH_YAML))
    chk.add_argument("--executor", choices=EXECUTORS)
    chk.add_argument("--folder", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"executor": args.executor} if args.executor else {}
    cfg = load_launch_config(args.config, overrides)
    folder = abs_folder(args.folder, cfg) / "check"
    outs = run_cells(probe_cell, [(i, str(folder / "cells"), 1.0) for i in range(2)], cfg,
                     folder, poll_s=min(cfg.poll_s, 2.0), name="launch-check", max_wait_s=600)
    ok = outs == [0, 1]
    for o in outs:
        print(o if not isinstance(o, CellFailed) else f"FAILED: {o}")
    print(f"launcher check with executor={cfg.executor}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
