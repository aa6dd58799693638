"""The deployment benchmark: fp32, fake-quant and real int8 side by side (accuracy, agreement, latency).

Why it exists: a fake-quantized model is slower than float, so "quantized models are more efficient"
can only be checked on a real int8 deployment. This prints all three, labelled, with ratios measured
in the same run, and the agreement that shows the int8 model is the trained one.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgq_bench._provenance import provenance
from sgq_bench.data import batches, load_dataset, load_split
from sgq_bench.deploy import backend_info, calibration_inputs, deploy_with
from sgq_bench.errors import UsageError
from sgq_bench.metrics.efficiency import (
    batch_of,
    count_bops,
    count_params,
    fp32_size,
    packed_size,
    time_models,
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


def run_deploy_bench(spec: TrainSpec, *, baseline: TrainSpec | None, batch_sizes: Sequence[int], runs: int = MIN_RUNS,
                     warmup: int = 5, threads: int = 1, calibration: int = 512, data_root: Any = None,
                     checkpoint_dir: Path | None = None, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Deploy ``spec``'s trained model to int8 and compare it with its fake-quant and fp32 versions.

    ``baseline``: the spec whose checkpoint is the fp32 reference (None: the latent float weights).
    Prints the comparison through ``log`` and returns the measured numbers.
    """
    if runs < MIN_RUNS:
        raise UsageError(f"--runs {runs}: at least {MIN_RUNS} timed runs are required (median after warm-up)")
    res = load_or_train(spec, ExecContext(device="cpu", data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress))
    quantizer, _ = spec.method.build()
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    fake = res.model.cpu().eval()
    calib = calibration_inputs(dataset, data_root, n=calibration, seed=spec.seed)
    int8 = deploy_with(quantizer, fake, calib)
    fp32, fp32_source = fp32_model(spec, fake, baseline, data_root=data_root, checkpoint_dir=checkpoint_dir,
                                   progress=progress)
    models = {"fp32": fp32, "fake_quant": fake, "int8": int8}

    test = load_split(dataset, False, data_root)
    logits = {name: predict(m, dataset, test) for name, m in models.items()}
    acc = {name: float((lg.argmax(1) == test.labels).float().mean()) for name, lg in logits.items()}
    agree = float((logits["int8"].argmax(1) == logits["fake_quant"].argmax(1)).float().mean())
    diff = (logits["int8"] - logits["fake_quant"]).abs()

    x = dataset.normalize(test.images[:256])
    times = time_models(models, {bs: batch_of(x, bs) for bs in batch_sizes}, runs, warmup, threads)
    med = {k: statistics.median(v) for k, v in times.items()}

    prov = provenance("cpu")
    info = getattr(int8, "info", {})
    log(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}  ({res.path.name})")
    log(f"cpu: {prov['cpu_model']}; torch {prov['torch_version']}; int8 backend "
        f"{backend_info(getattr(int8, 'engine', None))['quantized_backend']}; threads {threads}; "
        f"median of {runs} interleaved runs after {warmup} warm-up")
    log(f"fp32 = {fp32_source}")
    log(f"{'variant':<11} {'accuracy':>9}" + "".join(
        f" {'ms@bs' + str(bs):>11} {'img/s@bs' + str(bs):>12} {'x fp32':>7}" for bs in batch_sizes))
    for name in models:
        row = f"{name:<11} {acc[name]:>9.4f}"
        for bs in batch_sizes:
            ms = med[(name, bs)]
            row += f" {ms:>11.3f} {bs / ms * 1e3:>12.0f} {med[('fp32', bs)] / ms:>6.2f}x"
        log(row)
    log(f"agreement int8 vs fake_quant: {agree * 100:.2f}% of {len(test)} test images; |logit diff| "
        f"mean {float(diff.mean()):.4f}, max {float(diff.max()):.4f} (logit std {float(logits['fake_quant'].std()):.3f})")
    size = packed_size(fake)
    bops = count_bops(copy.deepcopy(fake), x, quantizer.declared_bits().act)
    fbops = count_bops(copy.deepcopy(fp32), x, 32)
    log(f"params {count_params(fake)}; size_bytes {size['total']} at declared bits vs fp32 {fp32_size(fake)} "
        f"(compression {fp32_size(fake) / size['total']:.2f}x); BOPs/image {bops['bops']:.4g} vs fp32 "
        f"{fbops['bops']:.4g} ({fbops['bops'] / bops['bops']:.1f}x fewer); MACs {bops['macs']}")
    log(f"int8 model: {', '.join(info.get('int8_layers', []))}; float: {', '.join(info.get('float_ops', [])) or '-'}; "
        f"weights exact on the int8 grid: {info.get('exact_weights')} (requantized channels: "
        f"{info.get('requantized_channels')}); calibrated boundaries ({info.get('calibration_images')} train "
        f"images): {'; '.join(info.get('calibrated', [])) or '-'}")
    log("note: fake_quant runs float kernels plus quantize arithmetic (slower than fp32 by design); "
        "compare timings only as ratios within this run")
    return {"accuracy": acc, "agreement": agree, "median_ms": med, "fp32_source": fp32_source}
