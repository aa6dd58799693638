"""The resumable suite runner: a suite becomes cells (dataset x model x method x seed), each scored once.

Why cells: a cell is a pure function of its frozen spec (no shared mutable state), so a rerun, a
resumed run after a crash or Ctrl-C, or a later executor farming cells out to other machines all
produce the same rows. Completion is recorded per cell in ``DIR/cells.jsonl`` (keyed by the hash of
everything that determines the cell's numbers), results are appended to ``DIR/results.jsonl`` as
they are produced, and failures go to ``DIR/errors.jsonl`` without stopping the other cells.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sgq_bench import checkpoints
from sgq_bench._io import append_jsonl, atomic_write_text, stable_hash
from sgq_bench._provenance import provenance
from sgq_bench.config.suite import Suite, load_suite
from sgq_bench.errors import UsageError, did_you_mean, warn
from sgq_bench.train import TrainSpec

ONLY_FIELDS = ("dataset", "model", "method", "seed")
N_SALIENCY_IMAGES = 6  # images kept per cell for the saliency-grid figure


@dataclass(frozen=True)
class Cell:
    """One unit of work: train (or load) one model and score it with the suite's explainers and metrics."""

    spec: TrainSpec
    explainers: tuple[str, ...]
    metrics: tuple[str, ...]
    eval_size: int
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_seed: int = 0
    suite: str = ""
    suite_version: str = ""

    @property
    def id(self) -> str:
        s = self.spec
        return f"{s.dataset}/{s.model}/{s.method.name}/s{s.seed}"

    @property
    def slug(self) -> str:
        return self.id.replace("/", "-")

    def key(self) -> str:
        """Hash of everything that determines this cell's rows (the model key plus what is scored)."""
        return stable_hash({
            "model": self.spec.key(),
            "explainers": list(self.explainers),
            "metrics": list(self.metrics),
            "eval_size": self.eval_size,
            "metric_params": self.metric_params,
            "eval_seed": self.eval_seed,
            "suite": self.suite,
            "suite_version": self.suite_version,
        })[:20]


