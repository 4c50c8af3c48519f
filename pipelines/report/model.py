"""Report constants, the agreement rule text and the data model (one row's Stats, Table, Effect...)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

CHANCE_MARGIN = 5.0        # fallback collapse test when a seed has no collapse verdict
KEYS = ["study", "row"]
VERDICTS = ("reproduced", "not reproduced", "pending", "reference", "n/a")
FIG7_STUDY = "fig7_collapse"
SWEEP_STUDIES = ("teacher_momentum", "teacher_temperature", "center_momentum", "output_dim")
DPI = 150

PROTOCOL_RULE = (
    "**Protocol** (ablations/protocol.yaml, fixed before the grid's cells were trained). Each row is "
    "tested against its study's default row on the paper's metric (k-NN@20, or linear where the paper "
    "gives only linear), at alpha = 0.05 after Holm over the table's tested rows: a row the paper calls "
    "collapsed (<= 1 %) is reproduced iff its collapse verdict fires on more than half of its seeds and "
    "its metric is below the default's (one-sided Welch); where the paper's difference is under 1 point "
    "(\"no effect\"), by TOST at ±2 points; otherwise by a one-sided Welch test in the paper's "
    "direction. Δ = mean(row) − mean(default) with its 95 % Welch confidence interval; p is the raw "
    "p-value, in brackets the Holm-adjusted one. *pending*: fewer ok seeds than the protocol "
    "registers for the row (no verdict yet); *n/a*: no paper number to test; *(post hoc)*: a threshold "
    "of this verdict changed after results existed.")
CONVENTIONS = (
    "**Ours** = weighted k-NN top-1 (k = 20, %) of the teacher backbone and the linear probe (lr and "
    "epoch chosen on the select split), both measured on the report split that no choice saw; mean ± "
    "sample std (ddof = 1) over the ok seeds; n = ok seeds / seeds the protocol registers. "
    "*collapsed* = seeds whose collapse verdict fired / n. Diverged or failed seeds are named in the "
    "note and not averaged.")


@dataclass(frozen=True)
class Stats:
    """One row's result over seeds: k-NN top-1 (mean, std, %) and linear top-1 (lin_*, % or NaN)."""
    n: int
    mean: float
    std: float
    n_collapsed: int
    lin_mean: float = float("nan")
    lin_std: float = float("nan")

    @property
    def has_linear(self) -> bool:
        return math.isfinite(self.lin_mean)

    def as_linear(self) -> "Stats":
        """The same row with the linear probe as its number (for the paper's linear-only rows)."""
        return Stats(self.n, self.lin_mean, self.lin_std, self.n_collapsed, self.lin_mean, self.lin_std)

    @property
    def split(self) -> bool:
        return self.n > 0 and 2 * self.n_collapsed == self.n

    @property
    def collapsed(self) -> bool:
        return self.n > 0 and 2 * self.n_collapsed > self.n

    @property
    def noise_std(self) -> float:
        return 0.0 if not math.isfinite(self.std) else self.std


@dataclass(frozen=True)
class Table:
    study: str
    title: str
    source: str
    default: str
    numeric: pd.DataFrame    # -> <study>.csv (numbers as numbers)
    display: pd.DataFrame    # -> <study>.md / .tex (formatted strings)
    latex_drop: tuple = ("note",)


@dataclass(frozen=True)
class FigureSpec:
    name: str                # file name under plots/
    kind: str                # key of RENDERERS
    title: str
    data: pd.DataFrame
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Effect:
    text: str
    status: str              # "reproduced" | "not reproduced" | "pending" (+ " (post hoc)")
    numbers: str

    def line(self) -> str:
        return f"{self.text}: **{self.status}** ({self.numbers})"


@dataclass(frozen=True)
class Report:
    tables: list[Table]
    figures: list[FigureSpec]
    effects: list[Effect]
    readme: str
