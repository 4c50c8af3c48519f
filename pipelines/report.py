"""Stage `report`: paper-style tables, seaborn plots and results/README.md from the results.

Reads only results/cells.csv, results/curves.csv, the optional results/baselines.json,
results/env.json, results/attention/ and results/tune/, and the study files ablations/*.yaml
(the paper's numbers live there, never here). Writes results/tables/<study>.{md,tex,csv},
results/plots/*.png and results/README.md, each file atomically (temp + rename), README last.

    python -m pipelines.report --results results --ablations ablations

Conventions (also written under every table):
* ours = weighted k-NN top-1 (k = 20, %) of the teacher backbone, "mean ± std" over the ok
  seeds of a row; n = number of ok seeds with a k-NN value (diverged/failed seeds are listed in
  the note, never averaged); std is the sample std (ddof = 1), shown "n/a" for n = 1 and then
  counted as 0 in the noise of the agreement rule (flagged "n=1" in the note).
* a seed collapsed if its `collapsed` verdict is true (when that verdict is missing and
  env.json gives num_classes: k-NN within CHANCE_MARGIN points of chance); a row collapsed if
  the majority of its ok seeds did; an even split is "inconclusive".
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

log = logging.getLogger(__name__)

COLLAPSE_PAPER_MAX = 1.0   # a paper top-1 <= 1.0 % means "collapses" (the paper prints 0.1)
APPROX_PAPER = 1.0         # |paper delta| < 1.0 point: the paper says "no effect" (≈)
APPROX_SLACK = 2.0         # ≈ holds for us iff |our delta| <= APPROX_SLACK + 2 * noise
CHANCE_MARGIN = 5.0        # fallback collapse test when a seed has no collapse verdict
ENTROPY_ZERO = 0.2         # last-epoch teacher entropy < 0.2 ln K: "entropy goes to 0"
ENTROPY_LOGK = 0.9         # last-epoch teacher entropy > 0.9 ln K: "entropy goes to ln K"
KEYS = ["study", "row"]
VERDICTS = ("yes", "no", "inconclusive", "reference", "n/a")
FIG7_STUDY = "fig7_collapse"
SWEEP_STUDIES = ("teacher_momentum", "teacher_temperature", "center_momentum", "output_dim")
DPI = 150

AGREEMENT_RULE = (
    "**Agreement rule.** Paper number = its k-NN top-1 where given, else its linear top-1. "
    f"(a) Collapse: the paper says a row collapses if its number is <= {COLLAPSE_PAPER_MAX:g} % "
    "(or the study file marks `collapse: true`) and that it learns otherwise; a row collapsed for us "
    "if the majority of its ok seeds did. \"yes\" iff both say the same; if the paper says it "
    "learns and ours collapsed, \"no\". (b) Effect vs the default row (only for rows that learn in "
    "the paper and for us, when the default row also learns in both): paper Δ = paper(row) − "
    "paper(default) on the same metric, our Δ = mean(row) − mean(default), noise = (std(row) + "
    f"std(default)) / 2. If |paper Δ| < {APPROX_PAPER:g} point the paper says ≈: \"yes\" iff "
    f"|our Δ| <= {APPROX_SLACK:g} + 2·noise, else \"no\". Otherwise: \"inconclusive\" if |our Δ| <= "
    "noise, else \"yes\" iff our Δ has the paper's sign, else \"no\". A learning row whose default "
    "row has no comparable paper number gets \"yes\" from (a) alone. Rows without a paper number: "
    "\"n/a\"; the default row: \"reference\" (\"no\" if it contradicts the paper on collapse); a row "
    "without an ok seed or with an even collapse split: \"inconclusive\".")
CONVENTIONS = (
    "**Ours** = weighted k-NN top-1 (k = 20, %) of the teacher backbone, mean ± sample std "
    "(ddof = 1) over the ok seeds; n = number of ok seeds (std \"n/a\" for n = 1, and then taken as "
    "0 in the noise). *collapsed* = seeds whose collapse verdict fired / n. Diverged or failed "
    "seeds are named in the note and not averaged.")


# ---------------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class Stats:
    """One row's result over seeds (k-NN top-1, %)."""
    n: int
    mean: float
    std: float
    n_collapsed: int

    @property
    def split(self) -> bool:
        return self.n > 0 and 2 * self.n_collapsed == self.n

    @property
    def collapsed(self) -> bool:
        return self.n > 0 and 2 * self.n_collapsed > self.n

    @property
    def noise_std(self) -> float:
        return 0.0 if not math.isfinite(self.std) else self.std


