"""I/O of the stage: read the results and study files, write tables, plots and README atomically."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from dino_core.checkpoint import atomic_write_bytes

from ..protocol import load_protocol
from .model import Report
from .readme import build_report
from .render import render_png
from .tables import table_latex, table_markdown

log = logging.getLogger(__name__)


def write_report(report: Report, results: Path) -> None:
    """tables/, plots/, then README.md last (the index is written only once everything exists)."""
    for t in report.tables:
        base = results / "tables" / t.study
        atomic_write_bytes(base.with_suffix(".md"), table_markdown(t).encode())
        atomic_write_bytes(base.with_suffix(".tex"), table_latex(t).encode())
        atomic_write_bytes(base.with_suffix(".csv"), t.numeric.to_csv(index=False, float_format="%.10g").encode())
        log.info("table %s: %s", t.study, dict(t.numeric["verdict"].value_counts().sort_index()))
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
            "cost": _read_json(results / "cost.json"),
            "attention": {"json": _read_json(att / "attention.json"),
                          "images": sorted(p.relative_to(results).as_posix() for p in att.glob("attn_*.png")),
                          "maps": sorted(p.relative_to(results).as_posix() for p in att.glob("maps/*.json"))},
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
    from . import __doc__ as stage_doc
    ap = argparse.ArgumentParser(prog="python -m pipelines.report", description=stage_doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="folder with cells.csv, curves.csv, ...; outputs go here")
    ap.add_argument("--ablations", default="ablations", help="folder with the study files <study>.yaml")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = Path(args.results)
    cells, curves = read_inputs(results)
    report = build_report(cells, curves, load_studies(Path(args.ablations)), load_extras(results),
                          load_protocol(Path(args.ablations).resolve().parent))
    write_report(report, results)
    log.info("report: %d tables, %d plots, README at %s", len(report.tables), len(report.figures),
             results / "README.md")


if __name__ == "__main__":
    main()
