"""Timings the plan rests on, measured: each (model, method, batch, precision, layout) training step is
timed on the device for a few steps, and so are an inference forward pass and an input-gradient pass of
each model; cached in ``<cache>/calibration.json``, keyed by device, CPU model, torch version and threads.

``MeasuredCosts`` is the ``sgq_bench.specs.CostModel`` built on them, which every task prices itself with.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text, stable_hash
from sgq_bench._provenance import cpu_model
from sgq_bench.specs import TrainSpec

CALIBRATION_STEPS = 5
WARMUP_STEPS = 2


@dataclass
class Timing:
    """Measured seconds: one training step at the recipe's batch, one image forward, one image input-gradient."""

    step_s: float
    fwd_img_s: float
    grad_img_s: float


def calibration_file() -> Path:
    from sgq_bench.data import cache_dir

    return cache_dir() / "calibration.json"


def _calibration_key(spec: TrainSpec, dev: Any, recipe: Any) -> str:
    """What decides a step's time: device (and GPU or CPU model), threads, torch, the model and method, the
    batch, precision, layout and optimizer."""
    import torch

    m = spec.method.resolved()
    return stable_hash({"device": str(dev), "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                       "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "dataset": spec.dataset, "dataset_params": spec.dataset_params, "model": spec.model,
                       "method": {k: v for k, v in m.as_dict().items() if k != "name"},
                       "batch": recipe.batch_size, "precision": recipe.precision, "channels_last": recipe.channels_last,
                       "optimizer": recipe.optimizer})[:20]


class NotCalibrated(LookupError):
    """A timing the cache lacks, asked for by a cost model that must not measure (``measure=False``)."""


def calibrate(spec: TrainSpec, device: Any, *, data_root: Any = None, cache: dict[str, Any] | None = None,
              log: Any = None, measure: bool = True) -> Timing:
    """Time ``spec``'s training step, forward and input-gradient passes on ``device`` (cached).

    ``measure=False``: only what the cache holds (:class:`NotCalibrated` otherwise): a run's log quotes the
    plan's estimates where they are known, without timing anything before its work."""
    import torch

    from sgq_bench.data import batches, load_dataset, load_split
    from sgq_bench.train import build_model, inference_copy, make_optimizer, resolve_device, resolve_precision

    dev = resolve_device(device)
    recipe = resolve_precision(spec.recipe, dev)
    key = _calibration_key(spec, dev, recipe)
    store = cache if cache is not None else _load_cache()
    if key in store:
        return Timing(**store[key])
    if not measure:
        raise NotCalibrated(key)
    if log is not None:
        log(f"calibrating {spec.dataset}/{spec.model}/{spec.method.name} (batch {recipe.batch_size}, "
            f"{recipe.precision}) on {dev} ...")
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = load_split(dataset, True, data_root)
    model, quantizer, objective = build_model(spec, dataset)
    model.to(dev).train()
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(recipe, quantizer.param_groups(model, recipe.weight_decay))
    from sgq_bench._base import TrainContext

    ctx = TrainContext(generator=torch.Generator(device=dev).manual_seed(0))
    x, y = next(batches(dataset, split, recipe.batch_size, dev, shuffle=False))

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
            out = objective.compute(model, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step_s = _time(step, dev)
    fast = inference_copy(model, dev)
    from sgq_bench._batching import max_batch

    xb = x[: min(len(x), max(1, max_batch(fast, x[:1])))]
    if dev.type == "cpu" and xb.dim() == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)

    def fwd() -> None:
        with torch.no_grad():
            fast(xb)

    def grad() -> None:
        xi = xb.detach().clone().requires_grad_(True)
        out = fast(xi)
        torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), xi)

    timing = Timing(step_s, _time(fwd, dev) / len(xb), _time(grad, dev) / len(xb))
    store[key] = timing.__dict__
    if cache is None:
        _save_cache(store)
    return timing


def _time(fn: Any, dev: Any) -> float:
    import torch

    for _ in range(WARMUP_STEPS):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / CALIBRATION_STEPS


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(calibration_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(store: dict[str, Any]) -> None:
    try:
        atomic_write_text(calibration_file(), json.dumps(store, indent=1))
    except OSError:
        pass  # a read-only cache only costs a recalibration next time


class MeasuredCosts:
    """The ``CostModel`` of a plan: calibrated timings on one device, and the plan's notes."""

    def __init__(self, device: Any, data_root: Any = None, log: Any = None, measure: bool = True) -> None:
        self.device, self.data_root, self.log, self.measure = device, data_root, log, measure
        self.cache = _load_cache()
        self.notes: set[str] = set()
        self._probe_s: float | None = None
        self._sizes: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[int, int]] = {}

    def timing(self, spec: TrainSpec) -> Timing:
        return calibrate(spec, self.device, data_root=self.data_root, cache=self.cache, log=self.log,
                         measure=self.measure)

    def images(self, spec: TrainSpec) -> tuple[int, int]:
        from sgq_bench.data import load_dataset, load_split

        key = (spec.dataset, tuple(sorted(spec.dataset_params.items())))
        if key not in self._sizes:
            dataset = load_dataset(spec.dataset, spec.dataset_params)
            self._sizes[key] = (len(load_split(dataset, True, self.data_root)),
                                len(load_split(dataset, False, self.data_root)))
        n_train, n_test = self._sizes[key]
        return (min(n_train, spec.recipe.train_size) if spec.recipe.train_size else n_train), n_test

    def training_steps(self, spec: TrainSpec) -> int:
        from sgq_bench.train import training_steps

        return training_steps(spec.recipe, self.images(spec)[0])

    def training_s(self, spec: TrainSpec) -> float:
        t = self.timing(spec)
        _, n_test = self.images(spec)
        per_epoch_eval = n_test * t.fwd_img_s * (spec.recipe.epochs if spec.recipe.epochs > 1 else 0)
        return self.training_steps(spec) * t.step_s + per_epoch_eval + n_test * t.fwd_img_s

    def gradient_s(self, spec: TrainSpec, n_images: float) -> float:
        return n_images * self.timing(spec).grad_img_s if n_images else 0.0

    def forward_s(self, spec: TrainSpec, n_images: float) -> float:
        return n_images * self.timing(spec).fwd_img_s if n_images else 0.0

    def process_start_s(self) -> float:
        if self._probe_s is None:
            import subprocess
            import sys

            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=False, capture_output=True)
            self._probe_s = time.perf_counter() - t0
        return self._probe_s

    def note(self, text: str) -> None:
        self.notes.add(text)

    def save(self) -> None:
        _save_cache(self.cache)