@dataclass(frozen=True)
class Table:
    study: str
    title: str
    source: str
    default: str
    numeric: pd.DataFrame    # -> <study>.csv (numbers as numbers)
    display: pd.DataFrame    # -> <study>.md / .tex (formatted strings)
    latex_drop: tuple = ("note",)


@dataclass(frozen=True)
class FigureSpec:
    name: str                # file name under plots/
    kind: str                # key of RENDERERS
    title: str
    data: pd.DataFrame
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Effect:
    text: str
    status: str              # "reproduced" | "not reproduced" | "inconclusive"
    numbers: str

    def line(self) -> str:
        return f"{self.text}: **{self.status}** ({self.numbers})"


@dataclass(frozen=True)
class Report:
    tables: list[Table]
    figures: list[FigureSpec]
    effects: list[Effect]
    readme: str


# ----------------------------------------------------------------------------- aggregation
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
    for col, name in (("knn20_top1", "knn"), ("epoch_time_s", "time"), ("peak_mem_mb", "mem")):
        grp = num_col(ok, col).groupby([ok["study"], ok["row"]], sort=False)
        out[f"{name}_mean"] = grp.mean().reindex(out.index)
        out[f"{name}_std"] = grp.std(ddof=1).reindex(out.index)
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
    return Stats(int(r["n"]), float(r["knn_mean"]), float(r["knn_std"]), int(r["n_collapsed"]))


# ------------------------------------------------------------------------- agreement rule
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
    do = ours.mean - dours.mean
    noise = (ours.noise_std + dours.noise_std) / 2
    tag = f"paper Δ {dp:+.1f} ({metric}), ours Δ {do:+.1f}, noise {noise:.1f}"
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


# ----------------------------------------------------------------------------------- tables
def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x, digits: int = 1) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else ""


def fmt_mean_std(mean, std, n: int, digits: int = 1) -> str:
    """"m ± s" (sample std); "m ± n/a" for n = 1; "" without a value."""
    if n == 0 or not _finite(mean):
        return ""
    spread = f"{float(std):.{digits}f}" if n >= 2 and _finite(std) else "n/a"
    return f"{float(mean):.{digits}f} ± {spread}"


def _paper_has(study: dict, key: str) -> bool:
    return any((r.get("paper") or {}).get(key) is not None for r in study["rows"])


def _cost_fields(a: pd.Series | None, paper: dict) -> dict:
    get = (lambda k: float(a[k]) if a is not None else float("nan"))
    return {"time_mean_s": get("time_mean"), "time_std_s": get("time_std"),
            "peak_mem_mb_mean": get("mem_mean"), "peak_mem_mb_std": get("mem_std"),
            "paper_time_h": paper.get("time_h"), "paper_mem_gb": paper.get("mem_gb")}


def _entropy_fields(e: pd.Series | None, paper: dict) -> dict:
    get = (lambda k: float(e[k]) if e is not None else float("nan"))
    return {"paper_entropy": paper.get("entropy"), "entropy_last_over_lnK_mean": get("ent_mean"),
            "entropy_last_over_lnK_std": get("ent_std"), "entropy_n": int(e["ent_n"]) if e is not None else 0}


def row_record(study: dict, row: dict, agg: pd.DataFrame, ent: pd.DataFrame) -> dict:
    """The numbers of one table row (ours over seeds, the paper's, the agreement verdict)."""
    sname, name, paper = study["study"], row["name"], row.get("paper") or {}
    default = next(r for r in study["rows"] if r["name"] == study["default"])
    ours = stats_of(agg, sname, name)
    verdict, reason = agreement(paper, ours, default.get("paper"), stats_of(agg, sname, default["name"]),
                                name == study["default"])
    a = agg.loc[(sname, name)] if (sname, name) in agg.index else None
    not_ok = a["not_ok"] if a is not None else ""
    rec = {"row": name, "label": row.get("label", name),
           **{c: str((row.get("columns") or {}).get(c, "")) for c in study["columns"]},
           "paper_knn": paper.get("knn"), "paper_linear": paper.get("linear"),
           "paper_collapses": paper_collapses(paper), "n_seeds": int(a["n_seeds"]) if a is not None else 0,
           "n": ours.n, "knn20_mean": ours.mean, "knn20_std": ours.std, "n_collapsed": ours.n_collapsed,
           "agrees": verdict, "note": reason + (f"; {not_ok}" if not_ok else "")
           + ("" if a is not None else "; no cells in cells.csv")}
    if _paper_has(study, "time_h") or _paper_has(study, "mem_gb"):
        rec.update(_cost_fields(a, paper))
    if _paper_has(study, "entropy"):
        rec.update(_entropy_fields(ent.loc[(sname, name)] if (sname, name) in ent.index else None, paper))
    return rec


