"""Do two protocols rank the same things the same way? Kendall's tau between the (method x explainer) cells
of one metric in two run directories, from the across-seed means.

Why: a cheap ROAR learner (fewer epochs, fewer images, fewer fractions) is only a stand-in for the full one
if it orders the cells as the full learner does. Issue 20 pins the rule: on MNIST, where both are cheap,
tau >= 0.8 or the cheap learner is not used for claims. The per-cell differences say where they disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgq_bench.errors import UsageError

CELL = ("method", "explainer")


def cell_means(run: str | Path, metric: str) -> dict[tuple[str, str], tuple[float, int]]:
    """(method, explainer) -> (mean over seeds of the per-seed values, number of seeds) for ``metric``."""
    from sgq_bench.results import load_results

    df = load_results(run, nested=False)
    rows = df[(df["metric"] == metric) & (df["variant"] == "")]
    if not len(rows):
        raise UsageError(f"{run}: no {metric!r} rows to rank")
    per_seed = rows.groupby([*CELL, "seed"])["value"].mean().reset_index()
    grouped = per_seed.groupby(list(CELL))["value"]
    return {k: (float(m), int(n)) for (k, m), n in zip(grouped.mean().items(), grouped.count().to_numpy())}


def ranking_agreement(cheap: str | Path, full: str | Path, metric: str = "roar") -> dict[str, Any]:
    """Kendall's tau-b (scipy) between the cells both runs score, with each cell's two means and difference."""
    from scipy.stats import kendalltau

    a, b = cell_means(cheap, metric), cell_means(full, metric)
    shared = sorted(set(a) & set(b))
    if len(shared) < 3:
        raise UsageError(f"{cheap} and {full} share {len(shared)} (method, explainer) cells of {metric!r}; "
                         "a rank correlation needs at least 3")
    tau, p = kendalltau([a[c][0] for c in shared], [b[c][0] for c in shared])
    cells = [{"method": m, "explainer": e, "cheap": a[(m, e)][0], "full": b[(m, e)][0],
              "difference": a[(m, e)][0] - b[(m, e)][0], "n_cheap": a[(m, e)][1], "n_full": b[(m, e)][1]}
             for m, e in shared]
    return {"metric": metric, "tau": float(tau), "p": float(p), "cells": cells, "n_cells": len(shared),
            "usable": bool(tau >= 0.8)}
