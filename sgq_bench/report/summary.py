"""Across-seed summaries of a results DataFrame: the one table that reports, figures and leaderboards read.

The unit of the statistics is a trained model (a training seed). Rows are grouped by everything that
defines a comparable number (:data:`GROUP_KEYS`: the protocol -- suite, suite version, evaluation size
and subset, training precision -- plus method, explainer, metric and variant), so results of different
protocols are never averaged together. Each method is compared with a *reference* method (by default
``baseline``) of the same protocol, explainer, metric and variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sgq_bench.report.controls import CONTROL_FAMILY, with_control_gains
from sgq_bench.report.stats import (
    mean_per_sample,
    paired_bootstrap_p,
    paired_seed_p,
    summarize,
    t_halfwidth,
    welch_difference,
)
from sgq_bench.results import NO_EXPLAINER, PROTOCOL_KEYS

REFERENCE = "baseline"  # the default reference method of comparisons
GROUP_KEYS = (*PROTOCOL_KEYS, "method", "explainer", "metric", "variant")
COMPARE_KEYS = tuple(k for k in GROUP_KEYS if k != "method")
FAMILY_ORDER = ("accuracy", "deletion", "road", CONTROL_FAMILY, "roar", "sparsity", "faithfulness", "efficiency")
SUMMARY_COLUMNS = (
    "dataset", "model", "method", "method_label", "quantizer", "objective", "bits", "explainer", "metric", "variant",
    "family", "suite", "suite_version", "eval_size", "eval_seed", "precision", "reference", "n_seeds",
    "n_undefined", "seeds", "mean", "std", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_welch",
    "p_paired", "p_within_model", "higher_is_better", "reason", "tie_fraction",
)


def column_name(metric: str, variant: Any) -> str:
    """A metric's column in wide tables: the metric, plus ``[variant]`` when it has one."""
    return f"{metric}[{variant}]" if isinstance(variant, str) and variant else metric


def family_rank(family: Any) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def _reasons(values: pd.Series) -> Any:
    seen = [str(v) for v in dict.fromkeys(values.dropna()) if str(v)]
    return "; ".join(seen) if seen else None


def _seed_list(seeds: pd.Series) -> str:
    return ";".join(str(int(s)) for s in sorted(seeds.dropna()))


