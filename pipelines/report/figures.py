"""What each plot shows (pure specs from the results); render.py draws them."""
from __future__ import annotations

import pandas as pd

from .aggregate import ln_k, num_col
from .model import FIG7_STUDY, KEYS, SWEEP_STUDIES, FigureSpec
from .tables import paper_has


def _order(study: dict, present) -> list[str]:
    present = set(present)
    return [r["name"] for r in study["rows"] if r["name"] in present]


def _log_k(cells: pd.DataFrame, study: str) -> list[float]:
    v = ln_k(cells)[cells["study"] == study].dropna().round(6)
    return sorted(set(v))


def fig7_spec(study: dict, curves: pd.DataFrame, cells: pd.DataFrame) -> FigureSpec | None:
    c = curves[curves["study"] == study["study"]]
    if c.empty:
        return None
    data = c[["row", "seed", "epoch", "teacher_entropy", "kl"]].reset_index(drop=True)
    return FigureSpec("fig7_entropy_kl.png", "fig7", f"{study['title']}: teacher entropy and KL per epoch",
                      data, {"order": _order(study, data["row"]), "log_k": _log_k(cells, study["study"])})


def sweep_spec(study: dict, seeds: pd.DataFrame, baselines: dict | None) -> FigureSpec | None:
    """k-NN vs the study's first descriptive column: ours per seed + the paper's number."""
    ok = seeds[(seeds["study"] == study["study"]) & seeds["ok"]]
    if ok.empty:
        return None
    col = study["columns"][0]
    xs = {r["name"]: str((r.get("columns") or {}).get(col, r["name"])) for r in study["rows"]}
    rows = [{"x": xs[r], "knn": float(k), "source": "ours: k-NN top-1 (k=20)"}
            for r, k in zip(ok["row"], ok["knn20_top1"]) if r in xs]
    for r in study["rows"]:
        paper = r.get("paper") or {}
        metric = "knn" if paper.get("knn") is not None else "linear"
        if paper.get(metric) is not None:
            rows.append({"x": xs[r["name"]], "knn": float(paper[metric]),
                         "source": f"paper: {'k-NN' if metric == 'knn' else 'linear'} top-1"})
    rnd = ((baselines or {}).get("random_init") or {}).get("knn20_top1")
    return FigureSpec(f"knn_vs_{study['study']}.png", "sweep", f"{study['title']}: top-1 vs {col}",
                      pd.DataFrame(rows), {"order": list(dict.fromkeys(xs.values())), "xlabel": col,
                                           "random_init": rnd})


def cost_spec(study: dict, seeds: pd.DataFrame, cost: dict | None = None) -> FigureSpec | None:
    """Accuracy vs time per epoch and vs peak memory: ours (top) and the paper's (bottom). Rows the
    cost stage measured apart take its CPU s per epoch and peak memory (see aggregate.apply_cost)."""
    ok = seeds[(seeds["study"] == study["study"]) & seeds["ok"]]
    if ok.empty:
        return None
    col = study["columns"][0]
    label = {r["name"]: str((r.get("columns") or {}).get(col, r["name"])) for r in study["rows"]}
    data = pd.DataFrame({"row": ok["row"], "label": ok["row"].map(label), "knn": num_col(ok, "knn20_top1"),
                         "time": num_col(ok, "epoch_time_s"), "mem": num_col(ok, "peak_mem_mb")}).reset_index(drop=True)
    apart = {r["row"]: r for r in (cost or {}).get("rows", []) if r["study"] == study["study"]}
    if apart:
        has = data["row"].isin(list(apart))
        data.loc[has, "time"] = data.loc[has, "row"].map(lambda r: apart[r]["cpu_s_per_epoch"])
        data.loc[has, "mem"] = data.loc[has, "row"].map(lambda r: apart[r]["peak_mem_mb"])
    paper = pd.DataFrame([{"row": r["name"], "label": label[r["name"]], **{k: (r.get("paper") or {}).get(k)
                           for k in ("linear", "time_h", "mem_gb")}} for r in study["rows"]])
    return FigureSpec(f"{study['study']}_cost.png", "cost", f"{study['title']}: accuracy vs time and memory",
                      data, {"order": _order(study, data["row"]), "paper": paper,
                             "time_label": "CPU time per epoch (s, cost stage)" if apart else "time per epoch (s)"})


