"""Paper-style tables per study: numeric frame (CSV), display frame (Markdown, LaTeX)."""
from __future__ import annotations

import math

import pandas as pd

from ..protocol import study_metric
from .aggregate import stats_of
from .model import CONVENTIONS, PROTOCOL_RULE, Table
from .verdicts import Result, post_hoc_tag, study_results


def finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x, digits: int = 1) -> str:
    return f"{float(x):.{digits}f}" if finite(x) else ""


def fmt_mean_std(mean, std, n: int, digits: int = 1) -> str:
    """"m ± s" (sample std); "m ± n/a" for n = 1; "" without a value."""
    if n == 0 or not finite(mean):
        return ""
    spread = f"{float(std):.{digits}f}" if n >= 2 and finite(std) else "n/a"
    return f"{float(mean):.{digits}f} ± {spread}"


def paper_has(study: dict, key: str) -> bool:
    return any((r.get("paper") or {}).get(key) is not None for r in study["rows"])


def _cost_fields(a: pd.Series | None, paper: dict) -> dict:
    get = (lambda k: float(a[k]) if a is not None else float("nan"))
    return {"time_mean_s": get("time_mean"), "time_std_s": get("time_std"),
            "peak_mem_mb_mean": get("mem_mean"), "peak_mem_mb_std": get("mem_std"),
            "cost_apart": bool(a is not None and a.get("cost_apart", False)),
            "paper_time_h": paper.get("time_h"), "paper_mem_gb": paper.get("mem_gb")}


def _entropy_fields(e: pd.Series | None, paper: dict) -> dict:
    get = (lambda k: float(e[k]) if e is not None else float("nan"))
    return {"paper_entropy": paper.get("entropy"), "entropy_last_over_lnK_mean": get("ent_mean"),
            "entropy_last_over_lnK_std": get("ent_std"), "entropy_n": int(e["ent_n"]) if e is not None else 0}


def _fmt_ci(lo, hi) -> str:
    return f"[{float(lo):+.1f}, {float(hi):+.1f}]" if finite(lo) and finite(hi) else ""


def _fmt_p(p, holm) -> str:
    return f"{float(p):.3g} ({float(holm):.3g})" if finite(p) and finite(holm) else ""


def row_record(protocol: dict, study: dict, row: dict, res: Result, agg: pd.DataFrame, ent: pd.DataFrame) -> dict:
    """The numbers of one table row: the paper's, ours over seeds, the protocol's test and verdict."""
    sname, name, paper = study["study"], row["name"], row.get("paper") or {}
    metric = study_metric(protocol, sname)
    ours = stats_of(agg, sname, name)
    a = agg.loc[(sname, name)] if (sname, name) in agg.index else None
    not_ok = a["not_ok"] if a is not None else ""
    rec = {"row": name, "label": row.get("label", name),
           **{c: str((row.get("columns") or {}).get(c, "")) for c in study["columns"]},
           "paper_knn": paper.get("knn"), "paper_linear": paper.get("linear"), "metric": metric,
           "n_seeds": int(a["n_seeds"]) if a is not None else 0, "n": ours.n, "n_target": res.n_target,
           "knn20_mean": ours.mean, "knn20_std": ours.std, "linear_mean": ours.lin_mean, "linear_std": ours.lin_std,
           "n_collapsed": ours.n_collapsed, "delta": res.delta, "ci_low": res.ci[0], "ci_high": res.ci[1],
           "test": res.test, "p": res.p, "p_holm": res.p_holm,
           "verdict": res.verdict + post_hoc_tag(protocol, sname, name),
           "note": res.detail + (f"; {not_ok}" if not_ok else "") + ("" if a is not None else "; no cells yet")}
    if paper_has(study, "time_h") or paper_has(study, "mem_gb"):
        rec.update(_cost_fields(a, paper))
        rec["note"] += "; time, memory: cost stage (CPU s per epoch)" if rec["cost_apart"] else ""
    if paper_has(study, "jaccard"):
        get = (lambda k: float(a[k]) if a is not None else math.nan)
        rec.update(paper_jaccard=paper.get("jaccard"), jaccard_mean=get("jac_mean"), jaccard_std=get("jac_std"))
    if paper_has(study, "entropy"):
        rec.update(_entropy_fields(ent.loc[(sname, name)] if (sname, name) in ent.index else None, paper))
    return rec


