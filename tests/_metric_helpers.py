"""Helpers for the explainer/metric tests: a tiny trained model on synthetic data, and contexts."""

from __future__ import annotations

from functools import lru_cache

import torch

from sgq_bench._base import EvalContext
from sgq_bench.config.suite import load_suite
from sgq_bench.data import load_dataset
from sgq_bench.evaluate import eval_split
from sgq_bench.specs import ExecContext, TrainSpec
from sgq_bench.train import build_model, load_or_train


def smoke_spec(method: str = "baseline") -> TrainSpec:
    suite = load_suite("smoke")
    plan = suite.dataset("synthetic")
    return TrainSpec("synthetic", plan.model, suite.method(method), plan.recipe, 0, plan.dataset_params)


@lru_cache(maxsize=4)
def trained(method: str = "baseline") -> torch.nn.Module:
    """test_cnn trained on synthetic bars (the smoke recipe; seconds; cached in the session's temp cache)."""
    return load_or_train(smoke_spec(method), ExecContext(progress=False)).model.eval()


def untrained() -> torch.nn.Module:
    spec = smoke_spec()
    model, _, _ = build_model(spec, load_dataset(spec.dataset, spec.dataset_params))
    return model.eval()


def context(model: torch.nn.Module, n: int = 32, seed: int = 0) -> EvalContext:
    spec = smoke_spec()
    ds = load_dataset(spec.dataset, spec.dataset_params)
    split = eval_split(ds, n, 0)
    return EvalContext(model=model, dataset=ds, x=ds.normalize(split.images), y=split.labels,
                       device=torch.device("cpu"), spec=spec, seed=seed)


def evaluate_spec(spec, *, explainers, metrics, eval_size, metric_params=None, results_path=None, done=None,
                  fingerprint=None, suite=None, suite_version=None, eval_seed=0, progress=False, data_root=None,
                  checkpoint_dir=None, device="cpu"):
    """``evaluate_cell`` of the cell made of ``spec`` and these settings (the tests' short form)."""
    from sgq_bench.evaluate import evaluate_cell
    from sgq_bench.specs import Cell, ExecContext

    cell = Cell(spec, tuple(explainers), tuple(metrics), eval_size, metric_params or {}, eval_seed, suite or "",
                suite_version or "")
    ctx = ExecContext(device=device, data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress)
    out = None if results_path is None else results_path.parent
    return evaluate_cell(cell, ctx, out=out, done=done, fingerprint=fingerprint)
