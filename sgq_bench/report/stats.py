"""Statistics for reports, whose unit of replication is a trained model (a training seed).

Across seeds: mean, sample std, n and a 95% t-interval per method; against the reference method, the
difference of means with its Welch (unequal variances) t-interval and p-value, and a paired t-test
when both methods were trained with the same seeds (seed s of each shares data order and
initialisation, so pairing removes that shared variance). With 2-5 seeds these tests have little
power; "not significant" is then the honest answer.

Within one model: a paired bootstrap over the evaluation images (the subset is identical for every
method) says how sure we are about *those models* on *those images*. It ignores the variance of
training, so it is reported as ``p_within_model`` and never supports a claim about a method.
All randomness is seeded, so a report is reproducible byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sp

NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1), count and the two ends of the 95% t confidence interval."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of finite ``values``; std and CI are NaN when fewer than two values exist.

    Why t and not normal: with 2-5 seeds the normal interval is far too narrow.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = int(v.size)
    if n == 0:
        return Summary(NAN, NAN, 0, NAN, NAN)
    mean = float(v.mean())
    if n < 2:
        return Summary(mean, NAN, 1, NAN, NAN)
    std = float(v.std(ddof=1))
    half = float(_sp.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """Welch t-test p-value of mean(a) != mean(b) (``alternative="greater"``: of mean(a) > mean(b)); NaN
    when either side has < 2 values.

    Two constant samples (no noise) give p = 0 where the difference is real in the tested direction and 1
    otherwise, instead of scipy's NaN.
    """
    x = np.asarray([v for v in a if v is not None and math.isfinite(v)], dtype=float)
    y = np.asarray([v for v in b if v is not None and math.isfinite(v)], dtype=float)
    if x.size < 2 or y.size < 2:
        return NAN
    if x.std() == 0 and y.std() == 0:
        real = x.mean() > y.mean() if alternative == "greater" else x.mean() != y.mean()
        return 0.0 if real else 1.0
    return float(_sp.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)


def t_halfwidth(std: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Half-width of the t confidence interval of a mean (vectorised); NaN where n < 2."""
    std = np.asarray(std, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = n >= 2
    q = np.full(n.shape, NAN)
    q[ok] = _sp.t.ppf(0.5 + confidence / 2, df=n[ok] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, q * std / np.sqrt(np.where(ok, n, 1)), NAN)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its Welch t-interval and two-sided Welch p-value (arrays, vectorised)."""

    diff: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray


def welch_difference(mean_a: np.ndarray, std_a: np.ndarray, n_a: np.ndarray, mean_b: np.ndarray,
                     std_b: np.ndarray, n_b: np.ndarray, confidence: float = 0.95) -> Difference:
    """Welch's comparison of two means from their summary statistics (vectorised over groups).

    Standard error sqrt(s_a^2/n_a + s_b^2/n_b) with Welch-Satterthwaite degrees of freedom; the same
    test as ``scipy.stats.ttest_ind(a, b, equal_var=False)``. CI and p are NaN when a side has fewer
    than two values; with no noise on either side (both stds 0) the interval is the point and p is
    1 for equal means, 0 for different ones (scipy gives NaN).
    """
    ma, sa, na = (np.asarray(v, dtype=float) for v in (mean_a, std_a, n_a))
    mb, sb, nb = (np.asarray(v, dtype=float) for v in (mean_b, std_b, n_b))
    diff = ma - mb
    ok = (na >= 2) & (nb >= 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        va, vb = sa**2 / na, sb**2 / nb
        se = np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        noisy = ok & (se > 0)
        q = np.where(noisy, _sp.t.ppf(0.5 + confidence / 2, np.where(noisy, dof, 1.0)), NAN)
        p = np.where(noisy, 2 * _sp.t.sf(np.abs(diff / np.where(noisy, se, 1.0)), np.where(noisy, dof, 1.0)), NAN)
    half = np.where(noisy, q * se, np.where(ok, 0.0, NAN))
    p = np.where(ok & ~noisy, np.where(diff == 0, 1.0, 0.0), p)
    return Difference(diff, diff - half, diff + half, p)


def paired_seed_p(a: dict[int, float], b: dict[int, float]) -> float:
    """Paired t-test p-value (as ``scipy.stats.ttest_rel``) of two methods over the same training seeds.

    Only when seeds pair up: both sides hold finite values for exactly the same seeds, at least two.
    Otherwise NaN (a partial pairing would test a different set of models than the means describe).
    Constant differences give 1 when they are zero, else 0.
    """
    fa = {s: v for s, v in a.items() if v is not None and math.isfinite(v)}
    fb = {s: v for s, v in b.items() if v is not None and math.isfinite(v)}
    if set(fa) != set(fb) or len(fa) < 2:
        return NAN
    seeds = sorted(fa)
    d = np.asarray([fa[s] - fb[s] for s in seeds], dtype=float)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(_sp.ttest_1samp(d, 0.0).pvalue)


def paired_bootstrap_p(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 5000,
    seed: int = 0,
    chunk: int = 500,
) -> float:
    """Two-sided paired bootstrap p-value of mean(a - b) != 0 over paired samples (images).

    The differences are centred (the null hypothesis made true) and resampled with replacement;
    p is the share of resampled means at least as far from 0 as the observed one, with the +1
    correction so that p is never exactly 0. Vectorised in chunks of ``chunk`` resamples, so
    memory stays at ``chunk x n`` floats. Non-finite pairs are dropped.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equally long, got {x.shape} and {y.shape}")
    d = x - y
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        return NAN
    observed = abs(float(d.mean()))
    centred = d - d.mean()
    if not np.any(centred):
        return 1.0 if observed == 0 else 0.0
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        means = centred[idx].mean(axis=1)
        hits += int(np.count_nonzero(np.abs(means) >= observed - 1e-15))
        done += m
    return (hits + 1) / (n_boot + 1)


def mean_per_sample(arrays: Sequence[Sequence[float]]) -> np.ndarray | None:
    """Average per-image values over seeds (same images in the same order); None if lengths differ."""
    if not arrays:
        return None
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        return None
    return np.asarray(arrays, dtype=float).mean(axis=0)
