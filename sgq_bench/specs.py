"""The value objects every layer passes around: what to train (``TrainSpec``), what to score (``Cell``),
where and how work runs (``ExecContext``), and the contract of one unit of cached work (``Task``).

Why one low module: training, the metrics, the evaluation, the task graph and the views all type these,
so they must sit below all of them (``tests/test_imports.py``); before, ``Cell`` lived at the top of the
runner and the task graph typed cells as ``Any``. They are frozen and hashable by content: a task's key,
a checkpoint's name and a cell's completion record all derive from them, never from a name or a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sgq_bench import _registry
from sgq_bench._io import stable_hash
from sgq_bench.config.methods import Method
from sgq_bench.config.suite import Recipe

# Bump when a change to the training loop (sgq_bench/train.py) changes the weights it produces. It is key
# material of every checkpoint. "2": the key holds the training data's fingerprint and the resolved
# precision/layout (fp32 weights are the same as version "1" produced).
TRAIN_CODE_VERSION = "2"


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained model."""

    dataset: str
    model: str
    method: Method
    recipe: Recipe
    seed: int = 0
    dataset_params: dict[str, Any] = field(default_factory=dict)

    def key_material(self, data_fingerprint: str = "") -> dict[str, Any]:
        m = self.method.resolved()
        versions = {
            kind: _registry.registry(kind).entry(name).version or "local"
            for kind, name in (("quantizers", m.quantizer), ("objectives", m.objective),
                               ("models", self.model), ("datasets", self.dataset))
        }
        return {
            "dataset": self.dataset,
            "dataset_params": dict(sorted(self.dataset_params.items())),
            "model": self.model,
            "method": {k: v for k, v in m.as_dict().items() if k != "name"},
            "recipe": self.recipe.key_dict(),
            "seed": self.seed,
            "train_code_version": TRAIN_CODE_VERSION,
            "plugin_versions": versions,
            **({"train_data_sha256": data_fingerprint} if data_fingerprint else {}),
        }

    def key(self, data_fingerprint: str = "") -> str:
        """Content hash of the spec; with the training data's fingerprint it keys the checkpoint."""
        return stable_hash(self.key_material(data_fingerprint))[:20]

    @property
    def label(self) -> str:
        """``dataset/model/method/sSEED``: how logs, plans and cell ids name this model."""
        return f"{self.dataset}/{self.model}/{self.method.name}/s{self.seed}"



@dataclass(frozen=True)
class Cell:
    """One unit of a suite: train (or load) one model and score it with the suite's explainers and metrics."""

    spec: TrainSpec
    explainers: tuple[str, ...]
    metrics: tuple[str, ...]
    eval_size: int
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_seed: int = 0
    suite: str = ""
    suite_version: str = ""
    weights: str = ""  # a model trained elsewhere: its state-dict file (``sgq_bench.weights``); "" = trained here
    weights_sha256: str = ""

    @property
    def id(self) -> str:
        """``dataset/model/method/sSEED``; an external model's adds ``@external-<sha256 prefix>``."""
        return self.spec.label + (f"@external-{self.weights_sha256[:12]}" if self.weights_sha256 else "")

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
            **({"weights_sha256": self.weights_sha256} if self.weights_sha256 else {}),
        })[:20]


@dataclass(frozen=True)
class ExecContext:
    """Where and how work runs: device, data and checkpoint locations, threads, progress output.

    One object instead of the same five parameters threaded through every call. ``stop_file``: trainings
    save their state and stop once it exists (how a Ray driver stops its workers' trainings).
    """

    device: str = "cpu"
    data_root: Any = None
    checkpoint_dir: Any = None
    threads: int | None = None
    progress: bool = False
    stop_file: str | None = None


class CostModel(Protocol):
    """What a task may ask to price itself (``run --plan``); measured on the device by the planner."""

    def training_s(self, spec: TrainSpec) -> float:
        """Seconds to train ``spec`` from scratch (its per-epoch test evaluations included)."""

    def gradient_s(self, spec: TrainSpec, n_images: float) -> float:
        """Seconds of ``n_images`` input-gradient passes through ``spec``'s model."""

    def forward_s(self, spec: TrainSpec, n_images: float) -> float:
        """Seconds of ``n_images`` inference forward passes through ``spec``'s model."""

    def images(self, spec: TrainSpec) -> tuple[int, int]:
        """(training images ``spec`` uses, images of the test split)."""

    def process_start_s(self) -> float:
        """Seconds to start a fresh Python that imports torch (what a probe subprocess pays)."""

    def note(self, text: str) -> None:
        """Record a caveat of the estimate (a guess where a plugin declares no cost); the plan prints it."""


class Task:
    """One node of a run's task graph: content-keyed, cached, runnable on any worker.

    The harness's own tasks (train a model, evaluate a cell) and the tasks a metric schedules (ROAR's
    rankings and retrains, a plugin's) implement the same contract, so the graph, the executors, the plan
    and resume treat them alike and import no metric by name. A metric returns its tasks from
    ``Metric.tasks(spec, explainer, ctx)`` and reads their stored results in ``compute``.

    Contract:
        ``kind``: a short word for logs and the plan (``rank``, ``retrain``, ...).
        ``key()``: a content hash, unique within the kind; equal keys are one task (deduplicated).
        ``needs()``: the tasks whose values ``run`` receives, in order. A needed task that is not in the
            graph (nothing else needed it) is passed as None: ``run`` must then compute what it needs itself.
        ``models()``: trained models ``run`` loads; the graph trains them first.
        ``done(ctx)``: its result is stored already (then it is left out, and a resumed run skips it).
        ``run(ctx, *values)``: do the work, store the result (under ``ctx.checkpoint_dir``, which every
            worker can reach), return a value. Values of ``shared_value`` tasks stay with the executor
            for dependents and never travel to the driver (a ranking is tens of MB).
        ``cost(costs)``: estimated seconds, from a ``CostModel``; None: unpriced (the plan says so).
    """

    kind: ClassVar[str] = "task"
    shared_value: ClassVar[bool] = False

    def key(self) -> str:
        raise NotImplementedError

    def label(self) -> str:
        return self.kind

    def needs(self) -> tuple[Task, ...]:
        return ()

    def models(self) -> tuple[TrainSpec, ...]:
        return ()

    def done(self, ctx: ExecContext) -> bool:
        return False

    def run(self, ctx: ExecContext, *values: Any) -> Any:
        raise NotImplementedError

    def cost(self, costs: CostModel) -> float | None:
        return None


__all__ = ["TRAIN_CODE_VERSION", "Cell", "CostModel", "ExecContext", "Task", "TrainSpec"]
