"""The paper effects the issue names, each checked on its study rows: reproduced or not."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .aggregate import stats_of
from .model import APPROX_SLACK, ENTROPY_LOGK, ENTROPY_ZERO, Effect, Stats
from .tables import finite, fmt_mean_std, fmt_num


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
    apart = all(bool(agg.loc[i].get("cost_apart", False)) for i in idx)
    text = ("measured apart, CPU time: " if apart else "in the grid: ") + "; ".join(
        f"{r}: {fmt_num(a)} s/epoch, {fmt_num(b, 0)} MB" for r, a, b in zip(spec.rows, t, m))
    if not all(map(finite, t + m)):
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
