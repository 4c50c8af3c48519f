"""How many cells one GPU takes at once (``local.cells_per_gpu: auto`` in launch.yaml).

A small cell leaves a GPU mostly idle between kernel launches, so N cells at once train up to N
times as many steps per second. ``measure_table`` times N = 1, 2, 4, ... processes of the cell's
training step at once (pipelines/bench/shared.py; on a CPU they share its cores); ``choose`` picks
N from that table; ``decide`` caches the decision per machine, torch version and cell config under
~/.cache/dino-repro. The grid driver resolves ``auto`` with ``resolve_cells_per_gpu``.

    python -m pipelines.launch.sharing --params params.yaml --set profile=default --out cells.json

writes the table, the chosen N, cells per hour and the projected wall time of the grid
(pipelines/launch/projection.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import queue
import time
import typing as tp

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config

from .config import LaunchConfig
from .local import cores

log = logging.getLogger(__name__)

MEM_FRACTION = 0.85   # of the device's memory: headroom for fragmentation and the heavier cells of a grid
MIN_GAIN = 0.10       # a doubling of N that gains less is within noise: more memory and slower cells for nothing
WARMUP, STEPS = 5, 30


def candidates(max_n: int) -> tp.List[int]:
    """1, 2, 4, ... up to max_n (max_n itself last)."""
    out = [1]
    while out[-1] * 2 <= max_n:
        out.append(out[-1] * 2)
    return out + ([max_n] if out[-1] < max_n else [])


def choose(table: tp.Sequence[dict], device_mem_mb: float, mem_fraction: float = MEM_FRACTION,
           min_gain: float = MIN_GAIN) -> dict:
    """{"n", "why", "done"} from the measured rows {"n", "steps_per_s", "peak_mem_mb"} or {"n", "error"}.

    The scan goes up N and stops at the first row that failed, needs more than ``mem_fraction`` of
    the device's memory (N x peak memory per process) or gains less than ``min_gain`` over the previous
    N; that row is not taken. N is the highest aggregate steps/s among the rows before it (ties: the
    smaller N); "done": the scan stopped (a longer table would not change N)."""
    best: tp.Optional[dict] = None
    prev: tp.Optional[dict] = None
    stop = ""
    for row in sorted(table, key=lambda r: r["n"]):
        n = row["n"]
        if "error" in row:
            stop = f"N={n} failed: {row['error']}"
        elif n * row["peak_mem_mb"] > mem_fraction * device_mem_mb:
            stop = (f"N={n} needs {n} x {row['peak_mem_mb']:.0f} MB > {mem_fraction:.0%} of "
                    f"{device_mem_mb:.0f} MB")
        elif prev is not None and row["steps_per_s"] < (1 + min_gain) * prev["steps_per_s"]:
            stop = (f"N={n} gains {row['steps_per_s'] / prev['steps_per_s'] - 1:+.0%} over N={prev['n']} "
                    f"(< {min_gain:.0%})")
        if stop:
            break
        prev = row
        if best is None or row["steps_per_s"] > best["steps_per_s"]:
            best = row
    if best is None:
        return {"n": 1, "why": f"{stop}; 1 cell per GPU", "done": True}
    speedup = best["steps_per_s"] / min(table, key=lambda r: r["n"])["steps_per_s"]
    why = f"N={best['n']}: {best['steps_per_s']:.1f} steps/s, x{speedup:.2f} N=1; "
    return {"n": best["n"], "why": why + (stop or f"the highest of N <= {prev['n']} measured"), "done": bool(stop)}


def measure_n(cfg: Config, n: int, warmup: int = WARMUP, steps: int = STEPS, wait_s: float = 600.0) -> dict:
    """One row: ``n`` fresh processes each train ``cfg`` for ``warmup`` + ``steps`` steps at once
    (cores / n threads each, as the local executor gives them); aggregate steps/s = n x steps / the
    slowest process's seconds, peak memory: the largest process's."""
    from pipelines.bench.shared import shared_steps   # torch: only where something is measured
    ctx = multiprocessing.get_context("spawn")   # CUDA cannot be forked
    barrier, results, threads = ctx.Barrier(n), ctx.Queue(), max(1, cores() // n)
    procs = [ctx.Process(target=shared_steps, args=(cfg, r, warmup, steps, threads, barrier, results, wait_s),
                         daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    got, deadline = [], time.monotonic() + 2 * wait_s
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):   # died without a word (killed, out of memory)
                break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
    row = {"n": n, "threads": threads, "steps": steps}
    errors = [g["error"] for g in got if "error" in g]
    if errors or len(got) < n:
        return {**row, "error": errors[0] if errors else f"{n - len(got)} of {n} processes gave no result"}
    wall = max(g["s"] for g in got)
    return {**row, "steps_per_s": n * steps / wall, "s_per_step": wall / steps,
            "peak_mem_mb": max(g["peak_mem_mb"] for g in got), "alloc_mb": max(g["alloc_mb"] for g in got),
            **{k: got[0][k] for k in ("device", "device_mem_mb", "precision")}}


def measure_table(cfg: Config, max_n: int, warmup: int = WARMUP, steps: int = STEPS) -> dict:
    """{"table": rows of measure_n for the candidates up to max_n, "choice": choose(table), "device",
    "device_mem_mb"}; the scan ends where choose says it is done."""
    table: tp.List[dict] = []
    choice: dict = {}
    device: dict = {}
    for n in candidates(max_n):
        row = measure_n(cfg, n, warmup, steps)
        table.append(row)
        device = device or {k: row[k] for k in ("device", "device_mem_mb") if k in row}
        log.info("N=%d: %s", n, row.get("error") or f"{row['steps_per_s']:.2f} steps/s, "
                 f"{row['s_per_step'] * 1e3:.1f} ms/step per process, peak {row['peak_mem_mb']:.0f} MB")
        choice = choose(table, device.get("device_mem_mb", float("inf")))
        if choice["done"]:
            break
    return {"table": table, "choice": choice, **device}


def table_text(result: dict) -> str:
    lines = [f"{'N':>4} {'steps/s':>9} {'ms/step':>9} {'peak MB':>9} {'threads':>7}"]
    for r in result["table"]:
        lines.append(f"{r['n']:>4} " + (f"failed: {r['error']}" if "error" in r else
                     f"{r['steps_per_s']:>9.2f} {r['s_per_step'] * 1e3:>9.1f} {r['peak_mem_mb']:>9.0f} "
                     f"{r['threads']:>7}"))
    return "\n".join(lines + [f"chosen N={result['choice']['n']} ({result['choice']['why']})"])


def _cache_path(cfg: Config, max_n: int, warmup: int, steps: int):
    import torch
    from dino_core.device import cache_root, cpu_model, resolve_device
    from pipelines.store import cell_hash
    device = resolve_device(cfg.train.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    key = json.dumps([name, torch.__version__, cell_hash(cfg), max_n, warmup, steps])
    return cache_root() / f"sharing-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def decide(cfg: Config, max_n: int, warmup: int = WARMUP, steps: int = STEPS, cache: bool = True) -> dict:
    """measure_table's result for ``cfg`` on this machine, from the cache when it holds one ("cached"
    true); cache False measures again (and caches the new result)."""
    path = _cache_path(cfg, max_n, warmup, steps)
    if cache and path.is_file():
        return {**json.loads(path.read_text()), "cached": True}
    result = measure_table(cfg, max_n, warmup, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return {**result, "cached": False}


def resolve_cells_per_gpu(launch: LaunchConfig, cfg: Config) -> LaunchConfig:
    """launch with ``local.cells_per_gpu: auto`` replaced by the measured N (unchanged otherwise)."""
    loc = launch.local
    if launch.executor != "local" or loc.gpus_per_node < 1 or loc.cells_per_gpu != "auto":
        return launch
    result = decide(cfg, max(1, cores() // loc.gpus_per_node))
    n = result["choice"]["n"]
    log.info("local.cells_per_gpu auto -> %d on %s (%s):\n%s", n, result.get("device", "?"),
             "cached" if result["cached"] else "measured", table_text(result))
    return launch.replace(**{"local.cells_per_gpu": n})


if __name__ == "__main__":
    from .projection import main
    main()
