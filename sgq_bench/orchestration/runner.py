"""The resumable suite runner: ``sgq_bench.run(suite)`` and ``sgq-bench run``.

A suite becomes cells (``cells``), the cells a task graph (``graph``), and the driver (``driver``) feeds
it to an executor (``executors``). Everything is checked before any work starts (suite, ``--only``,
device, threads, claims file, plugins, a writable ``--out`` of the same configuration); the run holds the
directory's lock throughout, records itself in ``manifest.json`` and resumes whatever a killed or
interrupted run left: finished cells are skipped, finished trainings and metric tasks are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgq_bench import checkpoints
from sgq_bench._signals import sigterm_as_interrupt
from sgq_bench.config.suite import Suite, load_suite
from sgq_bench.errors import UsageError, warn
from sgq_bench.orchestration.cells import expand, parse_only
from sgq_bench.orchestration.rundir import (
    check_writable,
    done_keys,
    now,
    remove_stale_temps,
    start_manifest,
    write_manifest,
)
from sgq_bench.specs import Cell, ExecContext

BASE_KINDS = ("train", "rank", "retrain", "evaluate")  # always shown in the task counts, even at 0


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


def run(suite: str | Path | Suite, *, out: str | Path | None = None, only: str | dict[str, set[str]] | None = None,
        overrides: dict[str, Any] | None = None, device: str = "cpu", data_root: Any = None,
        checkpoint_dir: Any = None, progress: bool = True, report: bool = True, figures: bool = True,
        threads: int | None = None, executor: str = "serial", address: str | None = None,
        workers: int | None = None, lock_timeout_s: float | None = None, log: Callable[[str], None] = print,
        claims: str | Path | None = None, estimates: Any = None) -> RunResult:
    """Run (or resume) a suite into ``out`` and write its report; the Python twin of ``sgq-bench run``.

    ``estimates``: a ``CostModel`` whose seconds the log lines quote (the CLI passes the plan's calibrated
    timings, ``views.calibration.MeasuredCosts(measure=False)``; this layer does not import the views).

    Args:
        suite: a suite name (``configs/<name>.toml``), a path, or a loaded ``Suite``.
        out: run directory (default ``runs/<suite name>``); rerunning into it resumes.
        only: ``"dataset=mnist,method=sgt"`` or its parsed form; restricts the cells run now.
        overrides: dotted ``--set`` keys applied before validation.
        device, data_root, checkpoint_dir, threads: where and how tasks run (``ExecContext``). On a shared
            or oversubscribed CPU, ``threads=1`` is often several times faster than the default.
        progress: tqdm bars (tasks across all workers).
        report, figures, claims: write ``summary.{csv,md}`` (``figures/``; ``claims.{csv,md}``, the verdict
            of each claim of this claims file or packaged set, checked before any work starts) at the end.
        executor, address, workers: ``serial`` (this process) or ``ray`` (``address`` joins a running
            cluster; default: a local one with ``workers`` task slots).
        lock_timeout_s: how long to wait for another run writing ``out`` (None: as long as it takes).
        log: where one-line status messages go.

    Returns:
        A ``RunResult``; ``failed`` lists the ids of the cells that raised (see ``DIR/errors.jsonl``).
    """
    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), overrides)
    elif overrides:
        raise UsageError("overrides apply to a suite name or path, not to an already loaded Suite")
    only = parse_only(only) if isinstance(only, str) or only is None else only
    cells = expand(suite, only)
    ctx = ExecContext(device=str(device), data_root=data_root, checkpoint_dir=checkpoint_dir, threads=threads,
                      progress=progress and executor == "serial")
    _check_before_work(suite, ctx, executor, workers, claims, log)
    out = Path(out) if out is not None else Path("runs") / suite.name
    check_writable(out)
    from sgq_bench._lock import run_lock

    with run_lock(out, timeout_s=lock_timeout_s, log=log):
        remove_stale_temps(out, checkpoints.checkpoint_dir(checkpoint_dir))
        from sgq_bench.results import open_store

        open_store(out, log)  # migrate an older directory; rebuild results.jsonl from the store
        with _torch_threads(threads), sigterm_as_interrupt():
            result = _run_cells(suite, cells, out, only, ctx, executor, address, workers, progress, log,
                                    estimates)
        if report and (out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size:
            from sgq_bench.report.tables import write_report

            result.summary_md = write_report(out, figures=figures, claims=claims)
    return result


def _check_before_work(suite: Suite, ctx: ExecContext, executor: str, workers: int | None,
                       claims: str | Path | None, log: Callable[[str], None]) -> None:
    """Everything that can be refused is refused now, not after hours of training."""
    from sgq_bench._plugins import report_broken
    from sgq_bench.train import resolve_device

    resolve_device(ctx.device)
    threads = ctx.threads
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UsageError(f"--threads {threads!r} must be an integer >= 1")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers {workers!r} must be an integer >= 1")
    if claims is not None:
        from sgq_bench.report.claims import load_claims

        load_claims(claims)
    if executor == "ray":
        from sgq_bench.orchestration.executors import check_importable_plugins

        check_importable_plugins(suite_plugin_names(suite))
    report_broken(log)  # installed-but-broken plugins: one line each, and the run goes on
    check_sizes(suite, ctx)
    check_external_models(suite, ctx)


def check_external_models(suite: Suite, ctx: ExecContext) -> None:
    """Each ``[models.*]`` file fits its declared architecture (keys and shapes), and no metric of the
    suite needs tasks of its own for it: those (ROAR/KAR's rankings and retrains) are keyed by a training
    spec, which an external model does not have."""
    from sgq_bench.orchestration.graph import metric_tasks
    from sgq_bench.weights import load_external

    by_sha = {x.sha256: x for x in suite.models}
    for cell in (c for c in expand(suite) if c.weights_sha256):
        ext = by_sha[cell.weights_sha256]
        try:
            load_external(cell.spec, Path(ext.weights), "cpu")
        except UsageError as exc:
            raise UsageError(f"suite {suite.name!r}: models.{ext.name}: {exc}") from None
        tasked = sorted({m for m in cell.metrics if metric_tasks(replace(cell, metrics=(m,)), ctx)})
        if tasked:
            raise UsageError(f"suite {suite.name!r}: models.{ext.name}: metric(s) {', '.join(tasked)} need a "
                             "training spec (they rank and retrain from our own checkpoints); score external "
                             "models with the other metrics")


def check_sizes(suite: Suite, ctx: ExecContext) -> None:
    """Every size a suite asks for fits its splits (a recipe's or a metric's ``train_size``, ``eval_size``):
    found now, in one line, rather than as a failed cell after hours of other work."""
    from sgq_bench.data import load_dataset, load_split

    for entry in suite.datasets:
        dataset = load_dataset(entry.name, dict(entry.dataset_params))
        n_train, n_test = (len(load_split(dataset, train, ctx.data_root)) for train in (True, False))
        sizes = [("train_size", f"datasets.{entry.name}.recipe.train_size", entry.recipe.train_size, n_train),
                 ("eval_size", f"datasets.{entry.name}.eval_size", entry.eval_size, n_test)]
        for metric, params in suite.params_for(entry.name).items():
            if params.get("train_size"):
                sizes.append(("train_size", f"evaluate.params.{metric}.train_size", params["train_size"], n_train))
        for what, where, size, limit in sizes:
            if size and size > limit:
                split = "training" if what == "train_size" else "test"
                raise UsageError(f"suite {suite.name!r}: {where} = {size} exceeds the {limit} images of the "
                                 f"{entry.name} {split} split; use a value <= {limit}")


class _torch_threads:  # noqa: N801 - used as a context manager, like contextlib's
    """Set torch's intra-op threads for the run and restore them afterwards."""

    def __init__(self, threads: int | None) -> None:
        self.threads, self.old = threads, None

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.old)


