"""ROAR and KAR (Hooker et al. 2019): remove (ROAR) or keep (KAR) the top-ranked fraction of pixels in
the training AND test sets, retrain from scratch, report the final model's test accuracy per fraction.

Protocol (docs/design.md, "ROAR/KAR"): the default retrainer is ONE FIXED LEARNER per dataset: the
suite's reference architecture for the dataset, trained with cross-entropy (method ``baseline``) on the
cell's recipe with the metric's ``epochs``/``train_size`` overrides. It is the same for every cell, so
ROAR compares *rankings*, not how well each method relearns damaged images (Hooker et al. retrain one
fixed model type). ``learner = "own"`` retrains the cell's own method instead. With the fixed learner a
model-independent ranking (the ``random`` control) gives identical retrains for every cell of a dataset
and seed, so they are computed once and shared through the task cache.

Each retrain is a task keyed by content (``RetrainTask.key``): the ranking (explainer, its parameters,
the explained model's key unless the explainer is model-independent, the training data's fingerprint,
the tie-break seed), the fraction, remove/keep and the learner's spec. Its accuracy is stored in the task
cache, so a rerun, a resumed run, another cell or another worker reuses it. Ranking ties (many exact
zeros in gradient maps) are broken by one seeded random draw recorded in the key, never by pixel index.
Removed pixels take the per-channel train mean (0 after normalisation).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from sgq_bench import _registry, checkpoints
from sgq_bench._base import EvalContext, Metric, MetricResult, Param, Split
from sgq_bench._io import atomic_write_text, stable_hash
from sgq_bench.data import batches, load_dataset, load_split, subset, train_fingerprint
from sgq_bench.errors import UsageError
from sgq_bench.metrics.functional import (
    FractionsMixin,
    fractions_param,
    k_of,
    pixel_scores,
    rank_positions,
    ranking_seconds,
    trapezoid_auc,
)
from sgq_bench.specs import CostModel, ExecContext, Task, TrainSpec

ROAR_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
# Bump when a change alters what a retrain measures. "2": the masked test split is no longer modified in
# place by the batch-size probe (image 0 was normalised twice on CPU: at most 1 image in the test split).
RETRAIN_CODE_VERSION = "2"
LEARNERS = ("fixed", "own")


def task_dir(checkpoint_dir: Any = None) -> Path:
    """Where task results live: beside the checkpoints (a shared filesystem for multi-machine runs)."""
    return checkpoints.checkpoint_dir(checkpoint_dir) / "tasks"


@dataclass(frozen=True)
class RankTask(Task):
    """Which ranking of the training and test pixels: an explainer applied with a trained model.

    Its value (rank positions of every train and test pixel) is tens of MB: it is not stored, and it goes
    from the executor straight to the retrains that need it (``shared_value``).
    """

    kind: ClassVar[str] = "rank"
    shared_value: ClassVar[bool] = True

    explainer: str
    explainer_params: tuple[tuple[str, Any], ...]
    model_spec: TrainSpec | None  # the explained model; None when the explainer ignores the model
    dataset: str
    dataset_params: tuple[tuple[str, Any], ...]
    train_size: int | None
    subset_seed: int
    tie_seed: int
    data_root: Any = None

    def key(self) -> str:
        return self._key

    @functools.cached_property
    def _key(self) -> str:  # computed once: every retrain of this ranking asks for it
        fp = train_fingerprint(self.dataset, self.dataset_params, self.data_root)
        return stable_hash({
            "explainer": self.explainer, "explainer_params": list(self.explainer_params),
            "model": self.model_spec.key(fp) if self.model_spec is not None else None,
            "dataset": self.dataset, "dataset_params": list(self.dataset_params), "train_data_sha256": fp,
            "train_size": self.train_size, "subset_seed": self.subset_seed, "tie_seed": self.tie_seed,
        })[:20]

    def label(self) -> str:
        return f"{self.explainer} ranking of " + (self.model_spec.label if self.model_spec else self.dataset)

    def models(self) -> tuple[TrainSpec, ...]:
        return () if self.model_spec is None else (self.model_spec,)

    def run(self, ctx: ExecContext, *values: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return compute_rankings(self, ctx)

    def cost(self, costs: CostModel) -> float | None:
        return ranking_seconds(costs, self.explainer, self.explainer_params, self.model_spec, self.train_size)


@dataclass(frozen=True)
class RetrainTask(Task):
    """One retrain: the learner trained on data whose top (or all but top) ``fraction`` pixels are removed."""

    kind: ClassVar[str] = "retrain"

    rank: RankTask
    fraction: float
    keep: bool
    learner: TrainSpec  # the retrained model (recipe incl. epochs/train_size overrides)

    def key(self) -> str:
        return stable_hash({"rank": self.rank.key(), "fraction": self.fraction, "keep": self.keep,
                            "learner": self.learner.key(), "retrain_code": RETRAIN_CODE_VERSION})[:20]

    def label(self) -> str:
        return f"{'kar' if self.keep else 'roar'} t={self.fraction} {self.rank.explainer} {self.learner.label}"

    def path(self, checkpoint_dir: Any = None) -> Path:
        return task_dir(checkpoint_dir) / "retrain" / f"{self.key()}.json"

    def needs(self) -> tuple[Task, ...]:
        return (self.rank,)

    def done(self, ctx: ExecContext) -> bool:
        return read_retrain(self, ctx.checkpoint_dir) is not None

    def run(self, ctx: ExecContext, *values: Any) -> float:
        cached = read_retrain(self, ctx.checkpoint_dir)
        if cached is not None:
            return cached
        rankings = values[0] if values and values[0] is not None else compute_rankings(self.rank, ctx)
        return run_retrain(self, rankings, ctx)

    def cost(self, costs: CostModel) -> float | None:
        return costs.training_s(self.learner)


def read_retrain(task: RetrainTask, checkpoint_dir: Any = None) -> float | None:
    """The stored accuracy of a finished retrain, or None (absent or unreadable: recomputed)."""
    path = task.path(checkpoint_dir)
    try:
        acc = json.loads(path.read_text())["accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(acc) if isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0 else None


def split_scores(model: Any, explainer: Any, dataset: Any, split: Split, device: torch.device,
                 batch: int = 1000) -> torch.Tensor:
    """The explainer's per-pixel scores for a whole split (predicted class as target), on CPU.

    One ``attribute`` call (explainers chunk internally), so a seeded ``random`` ranking draws independent
    maps for every image instead of repeating per batch.
    """
    x = torch.cat([xb for xb, _ in batches(dataset, split, batch, device)])
    if model is None:
        target = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    else:
        model.eval()
        with torch.no_grad():
            target = torch.cat([model(x[s:s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
    return pixel_scores(explainer.attribute(model, x, target)).cpu()


def compute_rankings(rank: RankTask, ctx: ExecContext, model: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank positions of every train and test pixel (0 = most important) for ``rank``."""
    from sgq_bench.train import load_or_train, resolve_device

    device = resolve_device(ctx.device)
    dataset = load_dataset(rank.dataset, dict(rank.dataset_params))
    train = subset(load_split(dataset, True, rank.data_root), rank.train_size, seed=rank.subset_seed)
    test = load_split(dataset, False, rank.data_root)
    if model is None and rank.model_spec is not None:
        model = load_or_train(rank.model_spec, replace(ctx, progress=False)).model
    explainer = _registry.explainers.get(rank.explainer)(**dict(rank.explainer_params))
    explainer.setup(dataset)
    g = torch.Generator().manual_seed(rank.tie_seed)
    return tuple(rank_positions(split_scores(model, explainer, dataset, s, device), True, g) for s in (train, test))


