"""Efficiency metrics: params, packed size, compression, BOPs, latency, throughput and peak memory.

Why three labelled variants for timings: a fake-quantized PyTorch model runs float kernels plus the
quantize/dequantize arithmetic, so it is *slower* than float; the paper's efficiency claim can only
be checked on a real int8 deployment. Every timing row therefore names its variant — ``fp32``
(the float architecture, eager), ``fake_quant`` (the trained model, eager) or ``int8`` (the
quantizer's ``deploy()``) — and its batch size, e.g. ``int8@bs128``, and records device, CPU model,
threads, torch version and quantized backend. Timings are medians of interleaved runs (variants take
turns, so a shared machine's load hits them alike); compare them as ratios within one run.

Bits are read from declarations only: the quantizer's ``declared_bits()`` and, per layer, the
``Bits`` its ``prepare`` declared with ``mark_quantized`` (read through ``layer_bits``; see
``sgq_bench._base``). A quantized method whose model declares no layer is reported undefined, not as float.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any, ClassVar

import torch
from torch import nn

from sgq_bench import _registry
from sgq_bench._base import FLOAT, Bits, EvalContext, Metric, MetricResult, Param, layer_bits
from sgq_bench._provenance import provenance
from sgq_bench.deploy import DEFAULT_BACKEND, DeployUnavailable, backend, backend_info, deployed_for
from sgq_bench.errors import UsageError

SCALE_BYTES = 4  # one fp32 scale per layer stored at k bits (PACT/DoReFa: max|w|)


# ----------------------------------------------------------------------------- functional cores


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights, biases, BatchNorm affine, clipping levels)."""
    return sum(p.numel() for p in model.parameters())


