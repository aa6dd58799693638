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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sgq_bench import _registry, checkpoints
from sgq_bench._base import Dataset, Objective, Quantizer, Split, TrainContext
from sgq_bench._batching import max_batch
from sgq_bench._lock import training_lock
from sgq_bench._provenance import provenance
from sgq_bench._signals import StopFlag
from sgq_bench.config.suite import Recipe
from sgq_bench.data import batches, load_dataset, load_split, subset, train_fingerprint
from sgq_bench.errors import PluginError, SgqBenchError, TrainingDiverged, UsageError, warn
from sgq_bench.specs import ExecContext, TrainSpec

SAVE_EVERY_S = 600.0  # mid-epoch state is also saved this often (besides every epoch end and SIGINT/SIGTERM)


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
    model = quantizer.prepare(_registry.models.get(spec.model)(dataset))
    _check_declared_bits(quantizer, model)
    return model, quantizer, objective


def _check_declared_bits(quantizer: Quantizer, model: nn.Module) -> None:
    """A quantizer that declares fewer than 32 bits must mark the layers it quantizes (``mark_quantized``);
    otherwise size, BOPs and compression would score it as float while its rows say W4A4."""
    from sgq_bench._base import layer_bits
    from sgq_bench._bits import FLOAT

    declared = quantizer.declared_bits()
    if declared != FLOAT and not any(layer_bits(m) is not None for m in model.modules()):
        raise PluginError(f"quantizer {quantizer.name!r} declares {declared.label} but its prepare() marked no "
                          "layer as quantized; call sgq_bench.mark_quantized(layer, weight_bits=..., act_bits=...) "
                          "on each layer it quantizes (docs/plugins.md, Quantizer)")


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