def suite_plugin_names(suite: Suite) -> dict[str, set[str]]:
    """Every plugin name a suite uses, by registry kind."""
    names: dict[str, set[str]] = {"datasets": set(), "models": set(), "quantizers": set(), "objectives": set(),
                                  "explainers": set(suite.explainers), "metrics": set(suite.metrics)}
    for entry in suite.datasets:
        names["datasets"].add(entry.name)
        names["models"].add(entry.model)
    for m in suite.methods:
        names["quantizers"].add(m.quantizer)
        names["objectives"].add(m.objective)
    return names


def _planned(graph: dict[str, Any], estimates: Any) -> dict[str, float]:
    """The plan's estimate of each task for the log lines (none without a cost model)."""
    from sgq_bench.orchestration.driver import planned_seconds

    if estimates is None:
        return {}
    try:
        return planned_seconds(graph, estimates)
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run
        warn(f"no plan estimates in the log ({type(exc).__name__}: {exc})")
        return {}


def _run_cells(suite: Suite, cells: list[Cell], out: Path, only: dict[str, set[str]], ctx: ExecContext,
               executor_name: str, address: str | None, workers: int | None, progress: bool,
               log: Callable[[str], None], estimates: Any = None) -> RunResult:
    """Build the graph of the cells not yet done, drive it, and record the run in the manifest."""
    from tqdm.auto import tqdm

    from sgq_bench.orchestration.driver import Drive
    from sgq_bench.orchestration.executors import make_executor
    from sgq_bench.orchestration.graph import build_graph

    manifest = start_manifest(out, suite, only, ctx.device)
    run_info = manifest["runs"][-1]
    run_info.update(device=ctx.device, executor=executor_name, address=address, threads=ctx.threads)
    write_manifest(out, manifest)
    finished = done_keys(out)
    todo = [c for c in cells if c.key() not in finished]
    graph = build_graph(todo, ctx)
    counts = dict.fromkeys(BASE_KINDS, 0)
    for node in graph.values():
        counts[node.kind] = counts.get(node.kind, 0) + 1
    log(f"suite {suite.name} v{suite.version}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to run -> {out} (tasks: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")")
    started = time.perf_counter()
    status = "interrupted"
    ex = make_executor(executor_name, ctx, address=address, workers=workers)
    bar = tqdm(total=len(graph), desc="tasks", unit="task", disable=not progress, position=0, dynamic_ncols=True)
    drive = Drive(graph, ex, out, log, bar, planned=_planned(graph, estimates))
    try:
        drive.run()
        status = "failed" if drive.failed else "done"
    except KeyboardInterrupt:
        grace = getattr(ex, "cancel_grace_s", 0)
        if grace and ex.pending():
            log(f"stopping: running tasks get up to {grace:.0f} s to save their state; interrupt again to kill them")
        ex.cancel()
        raise
    finally:
        bar.close()
        ex.close()
        failed_cells = drive.failed_cells()
        # what finished, not what was planned: an interrupted run counts the cells whose rows it stored
        run_info.update(finished=now(), status=status, wall_s=round(time.perf_counter() - started, 1),
                        cells_total=len(cells), cells_run=len(drive.recorded), cells_failed=failed_cells,
                        tasks=counts)
        try:
            write_manifest(out, manifest)
        except OSError as exc:
            warn(f"could not update {out / 'manifest.json'} ({exc.strerror or exc})")
    return RunResult(out, len(cells), len(drive.recorded), len(cells) - len(todo), failed_cells,
                     time.perf_counter() - started)
