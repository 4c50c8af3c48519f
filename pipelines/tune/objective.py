"""One trial: pre-train with the sampled temperatures, report k-NN per epoch to the pruner."""
from __future__ import annotations

import logging

import math
import shutil
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch.utils.data import DataLoader, Subset

from dino_core.checkpoint import CHECKPOINT
from dino_core.config import Config
from dino_core.data.registry import NORMALIZATION, build_dataset, eval_transform
from dino_core.device import resolve_device
from dino_core.train import train

from ..cell import eval_loaders, knn_of, load_trained, pretrain_dataset, run_targets_collapse
from .plan import Plan
from .settings import COLLAPSE_ATTRS, LOW_VALUE

log = logging.getLogger(__name__)


def objective_loaders(cfg: Config, split: str, holdout_fraction: float) -> tuple[DataLoader, DataLoader]:
    """(k-NN bank, queries): train/val, or train minus a seeded holdout / the holdout."""
    if split == "val":
        return eval_loaders(cfg)
    d = cfg.data
    full = build_dataset(d.dataset, d.root, "train", eval_transform(d.dataset, d.image_size),
                         limit=d.num_train if d.num_train > 0 else None)
    n = len(full)
    n_q = min(n - 1, max(1, round(holdout_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
    kw = dict(batch_size=cfg.eval.batch_size, shuffle=False, num_workers=d.num_workers)
    return DataLoader(Subset(full, sorted(perm[n_q:])), **kw), DataLoader(Subset(full, sorted(perm[:n_q])), **kw)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def _networks(seen: dict, cfg: Config, run_dir: Path, status: str) -> tuple | None:
    """(student, teacher, loss, epoch) for the collapse metrics: the live run, or (a trial
    resumed after its last epoch) the checkpoint; None without either."""
    last = cfg.train.epochs - 1
    if seen["run"] is not None:
        r = seen["run"]
        return r.student_mod, r.teacher_net, r.loss, min(seen["epoch"], last)
    if status == "ok" and (run_dir / CHECKPOINT).is_file():
        return (*load_trained(cfg, run_dir), last)
    return None


def _collapse_attrs(nets: tuple, queries, device) -> dict:
    """COLLAPSE_ATTRS of the trial's networks on the k-NN queries, with the run's own targets."""
    try:
        cm = run_targets_collapse(*nets, queries, device)
    except Exception as e:  # noqa: BLE001 - e.g. non-finite weights of a diverged run
        return {"collapse_error": f"{type(e).__name__}: {e}"}
    return {k: cm[k] for k in COLLAPSE_ATTRS if k in cm}


def objective(trial: optuna.Trial, plan: Plan, worker: int, fresh: bool) -> float:
    """Pre-train with the trial's values; report k-NN top-1 every epoch; return the final one."""
    s = plan.settings
    values = {p.name: p.suggest(trial) for p in plan.space.params}
    cfg = Config.from_dict(plan.trial_params(values), source=f"trial {trial.number}")
    run_dir = s.study_dir / f"trial_{trial.number}"
    if fresh and run_dir.exists():   # a leftover of an earlier study of the same name: never resume it
        log.warning("trial %d: removing the stale run directory %s", trial.number, run_dir)
        shutil.rmtree(run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("epochs", cfg.train.epochs)
    trial.set_user_attr("torch_threads", torch.get_num_threads())   # the worker's share of the cores
    device = resolve_device(cfg.train.device)
    knn_cfg = cfg.replace("eval", knn_k=(s.knn_k,))
    bank, queries = objective_loaders(cfg, s.split, s.holdout_fraction)
    metric = f"knn{s.knn_k}_top1"
    seen: dict = {"run": None, "epoch": None, "knn": {}}

    def on_epoch_end(epoch: int, stats: dict, run) -> bool:
        seen["run"], seen["epoch"] = run, epoch
        value = knn_of(run.teacher_net.backbone, knn_cfg, bank, queries, device)[metric]
        seen["knn"][epoch] = value
        trial.report(value, epoch)
        log.info("trial %d epoch %d: %s %.2f (loss %.4f)", trial.number, epoch, metric, value,
                 stats.get("loss", float("nan")))
        if trial.should_prune():
            log.info("trial %d pruned at epoch %d", trial.number, epoch)
            return False
        return True

    mean, std = NORMALIZATION[cfg.data.dataset]
    metrics = train(cfg, run_dir, pretrain_dataset(cfg), mean, std, on_epoch_end=on_epoch_end)
    status = {"ok": "ok", "stopped": "pruned", "diverged": "diverged"}[metrics["status"]]
    last = cfg.train.epochs - 1
    attrs: dict = {"epochs_run": (seen["epoch"] + 1) if seen["epoch"] is not None else None}
    nets = _networks(seen, cfg, run_dir, status)
    if nets is not None and seen["run"] is None:
        attrs["epochs_run"] = cfg.train.epochs   # resumed after the last epoch: read from the checkpoint
    if status == "ok" and last not in seen["knn"] and nets is not None:
        seen["knn"][last] = knn_of(nets[1].backbone, knn_cfg, bank, queries, device)[metric]
    knn = seen["knn"][max(seen["knn"])] if seen["knn"] else None
    attrs[metric] = knn
    if nets is not None:
        attrs.update(_collapse_attrs(nets, queries, device))
    if status == "ok" and attrs.get("collapsed"):
        status = "collapsed"
    attrs["status"] = status
    if status == "diverged":
        attrs["diverged_epoch"] = metrics.get("final_epoch")
    for k, v in attrs.items():
        trial.set_user_attr(k, _clean(v))
    if status == "pruned":
        raise optuna.TrialPruned(f"pruned at epoch {seen['epoch']} ({metric} {knn})")
    if status in ("diverged", "collapsed") or knn is None:
        log.warning("trial %d %s: objective %.1f (%s)", trial.number, status, LOW_VALUE,
                    attrs.get("collapse_reason", "non-finite loss"))
        return LOW_VALUE
    return float(knn)


def run_trial(study: optuna.Study, trial: optuna.Trial, plan: Plan, worker: int, fresh: bool) -> TrialState:
    """Run one trial and tell the study; only KeyboardInterrupt/SystemExit (pre-emption) escape,
    leaving the trial RUNNING and claimed so that the requeued worker resumes it."""
    try:
        value = objective(trial, plan, worker, fresh)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except Exception as e:  # noqa: BLE001 - a failing trial must not crash the study
        log.exception("trial %d failed", trial.number)
        trial.set_user_attr("status", "error")
        trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, value)
    log.info("trial %d finished: value %.3f, params %s", trial.number, value, trial.params)
    return TrialState.COMPLETE
