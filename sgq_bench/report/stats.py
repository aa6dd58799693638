"""Statistics for reports: mean, std, n and a 95% t-interval across seeds; p-values against a baseline.

Why two tests: a metric measured once per seed (accuracy, an AUC averaged over images) can only be
compared across seeds, so a Welch t-test (unequal variances) is used; with few seeds it has little
power. A metric that also keeps one value per evaluation image (``per_sample``) is compared on the
*same* images for both methods (the evaluation subset is identical for every method), so a paired
bootstrap over images is used: it works with a single seed and captures image-to-image variance.
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


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of mean(a) != mean(b); NaN when either side has < 2 values.

    Two constant, equal samples give p = 1; two constant, different samples give p = 0 (no noise,
    a real difference), instead of scipy's NaN.
    """
    x = np.asarray([v for v in a if v is not None and math.isfinite(v)], dtype=float)
    y = np.asarray([v for v in b if v is not None and math.isfinite(v)], dtype=float)
    if x.size < 2 or y.size < 2:
        return NAN
    if x.std() == 0 and y.std() == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return float(_sp.ttest_ind(x, y, equal_var=False).pvalue)


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
