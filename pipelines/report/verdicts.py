"""Verdicts by ablations/protocol.yaml: per table row against its study's default row, and per paper
effect of the summary. Pure functions of the seed-level results (one row per cell and seed).

Each result carries n (and the seeds the protocol registers), mean ± std, delta to the reference with
its 95 % Welch CI, the raw p, the Holm-adjusted p of its family and the verdict: "reproduced",
"not reproduced", "pending" (fewer ok seeds than registered: no verdict yet), "reference" (a study's
default row) or "n/a" (no paper claim to test). A verdict touched by an entry of the protocol's
`post_hoc` list is marked "(post hoc)".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..protocol import row_seeds, row_test, study_metric, paper_number
from .stats import NAN, ci, holm, p_direction, p_tost

COLUMN = {"knn": "knn20_top1", "linear": "linear_top1"}


@dataclass
class Result:
    test: str
    n: int
    n_target: int
    mean: float = NAN
    std: float = NAN
    delta: float = NAN
    ci: tuple = (NAN, NAN)
    p: float = NAN
    p_holm: float = NAN
    verdict: str = "n/a"
    detail: str = ""
    extra: dict = field(default_factory=dict)


def values(seeds: pd.DataFrame, study: str, row: str, column: str) -> list[float]:
    """The ok seeds' values of ``column`` for one (study, row), in seed order."""
    ok = seeds[(seeds.study == study) & (seeds.row == row) & seeds.ok].sort_values("seed")
    return [float(v) for v in pd.to_numeric(ok[column], errors="coerce").dropna()] if column in ok else []


def mean_std(x: list[float]) -> tuple[float, float]:
    if not x:
        return NAN, NAN
    m = sum(x) / len(x)
    return m, (math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1)) if len(x) > 1 else NAN)


def _collapsed(seeds: pd.DataFrame, study: str, row: str) -> tuple[int, int]:
    ok = seeds[(seeds.study == study) & (seeds.row == row) & seeds.ok]
    return int(ok["collapsed_seed"].sum()), len(ok)


def row_result(protocol: dict, study: dict, row: dict, seeds: pd.DataFrame) -> Result:
    """The raw test of one table row (p before Holm; verdict filled by ``decide``)."""
    name, sname, default = row["name"], study["study"], study["default"]
    column = COLUMN[study_metric(protocol, sname)]
    a, b = values(seeds, sname, name, column), values(seeds, sname, default, column)
    test = row_test(protocol, study, row)
    r = Result(test, len(a), len(row_seeds(protocol, study, row)), *mean_std(a))
    if name == default:
        r.test, r.verdict = "none", "reference"
        return r
    if len(a) >= 2 and len(b) >= 2:
        r.delta, r.ci = r.mean - mean_std(b)[0], ci(a, b, protocol.get("ci", 0.95))
    metric = study_metric(protocol, sname)
    if test == "collapse":
        r.p = p_direction(a, b, -1)
        k, n = _collapsed(seeds, sname, name)
        r.extra, r.detail = {"n_collapsed": k}, f"collapse verdict on {k}/{n} seeds"
    elif test == "equivalence":
        r.p = p_tost(a, b, protocol["tests"]["equivalence"]["margin"])
        r.detail = f"TOST ±{protocol['tests']['equivalence']['margin']:g}"
    elif test == "direction":
        d = paper_number(row, metric) - paper_number(next(x for x in study["rows"] if x["name"] == default), metric)
        r.p, r.extra = p_direction(a, b, 1 if d > 0 else -1), {"paper_delta": d}
        r.detail = f"one-sided Welch, paper Δ {d:+.1f}"
    return r


def decide(results: list[Result], alpha: float) -> None:
    """Holm over the family ``results`` (those with a test), then each verdict."""
    for r, adj in zip(results, holm([r.p if r.test != "none" else NAN for r in results])):
        r.p_holm = adj
        if r.test == "none":
            continue
        if r.n < r.n_target or math.isnan(adj):
            r.verdict = "pending"
            r.detail += f"; {r.n} of {r.n_target} seeds"
            continue
        ok = adj < alpha
        if r.test == "collapse":
            ok = ok and 2 * r.extra.get("n_collapsed", 0) > r.n
        r.verdict = "reproduced" if ok else "not reproduced"


def study_results(protocol: dict, study: dict, seeds: pd.DataFrame) -> dict[str, Result]:
    out = {row["name"]: row_result(protocol, study, row, seeds) for row in study["rows"]}
    decide(list(out.values()), protocol["alpha"])
    return out


def post_hoc_tag(protocol: dict, study: str, row: str | None = None) -> str:
    """" (post hoc)" when an entry of protocol.post_hoc names this study (and row, if it names rows)."""
    for e in protocol.get("post_hoc") or []:
        for v in e.get("verdicts", []):
            s, _, rname = str(v).partition("/")
            if s == study and (not rname or row is None or rname == row):
                return " (post hoc)"
    return ""
