"""Do two protocols rank the same things the same way? Kendall's tau between the (method x explainer) cells
of one metric in two run directories, from the across-seed means.

Why: a cheap ROAR learner (fewer epochs, fewer images, fewer fractions) is only a stand-in for the full one
if it orders the cells as the full learner does. Issue 20 pins the rule: on MNIST, where both are cheap,
tau >= 0.8 or the cheap learner is not used for claims. The per-cell differences say where they disagree.

Two refinements, because a tau alone misleads here:

* ``fractions``: a ROAR/KAR value is the mean accuracy over the run's fractions, and a cheap learner
  often scores fewer of them; comparing means over different fractions compares different numbers. With
  ``fractions`` (or ``"shared"``: those both runs' curves have) each seed's value is the mean of its
  curve at exactly those fractions.
* :func:`split_half`: tau between the means of two halves of one run's seeds, over every split. It is
  the reference's own reproducibility: when the full learner's split-half tau is low, its ranking is
  seed noise, and no cheap learner can agree with it at tau >= 0.8 except by chance.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgq_bench.errors import UsageError

CELL = ("method", "explainer")
Fractions = Sequence[float] | str | None


def _rows(run: str | Path, metric: str) -> Any:
    from sgq_bench.results import load_results

    df = load_results(run, nested=True)
    rows = df[(df["metric"] == metric) & (df["variant"].fillna("") == "")]
    if not len(rows):
        raise UsageError(f"{run}: no {metric!r} rows to rank")
    return rows


def curve_fractions(run: str | Path, metric: str) -> list[float]:
    """The fractions every ``metric`` row of ``run`` has on its curve (empty when a row has no curve)."""
    common: set[float] | None = None
    for curve in _rows(run, metric)["curve"]:
        xs = set(map(float, curve["x"])) if isinstance(curve, dict) and curve.get("x") else set()
        common = xs if common is None else common & xs
    return sorted(common or ())


def per_seed_values(run: str | Path, metric: str, fractions: Sequence[float] | None = None) -> Any:
    """One row per (method, explainer, seed): the metric's value, or with ``fractions`` the mean of the
    row's curve at those fractions.

    Raises:
        UsageError: a row whose curve lacks one of ``fractions``.
    """
    rows = _rows(run, metric).copy()
    if fractions is not None:
        def at(curve: Any) -> float:
            xs = [float(x) for x in (curve or {}).get("x", [])]
            missing = [f for f in fractions if float(f) not in xs]
            if missing:
                raise UsageError(f"{run}: a {metric!r} curve has no point at fraction(s) {missing}; "
                                 f"it has {xs}")
            ys = curve["y"]
            return float(sum(ys[xs.index(float(f))] for f in fractions) / len(fractions))

        rows["value"] = [at(c) for c in rows["curve"]]
    return rows.groupby([*CELL, "seed"])["value"].mean().reset_index()


def cell_means(run: str | Path, metric: str, fractions: Sequence[float] | None = None,
               seeds: Sequence[int] | None = None) -> dict[tuple[str, str], tuple[float, int]]:
    """(method, explainer) -> (mean over seeds of the per-seed values, number of seeds) for ``metric``."""
    per_seed = per_seed_values(run, metric, fractions)
    if seeds is not None:
        per_seed = per_seed[per_seed["seed"].isin(list(seeds))]
    grouped = per_seed.groupby(list(CELL))["value"]
    return {k: (float(m), int(n)) for (k, m), n in zip(grouped.mean().items(), grouped.count().to_numpy())}


def _tau(a: dict, b: dict, shared: list) -> tuple[float, float]:
    from scipy.stats import kendalltau

    tau, p = kendalltau([a[c][0] for c in shared], [b[c][0] for c in shared])
    return float(tau), float(p)


def _resolve(fractions: Fractions, cheap: str | Path, full: str | Path, metric: str) -> list[float] | None:
    if fractions is None:
        return None
    if fractions == "shared":
        shared = sorted(set(curve_fractions(cheap, metric)) & set(curve_fractions(full, metric)))
        if not shared:
            raise UsageError(f"{cheap} and {full}: the {metric!r} curves share no fraction")
        return shared
    if isinstance(fractions, str):
        raise UsageError(f"fractions={fractions!r}: expected a list of fractions, 'shared' or None")
    return [float(f) for f in fractions]


def ranking_agreement(cheap: str | Path, full: str | Path, metric: str = "roar",
                      fractions: Fractions = None) -> dict[str, Any]:
    """Kendall's tau-b (scipy) between the cells both runs score, with each cell's two means and difference.

    ``fractions``: None compares the rows' values; a list, or ``"shared"``, compares curve means at those
    fractions (see the module docstring)."""
    fr = _resolve(fractions, cheap, full, metric)
    a, b = cell_means(cheap, metric, fr), cell_means(full, metric, fr)
    shared = sorted(set(a) & set(b))
    if len(shared) < 3:
        raise UsageError(f"{cheap} and {full} share {len(shared)} (method, explainer) cells of {metric!r}; "
                         "a rank correlation needs at least 3")
    tau, p = _tau(a, b, shared)
    cells = [{"method": m, "explainer": e, "cheap": a[(m, e)][0], "full": b[(m, e)][0],
              "difference": a[(m, e)][0] - b[(m, e)][0], "n_cheap": a[(m, e)][1], "n_full": b[(m, e)][1]}
             for m, e in shared]
    return {"metric": metric, "fractions": fr, "tau": tau, "p": p, "cells": cells, "n_cells": len(shared),
            "usable": bool(tau >= 0.8)}


def split_half(run: str | Path, metric: str = "roar", fractions: Sequence[float] | None = None) -> dict[str, Any]:
    """Kendall's tau between the cell means of two disjoint halves of ``run``'s seeds, over every split
    (the smaller half has floor(n/2) seeds): mean, min and max over the splits.

    Raises:
        UsageError: fewer than 2 seeds.
    """
    seeds = sorted(int(s) for s in per_seed_values(run, metric, fractions)["seed"].unique())
    if len(seeds) < 2:
        raise UsageError(f"{run}: {metric!r} has {len(seeds)} seed(s); a split-half needs at least 2")
    taus = []
    for half in itertools.combinations(seeds, len(seeds) // 2):
        rest = [s for s in seeds if s not in half]
        a, b = cell_means(run, metric, fractions, half), cell_means(run, metric, fractions, rest)
        shared = sorted(set(a) & set(b))
        if len(shared) >= 3:
            taus.append(_tau(a, b, shared)[0])
    if not taus:
        raise UsageError(f"{run}: {metric!r}: no split of the seeds leaves 3 shared cells")
    return {"metric": metric, "fractions": None if fractions is None else list(fractions), "seeds": seeds,
            "splits": len(taus), "tau_mean": sum(taus) / len(taus), "tau_min": min(taus), "tau_max": max(taus)}


def agreement_report(cheap: str | Path, full: str | Path, metrics: Sequence[str] = ("roar", "kar"),
                     out: str | Path | None = None) -> str:
    """Markdown (and ``out``/agreement.json, ``out``/agreement.md) of the cheap-vs-full agreement per metric:
    tau on the rows' values and on the shared fractions, each run's split-half tau, the per-cell table."""
    lines = [f"# Ranking agreement: `{Path(cheap).name}` (cheap) vs `{Path(full).name}` (full)", "",
             "Kendall's tau-b over the (method x explainer) cells, from the across-seed means. The rule (issue 20): "
             "tau >= 0.8, else the cheap learner is not used for claims. Split-half: tau between the means of "
             "two disjoint halves of one run's seeds, over every split; the full learner's split-half is the "
             "ceiling a cheap learner can be expected to reach.", ""]
    record: dict[str, Any] = {"cheap": str(cheap), "full": str(full), "metrics": {}}
    from sgq_bench.results import load_results

    present = set(load_results(cheap, nested=False)["metric"]) & set(load_results(full, nested=False)["metric"])
    wanted, metrics = list(metrics), [m for m in metrics if m in present]
    if not metrics:
        raise UsageError(f"{cheap} and {full} share no metric to rank (looked for {', '.join(wanted)})")
    for metric in metrics:
        on_values = ranking_agreement(cheap, full, metric)
        on_shared = ranking_agreement(cheap, full, metric, "shared")
        fr = on_shared["fractions"]
        halves = {"cheap": split_half(cheap, metric, fr), "full": split_half(full, metric, fr)}
        record["metrics"][metric] = {"values": on_values, "shared_fractions": on_shared, "split_half": halves}
        lines += [f"## {metric}", "",
                  f"- tau on the rows' values (each run's own fractions): **{on_values['tau']:.3f}** "
                  f"(p = {on_values['p']:.2g}, {on_values['n_cells']} cells)",
                  f"- tau at the shared fractions {fr}: **{on_shared['tau']:.3f}** (p = {on_shared['p']:.2g})",
                  *(f"- split-half tau of the {k} run at those fractions: mean {h['tau_mean']:.3f} "
                    f"(min {h['tau_min']:.3f}, max {h['tau_max']:.3f}; {h['splits']} splits of seeds {h['seeds']})"
                    for k, h in halves.items()),
                  f"- usable for claims: **{'yes' if on_shared['usable'] and on_values['usable'] else 'no'}**", "",
                  f"| method | explainer | cheap at {fr} | full at {fr} | difference |", "|---|---|---|---|---|"]
        lines += [f"| {c['method']} | {c['explainer']} | {c['cheap']:.4f} | {c['full']:.4f} | {c['difference']:+.4f} |"
                  for c in on_shared["cells"]]
        lines.append("")
    text = "\n".join(lines)
    if out is not None:
        out = Path(out)
        (out / "agreement.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "agreement.md").write_text(text)
    return text