def display_frame(study: dict, num: pd.DataFrame) -> pd.DataFrame:
    """The formatted table (strings) for Markdown and LaTeX."""
    d = pd.DataFrame({"row": num["label"].astype(str)})
    for c in study["columns"]:
        d[c] = num[c].astype(str)
    d["paper k-NN"], d["paper linear"] = num["paper_knn"].map(fmt_num), num["paper_linear"].map(fmt_num)
    if _paper_has(study, "collapse"):
        d["paper collapse"] = num["paper_collapses"].map({True: "yes", False: "no"}).fillna("")
    d["ours k-NN"] = [fmt_mean_std(m, s, n) for m, s, n in zip(num["knn20_mean"], num["knn20_std"], num["n"])]
    d["n"] = num["n"].astype(str)
    d["collapsed"] = [f"{k}/{n}" if n else "" for k, n in zip(num["n_collapsed"], num["n"])]
    if "time_mean_s" in num:
        d["time/epoch (s)"] = [fmt_mean_std(m, s, n)
                               for m, s, n in zip(num["time_mean_s"], num["time_std_s"], num["n"])]
        d["peak mem (MB)"] = num["peak_mem_mb_mean"].map(lambda x: fmt_num(x, 0))
        d["paper time (h)"], d["paper mem (GB)"] = num["paper_time_h"].map(fmt_num), num["paper_mem_gb"].map(fmt_num)
    if "paper_entropy" in num:
        d["paper entropy"] = num["paper_entropy"].map({"zero": "→ 0", "log_k": "→ ln K"}).fillna("")
        d["ours H(Pt)/ln K"] = [fmt_mean_std(m, s, n, 2) for m, s, n in zip(
            num["entropy_last_over_lnK_mean"], num["entropy_last_over_lnK_std"], num["entropy_n"])]
    d["agrees"], d["note"] = num["agrees"], num["note"]
    empty = [c for c in ("paper k-NN", "paper linear") if (d[c] == "").all()]   # e.g. Table 8 has no k-NN
    return d.drop(columns=empty)


def study_table(study: dict, agg: pd.DataFrame, ent: pd.DataFrame) -> Table:
    num = pd.DataFrame([row_record(study, r, agg, ent) for r in study["rows"]])
    return Table(study["study"], study.get("title", study["study"]), study.get("source", ""), study["default"],
                 num, display_frame(study, num))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def table_markdown(t: Table) -> str:
    md = t.display.to_markdown(index=False, disable_numparse=True)
    return (f"# {t.title}\n\nSource: {t.source}. Study `{t.study}`, default row `{t.default}`.\n\n{md}\n\n"
            f"{CONVENTIONS}\n\n{AGREEMENT_RULE}\n")


def table_latex(t: Table) -> str:
    d = t.display.drop(columns=[c for c in t.latex_drop if c in t.display])
    st = d.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    tex = st.to_latex(hrules=True, column_format="l" * d.shape[1], caption=_latex_escape(t.title),
                      label=f"tab:{t.study}", position="t")
    tex = tex.replace("±", r"$\pm$").replace("→", r"$\to$")
    return f"% generated by pipelines/report.py from results/cells.csv and ablations/{t.study}.yaml\n{tex}"


# ---------------------------------------------------------------------------- paper effects
@dataclass(frozen=True)
class EffectSpec:
    """A paper effect checked on (study, rows). kind: collapse ((row, expect_collapsed), ...),
    entropy (row, "zero" | "log_k"), better (a, b: a beats b), approx (a, b), cost (rows by crops)."""
    text: str
    kind: str
    study: str
    rows: tuple


