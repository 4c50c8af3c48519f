"""Report constants, the agreement rule text and the data model (one row's Stats, Table, Effect...)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

COLLAPSE_PAPER_MAX = 1.0   # a paper top-1 <= 1.0 % means "collapses" (the paper prints 0.1)
APPROX_PAPER = 1.0         # |paper delta| < 1.0 point: the paper says "no effect" (≈)
APPROX_SLACK = 2.0         # ≈ holds for us iff |our delta| <= APPROX_SLACK + 2 * noise
CHANCE_MARGIN = 5.0        # fallback collapse test when a seed has no collapse verdict
ENTROPY_ZERO = 0.2         # last-epoch teacher entropy < 0.2 ln K: "entropy goes to 0"
ENTROPY_LOGK = 0.9         # last-epoch teacher entropy > 0.9 ln K: "entropy goes to ln K"
KEYS = ["study", "row"]
VERDICTS = ("yes", "no", "inconclusive", "reference", "n/a")
FIG7_STUDY = "fig7_collapse"
SWEEP_STUDIES = ("teacher_momentum", "teacher_temperature", "center_momentum", "output_dim")
DPI = 150

AGREEMENT_RULE = (
    "**Agreement rule.** Paper number = its k-NN top-1 where given, else its linear top-1; it is "
    "compared with our number on the same protocol (our k-NN, or our linear probe where the paper "
    "gives only linear; our k-NN if we have no linear probe). "
    f"(a) Collapse: the paper says a row collapses if its number is <= {COLLAPSE_PAPER_MAX:g} % "
    "(or the study file marks `collapse: true`) and that it learns otherwise; a row collapsed for us "
    "if the majority of its ok seeds did. \"yes\" iff both say the same; if the paper says it "
    "learns and ours collapsed, \"no\". (b) Effect vs the default row (only for rows that learn in "
    "the paper and for us, when the default row also learns in both): paper Δ = paper(row) − "
    "paper(default) on the same metric, our Δ = mean(row) − mean(default), noise = (std(row) + "
    f"std(default)) / 2. If |paper Δ| < {APPROX_PAPER:g} point the paper says ≈: \"yes\" iff "
    f"|our Δ| <= {APPROX_SLACK:g} + 2·noise, else \"no\". Otherwise: \"inconclusive\" if |our Δ| <= "
    "noise, else \"yes\" iff our Δ has the paper's sign, else \"no\". A learning row whose default "
    "row has no comparable paper number gets \"yes\" from (a) alone. Rows without a paper number: "
    "\"n/a\"; the default row: \"reference\" (\"no\" if it contradicts the paper on collapse); a row "
    "without an ok seed or with an even collapse split: \"inconclusive\".")
CONVENTIONS = (
    "**Ours** = weighted k-NN top-1 (k = 20, %) of the teacher backbone, and *ours linear* = the "
    "official linear probe (best val top-1 of the lr sweep, on cached features), mean ± sample std "
    "(ddof = 1) over the ok seeds; n = number of ok seeds (std \"n/a\" for n = 1, and then taken as "
    "0 in the noise). *collapsed* = seeds whose collapse verdict fired / n. Diverged or failed "
    "seeds are named in the note and not averaged.")


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
    status: str              # "reproduced" | "not reproduced" | "inconclusive"
    numbers: str

    def line(self) -> str:
        return f"{self.text}: **{self.status}** ({self.numbers})"


@dataclass(frozen=True)
class Report:
    tables: list[Table]
    figures: list[FigureSpec]
    effects: list[Effect]
    readme: str
