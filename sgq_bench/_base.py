"""The plugin API: what a quantizer, objective, dataset, model, explainer or metric must provide.

A third-party package subclasses these and registers them under the entry-point groups
``sgq_bench.quantizers``, ``sgq_bench.objectives``, ``sgq_bench.datasets``, ``sgq_bench.models``,
``sgq_bench.explainers``, ``sgq_bench.metrics`` and ``sgq_bench.deploy_backends`` (see docs/plugins.md; ``sgq_bench._plugins`` re-exports
everything a plugin needs). The reference methods in the top-level ``baselines/`` (installed as ``sgq_bench.builtin``) use exactly this API.

The contract in one paragraph: the harness instantiates each plugin class with the parameters a suite
gives (validated against the class's declared ``params``, defaults written into every result); a
quantizer declares its bits from its params and transforms a freshly built model (marking each layer
it quantizes), an objective turns a batch into a loss, a dataset yields uint8 splits, a model factory
builds an ``nn.Module`` with ``nn.ReLU`` modules and ``explain_layer``, an explainer returns
attributions shaped like its input, and a metric returns ``MetricResult``s in a declared direction (finite, or NaN with the reason in ``extra["undefined_reason"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from sgq_bench._bits import FLOAT, Bits, method_label
from sgq_bench._params import Param, resolve_params


class Plugin:
    """Base of every parameterised plugin: declared params, validated at construction.

    Why declared params: every default is visible (``sgq-bench list``), validated with a one-line
    error naming the plugin, hashed into checkpoint keys and repeated in every result row. After
    ``__init__`` each param is an attribute (``self.w_bits``) and ``self.config`` holds them all.
    ``name`` is the registry name; ``description`` (or the docstring's first line) is what ``list`` shows.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        owner = f"{type(self).__name__}({self.name or type(self).__name__})"
        self.config: dict[str, Any] = resolve_params(owner, self.params, params)
        for key, value in self.config.items():
            setattr(self, key, value)

    @property
    def key_config(self) -> dict[str, Any]:
        """``config`` as checkpoint keys hash it: a parameter ``added_late`` only when it is not at its default."""
        return {k: v for k, v in self.config.items()
                if not (self.params[k].added_late and v == self.params[k].default)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


BITS_ATTR = "sgq_bits"  # where mark_quantized stores a layer's Bits; read it through layer_bits()


def mark_quantized(module: nn.Module, weight_bits: int = 32, act_bits: int = 32) -> nn.Module:
    """Declare what ``module`` quantizes: its ``weight`` parameter stored at ``weight_bits``, its output
    rounded to ``act_bits`` (32 = left float). ``prepare`` calls it on each layer it quantizes.

    Why declared: efficiency metrics (size, compression, BOPs) read only this, through ``layer_bits``.
    It is a plain attribute, so ``state_dict`` keys and checkpoints are unchanged. Returns ``module``.
    """
    bits = Bits(weight_bits, act_bits)
    if bits.weight < 32 and not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise ValueError(f"mark_quantized: {type(module).__name__} has no `weight` to store at {weight_bits} bits")
    setattr(module, BITS_ATTR, bits)
    return module


def layer_bits(module: nn.Module) -> Bits | None:
    """The ``Bits`` that ``mark_quantized`` declared for ``module``; None for a module left float."""
    bits = module.__dict__.get(BITS_ATTR)
    return bits if isinstance(bits, Bits) else None


class Quantizer(Plugin):
    """A model transform. ``prepare`` returns the model that is trained (fake-quant, with gradients).

    A quantizer knows nothing about the loss, so it combines with every objective (methods are a
    grid). It must be deterministic given the seeded model it receives: checkpoints are restored by
    calling ``prepare`` on a fresh model and loading the saved ``state_dict`` into the result.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "bits" in vars(cls) and "declared_bits" not in vars(cls):  # the contract before declared_bits
            raise TypeError(f"quantizer {cls.__name__}: bits() is no longer read; declare "
                            "declared_bits() -> Bits and mark layers with mark_quantized (docs/plugins.md)")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Transform ``model`` (in place is fine) into the form that is trained and explained.

        Returns:
            The module to train: same input and logits shapes, differentiable with respect to the
            input (explainers and saliency-guided objectives take input gradients through it), with
            every new learnable tensor registered as a parameter or buffer (so it is checkpointed).
            Each layer it quantizes is declared with ``mark_quantized`` (a weight layer keeps its
            parameter named ``weight``): efficiency metrics read only that declaration.
        """
        raise NotImplementedError

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give e.g. clipping levels their own decay."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def declared_bits(self) -> Bits:
        """Bits of the quantized layers, from the params alone (no model is built); float by default.

        Why from params: method labels, result rows and the plan need the bits before (or without)
        ``prepare``. Layers ``prepare`` marks may differ where a quantizer says why (pact's 8-bit
        boundaries); the rest must agree with this.
        """
        return FLOAT

    def deploy(self, model: nn.Module) -> nn.Module:
        """Convert a trained model to a real low-precision inference model (optional).

        Returns:
            An eval-mode module with the same logits shape. Leave the default (``NotImplementedError``)
            when there is no real integer kernel; deploy-based metrics then report themselves skipped.
        """
        raise NotImplementedError(f"quantizer {self.name!r} has no deploy()")

    # Optional: ``export_onnx(model, calibration, bias="int32") -> (onnx.ModelProto, info dict)`` writes the
    # trained model as an integer ONNX graph on its own grids, with the bias as an int32 (fast) or in float
    # (exact); the ``onnxruntime`` deploy backend runs it (pact has one).


class DeployBackend(Plugin):
    """A runtime that runs a trained model's int8 deployment, and its float model for the same-runtime reference.

    Why a plugin kind: an int8 model runs in more than one runtime (torch.ao's quantized kernels, ONNX
    Runtime; OpenVINO or TensorRT from a plugin), and which is fastest depends on the CPU and batch size.
    Registered in the entry-point group ``sgq_bench.deploy_backends``; the timing metrics and
    ``bench deploy`` pick one by name (``deploy = "<name>"``).

    ``runtime``: what rows print as the runtime. ``int8(quantizer, model, calibration)`` returns an
    eval-mode module mapping a float NCHW batch to float logits, with an ``info`` dict (runtime settings,
    layout, what is exact). ``fp32(model, input_shape)`` returns the float ``model`` in the same runtime,
    or None when the runtime's fp32 is torch eager itself. ``describe()``: the settings every row records.
    """

    runtime: ClassVar[str] = "?"
    params = {"threads": Param(1, "intra-op threads every model this backend builds runs with", low=1)}

    def int8(self, quantizer: Quantizer, model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
        raise NotImplementedError(f"deploy backend {self.name!r} has no int8()")

    def fp32(self, model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads}


@dataclass
class TrainContext:
    """What an objective may use besides the batch: a seeded generator and the step counter."""

    generator: torch.Generator
    step: int = 0
    epoch: int = 0


@dataclass
class ObjectiveOutput:
    """The loss to minimise, the clean logits (for train accuracy) and named parts for logging."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor]  # detached scalars; read lazily to avoid a device sync per step


class Objective(Plugin):
    """A training loss. ``compute`` is called with the model in train mode and must leave it so.

    An objective knows nothing about quantization, so it combines with every quantizer: it only calls
    the (possibly fake-quantized) ``model``.
    """

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> ObjectiveOutput:
        """The loss of one mini-batch.

        Args:
            model: the model being trained, in train mode (switch to eval for an inner pass if needed,
                then back).
            x: a normalised (and augmented) batch N x C x H x W on the training device.
            y: int64 labels N.
            ctx: a seeded generator (use it for any randomness, so runs are reproducible) and counters.

        Returns:
            ``ObjectiveOutput(loss, logits, parts)``: a scalar ``loss`` with a graph to the model's
            parameters (the harness calls ``backward`` and steps the optimizer), the logits of the
            clean ``x`` (N x classes), and detached scalar ``parts`` for logging.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Split:
    """A whole split held in memory: uint8 images N x C x H x W and int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Dataset(Plugin):
    """An image classification dataset held in memory as uint8, normalised per batch on the device.

    Why in memory: MNIST and CIFAR-10 fit in RAM, and batched tensor indexing, normalisation and
    augmentation are several times faster than a per-image DataLoader on a small CPU.
    """

    num_classes: ClassVar[int] = 10
    in_channels: ClassVar[int] = 1
    image_size: ClassVar[int] = 28
    mean: ClassVar[tuple[float, ...]] = (0.0,)
    std: ClassVar[tuple[float, ...]] = (1.0,)
    needs_root: ClassVar[bool] = True

    def resolve_root(self, data_root: Any) -> Any:
        """The folder (or handle) ``load`` reads: ``--data-root`` when given, else ``$SGQ_BENCH_DATA``.

        Why a default: a plugin dataset that reads files only implements ``load``; the built-in datasets
        override this to look in more places (the cache) and to check their file layout.
        """
        if not self.needs_root:
            return None
        import os
        from pathlib import Path

        from sgq_bench.errors import DataNotFoundError

        for label, value in (("--data-root", data_root), ("$SGQ_BENCH_DATA", os.environ.get("SGQ_BENCH_DATA"))):
            if value:
                path = Path(value).expanduser()
                if not path.is_dir():
                    raise DataNotFoundError(f"{self.name}: {label} {str(path)!r} is not a folder")
                return path
        raise DataNotFoundError(f"{self.name} needs a data folder: give --data-root DIR or set SGQ_BENCH_DATA=DIR")

    def load(self, root: Any, train: bool) -> Split:
        """Load a split; ``root`` is a resolved data folder (or None for generated data).

        Returns:
            A ``Split`` of uint8 images N x ``in_channels`` x ``image_size`` x ``image_size`` and int64
            labels in ``[0, num_classes)``, the same on every call (seed any generated data).
        """
        raise NotImplementedError

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) N x C x H x W -> normalised float on the same device; the input is never
        modified (``float()`` of a float tensor is the tensor itself, so it is copied first: ROAR's masked
        splits are float, and a probe on ``split.images[:1]`` once normalised image 0 in place)."""
        x = images.clone() if images.dtype == torch.float32 else images.float()
        x = x.div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training augmentation on a normalised batch; identity by default."""
        return x


class Explainer(Plugin):
    """An attribution method: one attribution per input, shaped like the input (captum-backed).

    The harness computes attributions once per (trained model, explainer) and feeds them to every
    metric, so an explainer must be deterministic for a given input, or seed itself.
    """

    dataset: Dataset | None = None
    # True when the attributions ignore the model (the ``random`` control): ROAR/KAR with a fixed learner
    # then share one set of retrains across every cell of a dataset and seed.
    model_independent: ClassVar[bool] = False

    def setup(self, dataset: Dataset) -> None:
        """Called by the harness before ``attribute`` with the dataset whose normalisation ``x`` uses.

        Why: baselines such as "black" (the normalised value of pixel 0, per channel) and noise scales
        relative to the input range depend on the dataset, which ``attribute`` does not receive.
        """
        self.dataset = dataset

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Attributions for logits[target] of ``model`` (eval mode) at ``x``; same shape as ``x``.

        Returns:
            A detached float tensor shaped exactly like ``x`` with finite values (signed is fine: metrics
            reduce it to one score per pixel by summing absolute values over channels). The model's
            parameters must be left unchanged and its mode left in eval.
        """
        raise NotImplementedError

    def gradient_passes(self) -> float | None:
        """Input-gradient passes per image this explainer makes, used by ``run --plan`` to price it.

        None = not declared: the plan then assumes 1 per image and says so.
        """
        return None


@dataclass
class EvalContext:
    """What a metric may use: the trained model, the fixed evaluation subset, and how it was made.

    ``x``/``y`` are the normalised evaluation inputs and labels on ``device`` (identical for every
    method of a run); ``train_meta`` is what training recorded (``history``: test accuracy after each
    epoch); ``spec`` (a ``sgq_bench.train.TrainSpec``) lets retraining metrics (ROAR) and
    efficiency metrics rebuild or deploy the model; ``cache`` shares work (e.g. predictions) between
    the metrics of one cell.
    """

    model: nn.Module
    dataset: Dataset
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    spec: Any = None
    quantizer: Quantizer | None = None
    data_root: Any = None
    checkpoint_dir: Any = None
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)
    explainer: Explainer | None = None  # the explainer whose attributions are passed (ROAR re-ranks data)
    train_meta: dict[str, Any] | None = None  # the checkpoint's training record (per-epoch log, precision)


@dataclass
class MetricResult:
    """One number (plus its curve / per-sample values when it has them).

    ``variant`` distinguishes several rows of one metric (e.g. latency of ``int8`` at batch 128).
    ``per_sample`` enables the paired bootstrap against the baseline in reports.
    """

    value: float
    curve: dict[str, list[float]] | None = None  # {"x": [...], "y": [...]}
    per_sample: list[float] | None = None
    variant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Metric(Plugin):
    """A score of a trained model (and, when ``needs_attributions``, of one explainer's attributions).

    ``higher_is_better`` is the direction every report and leaderboard uses; ``family`` groups the
    metric in tables; ``needs_attributions = False`` metrics (accuracy, efficiency) run once per model
    with ``attributions=None``; ``needs_retraining`` marks expensive metrics (ROAR) that suites opt into.
    """

    family: ClassVar[str] = ""  # accuracy | deletion | road | roar | sparsity | faithfulness | efficiency
    higher_is_better: ClassVar[bool] = True
    needs_attributions: ClassVar[bool] = True
    needs_retraining: ClassVar[bool] = False

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult | list[MetricResult]:
        """Score ``ctx.model`` on ``ctx.x``/``ctx.y`` (and ``attributions``, shaped like ``ctx.x``).

        Returns:
            One ``MetricResult`` with a finite ``value`` (ideally with ``per_sample`` values so reports
            can run a paired bootstrap), or a list of them told apart by ``variant``. Where the metric is
            undefined for the maps (a constant map has no correlation), ``value`` is NaN and
            ``extra["undefined_reason"]`` says why: the row and the report show that reason. Use a generator
            seeded from ``ctx.seed`` for any randomness; never modify ``attributions`` in place (they
            are shared with the other metrics).
        """
        raise NotImplementedError

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float | None:
        """Image forward passes this metric makes on ``n_images`` evaluation images of ``n_pixels`` pixels
        (``n_test``: size of the test split), used by ``run --plan`` to price it.

        None = not declared: the plan then assumes one per image and says so.
        """
        return None

    def overhead_s(self, costs: Any) -> float:
        """Seconds this metric costs besides its forward passes (e.g. starting probe processes), priced
        from the planner's ``costs`` (a ``sgq_bench.specs.CostModel``); 0 by default."""
        return 0.0

    def tasks(self, spec: TrainSpec, explainer: Explainer | None, ctx: ExecContext) -> list[Task]:  # noqa: F821 - sgq_bench.specs sits above
        """Work this metric needs done before ``compute`` runs, as ``sgq_bench.specs.Task`` objects.

        A retraining metric (ROAR) returns its retrains here; the run's task graph schedules them (and what
        they need) on any executor, caches them, prices them in ``--plan`` and resumes them, and ``compute``
        then reads their stored results. ``spec`` is the cell's ``TrainSpec``, ``explainer`` the one being
        scored (None for metrics without attributions), ``ctx`` the ``ExecContext``. Default: none.
        (The three types live in ``sgq_bench.specs``, a layer above this module: named here, not imported.)
        """
        return []


__all__ = [
    "BITS_ATTR",
    "Bits",
    "Dataset",
    "EvalContext",
    "Explainer",
    "Metric",
    "MetricResult",
    "Objective",
    "ObjectiveOutput",
    "Param",
    "Plugin",
    "Quantizer",
    "Split",
    "TrainContext",
    "layer_bits",
    "mark_quantized",
    "method_label",
]
