"""The run as a graph of cached tasks: train(spec) -> rank(explainer, model) -> retrain(ranking, fraction,
keep) -> evaluate(cell).

Why a graph: ``full`` is thousands of trainings; split into content-keyed tasks, a rerun, a resumed run,
another cell or another worker reuses every finished piece (checkpoints and retrain accuracies live in
the checkpoint directory), an executor can run independent tasks on many machines, and ``--plan`` can
count and price the work before any of it starts. ``evaluate(cell)`` runs last: the ROAR/KAR metrics
inside it then only read their retrains from the task cache. Task functions here never write the run
directory: they return rows and samples to the driver (``sgq_bench.runner``), its only writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("train", "rank", "retrain", "evaluate")


@dataclass(frozen=True)
class Task:
    """One node: ``kind``, a content ``key``, what it needs (``deps``) and what to run (``payload``)."""

    kind: str
    key: str
    payload: Any = field(compare=False, hash=False)
    deps: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()  # ids of the cells whose results need this task
    label: str = ""


@dataclass(frozen=True)
class ExecContext:
    """How tasks run on a worker: device, data and checkpoint locations, threads, progress bars."""

    device: str = "cpu"
    data_root: Any = None
    checkpoint_dir: Any = None
    threads: int | None = None
    progress: bool = False
    stop_file: str | None = None  # trainings save their state and stop once it exists (RayExecutor.cancel)


def build_graph(cells: Iterable[Any], *, data_root: Any = None, checkpoint_dir: Any = None, device: Any = "cpu",
                done_cells: set[str] | frozenset[str] = frozenset(), skip_cached: bool = True) -> dict[str, Task]:
    """Tasks (keyed, deduplicated, in dependency order) for the cells not yet done.

    With ``skip_cached``, finished trainings and retrains are left out (their results are on disk).
    """
    from sgq_bench import _registry
    from sgq_bench.metrics.roar import read_retrain
    from sgq_bench.train import locate_checkpoint

    graph: dict[str, Task] = {}

    def add(task: Task) -> str:
        old = graph.get(task.key)
        graph[task.key] = task if old is None else Task(old.kind, old.key, old.payload, old.deps,
                                                       tuple(dict.fromkeys(old.cells + task.cells)), old.label)
        return task.key

    def train_key(spec: Any, cell_id: str) -> str | None:
        where = locate_checkpoint(spec, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
        if skip_cached and where.path.exists():
            return None
        return add(Task("train", "train:" + spec.key(where.fingerprint), spec, (), (cell_id,), _spec_label(spec)))

    for cell in cells:
        if cell.key() in done_cells:
            continue
        deps: list[str] = []
        tk = train_key(cell.spec, cell.id)
        if tk:
            deps.append(tk)
        for mname in cell.metrics:
            mcls = _registry.metrics.get(mname)
            if not getattr(mcls, "needs_retraining", False) or not hasattr(mcls, "tasks"):
                continue
            metric = mcls(**dict(cell.metric_params.get(mname, {})))
            for ename in cell.explainers:
                explainer = _registry.explainers.get(ename)()
                retrains = metric.tasks(cell.spec, explainer, data_root)
                pending = [t for t in retrains if not (skip_cached and read_retrain(t, checkpoint_dir) is not None)]
                if not pending:
                    continue
                rank = pending[0].rank
                rank_deps = []
                if rank.model_spec is not None:
                    mk = train_key(rank.model_spec, cell.id)
                    if mk:
                        rank_deps.append(mk)
                rk = add(Task("rank", "rank:" + rank.key(), rank, tuple(rank_deps), (cell.id,),
                              f"{rank.explainer} ranking of " + (_spec_label(rank.model_spec)
                                                                  if rank.model_spec else rank.dataset)))
                for t in pending:
                    deps.append(add(Task("retrain", "retrain:" + t.key(), t, (rk,), (cell.id,),
                                         f"{'kar' if t.keep else 'roar'} t={t.fraction} {rank.explainer} "
                                         f"{_spec_label(t.learner)}")))
        add(Task("evaluate", "evaluate:" + cell.key(), cell, tuple(dict.fromkeys(deps)), (cell.id,), cell.id))
    return graph


def _spec_label(spec: Any) -> str:
    return f"{spec.dataset}/{spec.model}/{spec.method.name}/s{spec.seed}"


def execute(task: Task, ctx: ExecContext, *dep_values: Any) -> Any:
    """Run one task (on any worker); returns what dependents and the driver need."""
    import torch

    from sgq_bench._batching import keep_freed_memory
    from sgq_bench.train import resolve_device

    if ctx.threads:
        torch.set_num_threads(ctx.threads)  # a reused worker process keeps its old thread count otherwise
    keep_freed_memory()
    device = resolve_device(ctx.device)
    if task.kind == "train":
        from sgq_bench.train import load_or_train

        res = load_or_train(task.payload, data_root=ctx.data_root, device=device, checkpoint_dir=ctx.checkpoint_dir,
                            progress=ctx.progress, stop_file=ctx.stop_file)
        return {"path": str(res.path), "loaded": res.loaded}
    if task.kind == "rank":
        from sgq_bench.metrics.roar import compute_rankings

        return compute_rankings(task.payload, device=device, checkpoint_dir=ctx.checkpoint_dir)
    if task.kind == "retrain":
        from sgq_bench.metrics.roar import read_retrain, run_retrain

        cached = read_retrain(task.payload, ctx.checkpoint_dir)
        if cached is not None:
            return cached
        rankings = next((v for v in dep_values if isinstance(v, tuple)), None)
        if rankings is None:
            from sgq_bench.metrics.roar import compute_rankings

            rankings = compute_rankings(task.payload.rank, device=device, checkpoint_dir=ctx.checkpoint_dir)
        return run_retrain(task.payload, rankings, device=device, checkpoint_dir=ctx.checkpoint_dir)
    if task.kind == "evaluate":
        return evaluate_task(task.payload, ctx, device)
    raise ValueError(f"unknown task kind {task.kind!r}")


def evaluate_task(cell: Any, ctx: ExecContext, device: Any, done: set | None = None) -> dict[str, Any]:
    """Score one cell: its rows (not written here) and the saliency-grid samples."""
    from sgq_bench.evaluate import evaluate_cell
    from sgq_bench.train import load_or_train

    # loaded (and its checksum verified) once for the rows and the saliency samples
    trained = load_or_train(cell.spec, data_root=ctx.data_root, device=device, checkpoint_dir=ctx.checkpoint_dir,
                            progress=ctx.progress)
    rows = evaluate_cell(cell.spec, explainers=list(cell.explainers), metrics=list(cell.metrics),
                         eval_size=cell.eval_size, metric_params=cell.metric_params, device=device,
                         data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir, results_path=None,
                         done=done or set(), suite=cell.suite, suite_version=cell.suite_version,
                         progress=ctx.progress, eval_seed=cell.eval_seed, trained=trained)
    samples = attribution_samples(cell, device=device, data_root=ctx.data_root, model=trained.model)
    return {"rows": rows, "samples": samples}


N_SALIENCY_IMAGES = 6  # images kept per cell for the saliency-grid figure


def attribution_samples(cell: Any, *, device: Any, data_root: Any = None, checkpoint_dir: Any = None,
                        model: Any = None) -> Any:
    """Attributions of a few fixed test images for the saliency-grid figure (written by the driver).

    Why recompute: metric rows keep numbers, not maps; a handful of images per cell is cheap, and the same
    images (a seeded pick, identical for every method) make the grid comparable. As in the evaluation,
    each map explains the model's predicted class. ``model``: the cell's trained model when the caller
    holds it already (else loaded from the checkpoint).
    """
    if not cell.explainers:
        return None
    import torch

    from sgq_bench import _registry
    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.train import load_or_train

    if model is None:
        model = load_or_train(cell.spec, data_root=data_root, device=device, checkpoint_dir=checkpoint_dir,
                              progress=False).model
    model = model.eval()
    dataset = load_dataset(cell.spec.dataset, cell.spec.dataset_params)
    test = load_split(dataset, False, data_root)
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


def samples_path(out: Path, cell: Any) -> Path:
    return Path(out) / "attributions" / f"{cell.slug}.pt"