def training_steps(recipe: Recipe, n_train: int) -> int:
    """Optimizer steps of a whole training on ``n_train`` images, counted as ``train_model`` takes them
    (the plan, the status view and resumed-state fractions count the same way)."""
    return (n_train // recipe.batch_size or 1) * recipe.epochs


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
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit ``model`` in place with ``objective`` following ``recipe``; returns loss/time statistics.

    With ``state_path``, the full training state (model, optimizer, RNG streams, position in the epoch)
    is written there atomically after every epoch and on SIGINT/SIGTERM, and a run that finds the file
    continues from it: the final weights are bit-identical on CPU to an uninterrupted run on the same
    CPU model and thread count (``resumes`` in the result records each resume and whether it crossed
    machines or thread counts, after which they are not). With ``test_split``, test accuracy is recorded
    after each epoch (``history``) without touching any RNG. ``on_step(step, total)`` is called after
    each optimizer step. ``stop_file``: the training also stops (saving its state) once this file exists.
    ``log``: one line per resume and per finished epoch (where no progress bar shows it: a log file).
    """
    loop = _Loop(model, quantizer, objective, dataset, split, resolve_precision(recipe, device), seed, device,
                 desc, state_path)
    loop.restore(_resume_state(state_path))
    if log is not None and loop.resumes:
        last = loop.resumes[-1]
        log(f"{desc}: resuming at epoch {loop.start_epoch + 1}, step {loop.step}/{loop.total} from {state_path}"
            + ("" if last["same_machine"] else " (saved on another CPU or thread count: the weights will differ "
                                                "from an uninterrupted run's; recorded)"))
    loop.bar = tqdm(total=loop.total, initial=loop.step, desc=desc, disable=not progress, leave=False,
                    mininterval=1.0)
    with StopFlag(stop_file) as stop:
        for epoch in range(loop.start_epoch, recipe.epochs):
            loop.run_epoch(epoch, stop, on_step)
            record = {"epoch": epoch + 1, "train_loss": loop.last_loss, "seconds": loop.seconds()}
            if test_split is not None and recipe.epochs > 1:
                record["test_accuracy"] = accuracy(model, dataset, test_split, device)
            loop.history.append(record)
            if log is not None:
                acc = f", test accuracy {record['test_accuracy']:.4f}" if "test_accuracy" in record else ""
                log(f"{desc}: epoch {epoch + 1}/{recipe.epochs} done, train loss {loop.last_loss:.4f}{acc} "
                    f"({loop.seconds() / 60:.1f} min so far)")
            loop.epoch_gen_state = loop.data_gen.get_state()
            if epoch + 1 < recipe.epochs:
                loop.snapshot(epoch + 1, 0)
    loop.bar.close()
    return {"train_seconds": loop.seconds(), "steps": loop.step, "final_loss": loop.last_loss,
            "precision": loop.recipe.precision, "channels_last": loop.recipe.channels_last,
            "compiled": loop.recipe.compile, "history": loop.history,
            "resumed_at_step": loop.resumed_at, "resumes": loop.resumes}


def _machine() -> dict[str, Any]:
    """Who runs a training: what decides its float results besides the code (CPU model, threads, device)."""
    from sgq_bench._provenance import cpu_model

    return {"cpu_model": str(cpu_model()), "threads": int(torch.get_num_threads()), "torch": str(torch.__version__)}


class _Loop:
    """The state of one training between steps: model, optimizer, RNG streams, position, history.

    Why a class: saving and resuming need every piece of it in one place, in one order of RNG use.
    """

    def __init__(self, model: nn.Module, quantizer: Quantizer, objective: Objective, dataset: Dataset,
                 split: Split, recipe: Recipe, seed: int, device: torch.device, desc: str,
                 state_path: Path | None) -> None:
        self.model, self.objective, self.dataset, self.split = model, objective, dataset, split
        self.recipe, self.device, self.desc, self.state_path = recipe, device, desc, state_path
        model.to(device).train()
        if recipe.channels_last:
            model.to(memory_format=torch.channels_last)
        # the objective runs the compiled module (same parameters); state, optimizer and checkpoints use
        # ``model`` itself, so a compiled training saves and resumes exactly as an eager one
        self.forward_model: nn.Module = torch.compile(model) if recipe.compile else model
        groups = quantizer.param_groups(model, recipe.weight_decay)
        if not any(p.requires_grad for g in groups for p in g["params"]):
            raise PluginError(f"quantizer {quantizer.name!r} left the model with no trainable parameters "
                              "(its prepare()/param_groups() must keep at least one tensor with requires_grad)")
        self.opt = make_optimizer(recipe, groups)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.data_gen = torch.Generator().manual_seed(seed * 7919 + 1)
        self.obj_gen = torch.Generator(device=device).manual_seed(seed * 7919 + 2)
        self.ctx = TrainContext(generator=self.obj_gen)
        self.steps_per_epoch = len(split) // recipe.batch_size or 1
        self.total = training_steps(recipe, len(split))
        self.history: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.start_epoch, self.skip, self.step, self.last_loss = 0, 0, 0, float("nan")
        self.epoch_gen_state = self.data_gen.get_state()
        self.pending_rng: dict[str, Any] | None = None
        self.resumed_at = 0
        self.started = time.perf_counter()
        self.running = torch.zeros((), device=device)
        self.check_every = 1 if device.type == "cpu" else 20
        self.last_save = time.monotonic()
        self.bar: Any = None

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from a saved state; the RNG streams are set when its epoch's data stream is replayed."""
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.start_epoch, self.skip, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.started = time.perf_counter() - float(state["elapsed"])
        self.last_loss = float(state["last_loss"])
        self.history = list(state["history"])
        self.resumes = list(state.get("resumes", []))
        self.epoch_gen_state = state["epoch_data_rng"]
        self.pending_rng = state["rng"]
        self.resumed_at = self.step
        saved_by, now = state.get("machine"), _machine()
        self.resumes.append({"step": self.step, "saved_by": saved_by, "resumed_by": now,
                             "same_machine": saved_by == now})

    def snapshot(self, epoch: int, batch: int) -> None:
        if self.state_path is None:
            return
        checkpoints.save(self.state_path, {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "rng": _rng_state(self.device, self.data_gen, self.obj_gen),
            "epoch_data_rng": self.epoch_gen_state, "epoch": epoch, "batch": batch, "step": self.step,
            "elapsed": self.seconds(), "last_loss": self.last_loss, "history": self.history,
            "resumes": self.resumes, "machine": _machine(),
        })

    def run_epoch(self, epoch: int, stop: StopFlag, on_step: Callable[[int, int], None] | None) -> None:
        self.ctx.epoch = epoch
        self.data_gen.set_state(self.epoch_gen_state)
        it = batches(self.dataset, self.split, self.recipe.batch_size, self.device, shuffle=True, augment=True,
                     generator=self.data_gen, drop_last=len(self.split) >= self.recipe.batch_size)
        for _ in range(self.skip):  # resuming mid-epoch: replay the data stream up to where it stopped
            next(it)
        if self.pending_rng is not None:
            _set_rng_state(self.pending_rng, self.device, self.data_gen, self.obj_gen)
            self.pending_rng = None
        batch_no, self.skip = self.skip, 0
        for x, y in it:
            self.train_step(x, y, epoch)
            batch_no += 1
            if on_step is not None:
                on_step(self.step, self.total)
            if self.state_path is not None and time.monotonic() - self.last_save >= SAVE_EVERY_S:
                self.snapshot(epoch, batch_no)  # long epochs: SIGKILL loses minutes, not hours
                self.last_save = time.monotonic()
            if stop.requested:
                self.snapshot(epoch, batch_no)
                self.bar.close()
                raise KeyboardInterrupt(f"{self.desc}: stopped at step {self.step}/{self.total}"
                                        + (f"; state saved to {self.state_path}" if self.state_path else ""))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        recipe, opt = self.recipe, self.opt
        if recipe.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        f = lr_factor(recipe, self.step, self.steps_per_epoch)
        for g, lr in zip(opt.param_groups, self.base_lrs):
            g["lr"] = lr * f
        self.ctx.step = self.step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
            out = self.objective.compute(self.forward_model, x, y, self.ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
        opt.step()
        self.running = self.running + out.loss.detach().float()
        self.step += 1
        if self.step % self.check_every == 0 or self.step == self.total:
            self.last_loss = float(self.running) / self.check_every
            self.running.zero_()
            if not math.isfinite(self.last_loss):
                self.bar.close()
                raise TrainingDiverged(
                    f"{self.desc}: loss became {self.last_loss} at epoch {epoch + 1}, step {self.step}/{self.total} "
                    f"(lr {opt.param_groups[0]['lr']:.3g}); lower the learning rate or check the method")
        self.bar.update(1)
        if self.step % 50 == 0:
            self.bar.set_postfix(loss=f"{self.last_loss:.3f}", refresh=False)


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


def load_or_train(spec: TrainSpec, ctx: ExecContext | None = None, *, force: bool = False,
                  on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """The trained model for ``spec``: loaded from its verified checkpoint when present, else trained
    (resuming from a partial state if a previous training was stopped) and saved.

    ``ctx`` says where (device, data, checkpoint directory, progress bars, stop file); default: the CPU,
    ``$SGQ_BENCH_DATA`` and the user cache. ``force`` retrains even when a checkpoint exists. The
    training holds ``<checkpoint>.lock``: a second process asking for the same model waits, then loads it.
    """
    ctx = ctx or ExecContext()
    device = resolve_device(ctx.device)
    where = locate_checkpoint(spec, device=device, data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir)
    spec, fingerprint, path = where.spec, where.fingerprint, where.path
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    full = load_split(dataset, True, ctx.data_root)
    model, quantizer, objective = build_model(spec, dataset)
    if path.exists() and not force:
        return _loaded(model, path, device)
    log = None if ctx.progress else _log_line
    with training_lock(path, spec.label, log=log or warn):
        if path.exists() and not force:  # trained meanwhile by the process we waited for
            return _loaded(model, path, device)
        split = subset(full, spec.recipe.train_size, seed=spec.seed + 104729)
        partial = checkpoints.partial_path(path)
        if force:
            checkpoints.remove(partial)
        test = load_split(dataset, False, ctx.data_root) if spec.recipe.epochs > 1 else None
        stats = train_model(model, quantizer, objective, dataset, split, spec.recipe, spec.seed, device,
                            desc=spec.label, progress=ctx.progress, state_path=partial, test_split=test,
                            on_step=on_step, stop_file=ctx.stop_file, log=log)
        meta = {"key": spec.key(fingerprint), "spec": spec.key_material(fingerprint), "train_size": len(split),
                "train_data_sha256": fingerprint, **stats,
                # where and by what code the weights were made (a row's own provenance is its evaluation's)
                "provenance": provenance(device)}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        checkpoints.save(path, {"state_dict": state, "meta": meta})
        checkpoints.remove(partial)
        return TrainResult(model.eval(), path, False, meta)


def _loaded(model: nn.Module, path: Path, device: torch.device) -> TrainResult:
    blob = checkpoints.load(path)
    model.load_state_dict(blob["state_dict"])
    return TrainResult(model.to(device).eval(), path, True, blob["meta"])


def _log_line(text: str) -> None:
    """Training progress where no progress bar is shown (``sgq_bench.train`` logger, INFO)."""
    from sgq_bench._log import logger

    logger("train").info("%s", text)


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
