"""Fabricated result rows in the result schema (sgq_bench.results), for tests that need no training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sgq_bench._bits import Bits, method_label

QUANT = {"baseline": ("none", "cross_entropy", 32, 32), "pact": ("pact", "cross_entropy", 4, 4),
         "sgt": ("none", "saliency_guided", 32, 32), "sgt_pact": ("pact", "saliency_guided", 4, 4)}


def row(method: str, seed: int, metric: str, value: float, *, explainer: str = "-", family: str = "deletion",
        higher: bool = True, per_sample: list[float] | None = None, curve: dict | None = None,
        variant: str | None = None, dataset: str = "synthetic", suite: str = "t", version: str = "1",
        eval_size: int | None = None, reason: str | None = None, extra: dict | None = None) -> dict[str, Any]:
    q, o, w, a = QUANT[method]
    out = {
        "dataset": dataset, "model": "test_cnn", "method": method,
        "method_label": method_label(method, Bits(w, a)), "quantizer": q, "objective": o,
        "w_bits": w, "a_bits": a, "quantizer_params": {}, "objective_params": {}, "seed": seed, "recipe": {},
        "checkpoint_key": f"{method}-{seed}", "explainer": explainer, "explainer_params": {}, "metric": metric,
        "family": family, "variant": variant, "value": value, "higher_is_better": higher, "params": {},
        "curve": curve, "per_sample": per_sample,
        "eval_size": eval_size or (len(per_sample) if per_sample else 8), "eval_seed": 0, "suite": suite,
        "suite_version": version, "precision": "fp32", "train_data_sha256": "0123abcd", "training_provenance": {"device": "cpu"}, "reason": reason,
        "provenance": {"sgq_bench_version": "0.1.0", "git_commit": "abc123", "torch_version": "2.x",
                       "device": "cpu:test"},
        "time_s": 0.01, "created": "2026-01-02T03:04:05+00:00",
    }
    if extra:
        out["extra"] = extra
    return out


def grid(seeds=(0, 1, 2), shift: float = 0.1, n_images: int = 40, dataset: str = "synthetic") -> list[dict]:
    """Four methods x seeds: accuracy + size (model level), insertion (per-image, curve) and deletion."""
    rng = np.random.default_rng(0)
    base_img = rng.random(n_images)
    rows = []
    for mi, method in enumerate(QUANT):
        for s in seeds:
            acc = 0.9 + 0.01 * mi + 0.002 * s
            rows.append(row(method, s, "accuracy", acc, family="accuracy", dataset=dataset, eval_size=n_images))
            rows.append(row(method, s, "size_bytes", 1000.0 / (1 + (mi % 2)), family="efficiency", higher=False,
                            dataset=dataset, eval_size=n_images))
            for ex in ("gradient", "random"):
                per = (base_img + shift * mi + 0.01 * rng.standard_normal(n_images)).tolist()
                curve = {"x": [0.0, 0.5, 1.0], "y": [0.1, 0.4 + 0.05 * mi, 0.9]}
                rows.append(row(method, s, "insertion_auc", float(np.mean(per)), explainer=ex, per_sample=per,
                                curve=curve, dataset=dataset))
                rows.append(row(method, s, "deletion_auc", 0.3 - 0.01 * mi + 0.001 * s, explainer=ex, higher=False,
                                curve=curve, dataset=dataset, eval_size=n_images))
    return rows


def write_run(out: Path, rows: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return out
