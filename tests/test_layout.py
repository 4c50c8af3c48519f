"""The core stays the size of the paper, and the README says its size truly.

Code lines: lines holding a Python token other than comments, docstrings and blank lines. The
method is the ViT, head, loss, teacher, multi-crop (both backends), schedules, optimiser, step and
train loop; evaluation is dino_core/evaluate/.
"""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ("vit", "head", "loss", "teacher", "multicrop", "augmentation", "schedules", "optim", "step", "train",
          "networks")
BUDGET = {"method": 1000, "evaluation": 600}
SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(src: str) -> int:
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    lines: set[int] = set()
    for i, t in enumerate(toks):
        if t.type in SKIP:
            continue
        bare_string = t.type == tokenize.STRING and (i == 0 or toks[i - 1].type in SKIP) and \
            i + 1 < len(toks) and toks[i + 1].type == tokenize.NEWLINE
        if not bare_string:                      # docstrings are documentation
            lines.update(range(t.start[0], t.end[0] + 1))
    return len(lines)


def counts() -> dict[str, int]:
    core = ROOT / "dino_core"
    return {"method": sum(code_lines((core / f"{m}.py").read_text()) for m in METHOD),
            "evaluation": sum(code_lines(f.read_text()) for f in sorted((core / "evaluate").glob("*.py")))}


def test_code_lines_by_hand():
    src = '"""Doc."""\nimport os  # why\n\n\ndef f(x):\n    """Doc\n    on two lines."""\n    return (x +\n            1)\n'
    assert code_lines(src) == 4          # import, def, and the two lines of the return


def test_method_and_evaluation_within_budget():
    got = counts()
    assert all(got[k] <= BUDGET[k] for k in BUDGET), got


def test_the_readme_layout_states_the_counts():
    text = (ROOT / "README.md").read_text()
    got = counts()
    stated = re.search(r"train loop \((\d+) code lines\).*?one entry \((\d+)", text, re.S)
    assert stated, "README layout: 'train loop (N code lines)' and 'one entry (M)'"
    assert (int(stated[1]), int(stated[2])) == (got["method"], got["evaluation"]), got
