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

Modules: model (constants, the rule's text, dataclasses) -> aggregate (seeds -> rows, the
agreement rule) -> tables, effects, figures (pure) -> readme (build_report) -> render (seaborn)
-> stage (I/O, main).
"""
from __future__ import annotations

from .aggregate import aggregate, agreement, final_entropy, seed_level, stats_of
from .effects import EFFECTS, effects_summary
from .model import VERDICTS, Effect, FigureSpec, Report, Stats, Table
from .readme import build_report, readme_text
from .stage import load_extras, load_studies, main, read_inputs, write_report

__all__ = ["EFFECTS", "VERDICTS", "Effect", "FigureSpec", "Report", "Stats", "Table", "aggregate", "agreement",
           "build_report", "effects_summary", "final_entropy", "load_extras", "load_studies", "main", "read_inputs",
           "readme_text", "seed_level", "stats_of", "write_report"]
