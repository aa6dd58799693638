"""The evaluation core: one cell (dataset x model x method x seed) -> result rows in a JSONL file.

Attributions are computed once per explainer and shared by every metric of the cell (with the cell's
forward cache, so metrics never repeat a forward pass); model-level metrics (accuracy, efficiency) run
once per cell with explainer ``"-"``. Rows are appended atomically after each metric, and a rerun
skips the (metric, explainer) pairs already present, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sgq_bench import _registry
from sgq_bench._base import Dataset, EvalContext, Explainer, Metric, MetricResult, Split
from sgq_bench._batching import forward as batched_forward
from sgq_bench._batching import keep_freed_memory
from sgq_bench._io import append_jsonl
from sgq_bench._plugins import row_plugins
from sgq_bench._provenance import provenance
from sgq_bench.data import subset
from sgq_bench.errors import UsageError
from sgq_bench.train import (
    TrainSpec,
    inference_copy,
    load_dataset,
    load_or_train,
    load_split,
    resolve_device,
)

KEY_FIELDS = ("dataset", "model", "method", "seed", "checkpoint_key", "explainer", "metric", "eval_size",
              "eval_seed")
NO_EXPLAINER = "-"


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a result for skip/resume: (dataset, model, method, seed, checkpoint_key, explainer,
    metric, eval_size, eval_seed). Variant rows of one metric share it (they are written together)."""
    return tuple(row.get(k) for k in KEY_FIELDS)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a results JSONL file ([] if it does not exist); a corrupted line is a one-line
    UsageError naming the file and line number."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"{path}:{lineno}: corrupted results line ({exc.msg}); fix or delete that line"
                ) from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{lineno}: corrupted results line (not a JSON object)")
            rows.append(row)
    return rows


def eval_split(dataset: Dataset, eval_size: int, eval_seed: int = 0, data_root: Any = None) -> Split:
    """The fixed evaluation subset of the test split: depends only on dataset, eval_size and eval_seed."""
    if eval_size < 1:
        raise UsageError(f"eval_size={eval_size} must be >= 1")
    return subset(load_split(dataset, False, data_root), eval_size, seed=eval_seed * 7919 + 17)


def _build(names: Sequence[str], registry: Any, params: dict[str, dict] | None, kind: str) -> dict[str, Any]:
    out = {}
    for name in names:
        cls = registry.get(name)  # unknown name -> UsageError with suggestions
        out[name] = cls(**dict((params or {}).get(name, {})))
    return out


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def evaluate_cell(
    spec: TrainSpec,
    *,
    explainers: Sequence[str],
    metrics: Sequence[str],
    eval_size: int,
    metric_params: dict[str, dict] | None = None,
    device: str | torch.device = "cpu",
    data_root: Any = None,
    checkpoint_dir: Path | None = None,
    results_path: Path,
    suite: str | None = None,
    suite_version: str | None = None,
    progress: bool = True,
    eval_seed: int = 0,
) -> list[dict]:
    """Evaluate one trained model; append rows to ``results_path`` and return the rows written now.

    Names and parameters are validated before any model is loaded or trained.
    """
    device = resolve_device(device)
    keep_freed_memory()
    metric_objs: dict[str, Metric] = _build(metrics, _registry.metrics, metric_params, "metric")
    explainer_objs: dict[str, Explainer] = _build(explainers, _registry.explainers, None, "explainer")
    results_path = Path(results_path)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = eval_split(dataset, eval_size, eval_seed, data_root)
    quantizer, _ = spec.method.build()
    base = _cell_fields(spec, quantizer, eval_size, eval_seed, suite, suite_version)
    done = {row_key(r) for r in read_results(results_path)}

    def todo(explainer: str, metric: str) -> bool:
        return row_key({**base, "explainer": explainer, "metric": metric}) not in done

    model_level = [m for m, obj in metric_objs.items() if not obj.needs_attributions]
    attr_level = [m for m, obj in metric_objs.items() if obj.needs_attributions]
    pending_model = [m for m in model_level if todo(NO_EXPLAINER, m)]
    pending = {e: [m for m in attr_level if todo(e, m)] for e in explainer_objs}
    if not pending_model and not any(pending.values()):
        _log(progress, f"{_cell_name(spec)}: all results present in {results_path}")
        return []

    trained = load_or_train(spec, data_root=data_root, device=device, checkpoint_dir=checkpoint_dir,
                            progress=progress)
    model = trained.model.eval()
    x = dataset.normalize(split.images.to(device))
    y = split.labels.to(device)
    prov = provenance(device)
    written: list[dict] = []

    def emit(explainer: str, expl_params: dict, name: str, metric: Metric, res: Any, seconds: float,
             extra: dict[str, Any] | None = None) -> None:
        results = res if isinstance(res, list) else [res]
        rows = [_row(base, explainer, expl_params, name, metric, r, seconds, prov, extra) for r in results]
        append_jsonl(results_path, rows)
        written.extend(rows)
        _log(progress, f"  {explainer:<22} {name:<26} {rows[0]['value']!s:<22} ({seconds:.1f} s)")

    _log(progress, f"{_cell_name(spec)}: evaluating on {len(split)} test images -> {results_path}")
    ctx = EvalContext(model=model, dataset=dataset, x=x, y=y, device=device, spec=spec, quantizer=quantizer,
                      data_root=data_root, checkpoint_dir=checkpoint_dir, seed=eval_seed)
    for name in pending_model:
        t0 = time.perf_counter()
        res = metric_objs[name].compute(ctx, None)
        emit(NO_EXPLAINER, {}, name, metric_objs[name], res, time.perf_counter() - t0)

    fast = inference_copy(model, device)  # model-level metrics above get the original
    fctx = EvalContext(model=fast, dataset=dataset, x=x, y=y, device=device, spec=spec, quantizer=quantizer,
                       data_root=data_root, checkpoint_dir=checkpoint_dir, seed=eval_seed)
    for ename, explainer in explainer_objs.items():
        if not pending[ename]:
            continue
        explainer.setup(dataset)
        t0 = time.perf_counter()
        target = batched_forward(fast, x).argmax(1)
        attr = explainer.attribute(fast, x, target).detach()  # same weights; channels-last is faster
        t_attr = time.perf_counter() - t0
        _log(progress, f"  {ename:<22} attributions {tuple(attr.shape)} ({t_attr:.1f} s)")
        fctx.explainer = explainer
        for name in pending[ename]:
            metric = metric_objs[name]
            t0 = time.perf_counter()
            res = metric.compute(fctx, attr)
            emit(ename, dict(explainer.config), name, metric, res, time.perf_counter() - t0,
                 {"attribution_time_s": round(t_attr, 4), "target": "predicted"})
        fctx.cache.pop("per_attribution", None)  # free this explainer's masked forwards
    return written


