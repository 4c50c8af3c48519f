"""The protocol's statistics on fixed inputs, against scipy's own tests and values worked by hand."""
from __future__ import annotations

import math

import pytest
from scipy import stats as st

from pipelines.report.stats import ci, holm, p_direction, p_one_sample, p_tost, welch

A = [76.2, 76.6, 75.9, 76.8, 75.7]     # a default row over 5 seeds (k-NN %)
B = [70.7, 69.6, 71.9]                 # a row over 3 seeds


def test_welch_by_hand():
    """delta, se and the Welch-Satterthwaite df of A - B, worked out step by step."""
    w = welch(A, B)
    ma, mb = sum(A) / 5, sum(B) / 3                       # 76.24, 70.7333...
    va = sum((x - ma) ** 2 for x in A) / 4                # 0.852 / 4 = 0.213
    vb = sum((x - mb) ** 2 for x in B) / 2                # 2.6467 / 2 = 1.3233
    se = math.sqrt(va / 5 + vb / 3)
    df = (va / 5 + vb / 3) ** 2 / ((va / 5) ** 2 / 4 + (vb / 3) ** 2 / 2)
    assert (w.delta, w.se, w.df) == pytest.approx((ma - mb, se, df), rel=1e-12)
    assert w.delta == pytest.approx(5.506667, abs=1e-6) and w.df == pytest.approx(0.48371 ** 2 / 0.097743, abs=1e-3)


def test_one_sided_welch_equals_scipy():
    for a, b in ((A, B), (B, A), ([1.0, 2.0, 3.0], [1.5, 2.5, 2.0, 3.5])):
        assert p_direction(a, b, +1) == pytest.approx(st.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
        assert p_direction(a, b, -1) == pytest.approx(st.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)


def test_confidence_interval_equals_scipy():
    lo, hi = ci(A, B)
    want = st.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((want.low, want.high))
    assert lo < welch(A, B).delta < hi


def test_tost_is_the_larger_of_two_shifted_one_sided_tests():
    margin = 2.0
    a, b = [76.1, 76.9, 75.8, 76.4, 76.0], A
    lower = st.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue
    upper = st.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue
    assert p_tost(a, b, margin) == pytest.approx(max(lower, upper))
    assert p_tost(a, b, margin) < 0.05          # 0.1 points apart with 0.5 spread: equivalent at +-2
    assert p_tost(B, A, margin) > 0.5           # 5.5 points apart: not equivalent


def test_one_sample_equals_scipy():
    x = [0.02, 0.01, 0.03]
    assert p_one_sample(x, 0.2, "below") == pytest.approx(st.ttest_1samp(x, 0.2, alternative="less").pvalue)
    assert p_one_sample(x, 0.2, "above") == pytest.approx(st.ttest_1samp(x, 0.2, alternative="greater").pvalue)


def test_degenerate_spreads_and_too_few_values():
    """Constant rows: p 0 when the difference favours H1, else 1; one value a side: no test (NaN)."""
    assert p_direction([1.0, 1.0], [0.0, 0.0], +1) == 0.0 and p_direction([1.0, 1.0], [0.0, 0.0], -1) == 1.0
    assert p_one_sample([1.0, 1.0, 1.0], 0.9, "above") == 0.0
    assert ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0)
    assert math.isnan(p_direction([1.0], B, +1)) and math.isnan(p_tost(A, [2.0], 1.0))
    assert all(math.isnan(v) for v in ci([1.0], B))


def test_holm_by_hand():
    """p sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    max(0.06, 1 x 0.04) = 0.06; NaN is no member of the family."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
