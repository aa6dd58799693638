"""The evaluation core: one cell (dataset x model x method x seed) -> result rows.

Attributions are computed once per explainer, checked (finite, shaped like the input) and shared by
every metric of the cell (with the cell's forward cache, so metrics never repeat a forward pass);
model-level metrics (accuracy, efficiency) run once per cell with explainer ``"-"``. Rows are validated
against the result schema (``sgq_bench.results``) and appended after each metric, and a rerun skips
the (metric, explainer) pairs already present, so an interrupted evaluation resumes. With
``results_path=None`` nothing is written: the rows are returned (a distributed worker's mode, where
only the driver writes).
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

from sgq_bench import _registry, results
from sgq_bench._base import Dataset, EvalContext, Explainer, Metric, MetricResult, Split
from sgq_bench._batching import forward as batched_forward
from sgq_bench._batching import keep_freed_memory
from sgq_bench._plugins import row_plugins
from sgq_bench._provenance import provenance
from sgq_bench.data import subset
from sgq_bench.errors import UsageError
from sgq_bench.explainers import check_attributions
from sgq_bench.train import (
    TrainResult,
    TrainSpec,
    inference_copy,
    load_dataset,
    load_or_train,
    load_split,
    resolve_device,
)

NO_EXPLAINER = results.NO_EXPLAINER
PROTOCOL_FIELDS = ("suite", "suite_version", "eval_size", "eval_seed")  # one per dataset in a run directory

# Kept while runner.py and cli_evaluate.py import them from here; new code imports sgq_bench.results.
read_results = results.read_rows
row_key = results.row_key
KEY_FIELDS = results.KEY_FIELDS


def eval_split(dataset: Dataset, eval_size: int, eval_seed: int = 0, data_root: Any = None) -> Split:
    """The fixed evaluation subset of the test split: depends only on dataset, eval_size and eval_seed.

    An ``eval_size`` above the test split is refused rather than clamped, so that a row's ``eval_size``
    is always the number of images actually evaluated.
    """
    if not isinstance(eval_size, int) or isinstance(eval_size, bool) or eval_size < 1:
        raise UsageError(f"eval_size={eval_size!r} must be an integer >= 1")
    test = load_split(dataset, False, data_root)
    if eval_size > len(test):
        name = getattr(dataset, "name", "") or type(dataset).__name__
        raise UsageError(f"eval_size={eval_size} exceeds the {len(test)} images of the {name} test split; "
                         f"use an eval_size <= {len(test)}")
    return subset(test, eval_size, seed=eval_seed * 7919 + 17)


def check_protocol(results_path: Path, existing: list[dict[str, Any]], base: dict[str, Any],
                   fingerprint: str | None = None) -> None:
    """Refuse to add rows of another protocol to a run directory (one line; nothing is written).

    Why: a report averages every row of a (dataset, method, ...) group; rows of another suite version,
    evaluation size or evaluation subset would be mixed in silently. The directory's ``manifest.json``
    (written by the runner) and the rows already there must agree with ``base`` for this dataset.
    """
    manifest_path = Path(results_path).parent / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            suite = manifest.get("suite") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise UsageError(f"{manifest_path}: not a readable run manifest ({exc}); fix or delete it") from None
        where = f"{manifest_path.parent} was run with suite {suite.get('name')!r} v{suite.get('version')}"
        if fingerprint is not None and manifest.get("fingerprint") not in (None, fingerprint):
            raise UsageError(f"{where} (fingerprint {manifest.get('fingerprint')}), not this configuration "
                             f"(fingerprint {fingerprint}); use another --out")
        if (suite.get("name"), _str(suite.get("version"))) != (base["suite"], base["suite_version"]):
            raise UsageError(f"{where}; refusing to add results of suite {base['suite']!r} "
                             f"v{base['suite_version']}; use another --out")
        plan = next((d for d in suite.get("datasets") or [] if d.get("name") == base["dataset"]), None)
        if plan is not None and plan.get("eval_size") != base["eval_size"]:
            raise UsageError(f"{where}, eval_size {plan.get('eval_size')} for {base['dataset']}; refusing to add "
                             f"results at eval_size {base['eval_size']}; use another --out")
        if suite.get("eval_seed") not in (None, base["eval_seed"]):
            raise UsageError(f"{where}, eval_seed {suite.get('eval_seed')}; refusing to add results at eval_seed "
                             f"{base['eval_seed']}; use another --out")
    for r in existing:
        if r["dataset"] != base["dataset"]:
            continue
        theirs = tuple(r.get(k) for k in PROTOCOL_FIELDS)
        ours = tuple(base[k] for k in PROTOCOL_FIELDS)
        if theirs != ours:
            have = ", ".join(f"{k}={v!r}" for k, v in zip(PROTOCOL_FIELDS, theirs))
            want = ", ".join(f"{k}={v!r}" for k, v in zip(PROTOCOL_FIELDS, ours))
            raise UsageError(f"{results_path} holds {base['dataset']} results with {have}; refusing to add "
                             f"results with {want}; use another --out")


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


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
    results_path: Path | None,
    done: set[tuple] | None = None,
    suite: str | None = None,
    suite_version: str | None = None,
    fingerprint: str | None = None,
    progress: bool = True,
    eval_seed: int = 0,
    trained: TrainResult | None = None,
) -> list[dict]:
    """Evaluate one trained model; return the rows produced now (appended to ``results_path`` unless None).

    Rows whose ``results.row_key`` is in ``done`` or already in ``results_path`` are skipped. Names,
    parameters, ``eval_size`` and (when writing) the run directory's protocol (``check_protocol``;
    ``fingerprint`` is the suite's) are validated before any model is loaded or trained. ``trained``: the
    model already loaded by the caller (``load_or_train(spec)``), so that it is not read and verified twice.
    """
    device = resolve_device(device)
    keep_freed_memory()
    metric_objs: dict[str, Metric] = _build(metrics, _registry.metrics, metric_params, "metric")
    explainer_objs: dict[str, Explainer] = _build(explainers, _registry.explainers, None, "explainer")
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = eval_split(dataset, eval_size, eval_seed, data_root)
    quantizer, _ = spec.method.build()
    base = _cell_fields(spec, quantizer, len(split), eval_seed, suite, suite_version)
    skip = set(done or ())
    if results_path is not None:
        results_path = Path(results_path)
        existing = results.read_rows(results_path)
        check_protocol(results_path, existing, base, fingerprint)
        skip |= {results.row_key(r) for r in existing}

    def todo(explainer: str, metric: str) -> bool:
        return results.row_key({**base, "explainer": explainer, "metric": metric}) not in skip

    model_level = [m for m, obj in metric_objs.items() if not obj.needs_attributions]
    attr_level = [m for m, obj in metric_objs.items() if obj.needs_attributions]
    pending_model = [m for m in model_level if todo(NO_EXPLAINER, m)]
    pending = {e: [m for m in attr_level if todo(e, m)] for e in explainer_objs}
    if not pending_model and not any(pending.values()):
        _log(progress, f"{_cell_name(spec)}: all results present" + (f" in {results_path}" if results_path else ""))
        return []

    if trained is None:
        trained = load_or_train(spec, data_root=data_root, device=device, checkpoint_dir=checkpoint_dir,
                                progress=progress)
    base["precision"] = str(trained.meta.get("precision", "fp32"))
    base["train_data_sha256"] = trained.meta.get("train_data_sha256")
    base["training_provenance"] = trained.meta.get("provenance")  # a GPU-trained model scored on a CPU says so
    model = trained.model.eval()
    x = dataset.normalize(split.images.to(device))
    y = split.labels.to(device)
    prov = provenance(device)
    written: list[dict] = []

    def emit(explainer: str, expl_params: dict, name: str, metric: Metric, res: Any, seconds: float,
             extra: dict[str, Any] | None = None) -> None:
        outs = res if isinstance(res, list) else [res]
        rows = [_row(base, explainer, expl_params, name, metric, r, seconds, prov, extra) for r in outs]
        if results_path is not None:
            rows = results.append_rows(results_path, rows)
        else:
            rows = [results.validate_row(r, f"{_cell_name(spec)}: {name} row {i}") for i, r in enumerate(rows, 1)]
        written.extend(rows)
        _log(progress, f"  {explainer:<22} {name:<26} {rows[0]['value']!s:<22} ({seconds:.1f} s)")

    _log(progress, f"{_cell_name(spec)}: evaluating on {len(split)} test images"
         + (f" -> {results_path}" if results_path else ""))
    ctx = EvalContext(model=model, dataset=dataset, x=x, y=y, device=device, spec=spec, quantizer=quantizer,
                      data_root=data_root, checkpoint_dir=checkpoint_dir, seed=eval_seed, train_meta=trained.meta)
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
        attr = explainer.attribute(fast, x, target)  # same weights; channels-last is faster
        check_attributions(ename, attr, x)  # finite and shaped like x before any metric sees it
        attr = attr.detach()
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
        "suite_version": None if suite_version is None else str(suite_version),
    }


def _row(base: dict, explainer: str, expl_params: dict, name: str, metric: Metric, res: MetricResult,
         seconds: float, prov: dict, extra: dict[str, Any] | None) -> dict[str, Any]:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in metric.config.items()}
    params.update(res.extra.get("resolved_params", {}))
    value = None if res.value is None else float(res.value)
    reason = res.extra.get("undefined_reason")
    if value is not None and math.isfinite(value):
        reason = None  # a defined value needs no reason
    elif reason is None:
        reason = f"the metric returned {value}" if value is not None else "the metric returned no value"
    row = {
        **base,
        "explainer": explainer,
        "explainer_params": expl_params,
        "metric": name,
        "family": metric.family,
        "variant": res.variant,
        "value": _clean(value),
        "reason": None if reason is None else str(reason),
        "higher_is_better": bool(metric.higher_is_better),
        "params": params,
        "curve": res.curve,
        "per_sample": [_clean(v) for v in res.per_sample] if res.per_sample is not None else None,
        "provenance": prov,
        "time_s": round(seconds, 4),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    other = {k: v for k, v in res.extra.items() if k not in ("resolved_params", "undefined_reason")}
    if other:
        row["extra"] = other
    row["plugins"] = row_plugins(row)  # role -> {name, distribution, version}: who made this number
    row.update(extra or {})
    return row


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


__all__ = ["check_protocol", "eval_split", "evaluate_cell"]
