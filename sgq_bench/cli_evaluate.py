"""CLI: ``evaluate`` (one trained model -> results.jsonl) and ``bench metrics``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from sgq_bench import _registry
from sgq_bench.cli import parse_value
from sgq_bench.cli_train import add_train_args, spec_from_args
from sgq_bench.config.suite import load_suite
from sgq_bench.errors import UsageError

DEFAULT_EXPLAINERS = ("gradient", "integrated_gradients", "smoothgrad", "random")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"empty name list {text!r}")
    return names


def parse_metric_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """['deletion_auc.steps=20', 'roar.fractions=0.1,0.5'] -> {'deletion_auc': {'steps': 20}, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        metric, dot, param = key.strip().partition(".")
        if not sep or not dot or not metric or not param:
            raise UsageError(f"--metric-param {item!r} is not METRIC.KEY=VALUE (e.g. deletion_auc.steps=20)")
        value = value.strip()
        parsed: Any = [parse_value(v) for v in value.split(",")] if "," in value else parse_value(value)
        out.setdefault(metric, {})[param] = parsed
    return out


def default_metrics() -> list[str]:
    """Every registered metric that needs no retraining."""
    return [name for name, obj, _ in _registry.metrics.items() if obj is not None and not obj.needs_retraining]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_table(rows: list[dict]) -> None:
    """metric x explainer table of values (variants appended to the metric name)."""
    if not rows:
        return
    explainers = list(dict.fromkeys(r["explainer"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] + (f"[{r['variant']}]" if r.get("variant") else "") for r in rows))
    cell = {(r["metric"] + (f"[{r['variant']}]" if r.get("variant") else ""), r["explainer"]): r for r in rows}
    width = max(len(m) for m in metrics) + 4
    print(f"{'metric':<{width}}" + "".join(f"{e:>22}" for e in explainers))
    for m in metrics:
        arrow = next((("^" if r["higher_is_better"] else "v") for (mm, _), r in cell.items() if mm == m), "")
        line = f"{m + ' ' + arrow:<{width}}"
        for e in explainers:
            r = cell.get((m, e))
            line += f"{_fmt(r['value']) if r else '':>22}"
        print(line)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sgq_bench.evaluate import evaluate_cell, read_results, row_key

    spec = spec_from_args(args)
    suite = load_suite(args.suite)
    explainers = _names(args.explainers) or list(suite.explainers or DEFAULT_EXPLAINERS)
    metrics = _names(args.metrics) or list(suite.metrics or default_metrics())
    params_for = getattr(suite, "params_for", None)
    params = params_for(spec.dataset) if params_for else dict(suite.metric_params)
    for metric, p in parse_metric_params(args.metric_param).items():
        if metric not in metrics:
            _registry.metrics.get(metric)  # unknown name -> suggestions
            raise UsageError(f"--metric-param for {metric!r}, which is not among the evaluated metrics")
        params.setdefault(metric, {}).update(p)
    params = {m: p for m, p in params.items() if m in metrics}
    eval_size = args.eval_size or suite.dataset(spec.dataset).eval_size
    out = Path(args.out)
    results = out / "results.jsonl"
    evaluate_cell(spec, explainers=explainers, metrics=metrics, eval_size=eval_size, metric_params=params,
                  device=args.device, data_root=args.data_root,
                  checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
                  results_path=results, suite=suite.name, suite_version=suite.version,
                  progress=not args.quiet, eval_seed=args.eval_seed)
    keys = {(spec.key(), e, m) for e in [*explainers, "-"] for m in metrics}
    rows = [r for r in read_results(results) if (r.get("checkpoint_key"), r.get("explainer"), r.get("metric")) in keys
            and r.get("eval_size") == eval_size and r.get("eval_seed") == args.eval_seed]
    rows = list({(row_key(r), r.get("variant")): r for r in rows}.values())
    print(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}, {eval_size} test images "
          f"(^ higher is better, v lower):")
    print_table(rows)
    print(f"results: {results}")
    return 0


def cmd_bench_metrics(args: argparse.Namespace) -> int:
    from sgq_bench.bench.metrics import run_metrics_bench

    spec = spec_from_args(args)
    run_metrics_bench(spec, n=args.n, data_root=args.data_root, device=args.device,
                      checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
                      metrics=_names(args.metrics))
    return 0


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="explainers x metrics on one trained model -> DIR/results.jsonl")
    add_train_args(p)
    p.add_argument("--explainers", default=None, help=f"comma list (default: the suite's, else "
                                                      f"{','.join(DEFAULT_EXPLAINERS)})")
    p.add_argument("--metrics", default=None, help="comma list (default: the suite's, else every metric "
                                                   "without retraining)")
    p.add_argument("--eval-size", type=int, default=None, help="test images evaluated (default: the suite's)")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation subset and metric draws")
    p.add_argument("--metric-param", action="append", metavar="METRIC.KEY=VALUE",
                   help="metric parameter, e.g. deletion_auc.steps=20 or roar.fractions=0.1,0.5,0.9")
    p.add_argument("--out", required=True, help="output folder (results.jsonl is appended)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_evaluate)

    p = bench.add_parser("metrics", help="each metric vs Quantus/Captum and vs its forward-pass floor")
    add_train_args(p)
    p.add_argument("--n", type=int, default=256, help="test images")
    p.add_argument("--metrics", default=None, help="comma list (default: all with a benchmark)")
    p.set_defaults(func=cmd_bench_metrics)
