"""Many cells at once on one GPU: launch.yaml's local.cells_per_gpu, the local executor's width and
GPU placement, the choice of N from a measured table, and the measurement itself (real processes on
the CPU: no GPU is needed for any of it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import PARAMS, tiny_config
from pipelines.launch import launch_config_from_dict, local_width, probe_cell, run_cells
from pipelines.launch import local as local_mod
from pipelines.launch import sharing
from pipelines.launch.local import local_threads, next_gpu

GB = 1024.0


@pytest.mark.parametrize("value, fragment", [
    (0, "0 is out of range [1, inf]; allowed: ['auto'] or a number in [1, inf]"),
    ("sometimes", "'sometimes' is not allowed; allowed: ['auto'] or a number in [1, inf]"),
    (2.5, "expected an integer or a string, got 2.5"),
    (True, "expected an integer or a string, got True"),
])
def test_cells_per_gpu_bad_values_name_file_key_value_and_allowed(value, fragment):
    with pytest.raises(ValueError) as e:
        launch_config_from_dict({"local": {"cells_per_gpu": value}}, source="launch.yaml")
    assert str(e.value).startswith("launch.yaml:local.cells_per_gpu: ") and fragment in str(e.value), str(e.value)
    for ok in (1, 8, "auto"):
        assert launch_config_from_dict({"local": {"cells_per_gpu": ok}}).local.cells_per_gpu == ok


def _local(cores: int, monkeypatch, **local) -> tuple:
    monkeypatch.setattr(local_mod, "cores", lambda: cores)
    cfg = launch_config_from_dict({"executor": "local", "max_parallel": 2, "local": local})
    return cfg, *local_width(cfg)


def test_with_gpus_cells_per_gpu_sets_the_width_not_max_parallel(monkeypatch):
    cfg, n, why = _local(16, monkeypatch, gpus_per_node=1, cells_per_gpu=8)
    assert (n, why) == (8, "") and local_threads(cfg).endswith(":-2}")   # 16 cores / 8 cells
    assert _local(16, monkeypatch, gpus_per_node=2, cells_per_gpu=4)[1] == 8
    assert _local(16, monkeypatch, gpus_per_node=2, cells_per_gpu=2, tasks_per_node=2)[1] == 2   # DDP: ranks per GPU
    cfg, n, why = _local(6, monkeypatch, gpus_per_node=1, cells_per_gpu=8)
    assert n == 6 and "capped to 6 by the 6 CPU cores" in why and local_threads(cfg).endswith(":-1}")
    _, n, why = _local(16, monkeypatch, gpus_per_node=1, cells_per_gpu="auto")
    assert n == 1 and "resolved by the grid driver" in why


def test_without_gpus_cells_per_gpu_is_ignored(monkeypatch):
    assert _local(16, monkeypatch, cells_per_gpu=1)[1:] == (2, "")
    _, n, why = _local(16, monkeypatch, cells_per_gpu=8)
    assert n == 2 and why == "local.cells_per_gpu=8 ignored: local.gpus_per_node is 0"
    _, n, why = _local(1, monkeypatch, cells_per_gpu="auto")
    assert n == 1 and "ignored" in why and "max_parallel=2 bounded to 1" in why


def test_next_gpu_is_the_least_busy_one_on_several_gpus():
    cfg = launch_config_from_dict({"local": {"gpus_per_node": 3}})
    assert [next_gpu(cfg, r) for r in ([], [0], [0, 1], [0, 0, 1, 2], [1, 2])] == [0, 1, 2, 1, 0]
    assert next_gpu(launch_config_from_dict({"local": {"gpus_per_node": 1}}), [0]) is None
    assert next_gpu(launch_config_from_dict({"local": {"gpus_per_node": 2, "tasks_per_node": 2}}), []) is None


def test_local_executor_runs_cells_per_gpu_at_once_each_on_its_gpu(tmp_path, monkeypatch):
    """max_parallel 1, 2 GPUs x 1 cell: two cells overlap, one per GPU; the third waits for a free one."""
    monkeypatch.setattr(local_mod, "cores", lambda: 4)
    cfg = launch_config_from_dict({"executor": "local", "max_parallel": 1, "poll_s": 0.2,
                                   "local": {"timeout_min": 5, "gpus_per_node": 2, "cells_per_gpu": 1}})
    out = run_cells(probe_cell, [(i, str(tmp_path / "cells"), 2.0) for i in range(3)], cfg, tmp_path / "sub")
    assert out == [0, 1, 4]
    recs = [json.loads((tmp_path / "cells" / f"cell_{i}.json").read_text()) for i in range(3)]
    assert recs[1]["start"] < recs[0]["end"] and recs[0]["start"] < recs[1]["end"], recs
    assert {recs[0]["gpus"], recs[1]["gpus"]} == {"0", "1"} and recs[2]["gpus"] in ("0", "1"), recs
    assert recs[2]["start"] >= min(recs[0]["end"], recs[1]["end"]), recs


def _row(n: int, steps_per_s: float, peak_gb: float = 1.0) -> dict:
    return {"n": n, "steps_per_s": steps_per_s, "s_per_step": n / steps_per_s, "peak_mem_mb": peak_gb * GB,
            "threads": 1}


def test_choose_takes_the_best_throughput_until_gains_fall_below_10_percent():
    table = [_row(1, 30), _row(2, 58), _row(4, 110), _row(8, 118), _row(16, 200)]
    c = sharing.choose(table, 80 * GB)
    assert c["n"] == 4 and c["done"] and "N=8 gains +7% over N=4 (< 10%)" in c["why"], c
    assert sharing.choose(table[:3], 80 * GB) == {**sharing.choose(table[:3], 80 * GB), "n": 4, "done": False}
    assert sharing.choose([_row(1, 30), _row(2, 20)], 80 * GB)["n"] == 1   # sharing slows it down


def test_choose_respects_the_memory_cap_and_failures():
    table = [_row(1, 30, 10), _row(2, 60, 10), _row(4, 120, 10), _row(8, 240, 10)]
    c = sharing.choose(table, 80 * GB)   # 8 x 10 GB > 0.85 x 80 GB
    assert c["n"] == 4 and "N=8 needs 8 x 10240 MB > 85% of 81920 MB" in c["why"], c
    assert sharing.choose([_row(1, 30, 70)], 80 * GB)["n"] == 1   # even one does not fit: 1 per GPU
    failed = [_row(1, 30), _row(2, 60), {"n": 4, "error": "OutOfMemoryError: CUDA out of memory"}]
    c = sharing.choose(failed, 80 * GB)
    assert c["n"] == 2 and c["done"] and "N=4 failed: OutOfMemoryError" in c["why"], c


def test_choose_ties_go_to_the_smaller_n():
    c = sharing.choose([_row(1, 30), _row(2, 60), _row(4, 60)], 80 * GB)
    assert c["n"] == 2 and "N=4 gains +0%" in c["why"], c
    assert sharing.candidates(16) == [1, 2, 4, 8, 16] and sharing.candidates(12) == [1, 2, 4, 8, 12]
    assert sharing.candidates(1) == [1]


def test_measure_table_runs_n_processes_at_once_on_the_cpu(monkeypatch):
    monkeypatch.setattr(sharing, "cores", lambda: 2)
    t0 = time.monotonic()
    result = sharing.measure_table(tiny_config(), max_n=2, warmup=1, steps=2)
    assert [r["n"] for r in result["table"]] in ([1], [1, 2]) and result["device"].startswith("cpu")
    for r, threads in zip(result["table"], (2, 1)):
        assert "error" not in r, r
        assert r["threads"] == threads and r["steps"] == 2 and r["steps_per_s"] > 0 and r["peak_mem_mb"] > 0, r
    assert result["choice"]["n"] in (1, 2) and result["device_mem_mb"] > 0
    print(f"measure_table N<=2: {time.monotonic() - t0:.1f} s\n{sharing.table_text(result)}")


def _fake_table(calls: list):
    def fake(cfg, max_n, warmup, steps):
        calls.append(max_n)
        table = [_row(1, 30), _row(2, 60), _row(4, 63)]
        return {"table": table, "choice": sharing.choose(table, 80 * GB), "device": "fake", "device_mem_mb": 80 * GB}
    return fake


def test_decide_is_cached_and_the_grid_records_the_chosen_n(tmp_path, monkeypatch):
    from pipelines import grid
    from pipelines.params import load_all
    from pipelines.store import read_history
    calls, launches = [], []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sharing, "measure_table", _fake_table(calls))
    monkeypatch.setattr(grid, "run_cells", lambda fn, args, launch, *a, **k: launches.append(launch) or
                        [None] * len(args))
    params = load_all(PARAMS)
    params.update(profile="tiny")
    params["grid"].update(studies=["center_momentum"], store=str(tmp_path / "store"))
    overrides = {"executor": "local", "local.gpus_per_node": 1, "local.cells_per_gpu": "auto"}
    for _ in range(2):
        grid.run_grid(params, overrides, Path(PARAMS).parent)
    assert len(calls) == 1 and [x.local.cells_per_gpu for x in launches] == [2, 2]   # measured once
    assert [h["cells_per_gpu"] for h in read_history(tmp_path / "store")] == [2, 2]
    assert len(list((tmp_path / "cache" / "dino-repro").glob("sharing-*.json"))) == 1
