"""Timings the plan rests on, measured: each (model, method, batch, precision, layout) training step is
timed on the device for a few steps, and so are an inference forward pass and an input-gradient pass of
each model; cached in ``<cache>/calibration.json``, keyed by device, CPU model, torch version and threads.

A timing taken while other work loads the device is slow, and would stay cached as measured. So each
entry also records when it was taken, the 1-minute load average and a reference probe (a fixed, seeded
conv + matmul timed next to it); a later plan re-times the probe and rescales the entry by
probe now / probe then, and says how old its calibration is, under what load it was taken and by what it
was rescaled. The conditions live in their own top-level section (``"_conditions"``), so that an older
reader, which looks entries up by key, still reads the file; an entry without them has unknown age and
is used as measured.

``MeasuredCosts`` is the ``sgq_bench.specs.CostModel`` built on them, which every task prices itself with.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text, stable_hash
from sgq_bench._provenance import cpu_model
from sgq_bench.specs import TrainSpec

CALIBRATION_STEPS = 5
WARMUP_STEPS = 2
CONDITIONS = "_conditions"  # top-level section: entry key -> when, under what load, probe seconds
PROBE_WARMUP = 3
PROBE_BLOCKS, PROBE_PER_BLOCK = 7, 4
PROBE_NOISE = 0.10  # a probe within 10% of the entry's is noise: the entry is used as measured
DRIFT = 0.25  # a probe or load this far from the entry's makes the plan warn
STALE_DAYS = 14


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
              log: Any = None, measure: bool = True, recalibrate: bool = False) -> Timing:
    """Time ``spec``'s training step, forward and input-gradient passes on ``device`` (cached), as measured:
    :class:`MeasuredCosts` rescales a cached one to the device's pace now.

    ``measure=False``: only what the cache holds (:class:`NotCalibrated` otherwise): a run's log quotes the
    plan's estimates where they are known, without timing anything before its work. ``recalibrate``: time
    it again and overwrite the cached entry (a calibration taken under load)."""
    import torch

    from sgq_bench.data import batches, load_dataset, load_split
    from sgq_bench.train import build_model, inference_copy, make_optimizer, resolve_device, resolve_precision

    dev = resolve_device(device)
    recipe = resolve_precision(spec.recipe, dev)
    key = _calibration_key(spec, dev, recipe)
    store = cache if cache is not None else _load_cache()
    cached = None if recalibrate else _cached_timing(store, key)
    if cached is not None:
        return cached
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

    conditions = {"taken": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load1": _load1()}
    probe_before = reference_probe(dev)  # before and after the timings: the conditions they ran under
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
    conditions["probe_s"] = (probe_before + reference_probe(dev)) / 2
    store[key] = dict(timing.__dict__)
    if not isinstance(store.get(CONDITIONS), dict):
        store[CONDITIONS] = {}
    store[CONDITIONS][key] = conditions
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


def _cached_timing(store: dict[str, Any], key: str) -> Timing | None:
    """The entry of ``key``, or None when absent or malformed (then it is timed again)."""
    entry = store.get(key)
    try:
        return Timing(float(entry["step_s"]), float(entry["fwd_img_s"]), float(entry["grad_img_s"]))
    except (TypeError, KeyError, ValueError):
        return None


def _conditions(store: dict[str, Any]) -> dict[str, Any]:
    section = store.get(CONDITIONS)
    return section if isinstance(section, dict) else {}


def _probe_inputs(dev: Any) -> tuple[Any, ...]:
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(8, 16, 32, 32, generator=g).to(dev), torch.randn(32, 16, 3, 3, generator=g).to(dev),
            torch.randn(192, 192, generator=g).to(dev))


def _reference_work(x: Any, w: Any, a: Any) -> None:
    """A fixed conv + matmul, a few ms on one CPU thread: the yardstick, not a model."""
    import torch

    with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1).relu_()
        a @ a


def reference_probe(dev: Any) -> float:
    """Seconds of one run of the reference work on ``dev`` at the current thread count (the calibration's).

    Why: the ratio of today's probe to the one timed with a cached entry says how much faster or slower the
    device runs now than when that entry was taken (a loaded CPU slows both alike). The median of
    ``PROBE_BLOCKS`` blocks, each the mean of ``PROBE_PER_BLOCK`` runs (about 0.1 s in all): a block spans
    several scheduler slices, so it sees a share of the CPU as a step does, and one preempted block does
    not move the median."""
    import torch

    args = _probe_inputs(dev)
    cuda = getattr(dev, "type", str(dev)) == "cuda"
    for _ in range(PROBE_WARMUP):
        _reference_work(*args)
    blocks = []
    for _ in range(PROBE_BLOCKS):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(PROBE_PER_BLOCK):
            _reference_work(*args)
        if cuda:
            torch.cuda.synchronize(dev)
        blocks.append((time.perf_counter() - t0) / PROBE_PER_BLOCK)
    return statistics.median(blocks)


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # no load average on this platform
        return None


def _age_s(taken: Any) -> float | None:
    try:
        then = datetime.fromisoformat(str(taken))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - then).total_seconds())


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _span(values: list[float], fmt: Any) -> str:
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


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

    def __init__(self, device: Any, data_root: Any = None, log: Any = None, measure: bool = True,
                 recalibrate: bool = False) -> None:
        self.device, self.data_root, self.log, self.measure = device, data_root, log, measure
        self.recalibrate = recalibrate
        self.cache = _load_cache()
        self.notes: set[str] = set()
        self._probe_s: float | None = None
        self._sizes: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[int, int]] = {}
        self._timings: dict[str, Timing] = {}  # key -> the timing as priced (rescaled)
        self._used: dict[str, dict[str, Any]] = {}  # key -> its conditions and the factor applied
        self._probes: dict[tuple[str, int], float] = {}  # (device, threads) -> reference probe now

    def timing(self, spec: TrainSpec) -> Timing:
        """The cached (or, if missing, measured) timing, rescaled to the device's pace now: a timing
        measured by this cost model is current; a cached one is scaled by probe now / probe then."""
        import torch

        from sgq_bench.train import resolve_device, resolve_precision

        dev = resolve_device(self.device)
        key = _calibration_key(spec, dev, resolve_precision(spec.recipe, dev))
        if key in self._timings:
            return self._timings[key]
        fresh = self.recalibrate or _cached_timing(self.cache, key) is None
        raw = calibrate(spec, self.device, data_root=self.data_root, cache=self.cache, log=self.log,
                        measure=self.measure, recalibrate=self.recalibrate)
        cond = _conditions(self.cache).get(key) or {}
        probe_then = cond.get("probe_s") if isinstance(cond.get("probe_s"), (int, float)) else None
        factor, probe_now = 1.0, None
        if not fresh and probe_then and probe_then > 0:
            pk = (str(dev), torch.get_num_threads())
            if pk not in self._probes:
                self._probes[pk] = reference_probe(dev)
            probe_now = self._probes[pk]
            ratio = probe_now / probe_then
            factor = ratio if abs(ratio - 1) > PROBE_NOISE else 1.0
        self._used[key] = {"fresh": fresh, "taken": cond.get("taken"), "load1": cond.get("load1"),
                           "probe_then": probe_then, "probe_now": probe_now, "factor": factor}
        self._timings[key] = Timing(raw.step_s * factor, raw.fwd_img_s * factor, raw.grad_img_s * factor)
        return self._timings[key]

    def describe(self) -> tuple[str, str | None]:
        """One line on the calibration the prices rest on (age, load, rescale factor), and a warning, or
        None, when it looks stale: a probe or load more than 25% off the entry's, or an entry over
        ``STALE_DAYS`` old."""
        if not self._used:
            return "calibration: no timing needed", None
        load_now = _load1()
        fresh = [u for u in self._used.values() if u["fresh"]]
        known = [u for u in self._used.values() if not u["fresh"] and u["probe_then"]]
        unknown = len(self._used) - len(fresh) - len(known)
        parts, stale = [], []
        if fresh:
            under = f" under load {load_now:.1f}" if load_now is not None else ""
            parts.append(f"{len(fresh)} timing(s) taken now{under}")
        if known:
            ages = [a for a in (_age_s(u["taken"]) for u in known) if a is not None]
            loads = [u["load1"] for u in known if isinstance(u["load1"], (int, float))]
            factors = [u["factor"] for u in known]
            ratios = [u["probe_now"] / u["probe_then"] for u in known]
            text = f"{len(known)} cached"
            if ages:
                text += f", taken {_span(ages, _ago)} ago"
            if loads:
                text += f" under load {_span(loads, lambda v: f'{v:.1f}')}"
                if load_now is not None:
                    text += f" (now {load_now:.1f})"
            text += (f", rescaled x{_span(factors, lambda v: f'{v:.2f}')} by the reference probe "
                     f"({_span([u['probe_then'] * 1e3 for u in known], lambda v: f'{v:.1f}')} ms then, "
                     f"{_span([u['probe_now'] * 1e3 for u in known], lambda v: f'{v:.1f}')} ms now)")
            parts.append(text)
            off = [r for r in ratios if abs(r - 1) > DRIFT]
            if off:
                stale.append(f"reference probe x{_span(off, lambda v: f'{v:.2f}')} of the calibration's")
            if load_now is not None and any(abs(load_now - v) > DRIFT * max(load_now, v, 1.0) for v in loads):
                stale.append(f"load {_span(loads, lambda v: f'{v:.1f}')} then, {load_now:.1f} now")
            if ages and max(ages) > STALE_DAYS * 86400:
                stale.append(f"taken {_ago(max(ages))} ago")
        if unknown:
            parts.append(f"{unknown} cached: calibration of unknown age; use --recalibrate")
        warning = (f"calibration may be stale ({'; '.join(stale)}); prices rescaled by the reference probe; "
                   "use --recalibrate to retime") if stale else None
        return "calibration: " + "; ".join(parts), warning

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
