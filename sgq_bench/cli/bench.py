"""``sgq-bench bench train|metrics|deploy``: what the harness costs, and what quantization buys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgq_bench.cli._options import model_options, progress_option, threads_option
from sgq_bench.cli._spec import train_spec
from sgq_bench.cli._values import parse_names


@click.group(short_help="benchmarks: training cost, metric speed, int8 deployment")
def bench() -> None:
    """Benchmarks (timings printed as ratios measured in the same run)."""


@bench.command("train")
@model_options()
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="timed steps per method per round")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
def bench_train(steps: int, rounds: int, data_root: str | None, device: str, checkpoint_dir: Path | None,
                **picked: Any) -> None:
    """Per-step cost of each method vs baseline; the harness vs a bare loop."""
    from sgq_bench._batching import keep_freed_memory
    from sgq_bench.bench.train import run_train_bench
    from sgq_bench.train import resolve_device

    spec = train_spec(**picked)
    keep_freed_memory()
    run_train_bench(spec, data_root=data_root, device=resolve_device(device), steps=steps, rounds=rounds)


@bench.command("metrics")
@model_options()
@click.option("--n", type=click.IntRange(min=1), default=256, show_default=True, help="test images")
@click.option("--metrics", default=None, metavar="A,B,...", help="comma list (default: all with a benchmark)")
def bench_metrics(n: int, metrics: str | None, data_root: str | None, device: str, checkpoint_dir: Path | None,
                  **picked: Any) -> None:
    """Each metric vs Quantus/Captum and vs its forward-pass floor."""
    from sgq_bench._batching import keep_freed_memory
    from sgq_bench.bench.metrics import run_metrics_bench

    spec = train_spec(**picked)
    names = parse_names(metrics, "--metrics")
    keep_freed_memory()
    run_metrics_bench(spec, n=n, data_root=data_root, device=device, checkpoint_dir=checkpoint_dir, metrics=names)


@bench.command("deploy")
@model_options(method="pact")  # a quantized model against its float twin
@click.option("--fp32", type=click.Choice(["baseline", "latent"]), default="baseline", show_default=True,
              help="fp32 model: the baseline method's checkpoint (trained if missing) or the latent float weights")
@click.option("--batch-sizes", default="1,128", show_default=True, help="comma-separated batch sizes to time")
@click.option("--runs", type=int, default=30, show_default=True, help="timed runs per variant and batch size (>= 30)")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--burst", type=click.IntRange(min=1), default=1, show_default=True,
              help="calls per turn: 1 times each call right after another variant's (cold caches); N > 1 "
              "the mean of calls 2..N (warm, a process serving one model)")
@threads_option(default=1, help="torch threads while timing (recorded)")
@click.option("--calibration", type=click.IntRange(min=1), default=512, show_default=True,
              help="training images for int8 range calibration")
@click.option("--backends", default="torch_ao,onnxruntime,onnxruntime:bias=float", show_default=True,
              metavar="A,B,...", help="deploy backends to run the int8 model in, each NAME or NAME:KEY=VALUE "
              "(see `sgq-bench list deploy_backends` and `list --params NAME`)")
@click.option("--json", "as_json", is_flag=True,
              help="print the records as JSON on stdout (one per runtime, precision, batch size); the table goes to stderr")
@progress_option
def bench_deploy(fp32: str, batch_sizes: str, runs: int, warmup: int, burst: int, threads: int, calibration: int,
                 backends: str, as_json: bool, progress: bool, data_root: str | None, device: str,
                 checkpoint_dir: Path | None, **picked: Any) -> None:
    """fp32 vs fake-quant vs real int8 in each runtime: accuracy, agreement, latency ratios (CPU)."""
    import json

    from sgq_bench.bench.deploy import run_deploy_bench
    from sgq_bench.deploy import DeployUnavailable, backend
    from sgq_bench.errors import UsageError
    from sgq_bench.metrics.efficiency import parse_batch_sizes

    if device != "cpu":
        raise UsageError(f"--device {device!r}: bench deploy times CPU int8 kernels; use --device cpu")
    spec = train_spec(**picked)
    baseline = train_spec(**{**picked, "method": "baseline", "bits": None, "params": ()}) if fp32 == "baseline" else None
    sizes = parse_batch_sizes(batch_sizes, "--batch-sizes")
    names = parse_names(backends, "--backends") or []
    for name in names:
        try:  # unknown name or bad parameter: one line, before any work
            backend(name, threads=threads)
        except DeployUnavailable:
            pass  # a missing extra: the run skips that backend and says why
    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    out = run_deploy_bench(spec, baseline=baseline, batch_sizes=sizes, runs=runs, warmup=warmup, threads=threads,
                           burst=burst, calibration=calibration, data_root=data_root, checkpoint_dir=checkpoint_dir,
                           progress=progress, log=log, backends=names)
    if as_json:
        prov = out["provenance"]
        common = {**out["spec"], "checkpoint": out["checkpoint"], "fp32_source": out["fp32_source"],
                  "runs": out["runs"], "warmup": out["warmup"], "burst": out["burst"], "cpu_model": prov.get("cpu_model"),
                  "cpu_isa": prov.get("cpu_isa"),
                  "torch_version": prov.get("torch_version"), "git_commit": prov.get("git_commit"),
                  "sgq_bench_version": prov.get("sgq_bench_version")}
        rows = [{**r, **common, **out["runtime_settings"].get(r["variant"], {})} for r in out["records"]]
        click.echo(json.dumps(rows, indent=1))
