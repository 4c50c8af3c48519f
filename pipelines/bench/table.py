"""The bench JSON as a table for the log."""
from __future__ import annotations

import math


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(result: dict) -> str:
    lines = [f"device {result['env']['device']} ({result['env'].get('gpu') or result['env']['cpu_model']}, "
             f"{result['env']['torch_threads']} threads), torch {result['env']['torch']}, "
             f"git {result['env']['git_sha']}",
             f"{'config':<9} {'variant':<20} {'prec':<5} {'s/step':>8} {'cpu s':>8} {'img/s':>8} {'peak MB':>9} "
             f"{'compile s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'peak':>7} {'%peak':>6} {'%cpu':>5}"
             "  loadavg(1/5/15 start->end)"]
    for r in result["train_step"]:
        if "error" in r:
            lines.append(f"{r['config']:<9} {r['variant']:<20} {r.get('precision', '?'):<5} error: {r['error']}")
            continue
        lines.append(f"{r['config']:<9} {r['variant']:<20} {r['precision']:<5} {r['s_per_step']:>8.3f} "
                     f"{r['cpu_s_per_step']:>8.3f} "
                     f"{r['img_per_s']:>8.1f} {_fmt(r['peak_mem_mb'], '9.0f')} {_fmt(r.get('compile_s'), '>9.1f')}"
                     f" {_fmt(r.get('gflop_per_step'), '8.1f')} {_fmt(r.get('gflop_per_s'), '8.1f')}"
                     f" {_fmt(r.get('peak_gflop_per_s'), '7.0f')} {_fmt(r.get('pct_of_peak'), '6.1f')}"
                     f" {_fmt(r.get('pct_of_peak_cpu'), '5.1f')}"
                     f"  {r['loadavg'][0]} -> {r['loadavg'][1]}")
    for r in result.get("speedup", []):
        lines.append(f"speed-up {r['config']} {r['ours']} vs {r['official']}: x{r['ratio']:.2f} wall "
                     f"(x{r['cpu_ratio']:.2f} process CPU time)")
    for r in result.get("paired", []):
        lines.append(f"paired {r['config']} ({len(r['ratios'])} alternating steps each): ours {r['precision']} "
                     f"{r['ours_s_per_step']:.3f} s/step, official-style {r['official_precision']} "
                     f"{r['official_s_per_step']:.3f} s/step, speed-up x{r['ratio_median']:.2f} (median of pair "
                     f"ratios; geometric mean x{r['ratio_geomean']:.2f}, ratio of minima x{r['ratio_of_mins']:.2f}), "
                     f"loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
        if "compiled_s_per_step" in r:
            lines.append(f"paired {r['config']}: ours compiled (train.compile) {r['compiled_s_per_step']:.3f} s/step, "
                         f"speed-up x{r['compiled_ratio_median']:.2f} over official-style (geometric mean "
                         f"x{r['compiled_ratio_geomean']:.2f}, ratio of minima x{r['compiled_ratio_of_mins']:.2f})")
    k = result.get("knn")
    for r in k or []:
        lines.append(f"k-NN {r['n_query']:,} x {r['n_train']:,} (dim {r['dim']}): {r['time_s']:.1f} s, "
                     f"{r['queries_per_s']:.0f} queries/s, {r['gflops']:.0f} GFLOP/s, peak {r['peak_mem_mb']:.0f} MB "
                     f"above inputs-loaded RSS (inputs {r['inputs_mb']:.0f} MB, bound {r['bound_mb']:.0f} MB), "
                     f"loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    for r in result.get("data_pipeline", []):
        lines.append(f"data {r['workers']} workers: {r['img_per_s']:.0f} img/s ({r['crops_per_img']} crops/img, "
                     f"batch {r['batch_size']}, {r['source']}), loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    for r in result.get("data_step", []):
        if "error" in r:
            lines.append(f"data step: error: {r['error']}")
            continue
        lines.append(f"data step {r['config']} backend {r['backend']:<6}: data {r['data_s_per_step'] * 1e3:.1f} ms "
                     f"+ train_step {r['train_step_s'] * 1e3:.1f} ms: data {100 * r['data_fraction']:.1f} % "
                     f"(process CPU {100 * r['data_cpu_fraction']:.1f} %), {r['threads']} threads, "
                     f"loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    return "\n".join(lines)
