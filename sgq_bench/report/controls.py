"""Ranking scores measured against the same model's random-map control.

Why: deletion, insertion, MoRF and ROAD score a saliency map by how the *model* reacts as pixels are
removed or kept in the map's order. Their value mixes two things: how well the map orders the pixels,
and how sensitive the model is to losing pixels at all. Methods that change the model (SGT trains on
masked inputs) move the second part, and a raw score then credits the map with what the model did.
The ``random`` explainer is the control that separates them: the same model, the same images, the same
metric, pixels in a random order. ``<metric>_vs_random`` = score of the map - score of the random map,
per trained model (and per image), so a method is compared with ``baseline`` on what its maps add
beyond chance. Example, MNIST, 5 seeds: SGT + PACT's gradient deletion AUC is 0.080 below baseline's,
and so is its random-map deletion AUC; against the control the two are equal.

Derived rows are added by the report layer (summary, claims, leaderboards) and never stored: a run
directory written before this module gets them too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sgq_bench.results import NO_EXPLAINER, PROTOCOL_KEYS

CONTROL_EXPLAINER = "random"
# deletion and ROAD perturb one model in the map's order; ROAR/KAR retrain one fixed learner on images with
# the map's top (ROAR) or bottom (KAR) pixels removed, and its random control is that learner retrained on
# randomly ordered removals (shared by the methods of a seed): ``roar_vs_random`` < 0 says the map's
# removals hurt the learner more than chance does (Hooker et al. 2019 found vanilla gradients near chance).
CONTROLLED_FAMILIES = ("deletion", "road", "roar")
CONTROL_FAMILY = "vs_random"
SUFFIX = "_vs_random"
_MATCH = (*PROTOCOL_KEYS, "method", "metric", "variant", "seed")
_MODEL = "checkpoint_key"  # also matched where present: one run directory may hold two models of a seed


def _floats(values: object) -> np.ndarray | None:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) == 0:
        return None
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)


def _difference(a: object, b: object) -> list | None:
    """Per-image difference of two per-sample sequences of the same length (None, text: undefined);
    None when either is missing or the lengths differ."""
    x, y = _floats(a), _floats(b)
    if x is None or y is None or x.shape != y.shape:
        return None
    return [None if not np.isfinite(v) else float(v) for v in x - y]


def source_metric(metric: str, family: str) -> str:
    """The metric a score was derived from: ``deletion_auc`` for ``deletion_auc_vs_random`` of family
    ``vs_random``; any other metric is its own source."""
    if family == CONTROL_FAMILY and metric.endswith(SUFFIX):
        return metric[: -len(SUFFIX)]
    return metric


def with_control_gains(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` plus one ``<metric>_vs_random`` row per ranking-metric row of a real explainer whose
    model also has a ``random`` row (same protocol, method, seed, metric, variant).

    The new row copies the explainer's row (provenance, recipe, explainer, direction) with ``value`` =
    value - control value, ``per_sample`` the per-image difference, and family ``vs_random``. Idempotent:
    rows derived before are replaced; with nothing to derive, ``results`` comes back unchanged.
    """
    need = {*_MATCH, "explainer", "family", "value"}
    if results.empty or not need <= set(results.columns):
        return results
    match = [*_MATCH, _MODEL] if _MODEL in results.columns else list(_MATCH)
    derived_before = (results["family"] == CONTROL_FAMILY) & results["metric"].astype(str).str.endswith(SUFFIX)
    base = results[~derived_before]
    ranking = base[base["family"].isin(CONTROLLED_FAMILIES)]
    control = ranking[ranking["explainer"] == CONTROL_EXPLAINER].drop_duplicates(match, keep="last")
    maps = ranking[~ranking["explainer"].isin([CONTROL_EXPLAINER, NO_EXPLAINER])]
    if control.empty or maps.empty:
        return results
    keep = match + ["value"] + (["per_sample"] if "per_sample" in control.columns else [])
    ctrl = control[keep].rename(columns={"value": "_control", "per_sample": "_control_sample"})
    merged = maps.merge(ctrl, on=match, how="inner", validate="many_to_one")
    if merged.empty:
        return results
    value = pd.to_numeric(merged["value"], errors="coerce").astype(float)
    merged["value"] = value - pd.to_numeric(merged["_control"], errors="coerce").astype(float)
    if "per_sample" in merged.columns:
        merged["per_sample"] = [_difference(a, b) for a, b in zip(merged["per_sample"], merged["_control_sample"])]
    undefined = ~np.isfinite(merged["value"].to_numpy())
    if "reason" in merged.columns:
        undefined &= merged["reason"].isna().to_numpy()
    merged.loc[undefined, "reason"] = "the random control is undefined for this model"
    merged["metric"] = merged["metric"].astype(str) + SUFFIX
    merged["family"] = CONTROL_FAMILY
    if "curve" in merged.columns:
        merged["curve"] = None
    derived = merged.drop(columns=[c for c in ("_control", "_control_sample") if c in merged.columns])
    return pd.concat([base, derived], ignore_index=True)


__all__ = ["CONTROLLED_FAMILIES", "CONTROL_EXPLAINER", "CONTROL_FAMILY", "SUFFIX", "source_metric", "with_control_gains"]