def masked_split(dataset: Any, split: Split, positions: torch.Tensor, fraction: float, keep: bool) -> Split:
    """A float copy of ``split`` (0..255 scale) whose top (ROAR) or all-but-top (KAR) pixels hold the mean."""
    k = k_of(fraction, positions.shape[1])
    top = positions < k
    replace_mask = ~top if keep else top
    c, h, w = split.images.shape[1:]
    mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
    return Split(torch.where(replace_mask.view(-1, 1, h, w), mean, split.images.float()), split.labels)


def run_retrain(task: RetrainTask, rankings: tuple[torch.Tensor, torch.Tensor], ctx: ExecContext) -> float:
    """Train the learner on the masked training set, store and return its masked-test accuracy."""
    from sgq_bench.train import accuracy, build_model, resolve_device, train_model

    device = resolve_device(ctx.device)
    spec = task.learner
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    train = subset(load_split(dataset, True, task.rank.data_root), spec.recipe.train_size, seed=task.rank.subset_seed)
    test = load_split(dataset, False, task.rank.data_root)
    model, quantizer, objective = build_model(spec, dataset)
    train_model(model, quantizer, objective, dataset, masked_split(dataset, train, rankings[0], task.fraction, task.keep),
                spec.recipe, spec.seed, device, desc=f"{'kar' if task.keep else 'roar'} t={task.fraction}",
                progress=False)
    acc = accuracy(model, dataset, masked_split(dataset, test, rankings[1], task.fraction, task.keep), device)
    # where and with what it ran: the key names the explained model's spec, not its weights, and the same
    # spec trained on another CPU gives other weights (other maps), so a curve can mix retrains of two
    # instances of one seed; the record says which machine each retrain (and its maps) came from
    from datetime import datetime, timezone

    from sgq_bench._provenance import provenance

    prov = {k: v for k, v in provenance(str(device)).items() if k in
            ("cpu_model", "device", "torch_version", "git_commit", "sgq_bench_version")}
    atomic_write_text(task.path(ctx.checkpoint_dir), json.dumps({
        "accuracy": acc, "fraction": task.fraction, "keep": task.keep, "learner": spec.key(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "provenance": prov}))
    return acc


def retrain_tasks(spec: TrainSpec, explainer: Any, *, fractions: tuple[float, ...], keep: bool, epochs: int = 0,
                  train_size: int = 0, learner: str = "fixed", data_root: Any = None) -> list[RetrainTask]:
    """The retrain tasks of one (cell, explainer, ROAR|KAR): what the runner schedules and the metric reads."""
    from sgq_bench.config.methods import get_method

    if learner not in LEARNERS:
        raise UsageError(f"roar/kar learner {learner!r} is invalid; expected one of {', '.join(LEARNERS)}")
    recipe = spec.recipe
    if epochs:
        recipe = replace(recipe, epochs=epochs)
    if train_size:
        recipe = replace(recipe, train_size=train_size)
    method = spec.method if learner == "own" else get_method("baseline").resolved()
    learner_spec = TrainSpec(spec.dataset, spec.model, method, recipe, spec.seed, dict(spec.dataset_params))
    independent = bool(getattr(explainer, "model_independent", False))
    rank = RankTask(explainer.name, tuple(sorted(dict(explainer.config).items())),
                    None if independent else spec, spec.dataset, tuple(sorted(spec.dataset_params.items())),
                    recipe.train_size, spec.seed + 104729, spec.seed * 7919 + 29, data_root)
    return [RetrainTask(rank, float(f), keep, learner_spec) for f in fractions]


def ensure_retrains(tasks: list[RetrainTask], ctx: ExecContext, model: Any = None) -> list[float]:
    """Accuracies of ``tasks``: read from the task cache, computing (once per ranking) what is missing.

    Through the task graph every retrain is done before the cell is scored, so this only reads; it computes
    when a metric is used outside a run (``sgq-bench evaluate``)."""
    accs = [read_retrain(t, ctx.checkpoint_dir) for t in tasks]
    missing = [i for i, a in enumerate(accs) if a is None]
    if missing:
        rankings = compute_rankings(tasks[0].rank, ctx, model=model)
        for i in missing:
            accs[i] = run_retrain(tasks[i], rankings, ctx)
    return accs


class _Roar(FractionsMixin, Metric):
    family = "roar"
    needs_retraining = True
    keep = False
    params = {
        "fractions": fractions_param(ROAR_FRACTIONS, "fractions of pixels removed (ROAR) / kept (KAR)"),
        "epochs": Param(0, "retraining epochs; 0 = the cell's recipe", low=0),
        "train_size": Param(0, "training images for the retrain; 0 = the cell's recipe", low=0),
        "learner": Param("fixed", "who is retrained: 'fixed' (the dataset's reference architecture with "
                         "cross-entropy, the same for every cell) or 'own' (the cell's method)",
                         choices=LEARNERS),
    }

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return 0.0  # the retrains (and their test-split accuracies) are priced as their own tasks

    def tasks(self, spec: TrainSpec, explainer: Any, ctx: ExecContext) -> list[RetrainTask]:
        return retrain_tasks(spec, explainer, fractions=tuple(self.fractions), keep=self.keep, epochs=self.epochs,
                             train_size=self.train_size, learner=self.learner, data_root=ctx.data_root)

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        if ctx.explainer is None or ctx.spec is None:
            raise UsageError(f"metric {self.name!r} needs the explainer and the training spec in the context")
        run_ctx = ExecContext(device=str(ctx.device), data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir)
        tasks = self.tasks(ctx.spec, ctx.explainer, run_ctx)
        accs = ensure_retrains(tasks, run_ctx, model=ctx.model)
        fr = [t.fraction for t in tasks]
        value = float(trapezoid_auc(fr, torch.tensor(accs, dtype=torch.float64)))
        learner = tasks[0].learner
        return MetricResult(value=value, curve={"x": fr, "y": accs}, extra={
            # the whole learner in every row: a reader tells a cheap-learner ROAR from a full one
            "resolved_params": {"epochs": learner.recipe.epochs, "train_size": learner.recipe.train_size,
                                "learner": self.learner, "learner_model": learner.model,
                                "learner_method": learner.method.name, "learner_recipe": learner.recipe.as_dict(),
                                "learner_key": learner.key()},
            "final_epoch_accuracy": True, "ties": "one seeded random tie-break",
            "retrain_keys": [t.key() for t in tasks]})


class Roar(_Roar):
    """ROAR: test accuracy after removing the top fraction and retraining (lower = more faithful ranking)."""

    name, higher_is_better, keep = "roar", False, False


class Kar(_Roar):
    """KAR: test accuracy keeping only the top fraction and retraining (higher = more faithful ranking)."""

    name, higher_is_better, keep = "kar", True, True