EFFECTS = (
    EffectSpec("No momentum (teacher = student copy) collapses", "collapse", "table7_components",
               (("no_momentum", True),)),
    EffectSpec("Previous-iteration teacher collapses", "collapse", "fig6_teacher", (("previous_iteration", True),)),
    EffectSpec("No centering (sharpening only): teacher entropy → 0", "entropy", "fig7_collapse",
               ("sharpening_only", "zero")),
    EffectSpec("No sharpening (centering only): teacher entropy → ln K", "entropy", "fig7_collapse",
               ("centering_only", "log_k")),
    EffectSpec("Constant τt = 0.08 collapses while warm-up 0.04 → 0.07 does not", "collapse",
               "teacher_temperature", (("tt_0.08", True), ("tt_warmup", False))),
    EffectSpec("Center momentum 0.999 collapses", "collapse", "center_momentum", (("cm_0.999", True),)),
    EffectSpec("Multi-crop (2 global + 6 local) beats 2 crops", "better", "multicrop", ("mc_2x2_6", "mc_2")),
    EffectSpec("CE beats MSE", "better", "table7_components", ("dino", "mse")),
    EffectSpec("More crops cost more time and memory", "cost", "multicrop",
               ("mc_2", "mc_2x2_2", "mc_2x2_6", "mc_2x2_10")),
    EffectSpec("Sinkhorn-Knopp ≈ centering", "approx", "table7_components", ("sinkhorn", "dino")),
)


def _combine(statuses: list[str]) -> str:
    if "not reproduced" in statuses:
        return "not reproduced"
    return "reproduced" if statuses and all(s == "reproduced" for s in statuses) else "inconclusive"


def _effect_collapse(spec: EffectSpec, agg: pd.DataFrame, ent: pd.DataFrame) -> tuple[str, str]:
    statuses, parts = [], []
    for row, expect in spec.rows:
        s = stats_of(agg, spec.study, row)
        if s.n == 0 or s.split:
            statuses.append("inconclusive")
            parts.append(f"{row}: " + ("no ok seed" if s.n == 0 else f"collapsed {s.n_collapsed}/{s.n} (split)"))
            continue
        statuses.append("reproduced" if s.collapsed == expect else "not reproduced")
        parts.append(f"{row}: collapsed {s.n_collapsed}/{s.n}, k-NN {fmt_mean_std(s.mean, s.std, s.n)}")
    return _combine(statuses), "; ".join(parts)


def _effect_entropy(spec: EffectSpec, agg: pd.DataFrame, ent: pd.DataFrame) -> tuple[str, str]:
    row, target = spec.rows
    if (spec.study, row) not in ent.index:
        return "inconclusive", f"{row}: no training curve"
    e = ent.loc[(spec.study, row)]
    ratio = float(e["ent_mean"])
    if target == "zero":
        ok, rule = ratio < ENTROPY_ZERO, f"< {ENTROPY_ZERO:g} ln K"
    else:
        ok, rule = ratio > ENTROPY_LOGK, f"> {ENTROPY_LOGK:g} ln K"
    return ("reproduced" if ok else "not reproduced"), (
        f"{row}: last-epoch teacher entropy {fmt_mean_std(ratio, e['ent_std'], int(e['ent_n']), 2)} ln K "
        f"(n={int(e['ent_n'])}), reproduced if {rule}")


def _pair(spec: EffectSpec, agg: pd.DataFrame) -> tuple[Stats, Stats, str]:
    (a, b), sa, sb = spec.rows, stats_of(agg, spec.study, spec.rows[0]), stats_of(agg, spec.study, spec.rows[1])
    text = (f"{a}: {fmt_mean_std(sa.mean, sa.std, sa.n)} (n={sa.n}, collapsed {sa.n_collapsed}); "
            f"{b}: {fmt_mean_std(sb.mean, sb.std, sb.n)} (n={sb.n}, collapsed {sb.n_collapsed})")
    return sa, sb, text


def _effect_better(spec: EffectSpec, agg: pd.DataFrame, ent: pd.DataFrame) -> tuple[str, str]:
    sa, sb, text = _pair(spec, agg)
    if sa.n == 0 or sb.n == 0:
        return "inconclusive", text
    delta, noise = sa.mean - sb.mean, (sa.noise_std + sb.noise_std) / 2
    text += f"; Δ {delta:+.1f}, noise {noise:.1f}"
    if sa.collapsed and not sb.collapsed:
        return "not reproduced", text
    if delta > noise:
        return "reproduced", text
    return ("not reproduced" if delta < -noise else "inconclusive"), text


