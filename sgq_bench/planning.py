"""``run --plan``: the tasks of a suite and what they will cost, before any work starts.

Estimates come from measurement: each (model, method, batch, precision, layout) training step is timed
on the device for a few steps (cached in ``<cache>/calibration.json``, keyed by device, CPU model, torch
version and threads), and so are an inference forward pass and an input-gradient pass of each model.
Evaluation is a cost model on top of those timings: the forward (or forward+backward) passes each
metric and explainer makes, as each plugin class declares them from its own parameters, built-in and
third-party alike: ``Metric.forward_passes(n_images, n_pixels, n_test)`` (image forwards on the evaluation
images) and ``Explainer.gradient_passes()`` (input-gradient passes per image). Where a plugin declares
none (the base methods return None), one pass per image is assumed and the plan says so.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text, stable_hash
from sgq_bench._provenance import cpu_model

CALIBRATION_STEPS = 5
WARMUP_STEPS = 2


@dataclass
class Timing:
    """Measured seconds: one training step at the recipe's batch, one image forward, one image input-gradient."""

    step_s: float
    fwd_img_s: float
    grad_img_s: float


@dataclass
class PlanRow:
    kind: str
    count: int = 0
    seconds: float = 0.0
    notes: set[str] = field(default_factory=set)


def _calibration_file() -> Path:
    from sgq_bench.data import cache_dir

    return cache_dir() / "calibration.json"


def calibrate(spec: Any, device: Any, *, data_root: Any = None, cache: dict[str, Any] | None = None,
              log: Any = None) -> Timing:
    """Time ``spec``'s training step, forward and input-gradient passes on ``device`` (cached)."""
    import torch

    from sgq_bench.data import batches, load_dataset, load_split
    from sgq_bench.train import build_model, inference_copy, make_optimizer, resolve_device, resolve_precision

    dev = resolve_device(device)
    recipe = resolve_precision(spec.recipe, dev)
    m = spec.method.resolved()
    key = stable_hash({"device": str(dev), "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                       "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "dataset": spec.dataset, "dataset_params": spec.dataset_params, "model": spec.model,
                       "method": {k: v for k, v in m.as_dict().items() if k != "name"},
                       "batch": recipe.batch_size, "precision": recipe.precision, "channels_last": recipe.channels_last,
                       "optimizer": recipe.optimizer})[:20]
    store = cache if cache is not None else _load_cache()
    if key in store:
        return Timing(**store[key])
    if log is not None:
        log(f"calibrating {spec.dataset}/{spec.model}/{spec.method.name} (batch {recipe.batch_size}, "
            f"{recipe.precision}) on {dev} ...")
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = load_split(dataset, True, data_root)
    model, quantizer, objective = build_model(spec, dataset)
    model.to(dev).train()
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(recipe, quantizer.param_groups(model, recipe.weight_decay))
    from sgq_bench._base import TrainContext

    ctx = TrainContext(generator=torch.Generator(device=dev).manual_seed(0))
    x, y = next(batches(dataset, split, recipe.batch_size, dev, shuffle=False))

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
            out = objective.compute(model, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step_s = _time(step, dev)
    fast = inference_copy(model, dev)
    from sgq_bench._batching import max_batch

    xb = x[: min(len(x), max(1, max_batch(fast, x[:1])))]
    if dev.type == "cpu" and xb.dim() == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)

    def fwd() -> None:
        with torch.no_grad():
            fast(xb)

    def grad() -> None:
        xi = xb.detach().clone().requires_grad_(True)
        out = fast(xi)
        torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), xi)

    timing = Timing(step_s, _time(fwd, dev) / len(xb), _time(grad, dev) / len(xb))
    store[key] = timing.__dict__
    if cache is None:
        _save_cache(store)
    return timing


