"""The learning-budget rule of ablations/protocol.yaml: which cells it trains and how it decides."""
from __future__ import annotations

import pytest
from helpers import PARAMS

from pipelines.budget import budget_cells, decide
from pipelines.params import load_all
from pipelines.protocol import load_protocol

BUDGET = load_protocol()["budget"]
RANDOM = {0: 56.0, 1: 55.0, 2: 57.0}


def rows(default: list[float], collapse: dict[str, tuple[float, bool]]) -> list[dict]:
    out = [{"study": "fig6_teacher", "row": "momentum", "seed": s, "knn": v, "collapsed": False}
           for s, v in enumerate(default)]
    return out + [{"study": st, "row": r, "seed": 0, "knn": k, "collapsed": c} for (st, r), (k, c) in collapse.items()]


def test_budget_cells_are_the_default_seeds_and_each_collapse_row_once():
    params = load_all(PARAMS)
    params["profile"] = "default"
    cells = budget_cells(params, 50, BUDGET)
    got = sorted((s, r, seed) for s, r, seed, _ in cells)
    want = sorted([("fig6_teacher", "momentum", s) for s in BUDGET["default_seeds"]]
                  + [(s, r, 0) for s, r in BUDGET["collapse_rows"]])
    assert got == want and all(p["train"]["epochs"] == 50 for *_, p in cells)


@pytest.mark.parametrize("default, collapse, passes", [
    # gain (72+71+73)/3 - 56 = 16 >= 15; each collapse row 5 below the default's 72, or collapsed
    ([72.0, 71.0, 73.0], {("fig7_collapse", "centering_only"): (67.0, False),
                          ("fig6_teacher", "student_copy"): (71.9, True)}, True),
    ([69.0, 70.0, 71.0], {("fig7_collapse", "centering_only"): (60.0, True)}, False),          # gain 70 - 56 = 14
    ([72.0, 71.0, 73.0], {("fig7_collapse", "centering_only"): (67.1, False)}, False),        # 4.9 below only
])
def test_the_rule_needs_the_gain_and_every_collapse_row_apart(default, collapse, passes):
    got = decide(rows(default, collapse), RANDOM, BUDGET)
    assert got["passes"] is passes
    assert got["gain"] == pytest.approx(sum(default) / 3 - 56.0)
    assert got["gain_per_seed"] == pytest.approx([v - RANDOM[s] for s, v in enumerate(default)])
