"""Stage `cost`: Table 8's time and memory per row, measured apart from the grid.

A grid cell's epoch time is taken while another cell shares the 2 cores (and whatever else runs),
so the multi-crop rows' times in the grid are not comparable with each other. This stage runs
``warmup + steps`` real training steps of every row of each study marked ``cost: true`` (the
grid's first seed, the row's full config: data loading, multi-crop augmentation, train_step),
one row at a time in a fresh process with the grid cell's thread count, and records per row the
median process-CPU seconds per step (the verdict's measure: robust to other jobs on the machine),
the median wall seconds, the data part, the steps per epoch, and the process peak memory. It also
records how busy the rest of the machine was (other processes' CPU, in cores) during the rows.

    python -m pipelines.cost --params params.yaml --out results/cost.json
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config

from .params import ROOT, apply_profile, grid_cells, load_all, load_study

log = logging.getLogger(__name__)
WARMUP, STEPS = 3, 20


def _busy_cpu_s() -> float:
    """Seconds of CPU time the whole machine spent busy (all cores; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (the measuring processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure_costs(params: dict, root: Path = ROOT, warmup: int = WARMUP, steps: int = STEPS) -> dict:
    """Measure every row of the studies marked ``cost: true`` -> {"rows": [{study, row, seed,
    cpu_s_per_step, s_per_step, data_s_per_step, steps_per_epoch, cpu_s_per_epoch, peak_mem_mb, ...}],
    "other_cpu_cores": mean cores other processes used meanwhile, "warmup", "steps", "wall_s", ...}."""
    from .bench.cli import measure
    studies = [s for s in params["grid"]["studies"] if load_study(s, root).get("cost")]
    seeds = apply_profile(params, root)["grid"]["seeds"]
    seed = 0 if seeds == "protocol" else seeds[0]   # every row's seeds begin at 0
    cells = [c for c in grid_cells(params, root) if c.study in studies and c.seed == seed]
    rows, t0, busy0, own0 = [], time.time(), _busy_cpu_s(), _own_cpu_s()
    for i, cell in enumerate(cells):
        eta = f"{(time.time() - t0) / i * (len(cells) - i):.0f}s" if i else "-"
        log.info("cost %d/%d: %s/%s, ETA %s", i + 1, len(cells), cell.study, cell.row, eta)
        r = measure("bench_train_steps", Config.from_dict(cell.params), warmup, steps, threads=1)
        rows.append({"study": cell.study, "row": cell.row, "seed": cell.seed, **r})
        log.info("  %.3f CPU s/step (%.3f s wall, data %.3f s), %d steps/epoch, peak %.0f MB",
                 r["cpu_s_per_step"], r["s_per_step"], r["data_s_per_step"], r["steps_per_epoch"], r["peak_mem_mb"])
    wall = time.time() - t0
    other = max(0.0, (_busy_cpu_s() - busy0 - (_own_cpu_s() - own0)) / wall) if wall > 0 else 0.0
    return {"rows": rows, "warmup": warmup, "steps": steps, "wall_s": wall, "other_cpu_cores": round(other, 3),
            "cores": os.cpu_count(), "method": "process CPU time per step (median), 1 thread, fresh process per row"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "cost.json"))
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = measure_costs(load_all(a.params))
    atomic_write_json(Path(a.out), result)
    log.info("wrote %s (%d rows; other processes used %.2f cores meanwhile)", a.out, len(result["rows"]),
             result["other_cpu_cores"])


if __name__ == "__main__":
    main()
