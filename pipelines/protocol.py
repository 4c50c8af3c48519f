"""ablations/protocol.yaml: the pre-registered statistical protocol, read by the grid (how many seeds
each study row runs) and by the report (which test decides each row and each paper effect).

Per table row, against its study's default row, on the study's metric (``metric:``):
    collapse     the paper's number is <= collapse_paper_max % (or the row says `collapse: true`)
    equivalence  |paper delta| < approx_paper points: TOST at +-margin
    direction    otherwise: one-sided Welch in the paper's direction
    none         no paper number for the row or its default: described, not tested
Seeds: ``seeds.small`` where the row's test is equivalence or |paper delta| < small_paper_delta
(and for the default row of a study with such a row), else ``seeds.base``.
"""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = Path("ablations") / "protocol.yaml"
TESTS = ("collapse", "equivalence", "direction", "none")


def load_protocol(root: Path = ROOT) -> dict:
    path = Path(root) / PROTOCOL
    if not path.is_file():
        raise ValueError(f"{path}: the statistical protocol is missing")
    protocol = yaml.safe_load(path.read_text())
    for key in ("alpha", "seeds", "metric", "tests", "effects"):
        if key not in protocol:
            raise ValueError(f"{path}: missing key {key!r}")
    return protocol


def study_metric(protocol: dict, study: str) -> str:
    """knn | linear: the paper's metric of a study."""
    return protocol["metric"].get(study, protocol["metric"]["default"])


def paper_number(row: dict, metric: str) -> float | None:
    value = (row.get("paper") or {}).get(metric)
    return None if value is None else float(value)


def row_test(protocol: dict, study: dict, row: dict) -> str:
    """Which test decides ``row`` of ``study`` (a loaded ablations/<study>.yaml): one of TESTS."""
    t, metric = protocol["tests"], study_metric(protocol, study["study"])
    default = next(r for r in study["rows"] if r["name"] == study["default"])
    mine, ref = paper_number(row, metric), paper_number(default, metric)
    if (row.get("paper") or {}).get("collapse") or (mine is not None and mine <= t["collapse"]["collapse_paper_max"]):
        return "collapse"
    if row["name"] == study["default"] or mine is None or ref is None:
        return "none"
    return "equivalence" if abs(mine - ref) < t["equivalence"]["approx_paper"] else "direction"


def _small(protocol: dict, study: dict, row: dict) -> bool:
    test = row_test(protocol, study, row)
    if test == "equivalence":
        return True
    if test != "direction":
        return False
    metric = study_metric(protocol, study["study"])
    default = next(r for r in study["rows"] if r["name"] == study["default"])
    return abs(paper_number(row, metric) - paper_number(default, metric)) < protocol["seeds"]["small_paper_delta"]


def row_seeds(protocol: dict, study: dict, row: dict) -> list[int]:
    """The seeds of a study row (see the module docstring)."""
    s = protocol["seeds"]
    if row["name"] == study["default"]:
        small = any(_small(protocol, study, r) for r in study["rows"] if r["name"] != study["default"])
    else:
        small = _small(protocol, study, row)
    return list(s["small"] if small else s["base"])
