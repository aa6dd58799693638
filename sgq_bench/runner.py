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

from sgq_bench._io import append_jsonl, atomic_write_text, stable_hash
from sgq_bench._provenance import provenance
from sgq_bench.config.suite import Suite, load_suite
from sgq_bench.errors import UsageError, did_you_mean
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
    """The suite's cells in a stable order (dataset, method, seed), filtered by ``only``.

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
        for method in suite.methods:
            for seed in suite.seeds:
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
        except ValueError as exc:
            raise UsageError(f"{path}: line {i} is not a JSON object ({exc}); fix or delete that line") from None
        rows.append(row)
    return rows


def done_keys(out: Path) -> set[str]:
    """Keys of the cells finished in ``out`` (from ``cells.jsonl``)."""
    return {r["key"] for r in read_jsonl(out / "cells.jsonl") if r.get("status") == "done" and "key" in r}


def save_attribution_samples(cell: Cell, out: Path, *, device: Any = "cpu", data_root: Any = None,
                             checkpoint_dir: Any = None) -> Path | None:
    """Attributions of a few fixed test images for the saliency-grid figure (``DIR/attributions/``).

    Why recompute here: metric rows keep numbers, not maps; a handful of images per cell is cheap and
    the same images (a seeded pick from the test split, identical for every method) make the grid
    comparable across rows. As in the evaluation, each map explains the model's predicted class.
    """
    if not cell.explainers:
        return None
    import torch

    from sgq_bench import _registry
    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.train import load_or_train, resolve_device

    dev = resolve_device(device)
    model = load_or_train(cell.spec, data_root=data_root, device=dev, checkpoint_dir=checkpoint_dir,
                          progress=False).model.eval()
    dataset = load_dataset(cell.spec.dataset, cell.spec.dataset_params)
    test = load_split(dataset, False, data_root)
    g = torch.Generator().manual_seed(cell.eval_seed + 7)
    idx = torch.randperm(len(test), generator=g)[:N_SALIENCY_IMAGES].sort().values
    images, labels = test.images[idx], test.labels[idx]
    x = dataset.normalize(images.to(dev))
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = {}
    for name in cell.explainers:
        explainer = _registry.explainers.get(name)()
        if hasattr(explainer, "setup"):
            explainer.setup(dataset)
        maps[name] = explainer.attribute(model, x, pred).detach().float().cpu()
    pred = pred.cpu()
    path = out / "attributions" / f"{cell.slug}.pt"
    from sgq_bench._io import atomic_torch_save

    atomic_torch_save(path, {"cell": cell.id, "method": cell.spec.method.name, "method_label": cell.spec.method.label(),
                             "dataset": cell.spec.dataset, "seed": cell.spec.seed, "index": idx, "images": images,
                             "labels": labels, "pred": pred, "attributions": maps})
    return path


def run_cell(cell: Cell, out: Path, *, device: Any = "cpu", data_root: Any = None, checkpoint_dir: Any = None,
             progress: bool = True) -> int:
    """Score one cell into ``out/results.jsonl``; returns the number of rows it produced.

    Pure in its inputs: everything that determines the numbers is in ``cell``; ``out`` only says
    where they go. Rows already present (a resumed cell) are skipped by ``evaluate_cell``.
    """
    from sgq_bench.evaluate import evaluate_cell

    rows = evaluate_cell(
        cell.spec,
        explainers=list(cell.explainers),
        metrics=list(cell.metrics),
        eval_size=cell.eval_size,
        metric_params=cell.metric_params,
        device=device,
        data_root=data_root,
        checkpoint_dir=checkpoint_dir,
        results_path=out / "results.jsonl",
        suite=cell.suite,
        suite_version=cell.suite_version,
        progress=progress,
        eval_seed=cell.eval_seed,
    )
    save_attribution_samples(cell, out, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
    return len(rows)


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


def _manifest(out: Path, suite: Suite, only: dict[str, set[str]], device: Any) -> dict[str, Any]:
    """Load ``manifest.json`` (refusing a different suite configuration) or start a new one."""
    path = out / "manifest.json"
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
        if manifest.get("fingerprint") != suite.fingerprint():
            raise UsageError(
                f"{out} holds results of a different configuration of suite "
                f"{manifest.get('suite', {}).get('name')!r} (fingerprint {manifest.get('fingerprint')} != "
                f"{suite.fingerprint()}); use another --out"
            )
    else:
        manifest = {"fingerprint": suite.fingerprint(), "runs": []}
    manifest["suite"] = suite.as_dict()
    manifest["runs"].append({
        "started": _now(), "finished": None, "status": "running",
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
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run (or resume) a suite into ``out`` and write its report; the Python twin of ``sgq-bench run``.

    Args:
        suite: a suite name (``configs/<name>.toml``), a path, or a loaded ``Suite``.
        out: run directory (default ``runs/<suite name>``); rerunning into it resumes.
        only: ``"dataset=mnist,method=sgt"`` or its parsed form; restricts the cells run now.
        overrides: dotted ``--set`` keys applied before validation.
        device, data_root, checkpoint_dir: passed to training and evaluation.
        progress: tqdm bars (the current cell and overall).
        report, figures: write ``summary.{csv,md}`` (and ``figures/``) at the end.
        threads: torch intra-op threads for this run (restored afterwards; recorded in the manifest).
            On a shared or oversubscribed CPU, 1 is often several times faster than the default.
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
    from sgq_bench._plugins import report_broken

    report_broken(log)  # installed-but-broken plugins: one line each, and the run goes on
    out = Path(out) if out is not None else Path("runs") / suite.name
    check_writable(out)
    results_path = out / "results.jsonl"
    if results_path.exists():
        from sgq_bench.evaluate import read_results

        read_results(results_path)  # a corrupted line stops us here, before anything is written
    finished = done_keys(out)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads {threads!r} must be an integer >= 1")
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    old_term = _terminate_as_interrupt()
    try:
        return _run_cells(suite, cells, out, only, device, data_root, checkpoint_dir, progress, report, figures,
                          finished, log)
    finally:
        torch.set_num_threads(old_threads)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


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


def _run_cells(suite: Suite, cells: list[Cell], out: Path, only: dict[str, set[str]], device: Any, data_root: Any,
               checkpoint_dir: Any, progress: bool, report: bool, figures: bool, finished: set[str],
               log: Callable[[str], None]) -> RunResult:
    """The loop of ``run`` once inputs are validated: manifest, cells in order, errors, report."""
    from tqdm.auto import tqdm

    results_path = out / "results.jsonl"
    manifest = _manifest(out, suite, only, device)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    todo = [c for c in cells if c.key() not in finished]
    log(f"suite {suite.name} v{suite.version}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to run -> {out}")
    started = time.perf_counter()
    failed: list[str] = []
    status = "interrupted"
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="suite", unit="cell",
               disable=not progress, position=0, dynamic_ncols=True)
    try:
        for cell in todo:
            bar.set_description(f"cell {cell.id}")
            t0 = time.perf_counter()
            try:
                n = run_cell(cell, out, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir,
                             progress=progress)
            except Exception as exc:  # one failing cell must not stop the others
                failed.append(cell.id)
                append_jsonl(out / "errors.jsonl", [{
                    "cell": cell.id, "key": cell.key(), "error": type(exc).__name__,
                    "message": str(exc).splitlines()[0] if str(exc) else "", "traceback": traceback.format_exc(),
                    "time": _now(),
                }])
                log(f"cell {cell.id} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            else:
                append_jsonl(out / "cells.jsonl", [{
                    "cell": cell.id, "key": cell.key(), "status": "done", "rows": n,
                    "time_s": round(time.perf_counter() - t0, 3), "finished": _now(),
                }])
            bar.update(1)
        status = "failed" if failed else "done"
    finally:
        bar.close()
        run_info = manifest["runs"][-1]
        run_info.update(finished=_now(), status=status, wall_s=round(time.perf_counter() - started, 1),
                        cells_total=len(cells), cells_run=len(todo) - len(failed), cells_failed=failed)
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    wall = time.perf_counter() - started
    result = RunResult(out, len(cells), len(todo) - len(failed), len(cells) - len(todo), failed, wall)
    if report and results_path.exists():
        from sgq_bench.report.tables import write_report

        result.summary_md = write_report(out, figures=figures)
    return result
