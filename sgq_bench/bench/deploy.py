"""The deployment benchmark: fp32, fake-quant and real int8 side by side (accuracy, agreement, latency).

Why it exists: a fake-quantized model is slower than float, so "quantized models are more efficient"
can only be checked on a real int8 deployment. This prints all three, labelled, with ratios measured
in the same run, and the agreement that shows the int8 model is the trained one.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgq_bench._provenance import provenance
from sgq_bench.data import batches, load_dataset, load_split
from sgq_bench.deploy import calibration_inputs
from sgq_bench.errors import UsageError
from sgq_bench.metrics.efficiency import (
    batch_of,
    count_bops,
    count_params,
    fp32_size,
    packed_size,
    speedups,
    time_models,
    variant_kind,
)
from sgq_bench.specs import ExecContext, TrainSpec
from sgq_bench.train import load_or_train

MIN_RUNS = 30  # the latency protocol: median of at least 30 timed runs after warm-up


@torch.inference_mode()
def predict(model: nn.Module, dataset: Any, split: Any, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` for the whole split (CPU)."""
    return torch.cat([model(x) for x, _ in batches(dataset, split, batch_size, torch.device("cpu"))])


def fp32_model(spec: TrainSpec, trained: nn.Module, baseline: TrainSpec | None, *, data_root: Any,
               checkpoint_dir: Path | None, progress: bool) -> tuple[nn.Module, str]:
    """The float model to compare with: ``baseline``'s checkpoint, or (None) the latent float weights."""
    if baseline is not None:
        res = load_or_train(baseline, ExecContext(device="cpu", data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress))
        return res.model.cpu().eval(), f"baseline checkpoint {res.path.name}" + ("" if res.loaded else " (trained now)")
    from sgq_bench import _registry

    model = _registry.models.get(spec.model)(load_dataset(spec.dataset, spec.dataset_params))
    model.load_state_dict(trained.state_dict(), strict=False)
    return model.eval(), "float architecture with the PACT model's latent float weights (--fp32 latent)"


