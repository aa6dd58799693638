"""One shared training loop for every method, and a checkpoint cache keyed by content.

The key hashes everything that determines the weights (dataset and its params, model, method with all
plugin parameters, recipe incl. train subset, seed, this loop's code version, the plugins' versions),
so a cache hit is always the same model and any change trains a new one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sgq_bench import _registry, checkpoints
from sgq_bench._base import Dataset, Objective, Quantizer, Split, TrainContext
from sgq_bench._batching import max_batch
from sgq_bench._io import stable_hash
from sgq_bench._provenance import provenance
from sgq_bench.config.methods import Method
from sgq_bench.config.suite import Recipe
from sgq_bench.data import batches, load_dataset, load_split, subset, train_fingerprint
from sgq_bench.errors import PluginError, SgqBenchError, TrainingDiverged, UsageError, warn

# Bump when a change to this loop changes the weights it produces. "2": the key holds the training data's
# fingerprint and the resolved precision/layout (fp32 weights are the same as version "1" produced).
TRAIN_CODE_VERSION = "2"
SAVE_EVERY_S = 600.0  # mid-epoch state is also saved this often (besides every epoch end and SIGINT/SIGTERM)


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
            "recipe": self.recipe.as_dict(),
            "seed": self.seed,
            "train_code_version": TRAIN_CODE_VERSION,
            "plugin_versions": versions,
            **({"train_data_sha256": data_fingerprint} if data_fingerprint else {}),
        }

    def key(self, data_fingerprint: str = "") -> str:
        """Content hash of the spec; with the training data's fingerprint it keys the checkpoint."""
        return stable_hash(self.key_material(data_fingerprint))[:20]


def checkpoint_path(spec: TrainSpec, root: Path | None = None, data_fingerprint: str = "") -> Path:
    root = checkpoints.checkpoint_dir(root)
    return root / f"{spec.dataset}-{spec.model}-{spec.method.name}-s{spec.seed}-{spec.key(data_fingerprint)}.pt"


@dataclass(frozen=True)
class CheckpointLocation:
    """Where the model of a spec lives on one device: the spec with its precision resolved (``auto``
    becomes bf16 or fp32), the training data's fingerprint, and the checkpoint path they key."""

    spec: TrainSpec
    fingerprint: str
    path: Path


def locate_checkpoint(spec: TrainSpec, *, device: Any = "cpu", data_root: Any = None,
                      checkpoint_dir: Path | None = None) -> CheckpointLocation:
    """The one derivation of a checkpoint's location (training and the task graph, hence the plan, use it)."""
    resolved = dataclasses.replace(spec, recipe=resolve_precision(spec.recipe, resolve_device(device)))
    fingerprint = train_fingerprint(spec.dataset, spec.dataset_params, data_root)
    return CheckpointLocation(resolved, fingerprint, checkpoint_path(resolved, checkpoint_dir, fingerprint))


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matmuls: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(recipe: Recipe, device: torch.device) -> Recipe:
    """The recipe with ``precision = "auto"`` made concrete for ``device`` (it decides the weights, so
    the checkpoint key holds the resolved value)."""
    if recipe.precision != "auto":
        return recipe
    return dataclasses.replace(recipe, precision="bf16" if bf16_supported(device) else "fp32")


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


