"""Statistics: t-interval, Welch difference and test, paired-by-seed test, and the within-model paired
bootstrap, against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from sgq_bench.report.stats import (
    mean_per_sample,
    paired_bootstrap_p,
    paired_seed_p,
    summarize,
    t_halfwidth,
    welch_difference,
    welch_p,
)


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


# --- across seeds: the unit is a trained model --------------------------------------------------------------


def test_t_halfwidth_matches_the_t_interval():
    v = [0.91, 0.93, 0.92, 0.95]
    lo, hi = sp.t.interval(0.95, df=3, loc=np.mean(v), scale=sp.sem(v))
    half = t_halfwidth(np.array([np.std(v, ddof=1), 0.1]), np.array([4, 1]))
    assert half[0] == pytest.approx((hi - lo) / 2) and math.isnan(half[1])


def test_welch_difference_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    # by hand: variances 1 and 4, se^2 = 1/3 + 4/3, Welch-Satterthwaite dof = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    se, dof = math.sqrt(5 / 3), 50 / 17
    d = welch_difference(np.mean(a), np.std(a, ddof=1), 3, np.mean(b), np.std(b, ddof=1), 3)
    assert float(d.diff) == -2.0
    half = sp.t.ppf(0.975, dof) * se
    assert (float(d.ci_low), float(d.ci_high)) == (pytest.approx(-2 - half), pytest.approx(-2 + half))
    assert float(d.p) == pytest.approx(2 * sp.t.sf(2 / se, dof))
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert float(d.p) == pytest.approx(ref.pvalue) and float(d.p) == pytest.approx(0.22088, abs=1e-5)
    ci = ref.confidence_interval(0.95)
    assert (float(d.ci_low), float(d.ci_high)) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_welch_difference_degenerate_cases_vectorised():
    d = welch_difference(np.array([1.0, 1.0, 2.0]), np.array([0.0, 0.0, 0.1]), np.array([3, 3, 1]),
                         np.array([1.0, 2.0, 1.0]), np.array([0.0, 0.0, 0.1]), np.array([3, 3, 3]))
    assert d.p[0] == 1.0 and d.ci_low[0] == d.ci_high[0] == 0.0  # no noise, no difference
    assert d.p[1] == 0.0 and d.ci_low[1] == d.ci_high[1] == -1.0  # no noise, a real difference
    assert d.diff[2] == 1.0 and math.isnan(d.p[2]) and math.isnan(d.ci_low[2])  # one seed: no test


def test_paired_seed_p_matches_ttest_rel_only_when_seeds_pair_up():
    a = {0: 0.91, 1: 0.93, 2: 0.92, 3: 0.95}
    b = {0: 0.90, 1: 0.90, 2: 0.91, 3: 0.92}
    assert paired_seed_p(a, b) == pytest.approx(sp.ttest_rel(list(a.values()), list(b.values())).pvalue)
    # d = -1, -2, -3: mean -2, sd 1, t = -2 / (1 / sqrt 3), 2 degrees of freedom
    assert paired_seed_p({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 6.0}) == pytest.approx(
        2 * sp.t.sf(2 * math.sqrt(3), 2))
    assert math.isnan(paired_seed_p(a, {0: 0.9, 1: 0.9, 2: 0.9}))  # seed 3 missing on one side
    assert math.isnan(paired_seed_p({0: 1.0}, {0: 2.0}))  # one pair
    assert math.isnan(paired_seed_p({0: 1.0, 1: float("nan")}, {0: 1.0, 1: 2.0}))  # an undefined seed
    assert paired_seed_p({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) == 1.0
    assert paired_seed_p({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == 0.0
