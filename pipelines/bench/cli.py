"""Command line: run the measurements in fresh processes, write the JSON, log a table."""
from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config
from dino_core.device import resolve_device
from .configs import CONFIGS, REPO, build_config
from .data import bench_data
from .environment import environment, loadavg
from .table import table

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """A measurement's process ends when the bench does (killed or interrupted), not minutes later:
    a daemon thread exits it once its parent is gone (it is then re-parented)."""
    import os
    import threading
    import time
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _in_child(name: str, threads: int | None, *args, **kw) -> dict:
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return getattr(importlib.import_module("pipelines.bench"), name)(*args, **kw)


def measure(name: str, *args, isolate: bool = True, threads: int | None = None, **kw) -> dict:
    """Run the bench function ``name`` in a fresh spawned process (default), so that its peak memory
    is its own and not the leftovers of earlier measurements; or in this process."""
    if not isolate:
        return getattr(importlib.import_module("pipelines.bench"), name)(*args, **kw)
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_die_with_parent) as ex:
        return ex.submit(_in_child, name, threads, *args, **kw).result()


def _parser() -> argparse.ArgumentParser:
    from . import __doc__ as bench_doc
    p = argparse.ArgumentParser(prog="python -m pipelines.bench", description=bench_doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="cpu-toy", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--precisions", default="auto",
                   help="comma list of auto (what a run resolves: train.precision), fp32, bf16, fp16")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--attn", default="params",
                   help="comma list of model.attn_impl to time: params (params.yaml's), auto, explicit, sdpa")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-official", action="store_true", help="skip the official-style step")
    p.add_argument("--peak-n", type=int, default=2048, help="side of the square matmul whose best rate is the peak")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="also alternate N timed steps of ours (the first of --precisions, params' attention) "
                   "and official-style in one process (each after an untimed re-warm step)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd student and teacher")
    p.add_argument("--knn-full", action="store_true", help="k-NN at 50,000 x 1,000,000 (instead of the small size)")
    p.add_argument("--knn-size", default="5000x100000", help="QUERIESxTRAIN of the default k-NN")
    p.add_argument("--no-knn", action="store_true")
    p.add_argument("--no-data", action="store_true")
    p.add_argument("--data-workers", default="0,1,2")
    p.add_argument("--data-batches", type=int, default=10)
    p.add_argument("--data-root", default=None, help="shapes root (default: params data.root, then data/shapes)")
    p.add_argument("--data-steps", type=int, default=20,
                   help="alternated steps per crops.backend of the data-path share (cell config, real data)")
    p.add_argument("--data-warmup", type=int, default=10,
                   help="untimed steps of the data-path share first (the tensor backend's resize matrices are "
                   "cached per crop box: a cell builds them in its first batches)")
    p.add_argument("--data-threads", type=int, default=1, help="threads of the data-path share (a cell's one core)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (default: one fresh process per measurement)")
    p.add_argument("--out", default=str(REPO / "results" / "bench.json"))
    return p


def _record(result: dict, name: str, variant: str, fn: Callable[[], dict], cfg: Config) -> dict | None:
    """Run one step measurement into result["train_step"]; a failure (e.g. out of memory) is recorded."""
    la0 = loadavg()
    log.info("timing %s %s ...", name, variant)
    try:
        r = fn()
    except Exception as exc:   # one failed measurement keeps the others
        log.exception("%s %s failed", name, variant)
        result["train_step"].append({"config": name, "variant": variant, "error": repr(exc)})
        return None
    r.update(config=name, variant=variant, batch_size=cfg.optim.batch_size, attn_impl=cfg.model.attn_impl,
             img_per_s=cfg.optim.batch_size / r["s_per_step"], loadavg=[la0, loadavg()])
    result["train_step"].append(r)
    log.info("%s %s %s: %.3f s/step, %.1f img/s, peak %.0f MB", name, variant, r["precision"], r["s_per_step"],
             r["img_per_s"], r["peak_mem_mb"])
    return r


