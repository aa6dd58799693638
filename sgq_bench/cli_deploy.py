"""CLI: ``bench deploy`` — fp32, fake-quant and real int8 side by side (accuracy, agreement, latency).

Why this command exists: a fake-quantized model is slower than float, so "quantized models are more
efficient" can only be checked on a real int8 deployment; this prints all three, labelled, with
ratios measured in the same run, and the agreement that shows the int8 model is the trained one.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgq_bench._provenance import provenance
from sgq_bench.cli_train import add_train_args, spec_from_args
from sgq_bench.data import batches, load_dataset, load_split
from sgq_bench.deploy import backend_info, calibration_inputs, deploy_with
from sgq_bench.errors import UsageError
from sgq_bench.metrics.efficiency import (
    batch_of,
    count_bops,
    count_params,
    fp32_size,
    packed_size,
    parse_batch_sizes,
    time_models,
)
from sgq_bench.train import TrainSpec, load_or_train


@torch.inference_mode()
def predict(model: nn.Module, dataset: Any, split: Any, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` for the whole split (CPU)."""
    return torch.cat([model(x) for x, _ in batches(dataset, split, batch_size, torch.device("cpu"))])


def fp32_model(args: argparse.Namespace, spec: TrainSpec, trained: nn.Module, ckpt_dir: Path | None
               ) -> tuple[nn.Module, str]:
    """The float model to compare with: the ``baseline`` checkpoint, or the latent float weights."""
    if args.fp32 == "baseline":
        base_args = copy.copy(args)
        base_args.method, base_args.bits, base_args.param = "baseline", None, None
        base = spec_from_args(base_args)
        res = load_or_train(base, data_root=args.data_root, device="cpu", checkpoint_dir=ckpt_dir)
        return res.model.cpu().eval(), f"baseline checkpoint {res.path.name}" + ("" if res.loaded else " (trained now)")
    from sgq_bench import _registry

    model = _registry.models.get(spec.model)(load_dataset(spec.dataset, spec.dataset_params))
    model.load_state_dict(trained.state_dict(), strict=False)
    return model.eval(), "float architecture with the PACT model's latent float weights (--fp32 latent)"


def cmd_bench_deploy(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.device != "cpu":
        raise UsageError("bench deploy times CPU int8 kernels; use --device cpu")
    sizes = parse_batch_sizes(args.batch_sizes, "--batch-sizes")
    if args.runs < 30:
        raise UsageError(f"--runs {args.runs}: at least 30 timed runs are required (DESIGN.md §3)")
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    res = load_or_train(spec, data_root=args.data_root, device="cpu", checkpoint_dir=ckpt_dir)
    quantizer, _ = spec.method.build()
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    fake = res.model.cpu().eval()
    calib = calibration_inputs(dataset, args.data_root, n=args.calibration, seed=spec.seed)
    int8 = deploy_with(quantizer, fake, calib)
    fp32, fp32_source = fp32_model(args, spec, fake, ckpt_dir)
    models = {"fp32": fp32, "fake_quant": fake, "int8": int8}

    test = load_split(dataset, False, args.data_root)
    logits = {name: predict(m, dataset, test) for name, m in models.items()}
    acc = {name: float((lg.argmax(1) == test.labels).float().mean()) for name, lg in logits.items()}
    agree = float((logits["int8"].argmax(1) == logits["fake_quant"].argmax(1)).float().mean())
    diff = (logits["int8"] - logits["fake_quant"]).abs()

    x = dataset.normalize(test.images[:256])
    times = time_models(models, {bs: batch_of(x, bs) for bs in sizes}, args.runs, args.warmup, args.threads)
    med = {k: statistics.median(v) for k, v in times.items()}

    prov = provenance("cpu")
    info = getattr(int8, "info", {})
    print(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}  ({res.path.name})")
    print(f"cpu: {prov['cpu_model']}; torch {prov['torch_version']}; int8 backend "
          f"{backend_info(getattr(int8, 'engine', None))['quantized_backend']}; threads {args.threads}; "
          f"median of {args.runs} interleaved runs after {args.warmup} warm-up")
    print(f"fp32 = {fp32_source}")
    head = f"{'variant':<11} {'accuracy':>9}" + "".join(
        f" {'ms@bs' + str(bs):>11} {'img/s@bs' + str(bs):>12} {'x fp32':>7}" for bs in sizes)
    print(head)
    for name in models:
        row = f"{name:<11} {acc[name]:>9.4f}"
        for bs in sizes:
            ms = med[(name, bs)]
            row += f" {ms:>11.3f} {bs / ms * 1e3:>12.0f} {med[('fp32', bs)] / ms:>6.2f}x"
        print(row)
    print(f"agreement int8 vs fake_quant: {agree * 100:.2f}% of {len(test)} test images; |logit diff| "
          f"mean {float(diff.mean()):.4f}, max {float(diff.max()):.4f} (logit std {float(logits['fake_quant'].std()):.3f})")
    size = packed_size(fake)
    bops = count_bops(copy.deepcopy(fake), x, quantizer.bits()[1])
    fbops = count_bops(copy.deepcopy(fp32), x, 32)
    print(f"params {count_params(fake)}; size_bytes {size['total']} at declared bits vs fp32 {fp32_size(fake)} "
          f"(compression {fp32_size(fake) / size['total']:.2f}x); BOPs/image {bops['bops']:.4g} vs fp32 "
          f"{fbops['bops']:.4g} ({fbops['bops'] / bops['bops']:.1f}x fewer); MACs {bops['macs']}")
    print(f"int8 model: {', '.join(info.get('int8_layers', []))}; float: {', '.join(info.get('float_ops', [])) or '-'}; "
          f"weights exact on the int8 grid: {info.get('exact_weights')} (requantized channels: "
          f"{info.get('requantized_channels')}); calibrated boundaries ({info.get('calibration_images')} train "
          f"images): {'; '.join(info.get('calibrated', [])) or '-'}")
    print("note: fake_quant runs float kernels plus quantize arithmetic (slower than fp32 by design); "
          "compare timings only as ratios within this run")
    return 0


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("deploy", help="fp32 vs fake-quant vs real int8: accuracy, agreement, latency ratios")
    add_train_args(p)
    p.set_defaults(method="pact", func=cmd_bench_deploy)
    p.add_argument("--fp32", choices=("baseline", "latent"), default="baseline",
                   help="fp32 model: the baseline method's checkpoint (trained if missing) or the latent weights")
    p.add_argument("--batch-sizes", default="1,128", help="comma-separated batch sizes to time")
    p.add_argument("--runs", type=int, default=30, help="timed runs per variant and batch size (>= 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (recorded)")
    p.add_argument("--calibration", type=int, default=512, help="training images for int8 range calibration")