def display_frame(study: dict, num: pd.DataFrame) -> pd.DataFrame:
    """The formatted table (strings) for Markdown and LaTeX."""
    d = pd.DataFrame({"row": num["label"].astype(str)})
    for c in study["columns"]:
        d[c] = num[c].astype(str)
    d["paper k-NN"], d["paper linear"] = num["paper_knn"].map(fmt_num), num["paper_linear"].map(fmt_num)
    d["ours k-NN"] = [fmt_mean_std(m, s, n) for m, s, n in zip(num["knn20_mean"], num["knn20_std"], num["n"])]
    if num["linear_mean"].notna().any():
        d["ours linear"] = [fmt_mean_std(m, s, n) for m, s, n in zip(num["linear_mean"], num["linear_std"], num["n"])]
    d["n"] = [f"{n}/{t}" for n, t in zip(num["n"], num["n_target"])]
    d["collapsed"] = [f"{k}/{n}" if n else "" for k, n in zip(num["n_collapsed"], num["n"])]
    if "time_mean_s" in num:
        d["time/epoch (s)"] = [fmt_num(m) if apart else fmt_mean_std(m, s, n) for m, s, n, apart
                               in zip(num["time_mean_s"], num["time_std_s"], num["n"], num["cost_apart"])]
        d["peak mem (MB)"] = num["peak_mem_mb_mean"].map(lambda x: fmt_num(x, 0))
        d["paper time (h)"], d["paper mem (GB)"] = num["paper_time_h"].map(fmt_num), num["paper_mem_gb"].map(fmt_num)
    if "paper_entropy" in num:
        d["paper entropy"] = num["paper_entropy"].map({"zero": "→ 0", "log_k": "→ ln K"}).fillna("")
        d["ours H(Pt)/ln K"] = [fmt_mean_std(m, s, n, 2) for m, s, n in zip(
            num["entropy_last_over_lnK_mean"], num["entropy_last_over_lnK_std"], num["entropy_n"])]
    if "paper_jaccard" in num:
        d["paper Jaccard"] = num["paper_jaccard"].map(fmt_num)
        d["ours Jaccard"] = [fmt_mean_std(m, s, n)
                             for m, s, n in zip(num["jaccard_mean"], num["jaccard_std"], num["n"])]
    d["Δ vs default"] = [fmt_num(x) for x in num["delta"]]
    d["95% CI"] = [_fmt_ci(lo, hi) for lo, hi in zip(num["ci_low"], num["ci_high"])]
    d["p (Holm)"] = [_fmt_p(p, h) for p, h in zip(num["p"], num["p_holm"])]
    d["test"], d["verdict"], d["note"] = num["test"], num["verdict"], num["note"]
    empty = [c for c in ("paper k-NN", "paper linear") if (d[c] == "").all()]   # e.g. Table 8 has no k-NN
    return d.drop(columns=empty)


def study_table(protocol: dict, study: dict, seeds: pd.DataFrame, agg: pd.DataFrame, ent: pd.DataFrame) -> Table:
    res = study_results(protocol, study, seeds)
    num = pd.DataFrame([row_record(protocol, study, r, res[r["name"]], agg, ent) for r in study["rows"]])
    return Table(study["study"], study.get("title", study["study"]), study.get("source", ""), study["default"],
                 num, display_frame(study, num))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def table_markdown(t: Table) -> str:
    md = t.display.to_markdown(index=False, disable_numparse=True)
    return (f"# {t.title}\n\nSource: {t.source}. Study `{t.study}`, default row `{t.default}`.\n\n{md}\n\n"
            f"{CONVENTIONS}\n\n{PROTOCOL_RULE}\n")


def table_latex(t: Table) -> str:
    d = t.display.drop(columns=[c for c in t.latex_drop if c in t.display])
    st = d.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    tex = st.to_latex(hrules=True, column_format="l" * d.shape[1], caption=_latex_escape(t.title),
                      label=f"tab:{t.study}", position="t")
    tex = tex.replace("±", r"$\pm$").replace("→", r"$\to$")
    return f"% generated by pipelines/report/ from results/cells.csv and ablations/{t.study}.yaml\n{tex}"
