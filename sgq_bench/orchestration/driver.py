"""The driver: feed ready tasks of the graph to an executor, write what comes back.

The driver is the only writer of the run directory: workers return rows and saliency samples. A task that
raises fails the cells that need it (``errors.jsonl``); the other cells go on. A cell is done when its rows
are in the results store (``results.store_cell``: all of them or none); ``cells.jsonl`` logs it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_torch_save
from sgq_bench._log import logger
from sgq_bench.orchestration.graph import EvaluateTask, Node, samples_path
from sgq_bench.orchestration.rundir import now, safe_append

_LOG = logger("run")


@dataclass
class Drive:
    """One pass over a graph: what is left, submitted, done and failed (task key -> one-line error)."""

    graph: dict[str, Node]
    executor: Any
    out: Path
    log: Callable[[str], None]
    bar: Any
    failed: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    recorded: list[str] = field(default_factory=list)  # ids of the cells whose rows were stored in this pass
    planned: dict[str, float] = field(default_factory=dict)  # task key -> the plan's seconds, where known

    def __post_init__(self) -> None:
        self.started: dict[str, float] = {}
        self.remaining = dict(self.graph)
        self.submitted: set[str] = set()
        self.users = {k: sum(1 for n in self.graph.values() if k in n.deps) for k in self.graph}
        self.order = {k: i for i, k in enumerate(self.graph)}
        self.took: dict[str, float] = {}  # task key -> measured seconds (finished tasks with a plan)

    def run(self) -> None:
        """Until nothing is left: submit what is ready, record what finishes."""
        while self.remaining:
            self._submit_ready()
            if not self.executor.pending():
                break
            for key, ok, value in self.executor.wait():
                self._finished(key, ok, value)

    def failed_cells(self) -> list[str]:
        return sorted({cid for k in self.failed for cid in self.graph[k].cells})

    def _ready(self) -> list[str]:
        ready = []
        for key, node in list(self.remaining.items()):
            if key in self.submitted:
                continue
            if any(d not in self.done for d in node.deps):
                bad = next((d for d in node.deps if d in self.failed), None)
                if bad is not None:  # a dependency failed: so does this task, without running
                    self.failed[key] = self.failed[bad]
                    self.remaining.pop(key)
                    self.bar.update(1)
                continue
            ready.append(key)
        return ready

    def _submit_ready(self) -> None:
        # Only as many tasks as workers are handed out; work on models already trained first, then in cell
        # order: each cell's rows arrive (and are saved) as soon as its model exists, instead of after
        # every training queued ahead of its scoring. One worker is then depth-first.
        ready = sorted(self._ready(), key=lambda k: (self.graph[k].kind == "train", self.order[k]))
        for key in ready[: max(0, self.executor.workers - self.executor.pending())]:  # a cluster can grow
            self.executor.submit(self.graph[key])
            self.submitted.add(key)
            self.started[key] = time.monotonic()
            if self.bar.disable:
                _LOG.info("start %s %s", self.graph[key].kind, self.graph[key].label)

    def _finished(self, key: str, ok: bool, value: Any) -> None:
        node = self.remaining.pop(key)
        self.bar.update(1)
        self.bar.set_description(f"{node.kind} {node.label}"[:60])
        seconds = time.monotonic() - self.started.get(key, time.monotonic())
        if ok and key in self.planned:
            self.took[key] = seconds
        if self.bar.disable:  # no progress bar (a log file, a scheduler): one line per task
            left = len(self.graph) - len(self.done) - len(self.failed) - 1
            _LOG.info("%s %s %s in %.0f s%s; %d task(s) left%s", "done" if ok else "FAILED", node.kind,
                      node.label, seconds, _planned(self.planned.get(key)), left, self._eta())
        for d in node.deps:
            self.users[d] -= 1
            if self.users[d] == 0:
                self.executor.release(d)
        if not ok:
            self._record_failure(node, value)
            return
        self.done.add(key)
        if isinstance(node.task, EvaluateTask):
            self._record_cell(node.task, value)
        if self.users[key] == 0:
            self.executor.release(key)

    def _eta(self) -> str:
        """', plan: 3.2 h left (4.1 h at this run's pace)': the plan's seconds for what is left, and scaled by
        measured/planned over the tasks finished so far (the plan is timed idle; a busy machine is slower)."""
        left = sum(v for k, v in self.planned.items() if k in self.remaining)
        if not left:
            return ""
        text = f", plan: {_duration(left)} left"
        planned_done = sum(self.planned[k] for k in self.took)
        if planned_done > 0:
            text += f" ({_duration(left * sum(self.took.values()) / planned_done)} at this run's pace)"
        return text

    def _record_failure(self, node: Node, exc: BaseException) -> None:
        message = str(exc).splitlines()[0] if str(exc) else ""
        self.failed[node.key] = f"{type(exc).__name__}: {message}"
        for cid in node.cells:
            self.log(f"cell {cid} FAILED in {node.kind} {node.label}: {self.failed[node.key]}")
        cell_keys = {n.task.cell.id: n.task.cell.key() for n in self.graph.values() if isinstance(n.task, EvaluateTask)}
        safe_append(self.out / "errors.jsonl", [{
            "cell": cid, "key": cell_keys.get(cid), "task": node.key, "error": type(exc).__name__,
            "message": message, "time": now(), "traceback": "".join(traceback.format_exception(exc)),
        } for cid in node.cells])

    def _record_cell(self, task: EvaluateTask, value: dict[str, Any]) -> None:
        from sgq_bench.results import store_cell

        cell = task.cell
        if value.get("samples") is not None:  # before the rows: a cell that is done has its figure samples
            atomic_torch_save(samples_path(self.out, cell), value["samples"])
        store_cell(self.out, cell.slug, cell.id, cell.key(), value["rows"])  # the cell is done once this lands
        self.recorded.append(cell.id)
        safe_append(self.out / "cells.jsonl", [{  # a log for people; the store decides what is done
            "cell": cell.id, "key": cell.key(), "status": "done", "rows": len(value["rows"]), "finished": now()}])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _planned(seconds: float | None) -> str:
    return "" if seconds is None else f" (plan {_duration(seconds)})"


def planned_seconds(graph: dict[str, Node], costs: Any) -> dict[str, float]:
    """The plan's seconds per task, where ``costs`` knows them (a cost model that must not measure raises
    a ``LookupError``, ``views.calibration.NotCalibrated``, for a timing it lacks: that task has none)."""
    out = {}
    for key, node in graph.items():
        try:
            cost = node.task.cost(costs)
        except LookupError:
            continue
        if cost is not None:
            out[key] = float(cost)
    return out