def _effect_approx(spec: EffectSpec, agg: pd.DataFrame, ent: pd.DataFrame) -> tuple[str, str]:
    sa, sb, text = _pair(spec, agg)
    if sa.n == 0 or sb.n == 0:
        return "inconclusive", text
    delta, noise = sa.mean - sb.mean, (sa.noise_std + sb.noise_std) / 2
    limit = APPROX_SLACK + 2 * noise
    text += f"; |Δ| {abs(delta):.1f} vs limit {limit:.1f}"
    ok = abs(delta) <= limit and sa.collapsed == sb.collapsed
    return ("reproduced" if ok else "not reproduced"), text


def _effect_cost(spec: EffectSpec, agg: pd.DataFrame, ent: pd.DataFrame) -> tuple[str, str]:
    idx = [(spec.study, r) for r in spec.rows]
    if any(i not in agg.index for i in idx):
        return "inconclusive", "not every row has results"
    t, m = [float(agg.loc[i, "time_mean"]) for i in idx], [float(agg.loc[i, "mem_mean"]) for i in idx]
    text = "; ".join(f"{r}: {fmt_num(a)} s/epoch, {fmt_num(b, 0)} MB" for r, a, b in zip(spec.rows, t, m))
    if not all(map(_finite, t + m)):
        return "inconclusive", text
    rising = (lambda v: all(y > x for x, y in zip(v, v[1:])))
    if rising(t) and rising(m):
        return "reproduced", text + "; both rise with every added crop"
    if t[-1] <= t[0] or m[-1] <= m[0]:
        return "not reproduced", text
    return "inconclusive", text + "; rises overall but not at every step"


EFFECT_CHECKS = {"collapse": _effect_collapse, "entropy": _effect_entropy, "better": _effect_better,
                 "approx": _effect_approx, "cost": _effect_cost}


def effects_summary(agg: pd.DataFrame, ent: pd.DataFrame, specs: tuple = EFFECTS) -> list[Effect]:
    """One line per paper effect: reproduced / not reproduced / inconclusive, with our numbers."""
    out = []
    for spec in specs:
        if spec.study not in set(agg.index.get_level_values("study")):
            out.append(Effect(spec.text, "inconclusive", f"study {spec.study} not in the results"))
            continue
        status, numbers = EFFECT_CHECKS[spec.kind](spec, agg, ent)
        out.append(Effect(spec.text, status, numbers))
    return out


# ----------------------------------------------------------------------------- figure specs
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


def cost_spec(study: dict, seeds: pd.DataFrame) -> FigureSpec | None:
    """Accuracy vs time per epoch and vs peak memory: ours (top) and the paper's (bottom)."""
    ok = seeds[(seeds["study"] == study["study"]) & seeds["ok"]]
    if ok.empty:
        return None
    col = study["columns"][0]
    label = {r["name"]: str((r.get("columns") or {}).get(col, r["name"])) for r in study["rows"]}
    data = pd.DataFrame({"row": ok["row"], "label": ok["row"].map(label), "knn": num_col(ok, "knn20_top1"),
                         "time": num_col(ok, "epoch_time_s"), "mem": num_col(ok, "peak_mem_mb")}).reset_index(drop=True)
    paper = pd.DataFrame([{"row": r["name"], "label": label[r["name"]], **{k: (r.get("paper") or {}).get(k)
                           for k in ("linear", "time_h", "mem_gb")}} for r in study["rows"]])
    return FigureSpec(f"{study['study']}_cost.png", "cost", f"{study['title']}: accuracy vs time and memory",
                      data, {"order": _order(study, data["row"]), "paper": paper})


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
        title += f"\nJaccard vs object masks: best head {float(info['jaccard_best_head']):.3f}"
        title += f" (head {info['best_head']})" if info.get("best_head") is not None else ""
        if info.get("jaccard_mean_head") is not None:
            title += f", mean over heads {float(info['jaccard_mean_head']):.3f}"
    return FigureSpec("attention.png", "attention", title, pd.DataFrame({"path": images}))


def figure_specs(studies: list[dict], seeds: pd.DataFrame, curves: pd.DataFrame, cells: pd.DataFrame,
                 extras: dict) -> list[FigureSpec]:
    specs = []
    for s in studies:
        if s["study"] == FIG7_STUDY:
            specs.append(fig7_spec(s, curves, cells))
        if s["study"] in SWEEP_STUDIES:
            specs.append(sweep_spec(s, seeds, extras.get("baselines")))
        if _paper_has(s, "time_h") or _paper_has(s, "mem_gb"):
            specs.append(cost_spec(s, seeds))
    specs += [curves_spec(studies, curves, cells), attention_spec(extras)]
    return [f for f in specs if f is not None]


