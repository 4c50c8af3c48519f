"""Seeds -> rows: mean, std, n, collapse votes and final entropy; the agreement rule per row."""
from __future__ import annotations

import pandas as pd

from .model import APPROX_PAPER, APPROX_SLACK, CHANCE_MARGIN, COLLAPSE_PAPER_MAX, KEYS, Stats


def _as_bool(s: pd.Series) -> pd.Series:
    """True/False/'True'/'1' -> bool; missing -> <NA>."""
    out = s.astype("string").str.strip().str.lower().map({"true": True, "1": True, "1.0": True,
                                                           "false": False, "0": False, "0.0": False})
    return out.astype("boolean")


def num_col(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column; all-NaN when absent (e.g. every cell diverged or is missing)."""
    return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(float("nan"), index=df.index)


def seed_level(cells: pd.DataFrame, num_classes: int | None = None) -> pd.DataFrame:
    """cells + `ok` (status ok and a k-NN value) + `collapsed_seed` (verdict, chance fallback)."""
    df = cells.copy()
    knn = df["knn20_top1"] = num_col(df, "knn20_top1")
    df["ok"] = df["status"].astype("string").fillna("missing").eq("ok") & knn.notna()
    verdict = _as_bool(df["collapsed"]) if "collapsed" in df else pd.Series(pd.NA, index=df.index, dtype="boolean")
    if num_classes:
        verdict = verdict.fillna(knn <= 100.0 / num_classes + CHANCE_MARGIN)
    df["collapsed_seed"] = verdict.fillna(False).astype(bool)
    return df


def _not_ok_note(status: pd.Series) -> str:
    kinds = status.astype("string").fillna("missing").str.split(":").str[0].str.strip()
    counts = kinds[kinds != "ok"].value_counts().sort_index()
    return ", ".join(f"{c} {k}" for k, c in counts.items())


def aggregate(cells: pd.DataFrame, num_classes: int | None = None) -> pd.DataFrame:
    """One row per (study, row): n_seeds, n, knn_mean, knn_std, n_collapsed, not_ok, time/mem."""
    df = seed_level(cells, num_classes)
    ok = df[df["ok"]]
    g_all, g = df.groupby(KEYS, sort=False), ok.groupby(KEYS, sort=False)
    out = pd.DataFrame({"n_seeds": g_all.size()})
    out["not_ok"] = g_all["status"].agg(_not_ok_note)
    out["n"] = g.size().reindex(out.index).fillna(0).astype(int)
    out["n_collapsed"] = g["collapsed_seed"].sum().reindex(out.index).fillna(0).astype(int)
    for col, name in (("knn20_top1", "knn"), ("linear_top1_best", "lin"), ("epoch_time_s", "time"),
                      ("peak_mem_mb", "mem")):
        grp = num_col(ok, col).groupby([ok["study"], ok["row"]], sort=False)
        out[f"{name}_mean"] = grp.mean().reindex(out.index)
        out[f"{name}_std"] = grp.std(ddof=1).reindex(out.index)
    return out


def apply_cost(agg: pd.DataFrame, cost: dict | None) -> pd.DataFrame:
    """Rows measured apart by the cost stage (results/cost.json) take its time (process-CPU s per
    epoch) and peak memory instead of the grid's, whose epoch times share the cores with other
    cells; their spread is then not a seed spread (NaN). Marks them in column ``cost_apart``."""
    out = agg.copy()
    out["cost_apart"] = False
    for r in (cost or {}).get("rows", []):
        key = (r["study"], r["row"])
        if key in out.index:
            out.loc[key, ["time_mean", "time_std", "mem_mean", "mem_std", "cost_apart"]] = \
                [float(r["cpu_s_per_epoch"]), float("nan"), float(r["peak_mem_mb"]), float("nan"), True]
    return out


def ln_k(cells: pd.DataFrame) -> pd.Series:
    """ln K per cell: the evaluation's `log_K`, else the run summary's `ln_k` (also set for diverged cells)."""
    return num_col(cells, "log_K").fillna(num_col(cells, "ln_k"))


def final_entropy(curves: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Last-epoch teacher entropy / ln K per (study, row): ent_mean, ent_std, ent_n over seeds."""
    cols = KEYS + ["seed"]
    if curves.empty or "teacher_entropy" not in curves:
        return pd.DataFrame(columns=["ent_mean", "ent_std", "ent_n"],
                            index=pd.MultiIndex.from_tuples([], names=KEYS))
    last = curves.sort_values("epoch").groupby(cols, sort=False).tail(1)
    last = last.merge(cells[cols].assign(lnk=ln_k(cells)), on=cols, how="left")
    last["ratio"] = pd.to_numeric(last["teacher_entropy"], errors="coerce") / last["lnk"]
    g = last.dropna(subset=["ratio"]).groupby(KEYS, sort=False)["ratio"]
    return pd.DataFrame({"ent_mean": g.mean(), "ent_std": g.std(ddof=1), "ent_n": g.size()})


def stats_of(agg: pd.DataFrame, study: str, row: str) -> Stats:
    if (study, row) not in agg.index:
        return Stats(0, float("nan"), float("nan"), 0)
    r = agg.loc[(study, row)]
    return Stats(int(r["n"]), float(r["knn_mean"]), float(r["knn_std"]), int(r["n_collapsed"]),
                 float(r["lin_mean"]), float(r["lin_std"]))


def paper_value(paper: dict | None, metric: str | None = None) -> float | None:
    paper = paper or {}
    if metric:
        return paper.get(metric)
    return paper.get("knn") if paper.get("knn") is not None else paper.get("linear")


def paper_collapses(paper: dict | None) -> bool | None:
    """True: the paper says the row collapses; False: it learns; None: the paper says nothing."""
    paper = paper or {}
    if paper.get("collapse") is not None:
        return bool(paper["collapse"])
    v = paper_value(paper)
    return None if v is None else v <= COLLAPSE_PAPER_MAX


def _direction(paper: dict, ours: Stats, dpaper: dict | None, dours: Stats | None) -> tuple[str, str]:
    metric = next((m for m in ("knn", "linear") if paper_value(paper, m) is not None
                   and paper_value(dpaper, m) is not None), None)
    if metric is None or paper_collapses(dpaper):
        return "yes", "learns, as in the paper (no paper effect vs the default row)"
    if dours is None or dours.n == 0 or dours.collapsed or dours.split:
        return "inconclusive", "our default row has no ok seed or collapsed"
    dp = paper_value(paper, metric) - paper_value(dpaper, metric)
    ours_metric = "linear" if metric == "linear" and ours.has_linear and dours.has_linear else "knn"
    ours, dours = (ours.as_linear(), dours.as_linear()) if ours_metric == "linear" else (ours, dours)
    do = ours.mean - dours.mean
    noise = (ours.noise_std + dours.noise_std) / 2
    tag = f"paper Δ {dp:+.1f} ({metric}), ours Δ {do:+.1f} ({ours_metric}), noise {noise:.1f}"
    tag += "; n=1: no spread" if min(ours.n, dours.n) < 2 else ""
    if abs(dp) < APPROX_PAPER:
        limit = APPROX_SLACK + 2 * noise
        return ("yes" if abs(do) <= limit else "no"), f"{tag}; paper ≈, limit {limit:.1f}"
    if abs(do) <= noise:
        return "inconclusive", f"{tag}; ours Δ within the noise"
    return ("yes" if (do > 0) == (dp > 0) else "no"), tag


def agreement(paper: dict | None, ours: Stats, dpaper: dict | None, dours: Stats | None,
              is_default: bool) -> tuple[str, str]:
    """(verdict, reason) of one row: the rule in AGREEMENT_RULE. Verdicts: VERDICTS."""
    says = paper_collapses(paper)
    if says is None:
        return ("reference", "default row") if is_default else ("n/a", "no paper number")
    if ours.n == 0:
        return "inconclusive", "no ok seed"
    if ours.split:
        return "inconclusive", f"seeds split: collapsed in {ours.n_collapsed}/{ours.n}"
    col = f"collapsed in {ours.n_collapsed}/{ours.n}"
    if says:
        return ("yes" if ours.collapsed else "no"), f"paper collapses; ours {col}"
    if ours.collapsed:
        return "no", f"paper learns; ours {col}"
    if is_default:
        return "reference", "default row (learns, as in the paper)"
    return _direction(paper, ours, dpaper, dours)
