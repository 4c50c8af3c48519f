"""Stage `report`: paper-style tables, seaborn plots and results/README.md from the results.

Reads only results/cells.csv, results/curves.csv, the optional results/baselines.json,
results/env.json, results/attention/ and results/tune/, and the study files ablations/*.yaml
(the paper's numbers live there, never here). Writes results/tables/<study>.{md,tex,csv},
results/plots/*.png and results/README.md, each file atomically (temp + rename), README last.

    python -m pipelines.report --results results --ablations ablations

Conventions (also written under every table): model.CONVENTIONS; the verdicts follow the
pre-registered protocol ablations/protocol.yaml (model.PROTOCOL_RULE): stats (Welch, TOST,
one-sample t, Holm) -> verdicts (per row) and effects (the summary's paper effects).
A seed collapsed if its `collapsed` verdict is true (when that verdict is missing and env.json
gives num_classes: k-NN within CHANCE_MARGIN points of chance).

Modules: model (constants, the rule's text, dataclasses) -> aggregate (seeds -> rows) -> stats ->
verdicts -> tables, effects, figures (pure) -> readme (build_report) -> render (seaborn) -> stage
(I/O, main).
"""
from __future__ import annotations

from .aggregate import aggregate, final_entropy, seed_level, stats_of
from .effects import effects_summary
from .model import VERDICTS, Effect, FigureSpec, Report, Stats, Table
from .readme import build_report, readme_text
from .stage import load_extras, load_studies, main, read_inputs, write_report

__all__ = ["VERDICTS", "Effect", "FigureSpec", "Report", "Stats", "Table", "aggregate",
           "build_report", "effects_summary", "final_entropy", "load_extras", "load_studies", "main", "read_inputs",
           "readme_text", "seed_level", "stats_of", "write_report"]
