"""results/README.md: summary, index of tables and plots, wall time, environment, the rule."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .aggregate import aggregate, apply_cost, final_entropy, seed_level
from .effects import effects_summary
from .figures import figure_specs
from .model import CONVENTIONS, PROTOCOL_RULE, VERDICTS, Effect, FigureSpec, Report, Table
from .tables import finite, fmt_num, study_table

log = logging.getLogger(__name__)


def summary_paragraph(effects: list[Effect], tables: list[Table], protocol: dict, extras: dict) -> str:
    groups = {k: [e.text for e in effects if e.status.startswith(k)] for k in ("reproduced", "not reproduced", "pending")}
    parts = [f"{len(v)} {k}" for k, v in groups.items()]
    verdicts = pd.concat([t.numeric["verdict"] for t in tables]) if tables else pd.Series(dtype=str)
    counts = ", ".join(f"{int(verdicts.str.startswith(v).sum())} {v}" for v in VERDICTS)
    env = extras.get("env") or {}
    return (f"Budget: {env.get('budget', 'see env.json')}. Of the {len(effects)} paper effects, tested by the "
            f"pre-registered protocol (ablations/protocol.yaml, fixed at commit {env.get('protocol_commit', '?')}; "
            f"alpha {protocol['alpha']}, Holm over the effects): " + ", ".join(parts) + ". "
            f"Over all table rows: {counts}. Numbers are measured on {protocol['report_split']}; every choice "
            f"was made on {protocol['select_split']}.")


def _env_lines(env: dict | None) -> list[str]:
    if not env:
        return ["results/env.json is absent."]
    first = [k for k in ("git_sha", "torch", "device", "cpu", "profile", "seeds", "wall_time_s",
                         "cells_wall_time_s") if k in env]
    lines = []
    for k in first + sorted(set(env) - set(first) - {"grid_runs"}):
        v = env[k]
        if k.endswith("wall_time_s") and finite(v):
            v = f"{float(v):.0f} s ({float(v) / 3600:.2f} h)"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        lines.append(f"- {k}: `{v}`")
    return lines


def _wall_lines(env: dict | None) -> list[str]:
    """One line per invocation of the grid stage (the run store's history.jsonl)."""
    runs = (env or {}).get("grid_runs") or []
    if not runs:
        return ["No grid history in results/env.json (runs/history.jsonl)."]
    total = sum(float(r.get("wall_time_s") or 0.0) for r in runs)
    lines = [f"The grid stage ran {len(runs)} time(s) on this run store, {total / 3600:.2f} h in all:", ""]
    for r in runs:
        note = f"; {r['note']}" if r.get("note") else ""
        lines.append(f"- {r.get('started')} to {r.get('finished')}: {float(r.get('wall_time_s') or 0.0) / 3600:.2f} h, "
                     f"{r.get('cells_run')} cell(s) run, {r.get('cells_reused')} reused, "
                     + (f"{r['cells_reevaluated']} re-evaluated, " if r.get("cells_reevaluated") else "") +
                     f"{r.get('failed', 0)} failed, executor {r.get('executor')}{note}")
    return lines


def _extra_lines(extras: dict) -> list[str]:
    lines = []
    att = extras.get("attention") or {}
    if att.get("images"):
        lines += ["", "## Attention overlays (default model)", ""]
        lines += [f"- [{p}]({p})" for p in att["images"]]
        lines += ["- [attention.json](attention/attention.json)"] if att.get("json") is not None else []
        info = att.get("json") or {}
        if info.get("jaccard_best_head") is not None:
            ref = info.get("random_init_jaccard_best_head")
            lines.append(f"- Jaccard of the 60%-mass masks vs the object masks: best head "
                         f"{fmt_num(info['jaccard_best_head'])} %, mean over heads "
                         f"{fmt_num(info.get('jaccard_mean_head'))} %"
                         + (f" (random-init ViT: best head {fmt_num(ref)} %, mean "
                            f"{fmt_num(info.get('random_init_jaccard_mean_head'))} %)" if ref is not None else ""))
    tune = extras.get("tune") or {}
    if tune.get("plots") or tune.get("trials"):
        lines += ["", "## Hyper-parameter search (optuna, tune stage)", ""]
        lines += [f"- [{Path(p).stem}]({p})" for p in tune.get("plots") or []]
        lines += [f"- [trials]({tune['trials']})"] if tune.get("trials") else []
    base = extras.get("baselines") or {}
    if base:
        lines += ["", "## Reference points (k-NN top-1, k = 20; linear probe top-1)", ""]
        for k, v in sorted(base.items()):
            v = v or {}
            lin = v.get("linear_top1")
            lines.append(f"- {k}: k-NN {fmt_num(v.get('knn20_top1'))}"
                         + (f", linear {fmt_num(lin)}" if lin is not None else ""))
    return lines + _cost_lines(extras.get("cost"))


def _cost_lines(cost: dict | None) -> list[str]:
    """How Table 8's time and memory were measured (stage `cost`, results/cost.json)."""
    if not cost or not cost.get("rows"):
        return []
    lines = ["", "## Time and memory of the multi-crop rows (stage `cost`)", "",
             f"Measured apart from the grid, one row at a time ({cost['steps']} real training steps after "
             f"{cost['warmup']} warm-up, 1 thread, a fresh process per row); the table's time per epoch is the "
             f"median process-CPU time per step x steps per epoch. Other processes used "
             f"{cost['other_cpu_cores']:.2f} of the {cost['cores']} cores meanwhile ([cost.json](cost.json)).", ""]
    for r in cost["rows"]:
        lines.append(f"- {r['study']}/{r['row']}: {r['cpu_s_per_step']:.3f} CPU s/step ({r['s_per_step']:.3f} s "
                     f"wall, data {r['data_s_per_step']:.3f} s), {r['steps_per_epoch']} steps/epoch, "
                     f"peak {r['peak_mem_mb']:.0f} MB")
    return lines


def readme_text(tables: list[Table], figures: list[FigureSpec], effects: list[Effect], extras: dict,
                missing: list[str], protocol: dict) -> str:
    lines = ["# Results", "", "Generated by `python -m pipelines.report` from `cells.csv`, `curves.csv`, "
             "`ablations/*.yaml` (the paper's numbers) and `ablations/protocol.yaml` (the tests); do not edit by "
             "hand.", "", "## Summary", "", summary_paragraph(effects, tables, protocol, extras), ""]
    lines += [f"- {e.line()}" for e in effects]
    lines += ["", "## Tables", ""]
    for t in tables:
        counts = {v: int(t.numeric["verdict"].str.startswith(v).sum()) for v in VERDICTS}
        tally = ", ".join(f"{c} {v}" for v, c in counts.items() if c)
        lines.append(f"- [{t.title}](tables/{t.study}.md) ([LaTeX](tables/{t.study}.tex), "
                     f"[CSV](tables/{t.study}.csv)): {tally}")
    if missing:
        lines.append(f"- studies without results in cells.csv: {', '.join(missing)}")
    lines += ["", "## Plots", ""] + [f"- [{f.title.splitlines()[0]}](plots/{f.name})" for f in figures]
    lines += _extra_lines(extras)
    lines += ["", "## Wall time", ""] + _wall_lines(extras.get("env"))
    lines += ["", "## Environment", ""] + _env_lines(extras.get("env"))
    lines += ["", "## Protocol", "", CONVENTIONS, "", PROTOCOL_RULE, ""]
    return "\n".join(lines)


def build_report(cells: pd.DataFrame, curves: pd.DataFrame, studies: list[dict], extras: dict,
                 protocol: dict) -> Report:
    """Tables, figure specs, effect lines and README text from the results (pure; no I/O)."""
    num_classes = (extras.get("env") or {}).get("num_classes")
    present = list(dict.fromkeys(cells["study"]))
    by_name = {s["study"]: s for s in studies}
    for name in present:
        if name not in by_name:
            log.warning("cells.csv has study %r without a study file; skipped", name)
    ordered = [by_name[n] for n in present if n in by_name]
    missing = [s["study"] for s in studies if s["study"] not in present]
    agg, ent = apply_cost(aggregate(cells, num_classes), extras.get("cost")), final_entropy(curves, cells)
    seeds = seed_level(cells, num_classes)
    tables = [study_table(protocol, s, seeds, agg, ent) for s in ordered]
    figures = figure_specs(ordered, seeds, curves, cells, extras)
    effects = effects_summary(protocol, seeds, by_name, extras.get("cost"))
    return Report(tables, figures, effects, readme_text(tables, figures, effects, extras, missing, protocol))
