"""The run as a graph of cached tasks: train(spec) -> [the metrics' own tasks] -> evaluate(cell).

Why a graph: ``full`` is thousands of trainings; split into content-keyed tasks, a rerun, a resumed run,
another cell or another worker reuses every finished piece, an executor can run independent tasks on many
machines, and ``--plan`` can count and price the work before any of it starts.

The graph knows two tasks of its own, training a model and scoring a cell. Everything else comes from the
metrics: ``Metric.tasks()`` returns ``sgq_bench.specs.Task`` objects (ROAR's rankings and retrains, or a
plugin's), whose ``needs()`` and ``models()`` the graph follows. So this module imports no metric, and a
plugin's retraining metric runs, resumes and is priced exactly like a built-in one. ``evaluate`` runs
last: metrics inside it only read what their tasks stored. Tasks never write the run directory: they
return rows and samples to the driver, its only writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from sgq_bench import _registry, checkpoints
from sgq_bench.specs import Cell, CostModel, ExecContext, Task, TrainSpec

N_SALIENCY_IMAGES = 6  # images kept per cell for the saliency-grid figure


@dataclass(frozen=True)
class TrainTask(Task):
    """Train (or load) one model; its key is the checkpoint's (the spec with its precision resolved)."""

    kind: ClassVar[str] = "train"

    spec: TrainSpec
    checkpoint: Path  # where the model will be (``train.locate_checkpoint``)
    checkpoint_key: str

    @classmethod
    def locate(cls, spec: TrainSpec, ctx: ExecContext) -> TrainTask:
        from sgq_bench.train import locate_checkpoint

        where = locate_checkpoint(spec, device=ctx.device, data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir)
        return cls(spec, where.path, where.spec.key(where.fingerprint))

    def key(self) -> str:
        return self.checkpoint_key

    def label(self) -> str:
        return self.spec.label

    def done(self, ctx: ExecContext) -> bool:
        return self.checkpoint.exists()

    def run(self, ctx: ExecContext, *values: Any) -> dict[str, Any]:
        from sgq_bench.train import load_or_train

        res = load_or_train(self.spec, ctx)
        return {"path": str(res.path), "loaded": res.loaded}

    def saved_fraction(self, costs: CostModel) -> float:
        """Share of the training done in its saved mid-training state (0 without one, or with one that
        cannot be read: training would then start over too)."""
        from sgq_bench.errors import SgqBenchError

        partial = checkpoints.partial_path(self.checkpoint)
        if not partial.exists():
            return 0.0
        try:
            step = float(checkpoints.load(partial).get("step", 0))
        except SgqBenchError:
            return 0.0
        from sgq_bench.train import training_steps

        steps = training_steps(self.spec.recipe, costs.images(self.spec)[0])
        return min(1.0, max(0.0, step / steps))

    def cost(self, costs: CostModel) -> float | None:
        return (1.0 - self.saved_fraction(costs)) * costs.training_s(self.spec)


@dataclass(frozen=True)
class EvaluateTask(Task):
    """Score one cell: its rows (returned, not written) and the saliency-grid samples."""

    kind: ClassVar[str] = "evaluate"

    cell: Cell

    def key(self) -> str:
        return self.cell.key()

    def label(self) -> str:
        return self.cell.id

    def run(self, ctx: ExecContext, *values: Any) -> dict[str, Any]:
        from sgq_bench.evaluate import evaluate_cell
        from sgq_bench.train import load_or_train

        if self.cell.weights:  # a model trained elsewhere: its file, checked against the declared architecture
            from sgq_bench.weights import load_external

            trained = load_external(self.cell.spec, Path(self.cell.weights), ctx.device)
        else:
            trained = load_or_train(self.cell.spec, ctx)  # loaded and verified once, for rows and samples alike
        rows = evaluate_cell(self.cell, ctx, trained=trained)
        return {"rows": rows, "samples": attribution_samples(self.cell, ctx, trained.model)}

    def cost(self, costs: CostModel) -> float | None:
        from sgq_bench.orchestration.costs import evaluation_seconds

        return evaluation_seconds(self.cell, costs)[0]


@dataclass(frozen=True)
class Node:
    """A task in the graph: its ``key``, the keys whose values it receives (``inputs``, one per
    ``task.needs()``, None where that task is not in the graph), everything that must finish first
    (``deps``) and the ids of the cells whose results need it."""

    task: Task
    key: str
    inputs: tuple[str | None, ...] = ()
    deps: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def label(self) -> str:
        return self.task.label()