def _cell_name(spec: TrainSpec) -> str:
    return f"{spec.dataset}/{spec.model}/{spec.method.label()}/s{spec.seed}"


def _cell_fields(spec: TrainSpec, quantizer: Any, eval_size: int, eval_seed: int, suite: str | None,
                 suite_version: str | None) -> dict[str, Any]:
    m = spec.method.resolved()
    w_bits, a_bits = quantizer.bits()
    return {
        "dataset": spec.dataset,
        "model": spec.model,
        "method": m.name,
        "method_label": m.label(),
        "quantizer": m.quantizer,
        "objective": m.objective,
        "w_bits": w_bits,
        "a_bits": a_bits,
        "quantizer_params": dict(sorted(m.quantizer_params.items())),
        "objective_params": dict(sorted(m.objective_params.items())),
        "seed": spec.seed,
        "recipe": spec.recipe.as_dict(),
        "checkpoint_key": spec.key(),
        "eval_size": eval_size,
        "eval_seed": eval_seed,
        "suite": suite,
        "suite_version": suite_version,
    }


def _row(base: dict, explainer: str, expl_params: dict, name: str, metric: Metric, res: MetricResult,
         seconds: float, prov: dict, extra: dict[str, Any] | None) -> dict[str, Any]:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in metric.config.items()}
    params.update(res.extra.get("resolved_params", {}))
    row = {
        **base,
        "explainer": explainer,
        "explainer_params": expl_params,
        "metric": name,
        "family": metric.family,
        "variant": res.variant,
        "value": _clean(float(res.value)) if res.value is not None else None,
        "higher_is_better": metric.higher_is_better,
        "params": params,
        "curve": res.curve,
        "per_sample": [_clean(v) for v in res.per_sample] if res.per_sample is not None else None,
        "provenance": prov,
        "time_s": round(seconds, 4),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    other = {k: v for k, v in res.extra.items() if k != "resolved_params"}
    if other:
        row["extra"] = other
    row["plugins"] = row_plugins(row)  # role -> {name, distribution, version}: who made this number
    row.update(extra or {})
    return row


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


__all__ = ["evaluate_cell", "eval_split", "read_results", "row_key"]
