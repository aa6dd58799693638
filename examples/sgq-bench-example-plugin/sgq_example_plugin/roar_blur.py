"""ROAR with the ``blur`` fill: a retraining metric written as a third-party plugin, with tasks of its own.

ROAR (Hooker et al. 2019) removes the top-ranked fraction of pixels from the training AND test images,
retrains a model from scratch on the damaged training set and reports its accuracy on the damaged test
set: the faster accuracy falls, the better the ranking found what the data's labels depend on (lower is
better). sgq-bench's built-in ``roar`` fills removed pixels with the channel mean; here a removed pixel
takes its value in a Gaussian-blurred copy of the same image (as in RISE's insertion start and ROAD's
"blur" variants). A mean fill leaves sharp-edged holes whose shape alone can carry the class (the
"leakage" ROAD describes); a blurred fill keeps the low frequencies and removes the detail.

Why this module exists: it shows that a retraining metric needs nothing from sgq-bench beyond its public
API. It imports nothing from ``sgq_bench.metrics.roar``; the run's task graph, ``run --plan``, the Ray
executor and resume treat its two task kinds exactly like the built-in ones, because they only follow the
``sgq_bench.Task`` contract (docs/plugins.md, "Metrics that schedule work"):

* ``BlurRankTask`` (kind ``blur_rank``): the explainer's ranking of every training and test pixel, made
  with the cell's trained model (``models()``: the graph trains it first). Its value is large and is not
  stored: ``shared_value = True`` keeps it with the executor, which hands it to the retrains.
* ``BlurRetrainTask`` (kind ``blur_retrain``): one retrain at one fraction. It receives the ranking
  (``needs()``), trains the fixed learner, and stores its accuracy as JSON under the checkpoint
  directory (``<checkpoint dir>/sgq-bench-example-plugin/roar_blur/<key>.json``), so ``done()`` is true
  for a rerun, a resumed run, another cell or another worker.

The learner is fixed (as the built-in's default): the cell's architecture trained with cross-entropy
(method ``baseline``) on the cell's recipe with this metric's ``epochs``/``train_size`` overrides, so the
metric compares rankings, not how well each method relearns. Keys are content hashes of everything that
decides the number: the explainer and its parameters and version, the explained model's checkpoint key
(which holds the training data's fingerprint), the test split's fingerprint, the fraction, the blur, the learner's key, the seeds and
``CODE_VERSION``. Ranking ties (exact zeros in gradient maps) are broken by one seeded random draw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sgq_bench import (
    CostModel,
    EvalContext,
    ExecContext,
    Metric,
    MetricResult,
    Param,
    Split,
    Task,
    TrainSpec,
    UsageError,
    get_method,
    registry,
)
from sgq_bench.checkpoints import checkpoint_dir
from sgq_bench.data import load_dataset, load_split, split_fingerprint, subset, train_fingerprint
from sgq_bench.metrics.functional import (
    FractionsMixin,
    fractions_param,
    k_of,
    pixel_scores,
    rank_positions,
    ranking_seconds,
    trapezoid_auc,
)

# Bump when a change here changes the number a stored retrain holds: it is key material of every task.
CODE_VERSION = "1"
DISTRIBUTION = "sgq-bench-example-plugin"  # the folder under the checkpoint directory that holds our results
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
SUBSET_SEED_OFFSET = 104729  # the learner's training subset: the one load_or_train draws for its seed


def results_dir(chosen: Any = None) -> Path:
    """Where this metric's retrains live: beside the checkpoints (every worker reaches them), in a folder
    named after this plugin's distribution, so nothing of the harness's own can collide with it."""
    return checkpoint_dir(chosen) / DISTRIBUTION / "roar_blur"


def content_hash(material: Any) -> str:
    """20 hex digits of the sha256 of ``material`` as canonical JSON (keys sorted): a task's key."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (a temporary file, then a rename): a worker killed mid-write leaves no
    half-written result that ``done()`` could take for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _items(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def _resolved(spec: TrainSpec, device: Any) -> TrainSpec:
    """``spec`` with ``precision = "auto"`` made concrete for ``device``: the precision decides the weights,
    so the keys hold the resolved value (as the checkpoints' do)."""
    from sgq_bench.train import resolve_device, resolve_precision

    return replace(spec, recipe=resolve_precision(spec.recipe, resolve_device(device)))


@dataclass(frozen=True)
class BlurRankTask(Task):
    """Rank positions (0 = most important) of every pixel of the learner's training subset and the test split.

    Tens of MB on a real dataset: never stored, passed from the executor straight to the retrains.
    """

    kind: ClassVar[str] = "blur_rank"
    shared_value: ClassVar[bool] = True

    explainer: str
    explainer_params: tuple[tuple[str, Any], ...]
    model_spec: TrainSpec | None  # the explained model (precision resolved); None if the explainer ignores it
    dataset: str
    dataset_params: tuple[tuple[str, Any], ...]
    train_size: int | None  # the learner's training subset (drawn with subset_seed)
    subset_seed: int
    tie_seed: int
    data_root: Any = None  # where to read the data; not key material (the fingerprint is)

    def key(self) -> str:
        return self._key

    @functools.cached_property
    def _key(self) -> str:  # once per task object: every retrain of this ranking asks for it
        fp = train_fingerprint(self.dataset, dict(self.dataset_params), self.data_root)
        test = load_split(load_dataset(self.dataset, dict(self.dataset_params)), False, self.data_root)
        return content_hash({
            "code": CODE_VERSION, "explainer": self.explainer, "explainer_params": list(self.explainer_params),
            "explainer_version": registry("explainers").entry(self.explainer).version or "local",
            "model": None if self.model_spec is None else self.model_spec.key(fp),
            "dataset": self.dataset, "dataset_params": list(self.dataset_params), "train_data_sha256": fp,
            "test_data_sha256": split_fingerprint(test),  # the retrains' accuracies are measured on it
            "train_size": self.train_size, "subset_seed": self.subset_seed, "tie_seed": self.tie_seed,
        })

    def label(self) -> str:
        return f"{self.explainer} ranking of {self.model_spec.label if self.model_spec else self.dataset}"

    def models(self) -> tuple[TrainSpec, ...]:
        return () if self.model_spec is None else (self.model_spec,)

    def run(self, ctx: ExecContext, *values: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return compute_rankings(self, ctx)

    def cost(self, costs: CostModel) -> float | None:
        # the public pricing helper every retraining metric's ranking can use (sgq_bench.metrics.functional)
        return ranking_seconds(costs, self.explainer, self.explainer_params, self.model_spec, self.train_size)


@dataclass(frozen=True)
class BlurRetrainTask(Task):
    """Retrain the learner with the top ``fraction`` of pixels replaced by the blurred image; store its accuracy."""

    kind: ClassVar[str] = "blur_retrain"

    rank: BlurRankTask
    fraction: float
    blur_kernel: int
    blur_sigma: float
    learner: TrainSpec  # the retrained model: precision resolved, epochs/train_size overrides applied

    def key(self) -> str:
        return self._key

    @functools.cached_property
    def _key(self) -> str:
        fp = train_fingerprint(self.learner.dataset, self.learner.dataset_params, self.rank.data_root)
        return content_hash({
            "code": CODE_VERSION, "rank": self.rank.key(), "fraction": self.fraction,
            "fill": {"kind": "blur", "kernel": self.blur_kernel, "sigma": self.blur_sigma},
            "learner": self.learner.key(fp),
        })

    def label(self) -> str:
        return f"roar_blur t={self.fraction} {self.rank.explainer} {self.learner.label}"

    def path(self, chosen: Any = None) -> Path:
        return results_dir(chosen) / f"{self.key()}.json"

    def needs(self) -> tuple[Task, ...]:
        return (self.rank,)

    def done(self, ctx: ExecContext) -> bool:
        return self.read(ctx.checkpoint_dir) is not None

    def read(self, chosen: Any = None) -> float | None:
        """The stored accuracy, or None (absent, or unreadable: then it is computed again)."""
        try:
            acc = json.loads(self.path(chosen).read_text())["accuracy"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return float(acc) if isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0 else None

    def run(self, ctx: ExecContext, *values: Any) -> float:
        stored = self.read(ctx.checkpoint_dir)
        if stored is not None:  # another worker (or an earlier run) got here first
            return stored
        # The ranking is None when the graph left it out (nothing else needed it): compute it here.
        rankings = values[0] if values and values[0] is not None else compute_rankings(self.rank, ctx)
        return retrain(self, rankings, ctx)

    def cost(self, costs: CostModel) -> float | None:
        _, n_test = costs.images(self.learner)
        return costs.training_s(self.learner) + costs.forward_s(self.learner, n_test)


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """A per-channel ``kernel`` x ``kernel`` Gaussian blur of N x C x H x W float images (edges replicated,
    so a border is not darkened the way zero padding would)."""
    c = images.shape[1]
    r = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    weight = (g[:, None] * g[None, :]).expand(c, 1, kernel, kernel)
    pad = (kernel - 1) // 2
    x = F.pad(images, (pad, kernel - 1 - pad, pad, kernel - 1 - pad), mode="replicate")
    return F.conv2d(x, weight, groups=c)


def blurred_split(split: Split, positions: torch.Tensor, fraction: float, kernel: int, sigma: float) -> Split:
    """A uint8 copy of ``split`` whose top-ranked ``fraction`` of pixels (all channels) hold the blurred image.

    Kept uint8 (the blurred values rounded) so the result is an ordinary split: normalisation and
    batching treat it exactly as the data the harness loads.
    """
    n, c, h, w = split.images.shape
    top = (positions < k_of(fraction, h * w)).view(n, 1, h, w)
    blurred = gaussian_blur(split.images.float(), kernel, sigma).round_().clamp_(0, 255).to(torch.uint8)
    return Split(torch.where(top, blurred, split.images), split.labels)


def _splits(rank: BlurRankTask) -> tuple[Any, Split, Split]:
    """(dataset, the learner's training subset, the test split) of a ranking."""
    dataset = load_dataset(rank.dataset, dict(rank.dataset_params))
    train = subset(load_split(dataset, True, rank.data_root), rank.train_size, seed=rank.subset_seed)
    return dataset, train, load_split(dataset, False, rank.data_root)


@torch.no_grad()
def _predicted(model: Any, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s:s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])


def compute_rankings(rank: BlurRankTask, ctx: ExecContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank positions of every training and test pixel; each map explains the model's predicted class."""
    from sgq_bench.train import load_or_train, resolve_device

    device = resolve_device(ctx.device)
    dataset, train, test = _splits(rank)
    model = None
    if rank.model_spec is not None:
        model = load_or_train(rank.model_spec, replace(ctx, progress=False)).model
    explainer = registry("explainers").get(rank.explainer)(**dict(rank.explainer_params))
    explainer.setup(dataset)
    g = torch.Generator().manual_seed(rank.tie_seed)
    out = []
    for split in (train, test):
        x = dataset.normalize(split.images.to(device))
        target = torch.zeros(len(split), dtype=torch.long, device=device) if model is None else _predicted(model, x)
        scores = pixel_scores(explainer.attribute(model, x, target)).cpu()
        out.append(rank_positions(scores, True, g))
    return out[0], out[1]


def retrain(task: BlurRetrainTask, rankings: tuple[torch.Tensor, torch.Tensor], ctx: ExecContext) -> float:
    """Train the learner on the blurred-out training subset; store and return its blurred-out test accuracy."""
    from sgq_bench.train import accuracy, build_model, resolve_device, train_model

    device = resolve_device(ctx.device)
    dataset, train, test = _splits(task.rank)
    spec = task.learner
    model, quantizer, objective = build_model(spec, dataset)
    fill = (task.fraction, task.blur_kernel, task.blur_sigma)
    train_model(model, quantizer, objective, dataset, blurred_split(train, rankings[0], *fill), spec.recipe,
                spec.seed, device, desc=task.label(), progress=False)
    acc = accuracy(model, dataset, blurred_split(test, rankings[1], *fill), device)
    write_json(task.path(ctx.checkpoint_dir), {
        "accuracy": acc, "fraction": task.fraction, "blur_kernel": task.blur_kernel, "blur_sigma": task.blur_sigma,
        "rank": task.rank.key(), "learner": spec.label, "code_version": CODE_VERSION})
    return acc


class RoarBlur(FractionsMixin, Metric):
    """ROAR with a blurred fill: accuracy after retraining on images whose top pixels are blurred (lower = better)."""

    name = "roar_blur"
    family = "roar"
    higher_is_better = False
    needs_attributions = True
    needs_retraining = True
    params = {
        "fractions": fractions_param(FRACTIONS, "fractions of pixels replaced by the blurred image"),
        "epochs": Param(0, "retraining epochs; 0 = the cell's recipe", low=0),
        "train_size": Param(0, "training images for the retrain; 0 = the cell's recipe", low=0),
        "blur_kernel": Param(11, "Gaussian blur kernel size in pixels", low=1),
        "blur_sigma": Param(5.0, "Gaussian blur sigma in pixels", low=0.0, low_open=True),
    }

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return 0.0  # nothing at scoring time: the rankings and retrains are priced as their own tasks

    def tasks(self, spec: TrainSpec, explainer: Any, ctx: ExecContext) -> list[BlurRetrainTask]:
        """The retrains of one (cell, explainer): what the graph schedules and ``compute`` reads."""
        if explainer is None:
            raise UsageError(f"metric {self.name!r} ranks pixels by an explainer's attributions")
        spec = _resolved(spec, ctx.device)
        recipe = spec.recipe
        if self.epochs:
            recipe = replace(recipe, epochs=self.epochs)
        if self.train_size:
            recipe = replace(recipe, train_size=self.train_size)
        learner = TrainSpec(spec.dataset, spec.model, get_method("baseline").resolved(), recipe, spec.seed,
                            dict(spec.dataset_params))
        independent = bool(getattr(explainer, "model_independent", False))
        rank = BlurRankTask(explainer.name, _items(dict(explainer.config)), None if independent else spec,
                            spec.dataset, _items(spec.dataset_params), recipe.train_size,
                            spec.seed + SUBSET_SEED_OFFSET, spec.seed * 7919 + 31, ctx.data_root)
        return [BlurRetrainTask(rank, float(f), self.blur_kernel, float(self.blur_sigma), learner)
                for f in self.fractions]

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        """Read the stored retrains; outside a run (``sgq-bench evaluate``) compute the missing ones first."""
        if ctx.explainer is None or ctx.spec is None:
            raise UsageError(f"metric {self.name!r} needs the explainer and the training spec in the context")
        run_ctx = ExecContext(device=str(ctx.device), data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir)
        tasks = self.tasks(ctx.spec, ctx.explainer, run_ctx)
        accs = [t.read(ctx.checkpoint_dir) for t in tasks]
        missing = [i for i, a in enumerate(accs) if a is None]
        if missing:  # through the task graph every retrain is done before the cell is scored
            rankings = compute_rankings(tasks[0].rank, run_ctx)
            for i in missing:
                accs[i] = retrain(tasks[i], rankings, run_ctx)
        fr = [t.fraction for t in tasks]
        learner = tasks[0].learner
        return MetricResult(float(trapezoid_auc(fr, torch.tensor(accs, dtype=torch.float64))),
                            curve={"x": fr, "y": accs}, extra={
            "resolved_params": {"epochs": learner.recipe.epochs, "train_size": learner.recipe.train_size,
                                "learner_model": learner.model, "learner_method": learner.method.name},
            "fill": "blur", "final_epoch_accuracy": True, "ties": "one seeded random tie-break",
            "retrain_keys": [t.key() for t in tasks]})