def node_key(task: Task) -> str:
    return f"{task.kind}:{task.key()}"


class _Builder:
    """Adds tasks depth-first, so that the graph's insertion order is a dependency order."""

    def __init__(self, ctx: ExecContext, skip_cached: bool) -> None:
        self.ctx, self.skip_cached = ctx, skip_cached
        self.graph: dict[str, Node] = {}

    def add(self, task: Task, cell_id: str, after: Iterable[str] = ()) -> str | None:
        """The node key of ``task`` (None when it is done and finished work is skipped)."""
        if self.skip_cached and task.done(self.ctx):
            return None
        key = node_key(task)
        old = self.graph.get(key)
        if old is not None:
            self.graph[key] = replace(old, cells=tuple(dict.fromkeys((*old.cells, cell_id))))
            return key
        inputs = tuple(self.add(t, cell_id) for t in task.needs())
        trainings = [self.add(TrainTask.locate(spec, self.ctx), cell_id) for spec in task.models()]
        deps = tuple(dict.fromkeys(k for k in (*inputs, *trainings, *after) if k))
        self.graph[key] = Node(task, key, inputs, deps, (cell_id,))
        return key


def metric_tasks(cell: Cell, ctx: ExecContext) -> list[Task]:
    """Every task the cell's metrics schedule (per explainer for metrics that score attributions)."""
    tasks: list[Task] = []
    for mname in cell.metrics:
        metric = _registry.metrics.get(mname)(**dict(cell.metric_params.get(mname, {})))
        explainers = [_registry.explainers.get(e)() for e in cell.explainers] if metric.needs_attributions else [None]
        for explainer in explainers:
            tasks.extend(metric.tasks(cell.spec, explainer, ctx))
    return tasks


def build_graph(cells: Iterable[Cell], ctx: ExecContext, *, done_cells: set[str] | frozenset[str] = frozenset(),
                skip_cached: bool = True) -> dict[str, Node]:
    """Nodes (keyed, deduplicated, in dependency order) for the cells not yet done.

    With ``skip_cached``, finished trainings and finished metric tasks are left out (their results are on
    disk), and so is whatever only they needed.
    """
    builder = _Builder(ctx, skip_cached)
    for cell in cells:
        if cell.key() in done_cells:
            continue
        own = None if cell.weights else builder.add(TrainTask.locate(cell.spec, ctx), cell.id)
        needed = [builder.add(t, cell.id) for t in metric_tasks(cell, ctx)]
        builder.add(EvaluateTask(cell), cell.id, after=[k for k in (own, *needed) if k])
    return builder.graph


def attribution_samples(cell: Cell, ctx: ExecContext, model: Any) -> dict[str, Any] | None:
    """Attributions of a few fixed test images for the saliency-grid figure (written by the driver).

    Why recompute: metric rows keep numbers, not maps; a handful of images per cell is cheap, and the same
    images (a seeded pick, identical for every method) make the grid comparable. As in the evaluation,
    each map explains the model's predicted class. ``model``: the cell's trained model.
    """
    if not cell.explainers:
        return None
    import torch

    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.train import resolve_device

    device = resolve_device(ctx.device)
    model = model.eval()
    dataset = load_dataset(cell.spec.dataset, cell.spec.dataset_params)
    test = load_split(dataset, False, ctx.data_root)
    g = torch.Generator().manual_seed(cell.eval_seed + 7)
    idx = torch.randperm(len(test), generator=g)[:N_SALIENCY_IMAGES].sort().values
    images, labels = test.images[idx], test.labels[idx]
    x = dataset.normalize(images.to(device))
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = {}
    for name in cell.explainers:
        explainer = _registry.explainers.get(name)()
        explainer.setup(dataset)
        maps[name] = explainer.attribute(model, x, pred).detach().float().cpu()
    return {"cell": cell.id, "method": cell.spec.method.name, "method_label": cell.spec.method.label(),
            "dataset": cell.spec.dataset, "seed": cell.spec.seed, "index": idx, "images": images,
            "labels": labels, "pred": pred.cpu(), "attributions": maps}


def samples_path(out: Path, cell: Cell) -> Path:
    return Path(out) / "attributions" / f"{cell.slug}.pt"