def packed_size(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters packed at their declared bits.

    The ``weight`` of a module declared at k < 32 weight bits (``layer_bits``) is packed at k bits
    (``ceil(n * k / 8)``) plus one fp32 scale; every other parameter (float layers, biases, BatchNorm
    affine, alphas) is fp32. BatchNorm running statistics are buffers and not counted: deployment folds them into the
    conv (what remains per channel is the affine pair, which is counted). A module that rounds its
    output onto a grid of its own (declared by an ``out_scale`` method, e.g. pact's residual
    BatchNorm) stores one more fp32 scale.
    """
    quantized = floats = scales = 0
    for module in model.modules():
        bits = (layer_bits(module) or FLOAT).weight
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and bits < 32:
                quantized += math.ceil(p.numel() * bits / 8)
            else:
                floats += 4 * p.numel()
        if bits < 32:  # mark_quantized checked that the module has a weight
            scales += SCALE_BYTES
        if callable(getattr(module, "out_scale", None)):
            scales += SCALE_BYTES
    return {"total": quantized + floats + scales, "quantized_weights": quantized, "fp32_params": floats,
            "scales": scales}


def _act_quantizer(module: nn.Module) -> bool:
    """Declared to round its output and to hold no quantized weight (a PACT/LSQ ReLU)."""
    bits = layer_bits(module)
    return bits is not None and bits.act < 32 and bits.weight == 32


def fp32_size(model: nn.Module) -> int:
    """Bytes of the float architecture: every parameter at 32 bits, less the activation quantizers'."""
    extra = sum(p.numel() for m in model.modules() if _act_quantizer(m) for p in m.parameters(recurse=False))
    return 4 * (count_params(model) - extra)


def declared_layers(model: nn.Module) -> dict[str, Bits]:
    """{module name: its declared Bits} for every layer ``prepare`` marked with ``mark_quantized``."""
    return {name: bits for name, m in model.named_modules() if (bits := layer_bits(m)) is not None}


@torch.no_grad()
def count_bops(model: nn.Module, x: torch.Tensor, act_bits: int) -> dict[str, Any]:
    """BOPs per image = sum over Conv2d/Linear calls of MACs x weight bits x activation bits.

    Counted with forward hooks on the real module graph (one image through ``model``), so shared or
    skipped layers count as often as they run. A layer declared at k < 32 weight bits multiplies by the
    activation bits of the module declared to round its output that ran last before it (its input's
    precision: e.g. an 8-bit boundary PACT after a float first layer), else by ``act_bits`` (the
    quantizer's declared activation bits); float layers count 32 x 32.
    """
    layers: list[dict[str, Any]] = []
    last_act: list[int] = []

    def act_hook(module: nn.Module, inputs: Any, out: Any) -> None:
        last_act[:] = [layer_bits(module).act]  # type: ignore[union-attr]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor, name: str) -> None:
        per_out = module.in_channels // module.groups * math.prod(module.kernel_size) \
            if isinstance(module, nn.Conv2d) else module.in_features
        macs = out.numel() // out.shape[0] * per_out
        wb = (layer_bits(module) or FLOAT).weight
        ab = (last_act[0] if last_act else act_bits) if wb < 32 else 32
        layers.append({"layer": name, "macs": macs, "w_bits": wb, "a_bits": ab, "bops": macs * wb * ab})

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles += [m.register_forward_hook(act_hook) for m in model.modules()
                if (layer_bits(m) or FLOAT).act < 32]
    was = model.training
    try:
        model.eval()
        model(x[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {"bops": sum(r["bops"] for r in layers), "macs": sum(r["macs"] for r in layers), "layers": layers}


def batch_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` inputs taken cyclically from ``x`` (on CPU, contiguous)."""
    idx = torch.arange(size) % x.shape[0]
    return x.detach().cpu()[idx].contiguous()


def time_models(models: dict[str, nn.Module], inputs: dict[int, torch.Tensor], runs: int, warmup: int,
                threads: int, burst: int = 1) -> dict[tuple[str, int], list[float]]:
    """Wall times (ms) of each model on each batch, ``runs`` interleaved rounds after ``warmup`` calls.

    Why interleaved: on a shared machine load drifts; taking turns (in a rotating order) exposes every
    variant to the same drift, so their ratio is trustworthy even when absolute times are not.
    ``burst``: calls per turn, back to back. 1 times each call right after another model's (its weights
    and code out of cache: a cold call); N > 1 records the mean of calls 2..N of the turn, the steady
    state of a process serving one model (on mnist_cnn at batch 1 in ONNX Runtime: 0.43 ms cold, 0.16 ms
    warm). Either way each variant meets the same drift.
    """
    if burst < 1:
        raise ValueError(f"burst={burst!r}: expected an integer >= 1")
    timed = max(burst - 1, 1)  # calls timed per turn
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[tuple[str, int], list[float]] = {}
    names = list(models)
    try:
        with torch.inference_mode():
            for bs, x in inputs.items():
                for name in names:
                    for _ in range(warmup):
                        models[name](x)
                    times[(name, bs)] = []
                for r in range(runs):
                    for k in range(len(names)):
                        name = names[(r + k) % len(names)]
                        if burst > 1:
                            models[name](x)  # the turn's first call brings the model back into cache
                        start = time.perf_counter()
                        for _ in range(timed):
                            models[name](x)
                        times[(name, bs)].append((time.perf_counter() - start) * 1e3 / timed)
    finally:
        torch.set_num_threads(old_threads)
    return times


def parse_batch_sizes(text: str, owner: str) -> list[int]:
    try:
        sizes = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UsageError(f"{owner}: batch_sizes={text!r} must be comma-separated integers >= 1, e.g. '1,128'")
    return sizes


# ----------------------------------------------------------------------------- variants of one cell


def float_model(ctx: EvalContext) -> tuple[nn.Module, str]:
    """The float architecture of the cell, holding the trained model's latent float weights.

    For timing and memory the weights' values do not matter, only the architecture; ``bench deploy``
    uses the ``baseline`` checkpoint instead when it wants fp32 accuracy too.
    """
    if ctx.spec is not None:
        model = _registry.models.get(ctx.spec.model)(ctx.dataset)
        model.load_state_dict({k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}, strict=False)
        return model.eval(), "float architecture with the trained model's latent float weights"
    return copy.deepcopy(ctx.model).cpu().eval(), "the evaluated model itself (no spec to rebuild the float one)"


def _declared(ctx: EvalContext) -> Bits:
    """The cell's quantizer's declared bits; float when the cell has no quantizer."""
    return FLOAT if ctx.quantizer is None else ctx.quantizer.declared_bits()


def _undeclared(ctx: EvalContext) -> MetricResult | None:
    """An undefined result when a quantized method's model declares no layer: measuring it as float
    would understate its compression silently (a plugin written before ``mark_quantized``)."""
    bits = _declared(ctx)
    if bits.is_float or declared_layers(ctx.model):
        return None
    name = getattr(ctx.quantizer, "name", "?")
    reason = (f"quantizer {name!r} declares {bits.label} but its prepare() marked no layer with "
              "sgq_bench.mark_quantized")
    return MetricResult(float("nan"), extra={"undefined_reason": reason})


class _ChannelsLast(nn.Module):
    """A float model run in torch's channels-last layout (input converted inside, as a deployment would)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


# What each timed variant is: (runtime, precision, layout); int8 and fp32_runtime read theirs from the
# deployed model's ``info`` (the backend's runtime and layout).
VARIANT_KIND = {"fp32": ("torch", "fp32", "NCHW"), "fp32_channels_last": ("torch", "fp32", "channels-last"),
                "fake_quant": ("torch", "fake_quant", "NCHW")}


def variant_kind(name: str, model: nn.Module) -> tuple[str, str, str]:
    """(runtime, precision, layout) of one timed variant: the fixed torch ones by name, the others from their
    model's ``info``. Names: ``int8`` / ``fp32_runtime`` in a cell's rows, ``int8:BACKEND`` /
    ``fp32:RUNTIME`` in ``bench deploy`` (one per backend)."""
    if name in VARIANT_KIND:
        return VARIANT_KIND[name]
    info = getattr(model, "info", {}) or {}
    precision = "int8" if name == "int8" or name.startswith("int8:") else "fp32"
    return str(info.get("runtime", "?")), precision, str(info.get("layout", "?"))


def runtime_family(runtime: str) -> str:
    """The runtime whose fp32 is a variant's same-runtime reference: torch.ao runs inside torch."""
    return "torch" if runtime in ("torch", "torch.ao") else runtime


def variants(ctx: EvalContext, deploy: str = DEFAULT_BACKEND, threads: int = 1
             ) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The timed variants of the cell (cached in ``ctx.cache`` per backend) and notes about them.

    A float cell: ``fp32`` (torch eager, NCHW) and ``fp32_channels_last``. A quantized cell adds
    ``fake_quant`` (the trained model), ``int8`` (the ``deploy`` backend's int8 model) and, when that
    backend has a float runtime of its own (ONNX Runtime), ``fp32_runtime``: the same-runtime reference.
    """
    key = f"efficiency:variants:{deploy}:{threads}"
    if key not in ctx.cache:
        quantized = not _declared(ctx).is_float
        models: dict[str, nn.Module] = {}
        notes: dict[str, Any] = {"engine": None, "deploy": deploy}
        if quantized:
            models["fp32"], notes["fp32_source"] = float_model(ctx)
        else:
            models["fp32"] = copy.deepcopy(ctx.model).cpu().eval()
            notes["fp32_source"] = "the evaluated (float) model"
        models["fp32_channels_last"] = _ChannelsLast(copy.deepcopy(models["fp32"]))
        if quantized:
            models["fake_quant"] = copy.deepcopy(ctx.model).cpu().eval()
            try:
                runtime = backend(deploy, threads=threads)
                models["int8"] = deployed_for(ctx, deploy, threads)
                notes["engine"] = getattr(models["int8"], "engine", None)
                same = runtime.fp32(models["fp32"], tuple(ctx.x.shape[1:]))
                if same is not None:
                    models["fp32_runtime"] = same
            except DeployUnavailable as exc:
                notes["int8_unavailable"] = str(exc)
        ctx.cache[key] = (models, notes)
    return ctx.cache[key]


def speedups(times: dict[tuple[str, int], float], models: dict[str, nn.Module], name: str, bs: int
             ) -> dict[str, float]:
    """Median-latency ratios of variant ``name`` at batch ``bs``: against torch eager fp32 (NCHW), against
    the fastest fp32 of its own runtime family (NaN if none was timed), and against the fastest fp32 timed
    in this run. The one definition behind a cell's latency rows and ``bench deploy``'s records."""
    me = times[(name, bs)]
    family = runtime_family(variant_kind(name, models[name])[0])
    fp32 = {v: times[(v, bs)] for v in models if (v, bs) in times and variant_kind(v, models[v])[1] == "fp32"}
    same = [t for v, t in fp32.items() if runtime_family(variant_kind(v, models[v])[0]) == family]
    return {"speedup_vs_fp32_eager": times[("fp32", bs)] / me,
            "speedup_vs_fp32_same_runtime": (min(same) / me) if same else float("nan"),
            "speedup_vs_fastest_fp32": min(fp32.values()) / me}


def _environment(notes: dict[str, Any], threads: int | None) -> dict[str, Any]:
    prov = provenance("cpu")
    if threads is not None:
        prov["threads"] = threads
    return {**prov, **backend_info(notes.get("engine")), **{k: v for k, v in notes.items() if k != "engine"}}


# ----------------------------------------------------------------------------- metrics


def _check_backend(metric: str, spec: str) -> None:
    """A one-line error at construction (not mid-run) when ``deploy`` names no registered backend or gives
    it a bad parameter (``name:key=value``); a backend whose extra is missing is reported when it runs."""
    from sgq_bench import _registry
    from sgq_bench.deploy import DeployUnavailable, backend, backend_spec
    from sgq_bench.errors import did_you_mean

    name = backend_spec(spec)[0]
    names = _registry.deploy_backends.names()
    if name not in names:
        raise UsageError(f"{metric}: parameter deploy={spec!r} is not a registered deploy backend; expected one "
                         f"of {', '.join(names)}.{did_you_mean(name, names)}")
    try:
        backend(spec)
    except DeployUnavailable:
        pass


class _Efficiency(Metric):
    family: ClassVar[str] = "efficiency"
    higher_is_better: ClassVar[bool] = False
    needs_attributions: ClassVar[bool] = False

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        # counted or measured from the weights; peak memory runs in probe processes, priced per probe by the plan
        return 0.0


class Params(_Efficiency):
    """Number of parameters of the trained model (incl. quantizer parameters such as PACT alphas)."""

    name = "params"

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> MetricResult:
        return MetricResult(float(count_params(ctx.model)), extra={"fp32_params": fp32_size(ctx.model) // 4})


class SizeBytes(_Efficiency):
    """Bytes of the parameters packed at their declared bits (float layers at 32, plus scales and alphas)."""

    name = "size_bytes"

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> MetricResult:
        if (undefined := _undeclared(ctx)) is not None:
            return undefined
        size = packed_size(ctx.model)
        return MetricResult(float(size["total"]), extra={k: v for k, v in size.items() if k != "total"})


class Compression(_Efficiency):
    """fp32 size of the architecture / packed size (``size_bytes``); 1.0 for a float model."""

    name = "compression"
    higher_is_better = True

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> MetricResult:
        if (undefined := _undeclared(ctx)) is not None:
            return undefined
        size, fp32 = packed_size(ctx.model)["total"], fp32_size(ctx.model)
        return MetricResult(fp32 / size, extra={"fp32_bytes": fp32, "size_bytes": size})


class Bops(_Efficiency):
    """Bit operations per image: MACs x weight bits x activation bits, from forward hooks."""

    name = "bops"

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> MetricResult:
        if (undefined := _undeclared(ctx)) is not None:
            return undefined
        act_bits = _declared(ctx).act
        model = copy.deepcopy(ctx.model).cpu()
        res = count_bops(model, ctx.x.detach().cpu(), act_bits)
        return MetricResult(float(res["bops"]), extra={"macs": res["macs"], "layers": res["layers"],
                                                       "act_bits": act_bits})


class _Timing(_Efficiency):
    params = {
        "batch_sizes": Param("1,128", "comma-separated batch sizes"),
        "runs": Param(30, "timed runs per variant and batch size (median reported)", low=30),
        "warmup": Param(5, "untimed calls before timing", low=1),
        "threads": Param(1, "torch intra-op threads while timing (recorded)", low=1),
        "deploy": Param(DEFAULT_BACKEND, "int8 runtime: a registered deploy backend (torch_ao, onnxruntime)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_backend(self.name, self.deploy)

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        # up to five variants (fp32 NCHW and channels-last, fake_quant, int8, the runtime's fp32), each timed
        # runs + warmup times at every batch size
        sizes = parse_batch_sizes(self.batch_sizes, self.name)
        return float(5 * sum(b * (int(self.runs) + int(self.warmup)) for b in sizes))

    def timings(self, ctx: EvalContext) -> tuple[dict[tuple[str, int], list[float]], dict[str, Any]]:
        sizes = parse_batch_sizes(self.batch_sizes, self.name)
        key = f"efficiency:timing:{sizes}:{self.runs}:{self.warmup}:{self.threads}:{self.deploy}"
        if key not in ctx.cache:
            models, notes = variants(ctx, self.deploy, self.threads)
            inputs = {bs: batch_of(ctx.x, bs) for bs in sizes}
            ctx.cache[key] = (time_models(models, inputs, self.runs, self.warmup, self.threads), notes)
        return ctx.cache[key]

    def rows(self, ctx: EvalContext, value: Any) -> list[MetricResult]:
        times, notes = self.timings(ctx)
        models, _ = variants(ctx, self.deploy, self.threads)
        env = _environment(notes, self.threads)
        med = {k: statistics.median(v) for k, v in times.items()}
        out = []
        for (variant, bs), ms in times.items():
            q1, _, q3 = statistics.quantiles(ms, n=4)
            runtime, precision, layout = variant_kind(variant, models[variant])
            info = {k: v for k, v in (getattr(models[variant], "info", None) or {}).items()
                    if k.startswith("ort_") or k in ("optimized_ops", "integer_kernels", "float_kernels")}
            ratios = speedups(med, models, variant, bs)
            extra = {**env, **info, "variant": variant, "runtime": runtime, "precision": precision, "layout": layout,
                     "batch_size": bs, "runs": self.runs, "warmup": self.warmup, "median_ms": med[(variant, bs)],
                     "q1_ms": q1, "q3_ms": q3, "speedup_vs_fp32": ratios["speedup_vs_fp32_eager"], **ratios,
                     "note": "timings are comparable only as ratios within one run"}
            out.append(MetricResult(value(med[(variant, bs)], bs), variant=f"{variant}@bs{bs}", extra=extra))
        return out


class LatencyMs(_Timing):
    """Median wall time (ms) of one forward pass, per variant (fp32, fake_quant, int8) and batch size."""

    name = "latency_ms"

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> list[MetricResult]:
        return self.rows(ctx, lambda ms, bs: ms)


class Throughput(_Timing):
    """Images per second (batch size / median latency), per variant and batch size."""

    name = "throughput"
    higher_is_better = True

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> list[MetricResult]:
        return self.rows(ctx, lambda ms, bs: bs / (ms / 1e3))


class PeakMemoryMb(_Efficiency):
    """Peak RSS growth (MB) of loading and running each variant, measured in a separate process."""

    name = "peak_memory_mb"
    params = {
        "batch_sizes": Param("1,128", "comma-separated batch sizes"),
        "threads": Param(1, "torch intra-op threads in the probe process", low=1),
        "deploy": Param(DEFAULT_BACKEND, "int8 runtime: a registered deploy backend (torch_ao, onnxruntime)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_backend(self.name, self.deploy)

    def overhead_s(self, costs: Any) -> float:
        """One fresh probe process per (variant, batch size); up to five variants (see ``variants``)."""
        return 5 * len(parse_batch_sizes(self.batch_sizes, self.name)) * costs.process_start_s()

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None = None) -> list[MetricResult]:
        from sgq_bench.metrics._memory_probe import peak_memory

        models, notes = variants(ctx, self.deploy, self.threads)
        env = _environment(notes, self.threads)
        shape = tuple(ctx.x.shape[1:])
        out = []
        for bs in parse_batch_sizes(self.batch_sizes, self.name):
            for variant, model in models.items():
                rep = peak_memory(model, (bs, *shape), self.threads)
                runtime, precision, layout = variant_kind(variant, model)
                out.append(MetricResult(rep["delta_mb"], variant=f"{variant}@bs{bs}",
                                        extra={**env, "variant": variant, "runtime": runtime, "precision": precision,
                                               "layout": layout, "batch_size": bs, **rep}))
        return out


__all__ = ["Bops", "Compression", "LatencyMs", "Params", "PeakMemoryMb", "SizeBytes", "Throughput",
           "count_bops", "count_params", "declared_layers", "packed_size", "time_models"]