class _StopFlag:
    """SIGINT/SIGTERM during training only set a flag; the loop saves its state at the next step boundary
    and then raises KeyboardInterrupt. Why: an exception raised inside backward or the optimizer step
    would leave half-updated weights; a second signal interrupts at once.

    ``stop_file``: a stop is also requested when this file exists (checked every step, a stat call). A
    distributed run stops its workers' trainings this way: cancelling a Ray task that ends at that moment
    can abort the driver (a known race inside Ray), and a file needs no Ray call at all.
    """

    def __init__(self, stop_file: str | os.PathLike[str] | None = None) -> None:
        self.raised = False
        self._stop_file = None if stop_file is None else os.fspath(stop_file)
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.raised or (self._stop_file is not None and os.path.exists(self._stop_file))

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt(f"signal {signum}")
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state(device: torch.device, data_gen: torch.Generator, obj_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "objective": obj_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, data_gen: torch.Generator,
                   obj_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    obj_gen.set_state(state["objective"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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
    state_path: Path | None = None,
    test_split: Split | None = None,
    on_step: Callable[[int, int], None] | None = None,
    stop_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fit ``model`` in place with ``objective`` following ``recipe``; returns loss/time statistics.

    With ``state_path``, the full training state (model, optimizer, RNG streams, position in the epoch)
    is written there atomically after every epoch and on SIGINT/SIGTERM, and a run that finds the file
    continues from it: the final weights are bit-identical on CPU to an uninterrupted run. With
    ``test_split``, test accuracy is recorded after each epoch (``history``) without touching any RNG.
    ``on_step(step, total)`` is called after each optimizer step (progress across processes, tests).
    ``stop_file``: the training also stops (saving its state, as on SIGINT) once this file exists.
    """
    recipe = resolve_precision(recipe, device)
    model.to(device).train()
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = quantizer.param_groups(model, recipe.weight_decay)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise PluginError(f"quantizer {quantizer.name!r} left the model with no trainable parameters "
                          "(its prepare()/param_groups() must keep at least one tensor with requires_grad)")
    opt = make_optimizer(recipe, groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    data_gen = torch.Generator().manual_seed(seed * 7919 + 1)
    obj_gen = torch.Generator(device=device).manual_seed(seed * 7919 + 2)
    ctx = TrainContext(generator=obj_gen)
    steps_per_epoch = len(split) // recipe.batch_size or 1
    total = steps_per_epoch * recipe.epochs
    autocast = recipe.precision == "bf16"
    state = _resume_state(state_path)
    history: list[dict[str, Any]] = []
    start_epoch, skip, step, elapsed, last_loss = 0, 0, 0, 0.0, float("nan")
    epoch_gen_state = data_gen.get_state()
    resumed_at = int(state["step"]) if state is not None else 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, skip, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        elapsed, last_loss = float(state["elapsed"]), float(state["last_loss"])
        history = list(state["history"])
        epoch_gen_state = state["epoch_data_rng"]
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, leave=False, mininterval=1.0)
    running = torch.zeros((), device=device)
    started = time.perf_counter() - elapsed
    check_every = 1 if device.type == "cpu" else 20

    def snapshot(epoch: int, batch: int, gen_at_epoch_start: torch.Tensor) -> None:
        if state_path is None:
            return
        checkpoints.save(state_path, {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "rng": _rng_state(device, data_gen, obj_gen),
            "epoch_data_rng": gen_at_epoch_start, "epoch": epoch, "batch": batch, "step": step,
            "elapsed": time.perf_counter() - started, "last_loss": last_loss, "history": history,
        })

    last_save = time.monotonic()
    with _StopFlag(stop_file) as stop:
        for epoch in range(start_epoch, recipe.epochs):
            ctx.epoch = epoch
            data_gen.set_state(epoch_gen_state)
            it = batches(dataset, split, recipe.batch_size, device, shuffle=True, augment=True,
                         generator=data_gen, drop_last=len(split) >= recipe.batch_size)
            for _ in range(skip):  # resuming mid-epoch: replay the data stream up to where it stopped
                next(it)
            if state is not None:
                _set_rng_state(state["rng"], device, data_gen, obj_gen)
                state = None
            batch_no = skip
            skip = 0
            for x, y in it:
                if recipe.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                f = lr_factor(recipe, step, steps_per_epoch)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * f
                ctx.step = step
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = objective.compute(model, x, y, ctx)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                opt.step()
                running = running + out.loss.detach().float()
                step += 1
                batch_no += 1
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
                if on_step is not None:
                    on_step(step, total)
                if state_path is not None and time.monotonic() - last_save >= SAVE_EVERY_S:
                    snapshot(epoch, batch_no, epoch_gen_state)  # long epochs: SIGKILL loses minutes, not hours
                    last_save = time.monotonic()
                if stop.requested:
                    snapshot(epoch, batch_no, epoch_gen_state)
                    bar.close()
                    raise KeyboardInterrupt(f"{desc}: stopped at step {step}/{total}"
                                            + (f"; state saved to {state_path}" if state_path else ""))
            record = {"epoch": epoch + 1, "train_loss": last_loss, "seconds": time.perf_counter() - started}
            if test_split is not None and recipe.epochs > 1:
                record["test_accuracy"] = accuracy(model, dataset, test_split, device)
            history.append(record)
            epoch_gen_state = data_gen.get_state()
            if epoch + 1 < recipe.epochs:
                snapshot(epoch + 1, 0, epoch_gen_state)
    bar.close()
    return {"train_seconds": time.perf_counter() - started, "steps": step, "final_loss": last_loss,
            "precision": recipe.precision, "channels_last": recipe.channels_last, "history": history,
            "resumed_at_step": resumed_at}


def _resume_state(path: Path | None) -> dict[str, Any] | None:
    """The saved mid-training state at ``path``, or None (absent; or unreadable, which is reported and
    discarded: a damaged partial state only costs the epochs since the start)."""
    if path is None or not Path(path).exists():
        return None
    try:
        return checkpoints.load(path)
    except SgqBenchError as exc:
        warn(f"{exc}; training starts from epoch 0")
        checkpoints.remove(path)
        return None


def load_or_train(
    spec: TrainSpec,
    *,
    data_root: Any = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    stop_file: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """The trained model for ``spec``: loaded from its verified checkpoint when present, else trained
    (resuming from a partial state if a previous training was stopped) and saved."""
    device = resolve_device(device)
    where = locate_checkpoint(spec, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
    spec, fingerprint, path = where.spec, where.fingerprint, where.path
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    full = load_split(dataset, True, data_root)
    model, quantizer, objective = build_model(spec, dataset)
    if path.exists() and not force:
        blob = checkpoints.load(path)
        model.load_state_dict(blob["state_dict"])
        return TrainResult(model.to(device).eval(), path, True, blob["meta"])
    split = subset(full, spec.recipe.train_size, seed=spec.seed + 104729)
    partial = checkpoints.partial_path(path)
    if force:
        checkpoints.remove(partial)
    test = load_split(dataset, False, data_root) if spec.recipe.epochs > 1 else None
    stats = train_model(model, quantizer, objective, dataset, split, spec.recipe, spec.seed, device,
                        desc=f"{spec.dataset}/{spec.model}/{spec.method.name}/s{spec.seed}", progress=progress,
                        state_path=partial, test_split=test, on_step=on_step, stop_file=stop_file)
    meta = {"key": spec.key(fingerprint), "spec": spec.key_material(fingerprint), "train_size": len(split),
            "train_data_sha256": fingerprint, **stats,
            # where and by what code the weights were made (a row's own provenance is its evaluation's)
            "provenance": provenance(device)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoints.save(path, {"state_dict": state, "meta": meta})
    checkpoints.remove(partial)
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