def _per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, seed), the last one written; non-finite values are NaN."""
    need = [*GROUP_KEYS, "seed", "value"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        from sgq_bench.errors import UsageError

        raise UsageError(f"results table lacks column(s) {', '.join(missing)}; load it with sgq_bench.load_results")
    out = df.drop_duplicates([*GROUP_KEYS, "seed"], keep="last").copy()
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(float)
    out.loc[~np.isfinite(out["value"]), "value"] = np.nan
    for col, default in (("reason", None), ("tie_fraction", np.nan), ("method_label", None), ("quantizer", None),
                         ("objective", None), ("bits", None), ("family", ""), ("higher_is_better", True)):
        if col not in out.columns:
            out[col] = default
    if out["method_label"].isna().any():
        out["method_label"] = out["method_label"].fillna(out["method"])
    out["finite_seed"] = out["seed"].where(out["value"].notna())
    return out


def summarize_results(df: pd.DataFrame, *, reference: str = REFERENCE, n_boot: int = 5000,
                      confidence: float = 0.95) -> pd.DataFrame:
    """The tidy summary: one row per group (:data:`GROUP_KEYS`), columns :data:`SUMMARY_COLUMNS`.

    ``n_seeds`` counts the trained models with a finite value (the n of every statistic);
    ``n_undefined`` those whose value is undefined, with ``reason``. ``mean``/``std``/``ci_*``: across
    seeds, 95% t-interval. ``diff`` = mean - mean of ``reference`` with its Welch interval and
    ``p_welch``; ``p_paired``: paired t-test over seeds, when both trained the same seeds.
    ``p_within_model``: paired bootstrap over evaluation images (``n_boot`` resamples, 0 = skip) of the
    seed-averaged per-image values -- about these models, not about the method.
    Ranking metrics also get ``<metric>_vs_random`` groups (:mod:`sgq_bench.report.controls`).
    """
    per_seed = _per_seed(with_control_gains(df))
    keys = list(GROUP_KEYS)
    grouped = per_seed.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(
        method_label=("method_label", "first"), quantizer=("quantizer", "first"), objective=("objective", "first"),
        bits=("bits", "first"), family=("family", "first"), higher_is_better=("higher_is_better", "first"),
        n_seeds=("value", "count"), n_models=("value", "size"), mean=("value", "mean"), std=("value", "std"),
        tie_fraction=("tie_fraction", "mean"), reason=("reason", _reasons), seeds=("finite_seed", _seed_list),
    ).reset_index()
    out["n_undefined"] = out.pop("n_models") - out["n_seeds"]
    out.loc[out["n_undefined"] == 0, "reason"] = None
    half = t_halfwidth(out["std"].to_numpy(), out["n_seeds"].to_numpy(), confidence)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    out["reference"] = reference
    out = _compare(out, per_seed, reference, n_boot, confidence)
    out["higher_is_better"] = out["higher_is_better"].astype(bool)
    out = out.iloc[_order(out, reference)].reset_index(drop=True)
    return out[list(SUMMARY_COLUMNS)]


def _compare(out: pd.DataFrame, per_seed: pd.DataFrame, reference: str, n_boot: int,
             confidence: float) -> pd.DataFrame:
    """Add diff, its Welch CI and p, the paired-by-seed p and the within-model bootstrap p."""
    ref = out.loc[out["method"] == reference, [*COMPARE_KEYS, "mean", "std", "n_seeds"]]
    ref = ref.rename(columns={"mean": "mean_ref", "std": "std_ref", "n_seeds": "n_ref"})
    merged = out.merge(ref, on=list(COMPARE_KEYS), how="left", validate="many_to_one")
    d = welch_difference(merged["mean"], merged["std"], merged["n_seeds"], merged["mean_ref"], merged["std_ref"],
                         merged["n_ref"], confidence)
    has_ref = merged["n_ref"].notna().to_numpy() & (merged["method"] != reference).to_numpy()
    for col, arr in (("diff", d.diff), ("diff_ci_low", d.ci_low), ("diff_ci_high", d.ci_high), ("p_welch", d.p)):
        merged[col] = np.where(has_ref, arr, np.nan)
    values: dict[tuple, dict[int, float]] = {}
    samples: dict[tuple, dict[int, list]] = {}
    for key, sub in per_seed.groupby(list(GROUP_KEYS), sort=False, dropna=False):
        values[key] = dict(zip(sub["seed"].astype(int), sub["value"].astype(float)))
        if "per_sample" in sub.columns:
            samples[key] = {int(s): v for s, v in zip(sub["seed"], sub["per_sample"]) if isinstance(v, list) and v}
    method_at = GROUP_KEYS.index("method")
    p_paired, p_within = [], []
    for i, row in enumerate(merged[list(GROUP_KEYS)].itertuples(index=False, name=None)):
        if not has_ref[i]:
            p_paired.append(np.nan)
            p_within.append(np.nan)
            continue
        ref_key = (*row[:method_at], reference, *row[method_at + 1:])
        p_paired.append(paired_seed_p(values.get(row, {}), values.get(ref_key, {})))
        p_within.append(_within_model_p(samples.get(row, {}), samples.get(ref_key, {}), n_boot))
    merged["p_paired"] = p_paired
    merged["p_within_model"] = p_within
    return merged.drop(columns=["mean_ref", "std_ref", "n_ref"])


def _within_model_p(a: dict[int, list], b: dict[int, list], n_boot: int) -> float:
    seeds = sorted(set(a) & set(b))
    if n_boot <= 0 or not seeds:
        return math.nan
    x = mean_per_sample([[_float(v) for v in a[s]] for s in seeds])
    y = mean_per_sample([[_float(v) for v in b[s]] for s in seeds])
    if x is None or y is None or x.shape != y.shape:
        return math.nan
    return paired_bootstrap_p(x, y, n_boot=n_boot, seed=0)


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _order(out: pd.DataFrame, reference: str) -> np.ndarray:
    """Stable reading order: protocol, model-level rows first, explainer, metric family, reference first."""
    sort = pd.DataFrame({
        "p": out[list(PROTOCOL_KEYS)].astype(str).agg("\x1f".join, axis=1),
        "x": out["explainer"] != NO_EXPLAINER, "e": out["explainer"].astype(str),
        "f": out["family"].map(family_rank), "m": out["metric"].astype(str), "v": out["variant"].astype(str),
        "r": out["method"] != reference, "n": out["method"].astype(str),
    })
    return sort.sort_values(list(sort.columns), kind="stable").index.to_numpy()


def protocols(frame: pd.DataFrame) -> list[tuple]:
    """The distinct protocols (:data:`PROTOCOL_KEYS` values) of a results or summary table, sorted."""
    return sorted(frame[list(PROTOCOL_KEYS)].drop_duplicates().itertuples(index=False, name=None), key=str)


def mean_curves(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Seed-averaged curves of ``metrics``: one row per protocol, method, explainer and metric (x, y lists),
    with the 95% across-seed t-interval at each point (``lo``, ``hi``; NaN with one seed) and ``n``.

    Only the seeds whose curve shares the first seed's x grid are averaged.
    """
    columns = [*PROTOCOL_KEYS, "method", "method_label", "explainer", "metric", "x", "y", "lo", "hi", "n"]
    if "curve" not in df.columns:
        return pd.DataFrame(columns=columns)
    rows = df[df["metric"].isin(list(metrics)) & df["curve"].map(lambda c: isinstance(c, dict) and "x" in c)]
    records = []
    for key, sub in rows.groupby([*PROTOCOL_KEYS, "method", "explainer", "metric"], sort=True, dropna=False):
        curves = list(sub["curve"])
        xs = list(curves[0]["x"])
        ys = np.asarray([[_float(v) for v in c["y"]] for c in curves if list(c["x"]) == xs], dtype=float)
        label = sub["method_label"].iloc[0] if "method_label" in sub.columns else key[len(PROTOCOL_KEYS)]
        points = [summarize(ys[:, i].tolist()) for i in range(ys.shape[1])]
        records.append((*key[: len(PROTOCOL_KEYS) + 1], label, *key[len(PROTOCOL_KEYS) + 1:], xs,
                        ys.mean(axis=0).tolist(), [p.ci_low for p in points], [p.ci_high for p in points],
                        int(ys.shape[0])))
    return pd.DataFrame.from_records(records, columns=columns)


def method_order(methods: Sequence[str], reference: str = REFERENCE) -> list[str]:
    """Methods sorted by name with the reference first (tables and figure legends)."""
    return sorted(set(methods), key=lambda m: (m != reference, m))


__all__ = ["COMPARE_KEYS", "FAMILY_ORDER", "GROUP_KEYS", "PROTOCOL_KEYS", "REFERENCE", "SUMMARY_COLUMNS",
           "column_name", "family_rank", "mean_curves", "method_order", "protocols", "summarize_results"]