def bench_models(spec: TrainSpec, fake: nn.Module, fp32: nn.Module, calib: torch.Tensor, backends: Sequence[str],
                 threads: int, input_shape: tuple[int, ...], log: Any) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The timed variants: torch eager fp32 (NCHW, channels-last), fake-quant, and per backend its int8 model
    and, where it has one, its own fp32 model. Returns (models by variant name, why a backend was skipped)."""
    from sgq_bench.deploy import DeployUnavailable, backend, backend_spec
    from sgq_bench.metrics.efficiency import _ChannelsLast

    quantizer, _ = spec.method.build()
    models: dict[str, nn.Module] = {"fp32": fp32, "fp32_channels_last": _ChannelsLast(copy.deepcopy(fp32)),
                                    "fake_quant": fake}
    skipped: dict[str, str] = {}
    for name in backends:
        try:
            runtime = backend(name, threads=threads)
            models[f"int8:{name}"] = runtime.int8(quantizer, fake, calib)
            runtime_name = backend_spec(name)[0]  # one fp32 model per runtime, whatever its int8 parameters
            if f"fp32:{runtime_name}" not in models:
                same = runtime.fp32(fp32, input_shape)
                if same is not None:
                    models[f"fp32:{runtime_name}"] = same
        except DeployUnavailable as exc:
            skipped[name] = str(exc)
            log(f"skipped deploy backend {name}: {exc}")
    return models, skipped


def records(models: dict[str, nn.Module], med: dict[tuple[str, int], float], agreement: dict[str, float],
            accuracy: dict[str, float], batch_sizes: Sequence[int], threads: int) -> list[dict[str, Any]]:
    """One record per (runtime, precision, batch size), with the three fp32 references (``speedups``: the
    same definition as a cell's latency rows; a missing same-runtime reference is null)."""
    out = []
    for name, model in models.items():
        runtime, precision, layout = variant_kind(name, model)
        info = getattr(model, "info", None) or {}
        for bs in batch_sizes:
            ratios = {k: (None if math.isnan(v) else v) for k, v in speedups(med, models, name, bs).items()}
            out.append({"runtime": runtime, "precision": precision, "layout": layout, "batch_size": bs,
                        "threads": threads, "latency_ms": med[(name, bs)], **ratios, "agreement": agreement[name],
                        "accuracy": accuracy[name], "variant": name,
                        **({"int8_bias": info["int8_bias"]} if "int8_bias" in info else {})})
    return out


def run_deploy_bench(spec: TrainSpec, *, baseline: TrainSpec | None, batch_sizes: Sequence[int], runs: int = MIN_RUNS,
                     warmup: int = 5, threads: int = 1, calibration: int = 512, data_root: Any = None, burst: int = 1,
                     checkpoint_dir: Path | None = None, progress: bool = True, log: Any = print,
                     backends: Sequence[str] = ("torch_ao", "onnxruntime")) -> dict[str, Any]:
    """Deploy ``spec``'s trained model to int8 in each of ``backends`` and time it against its fake-quant
    model and the fp32 model in torch eager (NCHW and channels-last) and in each backend's own runtime.

    ``baseline``: the spec whose checkpoint is the fp32 reference (None: the latent float weights).
    Agreement (top-1 on the full test set) is with the fake-quant model for int8 and fake-quant rows, and
    with torch eager fp32 for fp32 rows. Prints the comparison through ``log`` and returns the records
    (``records``) and provenance.
    """
    if runs < MIN_RUNS:
        raise UsageError(f"--runs {runs}: at least {MIN_RUNS} timed runs are required (median after warm-up)")
    res = load_or_train(spec, ExecContext(device="cpu", data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress))
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    fake = res.model.cpu().eval()
    calib = calibration_inputs(dataset, data_root, n=calibration, seed=spec.seed)
    fp32, fp32_source = fp32_model(spec, fake, baseline, data_root=data_root, checkpoint_dir=checkpoint_dir,
                                   progress=progress)
    test = load_split(dataset, False, data_root)
    models, skipped = bench_models(spec, fake, fp32, calib, backends, threads, tuple(test.images.shape[1:]), log)

    logits = {name: predict(m, dataset, test) for name, m in models.items()}
    top1 = {name: lg.argmax(1) for name, lg in logits.items()}
    acc = {name: float((t == test.labels).float().mean()) for name, t in top1.items()}
    agree = {name: float((t == top1["fp32" if name.startswith("fp32") else "fake_quant"]).float().mean())
             for name, t in top1.items()}

    x = dataset.normalize(test.images[:256])
    times = time_models(models, {bs: batch_of(x, bs) for bs in batch_sizes}, runs, warmup, threads, burst)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = records(models, med, agree, acc, batch_sizes, threads)

    prov = provenance("cpu")
    log(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}  ({res.path.name})")
    log(f"cpu: {prov['cpu_model']} ({prov.get('cpu_isa') or 'extensions unknown'}); torch {prov['torch_version']}; "
        f"threads {threads}; median of {runs} interleaved turns after {warmup} warm-up, "
        + ("1 call per turn (cold)" if burst == 1 else f"mean of calls 2..{burst} per turn (warm)") + ";"
        f" agreement and accuracy on all {len(test)} test images")
    log(f"fp32 = {fp32_source}")
    log(f"{'variant':<28} {'runtime':<12} {'layout':<14} {'accuracy':>8} {'agree':>7}" + "".join(
        f" {'ms@bs' + str(bs):>10} {'x eager':>7} {'x same':>7}" for bs in batch_sizes))
    for name, model in models.items():
        runtime, _, layout = variant_kind(name, model)
        line = f"{name:<28} {runtime:<12} {layout[:14]:<14} {acc[name]:>8.4f} {agree[name]:>7.4f}"
        for r in (r for r in rows if r["variant"] == name):
            same = r["speedup_vs_fp32_same_runtime"]
            line += f" {r['latency_ms']:>10.3f} {r['speedup_vs_fp32_eager']:>6.2f}x {same:>6.2f}x"
        log(line)
    for name, model in models.items():
        info = getattr(model, "info", None)
        if name.startswith("int8") and isinstance(info, dict):
            log(f"{name}: int8 layers {', '.join(info.get('int8_layers', []))}; float: "
                f"{', '.join(info.get('float_ops', [])) or '-'}; weights exact on the trained grid: "
                f"{info.get('exact_weights')}; calibrated boundaries: {'; '.join(info.get('calibrated', [])) or '-'}"
                + (f"; bias {info['int8_bias']}" if "int8_bias" in info else "")
                + (f" (int32 rounding up to {max(info['int32_bias_error'].values()):.2%} of an output step)"
                   if info.get("int8_bias") == "int32" and info.get("int32_bias_error") else "")
                + (f"; runtime kernels {info['optimized_ops']}" if "optimized_ops" in info else ""))
    size = packed_size(fake)
    quantizer, _ = spec.method.build()
    bops = count_bops(copy.deepcopy(fake), x, quantizer.declared_bits().act)
    fbops = count_bops(copy.deepcopy(fp32), x, 32)
    log(f"params {count_params(fake)}; size_bytes {size['total']} at declared bits vs fp32 {fp32_size(fake)} "
        f"(compression {fp32_size(fake) / size['total']:.2f}x); BOPs/image {bops['bops']:.4g} vs fp32 "
        f"{fbops['bops']:.4g} ({fbops['bops'] / bops['bops']:.1f}x fewer); MACs {bops['macs']}")
    log("note: fake_quant runs float kernels plus quantize arithmetic (slower than fp32 by design); "
        "compare timings only as ratios within this run")
    settings = {name: {k: v for k, v in (getattr(m, "info", None) or {}).items() if k.startswith("ort_")}
                for name, m in models.items() if name.startswith(("int8", "fp32:"))}
    return {"records": rows, "skipped": skipped, "fp32_source": fp32_source, "checkpoint": res.path.name,
            "spec": {"dataset": spec.dataset, "model": spec.model, "method": spec.method.label(), "seed": spec.seed},
            "runtime_settings": settings, "provenance": prov, "runs": runs, "warmup": warmup,
            "burst": burst}
