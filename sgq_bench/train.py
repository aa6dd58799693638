"""One shared training loop for every method, and a checkpoint cache keyed by content.

The key hashes everything that determines the weights (dataset and its params, model, method with all
plugin parameters, recipe incl. train subset, seed, this loop's code version, the plugins' versions),
so a cache hit is always the same model and any change trains a new one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sgq_bench import _registry
from sgq_bench._io import atomic_torch_save, stable_hash
from sgq_bench.api import Dataset, Objective, Quantizer, Split, TrainContext
from sgq_bench.batching import max_batch
from sgq_bench.config import Recipe
from sgq_bench.data import batches, cache_dir, subset
from sgq_bench.errors import TrainingDiverged, UsageError
from sgq_bench.methods import Method

TRAIN_CODE_VERSION = "1"  # bump when a change to this loop changes the weights it produces


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained model."""

    dataset: str
    model: str
    method: Method
    recipe: Recipe
    seed: int = 0
    dataset_params: dict[str, Any] = field(default_factory=dict)

    def key_material(self) -> dict[str, Any]:
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
            "recipe": self.recipe.as_dict(),
            "seed": self.seed,
            "train_code_version": TRAIN_CODE_VERSION,
            "plugin_versions": versions,
        }

    def key(self) -> str:
        return stable_hash(self.key_material())[:20]


def checkpoint_path(spec: TrainSpec, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else cache_dir() / "checkpoints"
    return root / f"{spec.dataset}-{spec.model}-{spec.method.name}-s{spec.seed}-{spec.key()}.pt"


def load_dataset(name: str, params: dict[str, Any] | None = None) -> Dataset:
    return _registry.datasets.get(name)(**(params or {}))


_SPLITS: dict[tuple, Split] = {}


def load_split(dataset: Dataset, train: bool, data_root: Any = None) -> Split:
    """Load a split once per process (keyed by dataset, params and resolved root)."""
    root = dataset.resolve_root(data_root)
    key = (dataset.name, stable_hash(dataset.config), str(root), train)
    if key not in _SPLITS:
        _SPLITS[key] = dataset.load(root, train)
    return _SPLITS[key]


def build_model(spec: TrainSpec, dataset: Dataset) -> tuple[nn.Module, Quantizer, Objective]:
    """Seeded initialisation, then the quantizer's transform."""
    quantizer, objective = spec.method.build()
    torch.manual_seed(spec.seed)
    model = _registry.models.get(spec.model)(dataset)
    return quantizer.prepare(model), quantizer, objective


def make_optimizer(recipe: Recipe, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=recipe.lr)
    return torch.optim.Adam(groups, lr=recipe.lr)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at ``step`` (per-step schedule, linear warm-up first)."""
    total = recipe.epochs * steps_per_epoch
    warm = int(recipe.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if recipe.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * t))
    if recipe.schedule == "step":
        return recipe.gamma ** (step // steps_per_epoch)
    return 1.0


def inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy with frozen parameters (requires_grad False: explainers need input gradients
    only, and quantizers may then reuse their quantized weights across passes), channels-last on CPU
    when the model has 4-D weights (oneDNN convolutions are ~1.5x faster). Same values up to float
    summation order; the model itself is left untouched."""
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    if device.type == "cpu" and any(p.dim() == 4 for p in model.parameters()):
        fast = fast.to(memory_format=torch.channels_last)
    return fast


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, split: Split, device: torch.device,
             batch_size: int | None = None) -> float:
    """Top-1 accuracy over the whole split, in eval mode (``batch_size`` default: ``max_batch``)."""
    was = model.training
    model.eval()
    fast = inference_copy(model, device)
    if batch_size is None:
        batch_size = max_batch(fast, dataset.normalize(split.images[:1].to(device)))
    correct = 0
    for x, y in batches(dataset, split, batch_size, device):
        if device.type == "cpu" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += int((fast(x).argmax(1) == y).sum())
    model.train(was)
    return correct / len(split)


@dataclass
class TrainResult:
    model: nn.Module
    path: Path
    loaded: bool
    meta: dict[str, Any]


def train_model(
    model: nn.Module,
    quantizer: Quantizer,
    objective: Objective,
    dataset: Dataset,
    split: Split,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    *,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``model`` in place with ``objective`` following ``recipe``; returns loss/time statistics."""
    model.to(device).train()
    opt = make_optimizer(recipe, quantizer.param_groups(model, recipe.weight_decay))
    base_lrs = [g["lr"] for g in opt.param_groups]
    data_gen = torch.Generator().manual_seed(seed * 7919 + 1)
    obj_gen = torch.Generator(device=device).manual_seed(seed * 7919 + 2)
    ctx = TrainContext(generator=obj_gen)
    steps_per_epoch = len(split) // recipe.batch_size or 1
    total = steps_per_epoch * recipe.epochs
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=1.0)
    running = torch.zeros((), device=device)
    started, step, last_loss = time.perf_counter(), 0, float("nan")
    check_every = 1 if device.type == "cpu" else 20
    for epoch in range(recipe.epochs):
        ctx.epoch = epoch
        for x, y in batches(dataset, split, recipe.batch_size, device, shuffle=True,
                            augment=True, generator=data_gen, drop_last=len(split) >= recipe.batch_size):
            f = lr_factor(recipe, step, steps_per_epoch)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            ctx.step = step
            out = objective.compute(model, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            running = running + out.loss.detach()
            step += 1
            if step % check_every == 0 or step == total:
                last_loss = float(running) / check_every
                running.zero_()
                if not math.isfinite(last_loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"{desc}: loss became {last_loss} at epoch {epoch + 1}, step {step}/{total} "
                        f"(lr {opt.param_groups[0]['lr']:.3g}); lower the learning rate or check the method"
                    )
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
    bar.close()
    return {"train_seconds": time.perf_counter() - started, "steps": step, "final_loss": last_loss}


def load_or_train(
    spec: TrainSpec,
    *,
    data_root: Any = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """The trained model for ``spec``: loaded from its checkpoint when present, else trained and saved."""
    device = resolve_device(device)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    path = checkpoint_path(spec, checkpoint_dir)
    model, quantizer, objective = build_model(spec, dataset)
    if path.exists() and not force:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        return TrainResult(model.to(device).eval(), path, True, blob["meta"])
    split = subset(load_split(dataset, True, data_root), spec.recipe.train_size, seed=spec.seed + 104729)
    stats = train_model(model, quantizer, objective, dataset, split, spec.recipe, spec.seed, device,
                        desc=f"{spec.dataset}/{spec.model}/{spec.method.name}/s{spec.seed}", progress=progress)
    meta = {"key": spec.key(), "spec": spec.key_material(), "train_size": len(split), **stats}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(path, {"state_dict": state, "meta": meta})
    return TrainResult(model.eval(), path, False, meta)


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; asking for CUDA without it is a usage error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a device; expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r} is not supported; expected cpu, cuda, cuda:N or auto")
    return dev
