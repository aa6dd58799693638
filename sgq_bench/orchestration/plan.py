"""``run --plan``: the tasks of a suite and what they will cost, before any work starts.

The plan builds the same task graph the run would (finished cells, cached models and finished metric tasks
left out) and asks each task for its cost (``Task.cost``) from measured timings
(``orchestration.calibration.MeasuredCosts``). It knows no task kind: a plugin's retraining metric is
priced by its own tasks. A task that prices itself as None is counted and named in a note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgq_bench._log import logger
from sgq_bench.config.suite import Suite, load_suite
from sgq_bench.orchestration.calibration import MeasuredCosts, calibration_file
from sgq_bench.orchestration.cells import expand, parse_only
from sgq_bench.orchestration.graph import Node, TrainTask, build_graph
from sgq_bench.orchestration.rundir import done_keys, read_manifest
from sgq_bench.orchestration.runner import BASE_KINDS
from sgq_bench.specs import ExecContext


@dataclass
class PlanRow:
    kind: str
    count: int = 0
    seconds: float = 0.0
    notes: set[str] = field(default_factory=set)


def plan_suite(suite: Any, *, only: Any = None, overrides: dict[str, Any] | None = None, device: str = "cpu",
               workers: int | None = None, data_root: Any = None, checkpoint_dir: Any = None,
               out: Any = None, threads: int | None = None, log: Callable[[str], None] | None = None,
               recalibrate: bool = False) -> dict[str, Any]:
    """Count the suite's tasks and estimate their time on ``device``: what is left, as the same ``run``
    would see it (cells finished in ``out``, default ``runs/<suite>``, cached models and finished metric
    tasks left out, the part of a training that a saved state skips too; ``threads`` timed as the run
    would use it; ``recalibrate``: timings measured again, not taken from the cache)."""
    import torch

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), overrides)
    only = parse_only(only) if isinstance(only, str) or only is None else only
    all_cells = expand(suite, only)
    out = Path(out) if out is not None else Path("runs") / suite.name
    if out.is_dir():
        read_manifest(out, suite)  # run would refuse a directory of another configuration: so does the plan
    finished = done_keys(out) if out.is_dir() else set()
    cells = [c for c in all_cells if c.key() not in finished]
    ctx = ExecContext(device=str(device), data_root=data_root, checkpoint_dir=checkpoint_dir, threads=threads)
    graph = build_graph(cells, ctx)
    every = build_graph(cells, ctx, skip_cached=False)
    costs = MeasuredCosts(device, data_root, log, recalibrate=recalibrate)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # the calibration key holds the thread count: timed as the run runs
    try:
        rows, seconds = _price(graph, costs)
    finally:
        torch.set_num_threads(old_threads)
    costs.save()
    calibration, stale = costs.describe()
    if stale:
        logger("plan").warning(stale)
    total = sum(r.seconds for r in rows.values())
    n_workers = workers or 1
    # Workers help only where tasks are independent: the critical path (a cell's train -> rank -> retrain
    # -> evaluate chain) bounds the wall time from below.
    critical = _critical_path(graph, seconds) if graph else 0.0
    cached = {k: sum(1 for n in every.values() if n.kind == k) - rows[k].count for k in rows}
    return {"suite": suite.name, "version": suite.version, "device": str(device), "cells": len(all_cells),
            "cells_done": len(all_cells) - len(cells), "out": str(out),
            "tasks": {k: r.count for k, r in rows.items()}, "cached": cached,
            "seconds": {k: r.seconds for k, r in rows.items()}, "total_s": total, "workers": n_workers,
            "wall_s_workers": max(total / n_workers, critical), "critical_path_s": critical,
            "calibration": calibration, "stale": stale,
            "notes": sorted(costs.notes.union(*(r.notes for r in rows.values()), [stale] if stale else []))}


def _price(graph: dict[str, Node], costs: MeasuredCosts) -> tuple[dict[str, PlanRow], dict[str, float]]:
    """Each task's estimated seconds (by key), summed per kind."""
    rows = {k: PlanRow(k) for k in BASE_KINDS}
    seconds: dict[str, float] = {}
    resumed = []
    for key, node in graph.items():
        row = rows.setdefault(node.kind, PlanRow(node.kind))
        row.count += 1
        if isinstance(node.task, TrainTask):
            done = node.task.saved_fraction(costs)
            if done:
                resumed.append(f"{node.label} {done:.0%} done")
        cost = node.task.cost(costs)
        if cost is None:
            row.notes.add(f"{node.kind} tasks of {type(node.task).__name__} declare no cost; counted as 0")
            cost = 0.0
        seconds[key] = float(cost)
        row.seconds += seconds[key]
    if resumed:
        rows["train"].notes.add(f"{len(resumed)} training(s) resume from a saved state (priced for what is left): "
                                + ", ".join(resumed))
    return rows, seconds


def _critical_path(graph: dict[str, Node], seconds: dict[str, float]) -> float:
    """Longest chain of task costs (a lower bound of the wall time on any number of workers)."""
    memo: dict[str, float] = {}

    def longest(key: str) -> float:
        if key not in memo:
            memo[key] = seconds[key] + max((longest(d) for d in graph[key].deps if d in graph), default=0.0)
        return memo[key]

    return max(longest(k) for k in graph)


def _hms(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(suite: Any, **kwargs: Any) -> str:
    """The plan as text: tasks per kind, estimated time per kind, total on this device and on N workers."""
    p = plan_suite(suite, **kwargs)
    lines = [f"plan for suite {p['suite']} v{p['version']} on {p['device']}: {p['cells']} cells"
             + (f", {p['cells_done']} already done in {p['out']}" if p["cells_done"] else "")]
    lines.append(f"{'task':<10} {'to run':>7} {'cached':>7} {'estimated':>11}")
    for kind in p["tasks"]:
        lines.append(f"{kind:<10} {p['tasks'][kind]:>7} {p['cached'][kind]:>7} {_hms(p['seconds'][kind]):>11}")
    lines.append(f"total on 1 worker: {_hms(p['total_s'])}"
                 + (f" ({p['total_s'] / 3600:.1f} device-hours)" if p["total_s"] > 3600 else ""))
    if p["workers"] > 1:
        lines.append(f"on {p['workers']} workers: {_hms(p['wall_s_workers'])} (critical path {_hms(p['critical_path_s'])})")
    lines.append("basis: training steps, forwards and input gradients timed on this device (cached in "
                 f"{calibration_file()}); evaluation priced by counted passes")
    lines.append(p["calibration"])
    lines.extend(f"note: {n}" for n in p["notes"])
    return "\n".join(lines)