def _time(fn: Any, dev: Any) -> float:
    import torch

    for _ in range(WARMUP_STEPS):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / CALIBRATION_STEPS


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(_calibration_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(store: dict[str, Any]) -> None:
    try:
        atomic_write_text(_calibration_file(), json.dumps(store, indent=1))
    except OSError:
        pass  # a read-only cache only costs a recalibration next time


def _train_images(spec: Any, data_root: Any) -> tuple[int, int]:
    from sgq_bench.data import load_dataset, load_split

    dataset = load_dataset(spec.dataset, spec.dataset_params)
    n_train = len(load_split(dataset, True, data_root))
    n_test = len(load_split(dataset, False, data_root))
    return (min(n_train, spec.recipe.train_size) if spec.recipe.train_size else n_train), n_test


def training_steps(spec: Any, data_root: Any) -> int:
    """Optimizer steps of ``spec``'s whole training, counted as ``train.train_model`` takes them."""
    n, _ = _train_images(spec, data_root)
    return max(1, n // spec.recipe.batch_size) * spec.recipe.epochs


def _training_seconds(spec: Any, timing: Timing, data_root: Any) -> float:
    _, n_test = _train_images(spec, data_root)
    steps = training_steps(spec, data_root)
    per_epoch_eval = n_test * timing.fwd_img_s * (spec.recipe.epochs if spec.recipe.epochs > 1 else 0)
    return steps * timing.step_s + per_epoch_eval + n_test * timing.fwd_img_s


def explainer_passes(explainer: Any) -> tuple[float, str | None]:
    """Input-gradient passes per image of an explainer (and a note when it is a guess).

    The explainer's ``gradient_passes()`` declaration prices it; a plain number attribute (the older form
    of the declaration) is accepted too. Undeclared: 0 for a model-independent explainer, else 1 and a note.
    """
    declared = getattr(explainer, "gradient_passes", None)
    if callable(declared):
        declared = declared()
    if declared is not None:
        return float(declared), None
    if getattr(explainer, "model_independent", False):
        return 0.0, None
    return 1.0, f"explainer {explainer.name!r} declares no gradient_passes; 1 per image assumed"


def metric_passes(metric: Any, n_images: int, n_pixels: int, n_test: int) -> tuple[float, str | None]:
    """Image forward passes of a metric on ``n_images`` evaluation images (and a note for a guess).

    The metric's ``forward_passes(n_images, n_pixels, n_test)`` declaration prices it (the older
    two-argument ``forward_passes(n_images, n_pixels)`` is accepted too); None: 1 per image and a note.
    """
    declared = getattr(metric, "forward_passes", None)
    if callable(declared):
        declared = declared(*_passes_args(declared, n_images, n_pixels, n_test))
    else:
        declared = None
    if declared is not None:
        return float(declared), None
    return float(n_images), f"metric {metric.name!r} declares no forward_passes; 1 per image assumed"


def _passes_args(fn: Any, n_images: int, n_pixels: int, n_test: int) -> tuple[int, ...]:
    """The arguments ``fn`` takes: all three, or (n_images, n_pixels) for a two-argument declaration."""
    try:
        inspect.signature(fn).bind(n_images, n_pixels, n_test)
    except TypeError:
        return n_images, n_pixels
    except ValueError:  # no signature to inspect (a builtin): pass all three
        pass
    return n_images, n_pixels, n_test


def _probe_seconds() -> float:
    """Seconds to start a fresh Python that imports torch (what each peak-memory probe pays)."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=False, capture_output=True)
    return time.perf_counter() - t0


def plan_suite(suite: Any, *, only: Any = None, overrides: dict[str, Any] | None = None, device: str = "cpu",
               workers: int | None = None, data_root: Any = None, checkpoint_dir: Any = None,
               out: Any = None, threads: int | None = None, log: Any = None) -> dict[str, Any]:
    """Count the suite's tasks and estimate their time on ``device``: what is left, as the same ``run``
    would see it.

    Cells finished in the run directory ``out`` (default ``runs/<suite>``, as ``run``), cached models
    and the part of a training that a saved mid-training state skips are left out; ``threads`` is timed
    as the run would use it.
    """
    import torch

    from sgq_bench.config.suite import Suite, load_suite
    from sgq_bench.runner import done_keys, expand, parse_only, read_manifest
    from sgq_bench.tasks import build_graph

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), overrides)
    only = parse_only(only) if isinstance(only, str) or only is None else only
    all_cells = expand(suite, only)
    out = Path(out) if out is not None else Path("runs") / suite.name
    if out.is_dir():
        read_manifest(out, suite)  # run would refuse a directory of another configuration: so does the plan
    finished = done_keys(out) if out.is_dir() else set()
    cells = [c for c in all_cells if c.key() not in finished]
    graph = build_graph(cells, data_root=data_root, checkpoint_dir=checkpoint_dir, device=device)
    all_graph = build_graph(cells, data_root=data_root, checkpoint_dir=checkpoint_dir, device=device,
                            skip_cached=False)
    cache = _load_cache()
    rows = {k: PlanRow(k) for k in ("train", "rank", "retrain", "evaluate")}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # the calibration key holds the thread count: timed as the run runs
    resumed: list[tuple[str, float]] = []

    def timing(spec: Any) -> Timing:
        return calibrate(spec, device, data_root=data_root, cache=cache, log=log)

    try:
        _price(graph, cells, rows, timing, resumed, device, data_root, checkpoint_dir)
    finally:
        torch.set_num_threads(old_threads)
    _save_cache(cache)
    if resumed:
        rows["train"].notes.add(f"{len(resumed)} training(s) resume from a saved state (priced for what is left): "
                                + ", ".join(f"{label} {f:.0%} done" for label, f in resumed))
    total = sum(r.seconds for r in rows.values())
    n_workers = workers or 1
    # Workers help only where tasks are independent: the critical path (a cell's train -> rank -> retrain
    # -> evaluate chain) bounds the wall time from below.
    critical = _critical_path(graph, rows, cells) if graph else 0.0
    return {"suite": suite.name, "version": suite.version, "device": str(device), "cells": len(all_cells),
            "cells_done": len(all_cells) - len(cells), "out": str(out),
            "tasks": {k: r.count for k, r in rows.items()}, "cached": {
                k: sum(1 for t in all_graph.values() if t.kind == k) - rows[k].count for k in rows},
            "seconds": {k: r.seconds for k, r in rows.items()}, "total_s": total, "workers": n_workers,
            "wall_s_workers": max(total / n_workers, critical), "critical_path_s": critical,
            "notes": sorted(set().union(*(r.notes for r in rows.values())))}


def trained_fraction(spec: Any, *, device: Any = "cpu", data_root: Any = None, checkpoint_dir: Any = None) -> float:
    """Share of ``spec``'s training steps already done in its saved mid-training state (0 without one, or
    with one that cannot be read: training would then start over too)."""
    from sgq_bench import checkpoints
    from sgq_bench.errors import SgqBenchError
    from sgq_bench.train import locate_checkpoint

    where = locate_checkpoint(spec, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
    partial = checkpoints.partial_path(where.path)
    if not partial.exists():
        return 0.0
    try:
        state = checkpoints.load(partial)
    except SgqBenchError:
        return 0.0
    return min(1.0, max(0.0, float(state.get("step", 0)) / training_steps(spec, data_root)))


def _price(graph: dict[str, Any], cells: list[Any], rows: dict[str, PlanRow], timing: Any,
           resumed: list[tuple[str, float]], device: Any, data_root: Any, checkpoint_dir: Any) -> None:
    """Add each task's estimated seconds to its kind's row."""
    from sgq_bench import _registry

    probe_s: float | None = None
    for task in graph.values():
        row = rows[task.kind]
        row.count += 1
        if task.kind == "train":
            done = trained_fraction(task.payload, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
            if done:
                resumed.append((task.label, done))
            row.seconds += (1.0 - done) * _training_seconds(task.payload, timing(task.payload), data_root)
        elif task.kind == "retrain":
            row.seconds += _training_seconds(task.payload.learner, timing(task.payload.learner), data_root)
        elif task.kind == "rank":
            rank = task.payload
            explainer = _registry.explainers.get(rank.explainer)(**dict(rank.explainer_params))
            passes, note = explainer_passes(explainer)
            ref = rank.model_spec or next(c.spec for c in cells if c.spec.dataset == rank.dataset)
            n_train, n_test = _train_images(replace(ref, recipe=replace(ref.recipe, train_size=rank.train_size)),
                                            data_root)
            row.seconds += (n_train + n_test) * passes * timing(ref).grad_img_s
            if note:
                row.notes.add(note)
        else:
            cell = task.payload
            t = timing(cell.spec)
            _, n_test = _train_images(cell.spec, data_root)
            from sgq_bench.data import load_dataset

            ds = load_dataset(cell.spec.dataset, cell.spec.dataset_params)
            n_pixels = ds.image_size * ds.image_size
            n_eval = min(cell.eval_size, n_test)
            seconds = 0.0
            for ename in cell.explainers:
                passes, note = explainer_passes(_registry.explainers.get(ename)())
                seconds += (n_eval + 6) * passes * t.grad_img_s  # +6: the saliency-grid samples
                if note:
                    row.notes.add(note)
            for mname in cell.metrics:
                metric = _registry.metrics.get(mname)(**dict(cell.metric_params.get(mname, {})))
                n_maps = len(cell.explainers) if metric.needs_attributions else 1
                passes, note = metric_passes(metric, n_eval, n_pixels, n_test)
                seconds += n_maps * passes * t.fwd_img_s
                if mname == "peak_memory_mb":
                    if probe_s is None:
                        probe_s = _probe_seconds()
                    sizes = [b for b in str(dict(metric.config).get("batch_sizes", "1")).split(",") if b.strip()]
                    seconds += 3 * len(sizes) * probe_s
                if note:
                    row.notes.add(note)
            row.seconds += seconds


def _critical_path(graph: dict[str, Any], rows: dict[str, PlanRow], cells: list[Any]) -> float:
    """Longest chain of mean task costs (a lower bound of the wall time on any number of workers)."""
    mean = {k: (r.seconds / r.count if r.count else 0.0) for k, r in rows.items()}
    memo: dict[str, float] = {}

    def longest(key: str) -> float:
        if key not in memo:
            task = graph[key]
            memo[key] = mean[task.kind] + max((longest(d) for d in task.deps if d in graph), default=0.0)
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
    for kind in ("train", "rank", "retrain", "evaluate"):
        lines.append(f"{kind:<10} {p['tasks'][kind]:>7} {p['cached'][kind]:>7} {_hms(p['seconds'][kind]):>11}")
    lines.append(f"total on 1 worker: {_hms(p['total_s'])}"
                 + (f" ({p['total_s'] / 3600:.1f} device-hours)" if p["total_s"] > 3600 else ""))
    if p["workers"] > 1:
        lines.append(f"on {p['workers']} workers: {_hms(p['wall_s_workers'])} (critical path {_hms(p['critical_path_s'])})")
    lines.append("basis: training steps, forwards and input gradients timed on this device (cached in "
                 f"{_calibration_file()}); evaluation priced by counted passes")
    lines.extend(f"note: {n}" for n in p["notes"])
    return "\n".join(lines)
