"""The plugin API: what a quantizer, objective, dataset or model must provide.

A third-party package implements these and registers them under the entry-point groups
``sgq_bench.quantizers``, ``sgq_bench.objectives``, ``sgq_bench.datasets`` and ``sgq_bench.models``
(see docs/plugins.md). The reference methods in ``baselines/`` use exactly this API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from sgq_bench.params import Param, resolve_params


class Plugin:
    """Base of every parameterised plugin: declared params, validated at construction."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        owner = f"{type(self).__name__}({self.name or type(self).__name__})"
        self.config: dict[str, Any] = resolve_params(owner, self.params, params)
        for key, value in self.config.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class Quantizer(Plugin):
    """A model transform. ``prepare`` returns the model that is trained (fake-quant, with gradients)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Transform ``model`` (in place is fine) into the form that is trained and explained."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give e.g. clipping levels their own decay."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def bits(self) -> tuple[int, int]:
        """(weight bits, activation bits) of the quantized layers; (32, 32) for float."""
        return (32, 32)

    def deploy(self, model: nn.Module) -> nn.Module:
        """Convert a trained model to a real low-precision inference model (optional)."""
        raise NotImplementedError(f"quantizer {self.name!r} has no deploy()")


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
    """A training loss. ``compute`` is called with the model in train mode and must leave it so."""

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> ObjectiveOutput:
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

    def load(self, root: Any, train: bool) -> Split:
        """Load a split; ``root`` is a resolved data folder (or None for generated data)."""
        raise NotImplementedError

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> normalised float on the same device."""
        x = images.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training augmentation on a normalised batch; identity by default."""
        return x


class Explainer(Plugin):
    """An attribution method: one attribution per input, shaped like the input (captum-backed)."""

    dataset: Dataset | None = None

    def setup(self, dataset: Dataset) -> None:
        """Called by the harness before ``attribute`` with the dataset whose normalisation ``x`` uses.

        Why: baselines such as "black" (the normalised value of pixel 0, per channel) and noise scales
        relative to the input range depend on the dataset, which ``attribute`` does not receive.
        """
        self.dataset = dataset

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Attributions for logits[target] of ``model`` (eval mode) at ``x``; same shape as ``x``."""
        raise NotImplementedError


@dataclass
class EvalContext:
    """What a metric may use: the trained model, the fixed evaluation subset, and how it was made.

    ``x``/``y`` are the normalised evaluation inputs and labels on ``device`` (identical for every
    method of a run); ``spec`` (a ``sgq_bench.train.TrainSpec``) lets retraining metrics (ROAR) and
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
    """A score of a trained model (and, when ``needs_attributions``, of one explainer's attributions)."""

    family: ClassVar[str] = ""  # accuracy | deletion | road | roar | sparsity | faithfulness | efficiency
    higher_is_better: ClassVar[bool] = True
    needs_attributions: ClassVar[bool] = True
    needs_retraining: ClassVar[bool] = False

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult | list[MetricResult]:
        raise NotImplementedError


__all__ = [
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
]
