"""A budget.yaml trial with its trajectory: k-NN of the teacher at random init and every few epochs.

    python -m experiments.recipe_search.trajectory --trial S20gs6t2 [--every 5] [--threads 1]
    python -m experiments.recipe_search.trajectory --trial D100t2 --evaluate   # the kept run, as a grid cell

The trial's ``set`` list (budget.yaml, beside this file) is applied to budget_base.yaml (params.yaml
of commit 83cabfb, whose values are today's quick profile; frozen so that the recorded
trials keep their meaning) exactly as ``python -m pipelines.pretrain --params budget_base.yaml --set
...`` does (profile first, then the overrides); the run is the
same training, with the teacher's weighted k-NN (eval.knn_k, eval.knn_temp) measured before the
first step (``epoch: -1``, the random-init network of the same seed) and after every ``--every``
epochs and the last. One JSON line per measurement, with loss / ln K, teacher entropy / ln K and
KL(teacher || student) of that epoch, goes to ``budget/<trial>.jsonl`` (written to a .tmp file,
renamed when the run ends; explore.record_trajectory, the same loop as explore.py's); the run
folder stays in ``budget/runs/<trial>/`` (not tracked). ``--evaluate`` trains nothing: it runs the
grid's evaluation (pipelines.cell.evaluate_cell: k-NN, linear probe, collapse metrics with the run's
own teacher targets) on that kept run and logs it with the collapse verdict; the ``linear`` and
``Hmean_over_lnK`` fields of budget.yaml come from it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
BASE = HERE / "budget_base.yaml"   # the params every trial's `set` list applies to (module doc)

from dino_core.config import Config
from dino_core.evaluate.collapse import collapse_verdict
from experiments.recipe_search.explore import record_trajectory
from pipelines.cell import evaluate_cell
from pipelines.store import COLLAPSE
from pipelines.pretrain import build_params


def load_trials() -> dict[str, dict]:
    """budget.yaml's trials by name."""
    return {t["name"]: t for t in yaml.safe_load((HERE / "budget.yaml").read_text())["trials"]}


def trial_sets(name: str) -> list[str]:
    """The ``set`` overrides of trial ``name`` in budget.yaml."""
    trials = load_trials()
    if name not in trials:
        raise KeyError(f"budget.yaml has no trial {name!r} (known: {sorted(trials)})")
    return list(trials[name]["set"])


def trial_config(sets: list[str]) -> Config:
    """The resolved config of a trial's ``set`` list over BASE (profile first, then the overrides)."""
    return Config.from_dict(build_params(BASE, sets))


def run(name: str, every: int, out_dir: Path, until: int | None = None) -> Path:
    """Train trial ``name`` from budget_base.yaml + its overrides; its lines carry every k-NN k (``knn``).
    ``until``: stop after that many epochs (budget/<name>.partial.jsonl), a screen of the early phase."""
    cfg = trial_config(trial_sets(name))
    return record_trajectory(name, cfg, every, out_dir, lambda k: {"knn": k}, until)


def kept_config(cell: Path) -> Config:
    """The config of the finished run kept in ``cell`` (a trial's budget/runs/<name>); FileNotFoundError
    while it holds no finished run."""
    if not (cell / "metrics.json").is_file():   # written when the training ends
        raise FileNotFoundError(f"{cell} holds no finished run: train it first (trajectory.py --trial {cell.name})")
    return Config.from_stored(yaml.safe_load((cell / "config.yaml").read_text()), str(cell / "config.yaml"))


def evaluate(name: str, out_dir: Path) -> dict:
    """The grid's evaluation of the kept run ``out_dir/runs/<name>`` (writes its eval.json) and the
    collapse verdict."""
    cell = out_dir / "runs" / name
    cfg = kept_config(cell)
    ev = {**evaluate_cell(cfg, cell), **json.loads((cell / COLLAPSE).read_text())}
    collapsed, why = collapse_verdict(ev, cfg.head.out_dim, cfg.model.embed_dim)
    return {**ev, "collapsed": collapsed, "verdict": why,
            "Hmean_over_lnK": ev["teacher_mean_entropy"] / math.log(cfg.head.out_dim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial", required=True, help="a name in budget.yaml")
    ap.add_argument("--every", type=int, default=5, help="measure k-NN every this many epochs (and the last)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--until", type=int, help="stop after this many epochs, schedules unchanged (a screen)")
    ap.add_argument("--evaluate", action="store_true", help="evaluate the kept run as a grid cell (no training)")
    args = ap.parse_args()
    try:
        trial_sets(args.trial)
    except KeyError as e:
        ap.error(e.args[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    log = logging.getLogger(__name__)
    if args.evaluate:
        try:
            ev = evaluate(args.trial, HERE / "budget")
        except FileNotFoundError as e:
            ap.error(e.args[0])
        log.info("%s: knn20 %.1f, linear %.1f, h(mean Pt) %.2f ln K, prototypes %s, collapsed %s (%s)",
                 args.trial, ev["knn20_top1"], ev.get("linear_top1", float("nan")), ev["Hmean_over_lnK"],
                 ev.get("prototypes_used"), ev["collapsed"], ev["verdict"])
        return
    log.info("wrote %s", run(args.trial, args.every, HERE / "budget", args.until))


if __name__ == "__main__":
    main()
