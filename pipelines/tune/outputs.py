"""best_params.yaml, trials.csv and the optuna plots, written atomically."""
from __future__ import annotations

import logging

import warnings
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from dino_core.checkpoint import atomic_write, atomic_write_text
from .plan import Plan
from .settings import COLLAPSE_ATTRS, CONTOUR_KEYS
from .space import Space

log = logging.getLogger(__name__)


def trials_table(study: optuna.Study, space: Space) -> pd.DataFrame:
    rows = []
    metric_keys = sorted({k for t in study.trials for k in t.user_attrs if k.startswith("knn")})
    for t in sorted(study.trials, key=lambda t: t.number):
        dur = t.duration.total_seconds() if t.duration is not None else None
        row = {"number": t.number, "state": t.state.name, "value": t.value}
        row.update({f"params_{p.name}": t.params.get(p.name) for p in space.params})
        row["status"] = t.user_attrs.get("status")
        row.update({k: t.user_attrs.get(k) for k in (*metric_keys, *COLLAPSE_ATTRS)})
        row.update({"epochs_run": t.user_attrs.get("epochs_run"), "duration_s": dur,
                    "worker": t.user_attrs.get("worker"), "torch_threads": t.user_attrs.get("torch_threads"),
                    "error": t.user_attrs.get("error")})
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study):
    """Best COMPLETE trial that neither collapsed nor diverged (ties: lowest number); None if none."""
    ok = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
          if t.user_attrs.get("status", "ok") == "ok" and t.value is not None]
    return max(ok, key=lambda t: (t.value, -t.number)) if ok else None


def best_params_text(study: optuna.Study, space: Space, epochs: int) -> str:
    best = best_trial(study)
    if best is None:
        return ("# tune: no COMPLETE trial that neither collapsed nor diverged; see trials.csv\n"
                + yaml.safe_dump({}, default_flow_style=False))
    diff = space.diff(best.params)
    head = (f"# Best trial {best.number} of study {study.study_name}: objective {best.value:.4f} "
            f"(k-NN top-1 %, {epochs}-epoch trials).\n"
            "# A diff for params.yaml (pipelines.params.apply_diff / dino_core.config.merge).\n")
    if any(p.key == "loss.warmup_teacher_temp_epochs" for p in space.params):
        head += "# warmup_teacher_temp_epochs counts epochs of the trials: rescale it for longer runs.\n"
    return head + yaml.safe_dump(diff, default_flow_style=False, sort_keys=True)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))


def _placeholder(path: Path, title: str, note: str) -> None:
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(6, 2))
    fig.text(0.5, 0.6, title, ha="center", va="center", fontsize=12)
    fig.text(0.5, 0.35, note, ha="center", va="center", fontsize=9, wrap=True)
    _save(fig, path)
    plt.close(fig)


def write_plots(study: optuna.Study, space: Space, out: Path) -> dict[str, str]:
    """Optimization history, teacher x student contour, importances; returns {file: 'ok' | note}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    tt, ts = (space.by_key(k) for k in CONTOUR_KEYS)
    jobs = {
        "optimization_history.png": (lambda: ovm.plot_optimization_history(study), 1),
        "contour_temperatures.png": (
            (lambda: ovm.plot_contour(study, params=[tt.name, ts.name])) if tt and ts else None, 2),
        "param_importances.png": (lambda: ovm.plot_param_importances(study), 2),
    }
    notes = {}
    plt.rcParams.update({"figure.figsize": (7, 5), "figure.dpi": 100})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (make, need) in jobs.items():
            path = out / name
            title = name[:-4].replace("_", " ")
            if make is None:
                note = f"skipped: the space does not search both {CONTOUR_KEYS[0]} and {CONTOUR_KEYS[1]}"
            elif len(complete) < need:
                note = f"skipped: {len(complete)} COMPLETE trial(s), {need} needed"
            else:
                try:
                    ax = make()
                    ax = ax.flat[0] if hasattr(ax, "flat") else ax
                    fig = ax.figure
                    fig.tight_layout()
                    _save(fig, path)
                    plt.close(fig)
                    notes[name] = "ok"
                    continue
                except Exception as e:  # noqa: BLE001 - a plot must not fail the stage
                    note = f"skipped: {type(e).__name__}: {e}"
                    plt.close("all")
            log.info("tune: %s %s (placeholder image written)", name, note)
            _placeholder(path, title, note)
            notes[name] = note
    return notes


def write_outputs(study: optuna.Study, plan: Plan) -> dict:
    out = Path(plan.settings.out)
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study, plan.space)
    atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    atomic_write_text(out / "best_params.yaml", best_params_text(study, plan.space, plan.base["train"]["epochs"]))
    notes = write_plots(study, plan.space, out)
    return {"table": table, "plots": notes}
