"""The tests of ablations/protocol.yaml on per-seed values: Welch, TOST, one-sample t, Holm.

Welch (unequal variances) for a = row seeds, b = default-row seeds:
    delta = mean(a) - mean(b),  se^2 = var(a)/n_a + var(b)/n_b   (sample variances, ddof 1)
    df = se^4 / ((var(a)/n_a)^2/(n_a-1) + (var(b)/n_b)^2/(n_b-1))   (Welch-Satterthwaite)
    one-sided p (H1: delta > 0) = 1 - F_t(delta / se; df);  95 % CI = delta -+ t_{0.975, df} se
TOST at margin m: p = max(p(H1: delta > -m), p(H1: delta < m)); equivalence iff p < alpha.
Degenerate spreads (se = 0, both rows constant) give p = 0 when the statistic's sign favours H1,
else 1, and a CI of width 0. Fewer than 2 values on a side: p and CI are NaN (no test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as st

NAN = float("nan")


@dataclass(frozen=True)
class Welch:
    delta: float
    se: float
    df: float


def _mean_var(x: Sequence[float]) -> tuple[float, float, int]:
    n = len(x)
    m = sum(x) / n
    return m, sum((v - m) ** 2 for v in x) / (n - 1), n


def welch(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """delta, its standard error and the Welch-Satterthwaite df; None with fewer than 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, va, na), (mb, vb, nb) = _mean_var(a), _mean_var(b)
    qa, qb = va / na, vb / nb
    se = math.sqrt(qa + qb)
    den = (qa ** 2 / (na - 1) if qa else 0.0) + (qb ** 2 / (nb - 1) if qb else 0.0)
    return Welch(ma - mb, se, (qa + qb) ** 2 / den if den else float(na + nb - 2))


def _p_greater(stat: float, se: float, df: float) -> float:
    """P(T >= stat / se) for T ~ t(df); se 0: 0 if stat > 0 else 1."""
    if se == 0:
        return 0.0 if stat > 0 else 1.0
    return float(st.t.sf(stat / se, df))


def p_direction(a: Sequence[float], b: Sequence[float], sign: int) -> float:
    """One-sided Welch p of H1: sign * (mean(a) - mean(b)) > 0 (sign +1 or -1)."""
    w = welch(a, b)
    return NAN if w is None else _p_greater(sign * w.delta, w.se, w.df)


def p_tost(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """TOST p of H1: -margin < mean(a) - mean(b) < margin (Welch, the larger one-sided p)."""
    w = welch(a, b)
    if w is None:
        return NAN
    return max(_p_greater(w.delta + margin, w.se, w.df), _p_greater(margin - w.delta, w.se, w.df))


def ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided Welch confidence interval of mean(a) - mean(b)."""
    w = welch(a, b)
    if w is None:
        return NAN, NAN
    half = float(st.t.ppf(0.5 + level / 2, w.df)) * w.se
    return w.delta - half, w.delta + half


def p_one_sample(x: Sequence[float], bound: float, side: str) -> float:
    """One-sample one-sided t-test p of H1: mean(x) < bound (side "below") or > bound ("above")."""
    if len(x) < 2:
        return NAN
    m, v, n = _mean_var(x)
    sign = 1 if side == "above" else -1
    return _p_greater(sign * (m - bound), math.sqrt(v / n), n - 1)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count in the family):
    sorted ascending p_(1..m), adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m, out, running = len(valid), [NAN] * len(pvalues), 0.0
    for j, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out
