"""The paper's effects of the summary (ablations/protocol.yaml `effects`), one Holm family."""
from __future__ import annotations

import pandas as pd

from ..protocol import row_seeds, study_metric
from .model import Effect
from .stats import NAN, ci, p_direction, p_one_sample, p_tost
from .tables import fmt_mean_std, fmt_num
from .verdicts import COLUMN, Result, mean_std, decide, post_hoc_tag, row_result, values

JACCARD = "jaccard_best_head"


def _target(protocol: dict, studies: dict, study: str, rows: list[str]) -> int:
    s = studies.get(study)
    if s is None:   # no study file: the seeds every row gets
        return len(protocol["seeds"]["base"])
    return min(len(row_seeds(protocol, s, next(r for r in s["rows"] if r["name"] == n))) for n in rows)


def _pair(protocol: dict, spec: dict, seeds: pd.DataFrame, studies: dict, how: str) -> Result:
    column = COLUMN[study_metric(protocol, spec["study"])]
    a, b = (values(seeds, spec["study"], r, column) for r in spec["rows"][:2])
    r = Result(how, min(len(a), len(b)), _target(protocol, studies, spec["study"], spec["rows"][:2]), *mean_std(a))
    if len(a) >= 2 and len(b) >= 2:
        r.delta, r.ci = r.mean - mean_std(b)[0], ci(a, b)
    margin = protocol["tests"]["equivalence"]["margin"]
    r.p = p_direction(a, b, +1) if how == "direction" else p_tost(a, b, margin)
    r.detail = (f"{spec['rows'][0]} {fmt_mean_std(*mean_std(a), len(a))} vs {spec['rows'][1]} "
                f"{fmt_mean_std(*mean_std(b), len(b))} ({column.split('_')[0]}); "
                + ("one-sided Welch" if how == "direction" else f"TOST ±{margin:g}"))
    return r


def _entropy(protocol: dict, spec: dict, seeds: pd.DataFrame, studies: dict) -> Result:
    ok = seeds[(seeds.study == spec["study"]) & (seeds.row == spec["rows"][0]) & seeds.ok]
    ratio = (pd.to_numeric(ok.get("teacher_entropy"), errors="coerce") / pd.to_numeric(ok.get("log_K"), errors="coerce")
             if "teacher_entropy" in ok and "log_K" in ok else pd.Series(dtype=float))
    x = [float(v) for v in ratio.dropna()]
    t = protocol["tests"]["entropy"]
    bound, side = (t["zero_below"], "below") if spec["bound"] == "zero" else (t["log_k_above"], "above")
    r = Result("entropy", len(x), _target(protocol, studies, spec["study"], spec["rows"]), *mean_std(x))
    r.p = p_one_sample(x, bound, side)
    r.detail = f"h(Pt)/ln K {fmt_mean_std(r.mean, r.std, r.n, 2)}, one-sample t, H1: {side} {bound:g}"
    return r


def _cost(spec: dict, cost: dict | None) -> Result:
    rows = {(c["study"], c["row"]): c for c in (cost or {}).get("rows", [])}
    got = [rows.get((spec["study"], name)) for name in spec["rows"]]
    r = Result("cost", sum(g is not None for g in got), len(spec["rows"]))
    if any(g is None or "cpu_s_steps" not in g for g in got):
        r.detail = "per-step times of every row needed (stage cost)"
        return r
    ps = [p_direction(b["cpu_s_steps"], a["cpu_s_steps"], +1) for a, b in zip(got, got[1:])]
    rising_mem = all(b["peak_mem_mb"] > a["peak_mem_mb"] for a, b in zip(got, got[1:]))
    r.p = max(ps) if rising_mem else 1.0
    r.detail = "; ".join(f"{n}: {fmt_num(g['cpu_s_per_step'], 3)} s/step, {fmt_num(g['peak_mem_mb'], 0)} MB"
                         for n, g in zip(spec["rows"], got)) + " (max of the consecutive one-sided Welch p)"
    return r


def _attention(protocol: dict, spec: dict, seeds: pd.DataFrame, studies: dict) -> Result:
    vals = [values(seeds, spec["study"], name, JACCARD) for name in spec["rows"]]
    r = Result("attention", min(len(v) for v in vals), _target(protocol, studies, spec["study"], spec["rows"]),
               *mean_std(vals[0]))
    ps = [p_direction(a, b, +1) for a, b in zip(vals, vals[1:])]
    r.p = NAN if any(p != p for p in ps) else max(ps)
    r.detail = "; ".join(f"{n} {fmt_mean_std(*mean_std(v), len(v))}" for n, v in zip(spec["rows"], vals)) \
        + " (Jaccard %, best head; max of the two one-sided Welch p)"
    return r


def effect_results(protocol: dict, seeds: pd.DataFrame, studies: dict, cost: dict | None) -> list[Result]:
    out = []
    for spec in protocol["effects"]:
        test = spec["test"]
        if test == "collapse":
            study = studies.get(spec["study"])
            row = next((x for x in (study or {}).get("rows", []) if x["name"] == spec["rows"][0]), None)
            r = (row_result(protocol, study, row, seeds) if row
                 else Result("collapse", 0, _target(protocol, studies, spec["study"], spec["rows"])))
        elif test in ("direction", "equivalence"):
            r = _pair(protocol, spec, seeds, studies, test)
        elif test == "entropy":
            r = _entropy(protocol, spec, seeds, studies)
        elif test == "cost":
            r = _cost(spec, cost)
        else:
            r = _attention(protocol, spec, seeds, studies)
        out.append(r)
    decide(out, protocol["alpha"])
    return out


def effects_summary(protocol: dict, seeds: pd.DataFrame, studies: dict, cost: dict | None) -> list[Effect]:
    """One line per paper effect: its test, p (raw and Holm over the effects) and the verdict."""
    lines = []
    for spec, r in zip(protocol["effects"], effect_results(protocol, seeds, studies, cost)):
        p = f"p {r.p:.3g}, Holm {r.p_holm:.3g}" if r.p == r.p else "no test yet"
        lines.append(Effect(spec["text"], r.verdict + post_hoc_tag(protocol, spec["study"]),
                            f"{r.detail}; n {r.n}/{r.n_target}; {p}"))
    return lines