def parse_only(text: str | None) -> dict[str, set[str]]:
    """``"dataset=mnist,method=sgt,method=pact"`` -> ``{"dataset": {"mnist"}, "method": {"sgt", "pact"}}``."""
    out: dict[str, set[str]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UsageError(f"--only {item!r} is not FIELD=VALUE (fields: {', '.join(ONLY_FIELDS)})")
        if key not in ONLY_FIELDS:
            raise UsageError(f"--only: unknown field {key!r}; allowed: {', '.join(ONLY_FIELDS)}")
        out.setdefault(key, set()).add(value)
    return out


def expand(suite: Suite, only: dict[str, set[str]] | None = None) -> list[Cell]:
    """The suite's cells in a stable order (dataset, seed, method), filtered by ``only``.

    Seed before method: a run stopped part-way (or several workers taking cells in this order) has
    whole seeds, each a complete comparison of the methods, rather than every seed of the first method.

    A value in ``only`` that matches nothing in the suite is an error with suggestions, so a typo
    does not silently run nothing.
    """
    only = only or {}
    choices = {
        "dataset": [d.name for d in suite.datasets],
        "model": [d.model for d in suite.datasets],
        "method": [m.name for m in suite.methods],
        "seed": [str(s) for s in suite.seeds],
    }
    for key, values in only.items():
        for v in values:
            if v not in choices[key]:
                raise UsageError(f"--only {key}={v}: the suite {suite.name!r} has no such {key}."
                                 f"{did_you_mean(v, choices[key])}")
    cells = []
    for plan in suite.datasets:
        params = suite.params_for(plan.name)
        for seed in suite.seeds:
            for method in suite.methods:
                fields_ = {"dataset": plan.name, "model": plan.model, "method": method.name, "seed": str(seed)}
                if any(fields_[k] not in v for k, v in only.items()):
                    continue
                spec = TrainSpec(plan.name, plan.model, method, plan.recipe, seed, dict(plan.dataset_params))
                cells.append(Cell(spec, suite.explainers, suite.metrics, plan.eval_size, params,
                                  suite.eval_seed, suite.name, suite.version))
    return cells


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove it is writable before any work starts (one-line error otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {str(out)!r} is not writable ({exc.strerror or exc})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a runner bookkeeping file; a corrupted line is a one-line error naming file and line."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:  # a writer killed mid-line: its cell is simply not recorded as done
            warn(f"{path}: line {i} is not a JSON object ({exc}); skipped")
            continue
        rows.append(row)
    return rows


def done_keys(out: Path) -> set[str]:
    """Keys of the cells finished in ``out`` (from ``cells.jsonl``)."""
    return {r["key"] for r in read_jsonl(out / "cells.jsonl") if r.get("status") == "done" and "key" in r}


@dataclass
class RunResult:
    """What a run did: where, how many cells ran / were skipped / failed, how long it took."""

    out: Path
    cells: int
    done: int
    skipped: int
    failed: list[str]
    wall_s: float
    summary_md: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed


def read_manifest(out: Path, suite: Suite) -> dict[str, Any] | None:
    """``out/manifest.json`` (None if absent); a run directory of another suite configuration is refused,
    by ``run`` and by what reads a run directory for it (``status``, ``--plan``) alike."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
    if manifest.get("fingerprint") != suite.fingerprint():
        raise UsageError(
            f"{out} holds results of a different configuration of suite "
            f"{manifest.get('suite', {}).get('name')!r} (fingerprint {manifest.get('fingerprint')} != "
            f"{suite.fingerprint()}); use another --out, or the --set values that run used"
        )
    return manifest


def manifest_device(manifest: dict[str, Any] | None) -> str | None:
    """The ``--device`` of a run directory's latest run (older manifests: from its provenance)."""
    runs = (manifest or {}).get("runs") or [{}]
    device = runs[-1].get("device") or str(runs[-1].get("provenance", {}).get("device", "")).split(":")[0]
    return device or None


def _manifest(out: Path, suite: Suite, only: dict[str, set[str]], device: Any) -> dict[str, Any]:
    """Load ``manifest.json`` (refusing a different suite configuration) or start a new one."""
    manifest = read_manifest(out, suite) or {"fingerprint": suite.fingerprint(), "runs": []}
    manifest["suite"] = suite.as_dict()
    for earlier in manifest["runs"]:  # we hold the lock: a run still 'running' was killed (SIGKILL, power)
        if earlier.get("status") == "running":
            earlier.update(status="killed", note=f"found running by the run started {_now()}; its process "
                           "ended without recording (SIGKILL or a crash); its finished cells are kept")
    manifest["runs"].append({
        "started": _now(), "finished": None, "status": "running", "pid": os.getpid(),
        "only": {k: sorted(v) for k, v in only.items()}, "provenance": provenance(device),
    })
    return manifest


def run(
    suite: str | Path | Suite,
    *,
    out: str | Path | None = None,
    only: str | dict[str, set[str]] | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    data_root: Any = None,
    checkpoint_dir: Any = None,
    progress: bool = True,
    report: bool = True,
    figures: bool = True,
    threads: int | None = None,
    executor: str = "serial",
    address: str | None = None,
    workers: int | None = None,
    lock_timeout_s: float | None = None,
    log: Callable[[str], None] = print,
    claims: str | Path | None = None,
) -> RunResult:
    """Run (or resume) a suite into ``out`` and write its report; the Python twin of ``sgq-bench run``.

    Args:
        suite: a suite name (``configs/<name>.toml``), a path, or a loaded ``Suite``.
        out: run directory (default ``runs/<suite name>``); rerunning into it resumes.
        only: ``"dataset=mnist,method=sgt"`` or its parsed form; restricts the cells run now.
        overrides: dotted ``--set`` keys applied before validation.
        device, data_root, checkpoint_dir: passed to training and evaluation.
        progress: tqdm bars (tasks across all workers).
        report, figures: write ``summary.{csv,md}`` (and ``figures/``) at the end.
        claims: with the report, also ``claims.{csv,md}``: the verdict of each claim of this claims file
            (or packaged set, e.g. ``paper``) across seeds; the file is checked before any work starts.
        threads: torch intra-op threads per task (restored afterwards; recorded in the manifest). On a
            shared or oversubscribed CPU, 1 is often several times faster than the default.
        executor: ``serial`` (this process) or ``ray`` (``address`` joins a running cluster; default: a
            local one with ``workers`` task slots).
        lock_timeout_s: how long to wait for another run writing ``out`` (None: as long as it takes).
        log: where one-line status messages go.

    Returns:
        A ``RunResult``; ``failed`` lists the ids of the cells that raised (see ``DIR/errors.jsonl``).
    """
    from sgq_bench.train import resolve_device

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), overrides)
    elif overrides:
        raise UsageError("overrides apply to a suite name or path, not to an already loaded Suite")
    only = parse_only(only) if isinstance(only, str) or only is None else only
    cells = expand(suite, only)
    resolve_device(device)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UsageError(f"--threads {threads!r} must be an integer >= 1")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers {workers!r} must be an integer >= 1")
    if claims is not None:
        from sgq_bench.report.claims import load_claims

        load_claims(claims)  # a bad claims file fails now, not after hours of training
    if executor == "ray":
        from sgq_bench.executors import check_importable_plugins

        check_importable_plugins(suite_plugin_names(suite))
    from sgq_bench._plugins import report_broken

    report_broken(log)  # installed-but-broken plugins: one line each, and the run goes on
    out = Path(out) if out is not None else Path("runs") / suite.name
    check_writable(out)
    from sgq_bench._lock import run_lock

    with run_lock(out, timeout_s=lock_timeout_s, log=log):
        _remove_stale_temps(out, checkpoints.checkpoint_dir(checkpoint_dir))
        results_path = out / "results.jsonl"
        _read_results(results_path)  # a corrupted line stops us here, before anything is written
        finished = done_keys(out)
        import torch

        old_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        old_term = _terminate_as_interrupt()
        try:
            result = _run_graph(suite, cells, out, only, device, data_root, checkpoint_dir, progress, finished,
                                threads, executor, address, workers, log)
        finally:
            torch.set_num_threads(old_threads)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        if report and results_path.exists():
            from sgq_bench.report.tables import write_report

            result.summary_md = write_report(out, figures=figures, claims=claims)
    return result