# ---------------------------------------------------------------------------------- README
def summary_paragraph(effects: list[Effect], tables: list[Table]) -> str:
    groups = {k: [e.text for e in effects if e.status == k] for k in ("reproduced", "not reproduced", "inconclusive")}
    parts = [f"{len(v)} {k}" + (f" ({'; '.join(v)})" if v else "") for k, v in groups.items()]
    verdicts = pd.concat([t.numeric["agrees"] for t in tables]) if tables else pd.Series(dtype=str)
    counts = ", ".join(f"{int((verdicts == v).sum())} {v}" for v in VERDICTS)
    return (f"Of the {len(effects)} paper effects checked at our scale: " + "; ".join(parts) + ". "
            f"Over all table rows, the agreement column reads: {counts}.")


def _env_lines(env: dict | None) -> list[str]:
    if not env:
        return ["results/env.json is absent."]
    first = [k for k in ("git_sha", "torch", "device", "cpu", "profile", "seeds", "wall_time_s",
                         "cells_wall_time_s") if k in env]
    lines = []
    for k in first + sorted(set(env) - set(first)):
        v = env[k]
        if k.endswith("wall_time_s") and _finite(v):
            v = f"{float(v):.0f} s ({float(v) / 3600:.2f} h)"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        lines.append(f"- {k}: `{v}`")
    return lines


def _extra_lines(extras: dict) -> list[str]:
    lines = []
    att = extras.get("attention") or {}
    if att.get("images"):
        lines += ["", "## Attention overlays (default model)", ""]
        lines += [f"- [{p}]({p})" for p in att["images"]]
        lines += ["- [attention.json](attention/attention.json)"] if att.get("json") is not None else []
    tune = extras.get("tune") or {}
    if tune.get("plots") or tune.get("trials"):
        lines += ["", "## Hyper-parameter search (optuna, tune stage)", ""]
        lines += [f"- [{Path(p).stem}]({p})" for p in tune.get("plots") or []]
        lines += [f"- [trials]({tune['trials']})"] if tune.get("trials") else []
    base = extras.get("baselines") or {}
    if base:
        lines += ["", "## Reference points (k-NN top-1, k = 20)", ""]
        lines += [f"- {k}: {fmt_num((v or {}).get('knn20_top1'))}" for k, v in sorted(base.items())]
    return lines


def readme_text(tables: list[Table], figures: list[FigureSpec], effects: list[Effect], extras: dict,
                missing: list[str]) -> str:
    lines = ["# Results", "", "Generated by `pipelines/report.py` from `cells.csv`, `curves.csv` and "
             "`ablations/*.yaml` (the paper's numbers); do not edit by hand.", "", "## Summary", "",
             summary_paragraph(effects, tables), ""]
    lines += [f"- {e.line()}" for e in effects]
    lines += ["", "## Tables", ""]
    for t in tables:
        counts = t.numeric["agrees"].value_counts()
        tally = ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS if v in counts)
        lines.append(f"- [{t.title}](tables/{t.study}.md) ([LaTeX](tables/{t.study}.tex), "
                     f"[CSV](tables/{t.study}.csv)): agrees {tally}")
    if missing:
        lines.append(f"- studies without results in cells.csv: {', '.join(missing)}")
    lines += ["", "## Plots", ""] + [f"- [{f.title.splitlines()[0]}](plots/{f.name})" for f in figures]
    lines += _extra_lines(extras)
    lines += ["", "## Environment", ""] + _env_lines(extras.get("env"))
    lines += ["", "## Agreement rule", "", CONVENTIONS, "", AGREEMENT_RULE, ""]
    return "\n".join(lines)


def build_report(cells: pd.DataFrame, curves: pd.DataFrame, studies: list[dict], extras: dict) -> Report:
    """Tables, figure specs, effect lines and README text from the results (pure; no I/O)."""
    num_classes = (extras.get("env") or {}).get("num_classes")
    present = list(dict.fromkeys(cells["study"]))
    by_name = {s["study"]: s for s in studies}
    for name in present:
        if name not in by_name:
            log.warning("cells.csv has study %r without a study file; skipped", name)
    ordered = [by_name[n] for n in present if n in by_name]
    missing = [s["study"] for s in studies if s["study"] not in present]
    agg, ent = aggregate(cells, num_classes), final_entropy(curves, cells)
    tables = [study_table(s, agg, ent) for s in ordered]
    figures = figure_specs(ordered, seed_level(cells, num_classes), curves, cells, extras)
    effects = effects_summary(agg, ent)
    return Report(tables, figures, effects, readme_text(tables, figures, effects, extras, missing))


