"""The learning budget: the shortest schedule of ablations/protocol.yaml `budget.candidates` (epochs)
at which, on the select split, the default row learns and every collapse row stands apart.

    python -m pipelines.budget --params params.yaml --out results/budget.json [--no-train]

For each candidate, shortest first: the default row (budget.default_seeds) and each collapse row
(seed 0) are trained as grid cells (the run store, the launcher of launch.yaml; cells already
finished are reused), then measured on the select split only:
    gain       = mean over seeds of select k-NN@20(default) - select k-NN@20(random init, same seed)
    separated  = the row's collapse verdict fires, or its select k-NN@20 <= mean(default) - separation
The first candidate with gain >= min_gain and every collapse row separated is the budget.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config, merge

from .baselines import random_init
from .ddp_entry import train_cell_ddp
from .launch import CellFailed, load_launch_config, run_cells
from .params import ROOT, grid_cells, load_all
from .protocol import load_protocol
from .store import cell_dir, cell_summary, is_done, needs_eval

log = logging.getLogger(__name__)
KNN = "select_knn20_top1"


def budget_cells(params: dict, epochs: int, budget: dict, root: Path = ROOT) -> list[tuple[str, str, int, dict]]:
    """(study, row, seed, params) of the default row's seeds and each collapse row's seed 0 at ``epochs``."""
    p = merge(params, {"train": {"epochs": epochs}, "grid": {"seeds": list(budget["default_seeds"]),
              "studies": sorted({s for s, _ in budget["collapse_rows"]} | {"fig6_teacher"})}})
    wanted = {(s, r): [0] for s, r in budget["collapse_rows"]} | {("fig6_teacher", "momentum"): budget["default_seeds"]}
    return [(c.study, c.row, c.seed, c.params) for c in grid_cells(p, root) if c.seed in wanted.get((c.study, c.row), ())]


def decide(rows: list[dict], random_knn: dict[int, float], budget: dict) -> dict:
    """Apply the rule to measured rows [{study, row, seed, knn, collapsed}] and random-init k-NN per seed."""
    default = [r for r in rows if (r["study"], r["row"]) == ("fig6_teacher", "momentum")]
    mean_default = sum(r["knn"] for r in default) / len(default)
    gains = [r["knn"] - random_knn[r["seed"]] for r in default]
    gain = sum(gains) / len(gains)
    collapse = []
    for r in rows:
        if r in default:
            continue
        apart = r["collapsed"] or r["knn"] <= mean_default - budget["separation"]
        collapse.append({**r, "separated": bool(apart)})
    ok = gain >= budget["min_gain"] and all(c["separated"] for c in collapse)
    return {"default_knn_mean": mean_default, "gain_per_seed": gains, "gain": gain, "collapse_rows": collapse,
            "passes": ok}


def random_knn(params: dict, budget: dict, root: Path = ROOT) -> dict[int, float]:
    """Select k-NN@20 of the default row's ViT at initialisation, per seed (no schedule enters it)."""
    cells = budget_cells(params, min(budget["candidates"]), budget, root)
    return {seed: random_init(Config.from_dict(p), linear=False)[KNN]
            for s, r, seed, p in cells if (s, r) == ("fig6_teacher", "momentum")}


def measure(params: dict, epochs: int, protocol: dict, randoms: dict[int, float], root: Path = ROOT,
            train: bool = True) -> dict | None:
    """Train (or reuse) the candidate's cells and decide on the select split against ``randoms``
    (random_knn); with ``train`` False, None unless every cell of the candidate has finished."""
    budget, store = protocol["budget"], root / params["grid"]["store"]
    cells = budget_cells(params, epochs, budget, root)
    paths = [cell_dir(store, Config.from_dict(p)) for *_, p in cells]
    if not train and not all(is_done(d) for d in paths):
        return None
    # a finished cell with a current evaluation needs no job; the others train or re-evaluate in one
    todo = [(str(d), p) for d, (*_, p) in zip(paths, cells)
            if not is_done(d) or needs_eval(d, Config.from_dict(p))]
    launch = load_launch_config(root / "launch.yaml")
    outcomes = run_cells(train_cell_ddp, todo, launch, root / launch.folder, name="dino-budget") if todo else []
    failed = [d for (d, _), o in zip(todo, outcomes) if isinstance(o, CellFailed)]
    if failed:
        raise SystemExit(f"budget: cells failed: {failed}")
    summaries = [cell_summary(d) for d in paths]   # DONE + collapse.json + eval.json
    rows = [{"study": s, "row": r, "seed": seed, "cell": d.name, "knn": m[KNN], "collapsed": bool(m.get("collapsed"))}
            for (s, r, seed, _), d, m in zip(cells, paths, summaries)]
    return {"epochs": epochs, "random_init_knn": randoms, "rows": rows, **decide(rows, randoms, budget)}


def choose(params: dict, root: Path = ROOT, train: bool = True) -> dict:
    """Candidates shortest first until one passes; every measured candidate is kept in the result.
    ``train`` False measures only candidates whose cells have all finished (a record of the state
    so far: chosen_epochs stays None until a candidate passes)."""
    protocol = load_protocol(root)
    params = merge(params, {"profile": "default"})
    tried, randoms = [], random_knn(params, protocol["budget"], root)
    for epochs in sorted(protocol["budget"]["candidates"]):
        result = measure(params, epochs, protocol, randoms, root, train)
        if result is None:
            log.info("budget %d epochs: cells not all finished; stopping here (--no-train)", epochs)
            break
        tried.append(result)
        log.info("budget %d epochs: gain %+.1f, collapse rows separated %s -> %s", epochs, tried[-1]["gain"],
                 [c["separated"] for c in tried[-1]["collapse_rows"]], "passes" if tried[-1]["passes"] else "fails")
        if tried[-1]["passes"]:
            break
    chosen = next((t["epochs"] for t in tried if t["passes"]), None)
    return {"split": protocol["select_split"], "rule": protocol["budget"], "chosen_epochs": chosen, "candidates": tried}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "budget.json"))
    ap.add_argument("--no-train", action="store_true",
                    help="train nothing: record the candidates whose cells have all finished")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = choose(load_all(args.params), train=not args.no_train)
    log.info("learning budget: %s epochs (%s)", result["chosen_epochs"], atomic_write_json(args.out, result))


if __name__ == "__main__":
    main()