def suite_plugin_names(suite: Suite) -> dict[str, set[str]]:
    """Every plugin name a suite uses, by registry kind."""
    names: dict[str, set[str]] = {"datasets": set(), "models": set(), "quantizers": set(), "objectives": set(),
                                  "explainers": set(suite.explainers), "metrics": set(suite.metrics)}
    for plan in suite.datasets:
        names["datasets"].add(plan.name)
        names["models"].add(plan.model)
    for m in suite.methods:
        names["quantizers"].add(m.quantizer)
        names["objectives"].add(m.objective)
    return names


def _read_results(path: Path) -> None:
    from sgq_bench.results import read_rows

    read_rows(path)


def _remove_stale_temps(*dirs: Any) -> None:
    """Our own temp files left by killed writes (older than an hour, so no live write is touched)."""
    from sgq_bench._io import remove_stale_temps

    for d in dirs:
        if d is not None and Path(d).is_dir():
            remove_stale_temps(Path(d), recursive=True)


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill``, a scheduler's time limit) behave like Ctrl-C for the run's duration.

    Why: the ``finally`` blocks then record the run as interrupted in the manifest; finished cells
    are safe either way (every write is atomic). Returns the previous handler (None off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _safe_append(path: Path, rows: list[dict[str, Any]], log: Callable[[str], None]) -> bool:
    """Append bookkeeping rows; a full or read-only disk is reported in one line and the run goes on."""
    try:
        append_jsonl(path, rows)
        return True
    except OSError as exc:
        warn(f"could not write {path} ({exc.strerror or exc}); the run goes on")
        return False


def _write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    from sgq_bench.results import append_rows

    append_rows(out / "results.jsonl", rows)


def _run_graph(suite: Suite, cells: list[Cell], out: Path, only: dict[str, set[str]], device: Any, data_root: Any,
               checkpoint_dir: Any, progress: bool, finished: set[str], threads: int | None, executor_name: str,
               address: str | None, workers: int | None, log: Callable[[str], None]) -> RunResult:
    """The driver: build the task graph, feed ready tasks to the executor, write what comes back.

    The driver is the only writer of ``out``: workers return rows and saliency samples. A task that
    raises fails the cells that need it; the other cells go on.
    """
    from tqdm.auto import tqdm

    from sgq_bench._io import atomic_torch_save
    from sgq_bench.executors import make_executor
    from sgq_bench.tasks import ExecContext, build_graph, samples_path

    manifest = _manifest(out, suite, only, device)
    run_info = manifest["runs"][-1]
    run_info.update(device=str(device), executor=executor_name, address=address, threads=threads)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    todo = [c for c in cells if c.key() not in finished]
    by_id = {c.id: c for c in todo}
    graph = build_graph(todo, data_root=data_root, checkpoint_dir=checkpoint_dir, device=device)
    counts = {k: sum(1 for t in graph.values() if t.kind == k) for k in ("train", "rank", "retrain", "evaluate")}
    log(f"suite {suite.name} v{suite.version}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to run -> {out} (tasks: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")")
    started = time.perf_counter()
    failed: dict[str, str] = {}
    status = "interrupted"
    ctx = ExecContext(device=str(device), data_root=data_root, checkpoint_dir=checkpoint_dir, threads=threads,
                      progress=progress and executor_name == "serial")
    ex = make_executor(executor_name, ctx, address=address, workers=workers)
    bar = tqdm(total=len(graph), desc="tasks", unit="task", disable=not progress, position=0, dynamic_ncols=True)
    remaining = dict(graph)
    done_tasks: set[str] = set()
    submitted: set[str] = set()
    users = {k: sum(1 for t in graph.values() if k in t.deps) for k in graph}
    order = {k: i for i, k in enumerate(graph)}
    try:
        while remaining:
            ready = []
            for key, task in list(remaining.items()):
                if key in submitted:
                    continue
                if any(d in graph and d not in done_tasks for d in task.deps):
                    if any(d in failed for d in task.deps):
                        failed[key] = failed[next(d for d in task.deps if d in failed)]
                        remaining.pop(key)
                        bar.update(1)
                    continue
                ready.append(key)
            # Only as many tasks as workers are handed out, work on models already trained first, then in
            # cell order: each cell's rows arrive (and are saved) as soon as its model exists, instead of
            # after every training queued ahead of its scoring. One worker is then depth-first.
            ready.sort(key=lambda k: (graph[k].kind == "train", order[k]))
            for key in ready[: max(0, ex.workers - ex.pending())]:  # re-read: a cluster can grow
                ex.submit(graph[key])
                submitted.add(key)
            if not ex.pending():
                break
            for key, ok, value in ex.wait():
                task = remaining.pop(key)
                bar.update(1)
                bar.set_description(f"{task.kind} {task.label}"[:60])
                for d in task.deps:
                    users[d] -= 1
                    if users[d] == 0:
                        ex.release(d)
                if not ok:
                    message = str(value).splitlines()[0] if str(value) else ""
                    failed[key] = f"{type(value).__name__}: {message}"
                    for cid in task.cells:
                        log(f"cell {cid} FAILED in {task.kind} {task.label}: {failed[key]}")
                    _safe_append(out / "errors.jsonl", [{
                        "cell": cid, "key": by_id[cid].key() if cid in by_id else None, "task": key,
                        "error": type(value).__name__, "message": message, "time": _now(),
                        "traceback": "".join(traceback.format_exception(value)),
                    } for cid in task.cells], log)
                    continue
                done_tasks.add(key)
                if task.kind == "evaluate":
                    cell = task.payload
                    _write_rows(out, value["rows"])
                    if value.get("samples") is not None:
                        atomic_torch_save(samples_path(out, cell), value["samples"])
                    _safe_append(out / "cells.jsonl", [{
                        "cell": cell.id, "key": cell.key(), "status": "done", "rows": len(value["rows"]),
                        "finished": _now()}], log)
        status = "failed" if failed else "done"
    except KeyboardInterrupt:
        grace = getattr(ex, "cancel_grace_s", 0)
        if grace and ex.pending():
            log(f"stopping: running tasks get up to {grace:.0f} s to save their state; interrupt again to kill them")
        ex.cancel()
        raise
    finally:
        bar.close()
        ex.close()
        failed_cells = sorted({cid for k in failed for cid in graph[k].cells})
        run_info.update(finished=_now(), status=status, wall_s=round(time.perf_counter() - started, 1),
                        cells_total=len(cells), cells_run=len(todo) - len(failed_cells), cells_failed=failed_cells,
                        tasks=counts)
        try:
            atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
        except OSError as exc:
            warn(f"could not update {out / 'manifest.json'} ({exc.strerror or exc})")
    wall = time.perf_counter() - started
    return RunResult(out, len(cells), len(todo) - len(failed_cells), len(cells) - len(todo), failed_cells, wall)
