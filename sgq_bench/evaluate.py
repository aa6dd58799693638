"""The evaluation core: one cell (dataset x model x method x seed) -> result rows.

Attributions are computed once per explainer, checked (finite, shaped like the input) and shared by
every metric of the cell (with the cell's forward cache, so metrics never repeat a forward pass);
model-level metrics (accuracy, efficiency) run once per cell with explainer ``"-"``. Rows are validated
against the result schema (``sgq_bench.results``); with a run directory ``out`` the cell's rows are stored
together at the end (all or none) and a rerun skips the (metric, explainer) pairs already stored. With
``out=None`` nothing is written: the rows are returned (a distributed worker's mode, where only the
driver writes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sgq_bench import _registry, results
from sgq_bench._base import Dataset, EvalContext, Explainer, Metric, MetricResult, Split
from sgq_bench._batching import forward as batched_forward
from sgq_bench._batching import keep_freed_memory
from sgq_bench._plugins import row_plugins
from sgq_bench._provenance import provenance
from sgq_bench.data import load_dataset, load_split, subset
from sgq_bench.errors import AttributionError, PluginError, UsageError
from sgq_bench.explainers import check_attributions
from sgq_bench.specs import Cell, ExecContext, TrainSpec
from sgq_bench.train import TrainResult, inference_copy, load_or_train, resolve_device

NO_EXPLAINER = results.NO_EXPLAINER
PROTOCOL_FIELDS = ("suite", "suite_version", "eval_size", "eval_seed")  # one per dataset in a run directory



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


def _build(names: Sequence[str], registry: Any, params: dict[str, dict] | None) -> dict[str, Any]:
    out = {}
    for name in names:
        cls = registry.get(name)  # unknown name -> UsageError with suggestions
        out[name] = cls(**dict((params or {}).get(name, {})))
    return out


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def evaluate_cell(cell: Cell, ctx: ExecContext | None = None, *, out: Path | None = None,
                  done: set[tuple] | None = None, fingerprint: str | None = None,
                  trained: TrainResult | None = None) -> list[dict]:
    """Evaluate one cell's trained model; return the rows produced now (stored, all together, in the run
    directory ``out`` unless None: a distributed worker's mode, where only the driver writes).

    Rows whose ``results.row_key`` is in ``done`` or already stored in ``out`` are skipped. Names,
    parameters, ``eval_size`` and (when writing) the run directory's protocol (``check_protocol``;
    ``fingerprint`` is the suite's) are validated before any model is loaded or trained. ``trained``: the
    model already loaded by the caller (``load_or_train(cell.spec, ctx)``), so it is not read twice.
    """
    ctx = ctx or ExecContext()
    device = resolve_device(ctx.device)
    keep_freed_memory()
    spec = cell.spec
    metric_objs: dict[str, Metric] = _build(cell.metrics, _registry.metrics, cell.metric_params)
    explainer_objs: dict[str, Explainer] = _build(cell.explainers, _registry.explainers, None)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = eval_split(dataset, cell.eval_size, cell.eval_seed, ctx.data_root)
    quantizer, _ = spec.method.build()
    base = _origin_fields(cell, _cell_fields(spec, quantizer, len(split), cell.eval_seed, cell.suite or None,
                                             cell.suite_version or None))
    skip = set(done or ())
    results_path = None if out is None else Path(out) / results.RESULTS_FILE
    if results_path is not None:
        results.open_store(out)  # an older directory is migrated; a stale export rebuilt
        existing = results.read_rows(results_path)
        check_protocol(results_path, existing, base, fingerprint)
        skip |= {results.row_key(r) for r in existing}
    pending = {e: [m for m, obj in metric_objs.items() if (obj.needs_attributions != (e == NO_EXPLAINER))
                   and results.row_key({**base, "explainer": e, "metric": m}) not in skip]
               for e in (NO_EXPLAINER, *explainer_objs)}
    if not any(pending.values()):
        _log(ctx.progress, f"{_cell_name(spec)}: all results present" + (f" in {results_path}" if results_path else ""))
        return []
    if trained is None and cell.weights:
        from sgq_bench.weights import load_external

        trained = load_external(spec, Path(cell.weights), ctx.device)
    trained = trained or load_or_train(spec, ctx)
    base.update(precision=str(trained.meta.get("precision", "fp32")),
                train_data_sha256=trained.meta.get("train_data_sha256"),
                # a GPU-trained model scored on a CPU says so; so does a training resumed on another machine
                training_provenance=_training_provenance(trained.meta))
    scoring = _Scoring(cell, ctx, base, provenance(device))
    ectx = EvalContext(model=trained.model.eval(), dataset=dataset, x=dataset.normalize(split.images.to(device)),
                       y=split.labels.to(device), device=device, spec=spec, quantizer=quantizer,
                       data_root=ctx.data_root, checkpoint_dir=ctx.checkpoint_dir, seed=cell.eval_seed,
                       train_meta=trained.meta)
    _log(ctx.progress, f"{_cell_name(spec)}: evaluating on {len(split)} test images"
         + (f" -> {results_path}" if results_path else ""))
    for name in pending[NO_EXPLAINER]:
        scoring.score(ectx, NO_EXPLAINER, None, {}, name, metric_objs[name])
    _score_attributions(scoring, ectx, explainer_objs, metric_objs, pending)
    if results_path is not None:  # the cell's rows land together, merged with those already stored
        results.store_cell(out, cell.slug, cell.id, cell.key(), scoring.written)
    return scoring.written


def _origin_fields(cell: Cell, base: dict[str, Any]) -> dict[str, Any]:
    """Where the model came from: trained here (its spec's key), or a file (its own key and method name, so
    a report or leaderboard never averages it with a model trained here)."""
    base.update(origin="external" if cell.weights_sha256 else "trained", weights_sha256=cell.weights_sha256 or None)
    if cell.weights_sha256:
        from sgq_bench.weights import external_key

        base.update(checkpoint_key=external_key(cell.weights_sha256),
                    method=f"{base['method']}@external-{cell.weights_sha256[:12]}")
    return base


def _training_provenance(meta: dict[str, Any]) -> Any:
    """Where the weights were made; with the resumes of a training that crossed machines or thread counts
    (its weights then differ from an uninterrupted run's)."""
    prov = meta.get("provenance")
    moved = [r for r in meta.get("resumes") or [] if not r.get("same_machine", True)]
    if moved and isinstance(prov, dict):
        prov = {**prov, "resumed_elsewhere": moved}
    return prov


def _score_attributions(scoring: _Scoring, ectx: EvalContext, explainer_objs: dict[str, Explainer],
                        metric_objs: dict[str, Metric], pending: dict[str, list[str]]) -> None:
    """Attributions once per explainer (on a faster inference copy), then every pending metric on them."""
    fast = inference_copy(ectx.model, ectx.device)  # model-level metrics got the original
    fctx = dataclasses.replace(ectx, model=fast, train_meta=None, cache={})
    for ename, explainer in explainer_objs.items():
        if not pending[ename]:
            continue
        explainer.setup(fctx.dataset)
        t0 = time.perf_counter()
        target = batched_forward(fast, fctx.x).argmax(1)
        attr = explainer.attribute(fast, fctx.x, target)  # same weights; channels-last is faster
        try:
            check_attributions(ename, attr, fctx.x)  # finite and shaped like x before any metric sees it
        except AttributionError as exc:  # one bad explainer: its own rows are undefined, the cell goes on
            _log(scoring.ctx.progress, f"  {ename:<22} {exc}")
            for name in pending[ename]:
                scoring.undefined(fctx, ename, dict(explainer.config), name, metric_objs[name], str(exc))
            continue
        attr = attr.detach()
        t_attr = time.perf_counter() - t0
        _log(scoring.ctx.progress, f"  {ename:<22} attributions {tuple(attr.shape)} ({t_attr:.1f} s)")
        fctx.explainer = explainer
        for name in pending[ename]:
            scoring.score(fctx, ename, attr, dict(explainer.config), name, metric_objs[name],
                          {"attribution_time_s": round(t_attr, 4), "target": "predicted"})
        fctx.cache.pop("per_attribution", None)  # free this explainer's masked forwards


class _Scoring:
    """Computes one metric and turns its results into validated rows (stored by the caller, per cell)."""

    def __init__(self, cell: Cell, ctx: ExecContext, base: dict[str, Any], prov: dict[str, Any]) -> None:
        self.cell, self.ctx, self.base, self.prov = cell, ctx, base, prov
        self.written: list[dict] = []

    def score(self, ectx: EvalContext, explainer: str, attr: Any, expl_params: dict, name: str, metric: Metric,
              extra: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        res = metric.compute(ectx, attr)
        seconds = time.perf_counter() - t0
        outs = res if isinstance(res, list) else [res]
        n_images = int(ectx.x.shape[0])
        for r in outs:  # a plugin's output is checked at the boundary, before it becomes a row
            if r.per_sample is not None and len(r.per_sample) != n_images:
                raise PluginError(f"metric {name!r} returned {len(r.per_sample)} per-sample values for {n_images} "
                                  "images; per_sample must hold one value per evaluation image (or be None)")
        rows = [_row(self.base, explainer, expl_params, name, metric, r, seconds, self.prov, extra) for r in outs]
        where = _cell_name(self.cell.spec)
        rows = [results.validate_row(r, f"{where}: {name} row {i}") for i, r in enumerate(rows, 1)]
        self.written.extend(rows)
        _log(self.ctx.progress, f"  {explainer:<22} {name:<26} {rows[0]['value']!s:<22} ({seconds:.1f} s)")

    def undefined(self, ectx: EvalContext, explainer: str, expl_params: dict, name: str, metric: Metric,
                  reason: str) -> None:
        """The row of a metric that could not be computed for this explainer: value null, the reason said."""
        res = MetricResult(value=float("nan"), extra={"undefined_reason": reason})
        row = _row(self.base, explainer, expl_params, name, metric, res, 0.0, self.prov, {"target": "predicted"})
        self.written.append(results.validate_row(row, f"{_cell_name(self.cell.spec)}: {name}"))


def _cell_name(spec: TrainSpec) -> str:
    return f"{spec.dataset}/{spec.model}/{spec.method.label()}/s{spec.seed}"


def _cell_fields(spec: TrainSpec, quantizer: Any, eval_size: int, eval_seed: int, suite: str | None,
                 suite_version: str | None) -> dict[str, Any]:
    m = spec.method.resolved()
    bits = quantizer.declared_bits()  # the one declaration; m.label() prints the same one
    w_bits, a_bits = bits.weight, bits.act
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