# -------------------------------------------------------------------------------- rendering
def _plt():
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="paper", style="ticks", palette="colorblind")
    return plt, sns


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_right(sns, ax) -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "center left", bbox_to_anchor=(1.02, 0.5), title=None, frameon=False)


def render_fig7(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    kw = dict(data=spec.data, x="epoch", hue="row", hue_order=spec.options["order"], errorbar="sd")
    sns.lineplot(y="teacher_entropy", ax=ax[0], legend=False, **kw)
    for v in spec.options["log_k"]:
        ax[0].axhline(v, ls="--", color="0.3", lw=1)
        ax[0].annotate(f"ln K = {v:.2f}", (0, v), xytext=(2, -10), textcoords="offset points", fontsize=7)
    sns.lineplot(y="kl", ax=ax[1], **kw)
    ax[0].set(ylabel="teacher entropy (nats)", title="target entropy h(Pt)")
    ax[1].set(ylabel="KL(Pt ‖ Ps) (nats)", title="KL(teacher ‖ student)")
    _legend_right(sns, ax[1])
    _integer_epochs(*ax)
    fig.suptitle(spec.title, y=1.03)
    return fig


def render_sweep(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    n = spec.data["source"].nunique()
    sns.pointplot(data=spec.data, x="x", y="knn", hue="source", order=spec.options["order"], errorbar="sd",
                  dodge=0.3 if n > 1 else False, linestyle="none", markers=["o", "s", "D"][:n], capsize=0.15, ax=ax)
    if spec.options.get("random_init") is not None:
        ax.axhline(float(spec.options["random_init"]), ls=":", color="0.4", lw=1, label="random init (k-NN)")
        ax.legend()
    ax.set(xlabel=spec.options["xlabel"], ylabel="top-1 (%)", title=spec.title)
    _legend_right(sns, ax)
    return fig


def _errorbars(ax, frame: pd.DataFrame, x: str, y: str, colors: dict, err: bool) -> None:
    for _, r in frame.iterrows():
        xe = (0.0 if pd.isna(r.get(f"{x}_sd")) else r[f"{x}_sd"]) if err else None
        ye = (0.0 if pd.isna(r.get(f"{y}_sd")) else r[f"{y}_sd"]) if err else None
        ax.errorbar(r[x], r[y], xerr=xe, yerr=ye, fmt="o" if err else "s", color=colors[r["row"]],
                    capsize=3, label=r["label"])


def render_cost(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    order = spec.options["order"]
    g = spec.data.groupby("row", sort=False)
    ours = g[["knn", "time", "mem"]].mean().join(g[["knn", "time", "mem"]].std(ddof=1).add_suffix("_sd"))
    ours = ours.reindex(order).join(g["label"].first()).reset_index()
    paper = spec.options["paper"].dropna(subset=["linear"])
    colors = dict(zip(spec.options["paper"]["row"], sns.color_palette("colorblind", len(spec.options["paper"]))))
    fig, ax = plt.subplots(2, 2, figsize=(9, 6.5))
    for j, (x, px, xl, pxl) in enumerate((("time", "time_h", "time per epoch (s)", "training time (h)"),
                                          ("mem", "mem_gb", "peak memory (MB)", "memory per GPU (GB)"))):
        _errorbars(ax[0, j], ours, x, "knn", colors, True)
        ax[0, j].set(xlabel=xl, ylabel="ours: k-NN top-1 (%)", title="ours (mean ± sd over seeds)")
        if not paper.empty and paper[px].notna().any():
            _errorbars(ax[1, j], paper.dropna(subset=[px]), px, "linear", colors, False)
        ax[1, j].set(xlabel=pxl, ylabel="paper: linear top-1 (%)", title="paper")
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(len(labels), 4),
               frameon=False)
    fig.suptitle(spec.title)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    return fig


def render_curves(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    facets = spec.options["facets"]
    fig, ax = plt.subplots(len(facets), 2, figsize=(10, 2.6 * len(facets)), squeeze=False)
    for i, (study, title, order) in enumerate(facets):
        d = spec.data[spec.data["study"] == study]
        kw = dict(data=d, x="epoch", hue="row", hue_order=order, errorbar="sd")
        sns.lineplot(y="loss_lnk", ax=ax[i, 0], legend=False, **kw)
        sns.lineplot(y="ent_lnk", ax=ax[i, 1], **kw)
        ax[i, 1].axhline(1.0, ls="--", color="0.5", lw=0.8)
        ax[i, 0].set(title=f"{title.split(':')[0]}: loss / ln K", ylabel="loss / ln K")
        ax[i, 1].set(title=f"{title.split(':')[0]}: teacher entropy / ln K", ylabel="h(Pt) / ln K")
        _legend_right(sns, ax[i, 1])
        _integer_epochs(ax[i, 0], ax[i, 1])
    fig.suptitle(spec.title, y=1.0)
    fig.subplots_adjust(hspace=0.55, wspace=0.25, top=1 - 0.35 / len(facets))
    return fig


def render_attention(spec: FigureSpec, results: Path):
    plt, _ = _plt()
    images = [plt.imread(results / p) for p in spec.data["path"]]
    heights = [im.shape[0] / im.shape[1] for im in images]
    fig, ax = plt.subplots(len(images), 1, figsize=(8, 8 * sum(heights) + 0.8), squeeze=False,
                           gridspec_kw={"height_ratios": heights})
    for a, im, p in zip(ax[:, 0], images, spec.data["path"]):
        a.imshow(im)
        a.set_title(Path(p).name, fontsize=8)
        a.axis("off")
    fig.suptitle(spec.title)
    return fig


RENDERERS = {"fig7": render_fig7, "sweep": render_sweep, "cost": render_cost, "curves": render_curves,
             "attention": render_attention}


def render_png(spec: FigureSpec, results: Path) -> bytes:
    """PNG bytes of one figure; no timestamp or software metadata, so reruns are byte-identical."""
    plt, _ = _plt()
    fig = RENDERERS[spec.kind](spec, results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- I/O
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(report: Report, results: Path) -> None:
    """tables/, plots/, then README.md last (the index is written only once everything exists)."""
    for t in report.tables:
        base = results / "tables" / t.study
        atomic_write_bytes(base.with_suffix(".md"), table_markdown(t).encode())
        atomic_write_bytes(base.with_suffix(".tex"), table_latex(t).encode())
        atomic_write_bytes(base.with_suffix(".csv"), t.numeric.to_csv(index=False, float_format="%.10g").encode())
        log.info("table %s: %s", t.study, dict(t.numeric["agrees"].value_counts().sort_index()))
    for f in report.figures:
        atomic_write_bytes(results / "plots" / f.name, render_png(f, results))
        log.info("plot %s", f.name)
    for e in report.effects:
        log.info("effect: %s", e.line())
    atomic_write_bytes(results / "README.md", report.readme.encode())


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_extras(results: Path) -> dict:
    """Optional inputs; paths relative to `results` (as README links them)."""
    att, tune = results / "attention", results / "tune"
    return {"baselines": _read_json(results / "baselines.json"), "env": _read_json(results / "env.json"),
            "attention": {"json": _read_json(att / "attention.json"),
                          "images": sorted(p.relative_to(results).as_posix() for p in att.glob("attn_*.png"))},
            "tune": {"plots": sorted(p.relative_to(results).as_posix() for p in tune.glob("*.png")),
                     "trials": "tune/trials.csv" if (tune / "trials.csv").is_file() else None}}


def load_studies(ablations: Path) -> list[dict]:
    studies = []
    for path in sorted(ablations.glob("*.yaml")):
        s = yaml.safe_load(path.read_text()) or {}
        if "study" not in s or "rows" not in s:
            continue
        if s.get("default") not in [r["name"] for r in s["rows"]]:
            raise ValueError(f"{path}: default row {s.get('default')!r} is not one of its rows")
        studies.append(s)
    return studies


def read_inputs(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    dtypes = {"study": str, "row": str}
    cells = pd.read_csv(results / "cells.csv", dtype=dtypes)
    curves = pd.read_csv(results / "curves.csv", dtype=dtypes)
    return cells, curves


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="folder with cells.csv, curves.csv, ...; outputs go here")
    ap.add_argument("--ablations", default="ablations", help="folder with the study files <study>.yaml")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = Path(args.results)
    cells, curves = read_inputs(results)
    report = build_report(cells, curves, load_studies(Path(args.ablations)), load_extras(results))
    write_report(report, results)
    log.info("report: %d tables, %d plots, README at %s", len(report.tables), len(report.figures),
             results / "README.md")


if __name__ == "__main__":
    main()