def curves_spec(studies: list[dict], curves: pd.DataFrame, cells: pd.DataFrame) -> FigureSpec | None:
    """Loss / ln K and teacher entropy / ln K per epoch of every cell, one facet row per study."""
    if curves.empty:
        return None
    keys = KEYS + ["seed"]
    d = curves.merge(cells[keys].assign(lnk=ln_k(cells)), on=keys, how="left")
    lnk = d["lnk"]
    data = pd.DataFrame({"study": d["study"], "row": d["row"], "seed": d["seed"], "epoch": d["epoch"],
                         "loss_lnk": pd.to_numeric(d["loss"], errors="coerce") / lnk,
                         "ent_lnk": pd.to_numeric(d["teacher_entropy"], errors="coerce") / lnk})
    facets = [(s["study"], s["title"], _order(s, data.loc[data["study"] == s["study"], "row"])) for s in studies]
    facets = [f for f in facets if f[2]]
    if not facets:
        return None
    return FigureSpec("training_curves.png", "curves", "Training curves of every cell (mean ± sd over seeds)",
                      data, {"facets": facets})


def attention_spec(extras: dict) -> FigureSpec | None:
    att = extras.get("attention") or {}
    images = list(att.get("images") or [])[:4]
    if not images:
        return None
    info, title = att.get("json") or {}, "Attention of the default model (per head, with the attention-mass masks)"
    if info.get("jaccard_best_head") is not None:
        title += f"\nJaccard vs object masks: best head {float(info['jaccard_best_head']):.1f} %"
        title += f" (head {info['best_head']})" if info.get("best_head") is not None else ""
        if info.get("jaccard_mean_head") is not None:
            title += f", mean over heads {float(info['jaccard_mean_head']):.1f} %"
        if info.get("random_init_jaccard_best_head") is not None:
            title += f"; random init: best {float(info['random_init_jaccard_best_head']):.1f} %"
    return FigureSpec("attention.png", "attention", title, pd.DataFrame({"path": images}))


def attention_maps_spec(study: dict, extras: dict) -> FigureSpec | None:
    """Per-head attention maps of each row's seed-0 cell (results/attention/maps/<study>__<row>.json)."""
    maps = {p.rsplit("/", 1)[-1][:-len(".json")]: p for p in (extras.get("attention") or {}).get("maps") or []}
    col = study["columns"][0]
    rows = [(r["name"], str((r.get("columns") or {}).get(col, r["name"])), maps[f"{study['study']}__{r['name']}"])
            for r in study["rows"] if f"{study['study']}__{r['name']}" in maps]
    if not rows:
        return None
    return FigureSpec(f"{study['study']}_maps.png", "attention_maps",
                      f"{study['title']}: last-layer CLS attention per head (seed 0)\n60 %-mass masks "
                      "outlined; J: the head's Jaccard (%) over the report split",
                      pd.DataFrame(rows, columns=["row", "label", "path"]), {"n_images": 3})


def figure_specs(studies: list[dict], seeds: pd.DataFrame, curves: pd.DataFrame, cells: pd.DataFrame,
                 extras: dict) -> list[FigureSpec]:
    specs = []
    for s in studies:
        if s["study"] == FIG7_STUDY:
            specs.append(fig7_spec(s, curves, cells))
        if s["study"] in SWEEP_STUDIES:
            specs.append(sweep_spec(s, seeds, extras.get("baselines")))
        if paper_has(s, "time_h") or paper_has(s, "mem_gb"):
            specs.append(cost_spec(s, seeds, extras.get("cost")))
        if s.get("attention_maps"):
            specs.append(attention_maps_spec(s, extras))
    specs += [curves_spec(studies, curves, cells), attention_spec(extras)]
    return [f for f in specs if f is not None]