def _time_config(a: argparse.Namespace, name: str, result: dict, iso: dict) -> None:
    """Ours per precision and attention (and compiled), the official-style step, the speed-ups."""
    for prec in [x for x in a.precisions.split(",") if x]:
        for attn in [x for x in a.attn.split(",") if x]:
            cfg = build_config(name, prec, a.device, attn_impl=None if attn == "params" else attn)
            variant = "ours" if attn == "params" else f"ours attn={attn}"
            _record(result, name, variant,
                    lambda: measure("bench_step", cfg, a.warmup, a.steps, peak_n=a.peak_n, **iso), cfg)
        cfg = build_config(name, prec, a.device)
        if a.compile:
            _record(result, name, "ours+compile",
                    lambda: measure("bench_step", cfg, a.warmup, a.steps, compile=True, peak_n=a.peak_n, **iso), cfg)
    if a.no_official:
        return
    cfg = build_config(name, "fp32", a.device)
    off = _record(result, name, "official-style",
                  lambda: measure("bench_official", cfg, a.warmup, a.steps, peak_n=a.peak_n, **iso), cfg)
    if a.paired:
        la0 = loadavg()
        log.info("timing %s ours vs official-style, alternating steps ...", name)
        # ours at the first precision asked for (bf16 on a GPU): the official step picks its own
        # (fp16 + GradScaler on GPU, fp32 on CPU), as the official code does
        pcfg = build_config(name, a.precisions.split(",")[0] or "auto", a.device)
        pr = measure("bench_paired", pcfg, a.warmup, a.paired, compile=a.compile, **iso)
        pr.update(config=name, loadavg=[la0, loadavg()])
        result.setdefault("paired", []).append(pr)
    for r in result["train_step"]:
        if off and r.get("config") == name and r.get("variant", "").startswith("ours") and "error" not in r:
            result["speedup"].append({"config": name, "ours": f"{r['variant']} {r['precision']}",
                                      "official": f"official-style {off['precision']}",
                                      "ratio": off["s_per_step"] / r["s_per_step"],
                                      "cpu_ratio": off["cpu_s_per_step"] / r["cpu_s_per_step"]})


def _data_step(a: argparse.Namespace) -> list[dict]:
    """The data path's share of a learning-budget cell's step (config ``cell``) per crops.backend."""
    la0 = loadavg()
    log.info("timing the data path of the cell config per crops.backend ...")
    try:
        rows = measure("bench_data_step", build_config("cell", "auto", a.device), a.data_warmup, a.data_steps,
                       isolate=not a.no_isolate, threads=a.data_threads)
    except Exception as exc:   # e.g. the cell's dataset is not on this machine
        log.exception("data step failed")
        return [{"config": "cell", "error": repr(exc)}]
    for r in rows:
        r.update(config="cell", loadavg=[la0, loadavg()])
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    configs = [c for c in a.configs.split(",") if c]
    for c in configs:
        build_config(c)   # fail fast on a bad name
    device = resolve_device(a.device)
    iso = {"isolate": not a.no_isolate, "threads": a.threads}
    result: dict = {"env": environment(device), "args": vars(a), "train_step": [], "speedup": []}
    for name in configs:
        _time_config(a, name, result, iso)
    if not a.no_knn:
        q, n = (50_000, 1_000_000) if a.knn_full else map(int, a.knn_size.lower().split("x"))
        log.info("timing k-NN %d x %d ...", q, n)
        result["knn"] = [measure("bench_knn", q, n, device=a.device, **iso)]
    if not a.no_data:
        cfg = build_config(configs[0] if configs else "cpu-toy", "fp32", a.device)
        log.info("timing the data pipeline ...")
        result["data_pipeline"] = bench_data(cfg, [int(w) for w in a.data_workers.split(",")], a.data_batches,
                                             a.data_root)
    if not a.no_data:
        result["data_step"] = _data_step(a)
    result["env"]["loadavg_end"] = loadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    log.info("bench results (%s):\n%s", out, table(result))
    return result
