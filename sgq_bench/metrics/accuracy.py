"""Model-level accuracy: top-1 on the full test split (not only the evaluation subset)."""

from __future__ import annotations

import torch

from sgq_bench._base import EvalContext, Metric, MetricResult
from sgq_bench.data import load_split
from sgq_bench.train import accuracy as split_accuracy


class Accuracy(Metric):
    """Top-1 accuracy of the (fake-quant) model on the whole test split."""

    name = "accuracy"
    family = "accuracy"
    higher_is_better = True
    needs_attributions = False
    params = {}

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        test = load_split(ctx.dataset, False, ctx.data_root)
        acc = split_accuracy(ctx.model, ctx.dataset, test, ctx.device)
        return MetricResult(value=acc, extra={"n": len(test)})
