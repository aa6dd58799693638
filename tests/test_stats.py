"""Statistics: t-interval, Welch test and the paired bootstrap against scipy and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from sgq_bench.report.stats import mean_per_sample, paired_bootstrap_p, summarize, welch_p


def test_summary_matches_scipy_t_interval():
    v = [0.91, 0.93, 0.92, 0.95]
    s = summarize(v)
    lo, hi = sp.t.interval(0.95, df=3, loc=np.mean(v), scale=sp.sem(v))
    assert s.n == 4 and s.mean == pytest.approx(np.mean(v))
    assert s.std == pytest.approx(np.std(v, ddof=1))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_summary_of_one_or_none_has_no_interval():
    one = summarize([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert summarize([]).n == 0
    assert summarize([float("nan"), 1.0]).n == 1  # non-finite values are dropped, not averaged


def test_welch_matches_scipy_and_degenerate_cases():
    a, b = [1.0, 1.2, 0.9], [1.5, 1.7, 1.6, 1.8]
    assert welch_p(a, b) == pytest.approx(sp.ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(welch_p([1.0], b))
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0


def test_paired_bootstrap_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    shifted = base + 0.2 + rng.normal(scale=0.1, size=400)
    same = base + rng.normal(scale=0.1, size=400)
    assert paired_bootstrap_p(shifted, base, n_boot=2000) < 0.001
    assert paired_bootstrap_p(same, base, n_boot=2000) > 0.05


def test_paired_bootstrap_is_seeded_and_bounded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    p1 = paired_bootstrap_p(a, b, n_boot=1000, seed=3)
    assert p1 == paired_bootstrap_p(a, b, n_boot=1000, seed=3)
    assert 0 < p1 <= 1
    assert paired_bootstrap_p(a, a) == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_p(a, b[:10])


def test_mean_per_sample_requires_equal_lengths():
    assert mean_per_sample([[1, 2], [3, 4]]).tolist() == [2, 3]
    assert mean_per_sample([[1, 2], [3]]) is None
