"""``sgq-bench evaluate``: explainers x metrics on one trained model, appended to ``OUT/results.jsonl``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from sgq_bench.cli._options import WRITABLE_DIR, model_options, progress_option
from sgq_bench.cli._spec import train_spec
from sgq_bench.cli._values import parse_metric_params, parse_names
from sgq_bench.errors import UsageError

DEFAULT_EXPLAINERS = ("gradient", "integrated_gradients", "smoothgrad", "random")


def default_metrics() -> list[str]:
    """Every registered metric that needs no retraining."""
    from sgq_bench import _registry

    return [name for name, obj, _ in _registry.metrics.items() if obj is not None and not obj.needs_retraining]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict]) -> str:
    """metric x explainer table of values (a variant is appended to its metric's name)."""
    if not rows:
        return ""

    def label(r: dict) -> str:
        return r["metric"] + (f"[{r['variant']}]" if r.get("variant") else "")

    explainers = list(dict.fromkeys(r["explainer"] for r in rows))
    cell = {(label(r), r["explainer"]): r for r in rows}
    metrics = list(dict.fromkeys(label(r) for r in rows))
    width = max(len(m) for m in metrics) + 4
    lines = [f"{'metric':<{width}}" + "".join(f"{e:>22}" for e in explainers)]
    for m in metrics:
        arrow = next(("^" if r["higher_is_better"] else "v") for (mm, _), r in cell.items() if mm == m)
        lines.append(f"{m + ' ' + arrow:<{width}}"
                     + "".join(f"{_fmt(cell[(m, e)]['value']) if (m, e) in cell else '':>22}" for e in explainers))
    return "\n".join(lines)


@click.command(short_help="explainers x metrics on one model -> OUT/results.jsonl")
@model_options()
@click.option("--explainers", default=None, metavar="A,B,...",
              help=f"comma list (default: the suite's, else {','.join(DEFAULT_EXPLAINERS)})")
@click.option("--metrics", default=None, metavar="A,B,...",
              help="comma list (default: the suite's, else every metric without retraining)")
@click.option("--eval-size", type=click.IntRange(min=1), default=None,
              help="test images evaluated, >= 1 (default: the suite's)")
@click.option("--eval-seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="seed of the evaluation subset and metric draws")
@click.option("--metric-param", "metric_param", multiple=True, metavar="METRIC.KEY=VALUE",
              help="metric parameter, e.g. deletion_auc.steps=20 or roar.fractions=0.1,0.5,0.9; repeatable")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="score a model trained elsewhere: a state dict (.pt, weights only; or .safetensors) of the "
                   "declared --dataset/--model/--method (docs/plugins.md, 'Scoring a model trained elsewhere')")
@click.option("--out", type=WRITABLE_DIR, required=True, help="run directory: the cell's rows join its results store (results.jsonl is rebuilt)")
@progress_option
def evaluate(explainers: str | None, metrics: str | None, eval_size: int | None, eval_seed: int,
             metric_param: tuple[str, ...], weights: Path | None, out: Path, progress: bool, data_root: str | None,
             device: str, checkpoint_dir: Path | None, **picked: Any) -> None:
    """Explainers x metrics on one trained model -> OUT/results.jsonl."""
    from sgq_bench import _registry
    from sgq_bench.config.suite import load_suite
    from sgq_bench.evaluate import evaluate_cell
    from sgq_bench.results import latest, read_rows
    from sgq_bench.specs import Cell, ExecContext

    spec = train_spec(**picked)
    suite = load_suite(picked["suite"])
    explainer_names = parse_names(explainers, "--explainers") or list(suite.explainers or DEFAULT_EXPLAINERS)
    metric_names = parse_names(metrics, "--metrics") or list(suite.metrics or default_metrics())
    params = suite.params_for(spec.dataset)
    for metric, given in parse_metric_params(metric_param).items():
        if metric not in metric_names:
            _registry.metrics.get(metric)  # unknown name -> suggestions
            raise UsageError(f"--metric-param for {metric!r}, which is not among the evaluated metrics")
        params.setdefault(metric, {}).update(given)
    params = {m: p for m, p in params.items() if m in metric_names}
    eval_size = eval_size or suite.dataset(spec.dataset).eval_size
    results = out / "results.jsonl"
    sha, external = "", None
    if weights is not None:
        from sgq_bench.weights import load_external

        external = load_external(spec, weights, device)  # a file that does not fit fails now, in one line
        sha = external.meta["weights_sha256"]
    cell = Cell(spec, tuple(explainer_names), tuple(metric_names), eval_size, params, eval_seed, suite.name,
                suite.version, str(weights or ""), sha)
    ctx = ExecContext(device=device, data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress)
    from sgq_bench._lock import run_lock

    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, log=click.echo):  # one writer per run directory, as for `run`
        evaluate_cell(cell, ctx, out=out, fingerprint=suite.fingerprint(), trained=external)
    from sgq_bench.weights import external_key

    ckey = external_key(sha) if sha else spec.key()
    keys = {(ckey, e, m) for e in [*explainer_names, "-"] for m in metric_names}
    rows = latest(r for r in read_rows(results)
                  if (r.get("checkpoint_key"), r.get("explainer"), r.get("metric")) in keys
                  and r.get("eval_size") == eval_size and r.get("eval_seed") == eval_seed)
    origin = f" (external weights {weights}, sha256 {sha[:12]})" if sha else ""
    click.echo(f"{spec.dataset}/{spec.model}/{spec.method.label()}{origin} seed {spec.seed}, {eval_size} test images "
               f"(^ higher is better, v lower):")
    table = format_table(rows)
    if table:
        click.echo(table)
    click.echo(f"results: {results}")
