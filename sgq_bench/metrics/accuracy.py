"""Model-level accuracy: top-1 on the full test split (not only the evaluation subset), now and after each
training epoch."""

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

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return float(n_test)  # the whole test split, not the evaluation subset


class EpochAccuracy(Metric):
    """Test accuracy after each training epoch (variant ``epoch=NNN``), read from the checkpoint's log.

    Why from the log: the accuracy gap against training length must come from the same runs as every
    other number, and re-running training to epoch k would cost as much again. Training measures it on
    the whole test split after each epoch, in fp32 outside autocast, without touching any random number
    generator (so it does not change what is learned). 1-epoch recipes record none: the row is then NaN
    with the reason.
    """

    name = "epoch_accuracy"
    family = "accuracy"
    higher_is_better = True
    needs_attributions = False
    params = {}

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return 0.0  # read from the training log

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> list[MetricResult]:
        history = [h for h in (ctx.train_meta or {}).get("history", []) if "test_accuracy" in h]
        if not history:
            reason = "the training log holds no per-epoch test accuracy (1-epoch recipe, or trained before v2)"
            return [MetricResult(value=float("nan"), extra={"undefined_reason": reason})]
        return [MetricResult(value=float(h["test_accuracy"]), variant=f"epoch={int(h['epoch']):03d}",
                             extra={"train_loss": h.get("train_loss"), "elapsed_s": h.get("seconds")})
                for h in history]
