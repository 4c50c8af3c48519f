"""Seeds -> rows: mean, std, n, collapse votes and final entropy."""
from __future__ import annotations

import pandas as pd

from .model import CHANCE_MARGIN, KEYS, Stats


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
    """One row per (study, row): n_seeds, n, knn_mean, knn_std, n_collapsed, not_ok, time/mem, jac
    (the attention Jaccard of the best head)."""
    df = seed_level(cells, num_classes)
    ok = df[df["ok"]]
    g_all, g = df.groupby(KEYS, sort=False), ok.groupby(KEYS, sort=False)
    out = pd.DataFrame({"n_seeds": g_all.size()})
    out["not_ok"] = g_all["status"].agg(_not_ok_note)
    out["n"] = g.size().reindex(out.index).fillna(0).astype(int)
    out["n_collapsed"] = g["collapsed_seed"].sum().reindex(out.index).fillna(0).astype(int)
    for col, name in (("knn20_top1", "knn"), ("linear_top1", "lin"), ("epoch_time_s", "time"),
                      ("peak_mem_mb", "mem"), ("jaccard_best_head", "jac")):
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
