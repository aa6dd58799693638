"""ROAR and KAR (Hooker et al. 2019): remove (ROAR) or keep (KAR) the top-ranked fraction of pixels in
the training AND test sets, retrain the same method from scratch, report the final model's test accuracy.

The ranking comes from the cell's explainer applied with the trained model to every training and test
image (its predicted class as target); removed pixels take the per-channel train mean, i.e. 0 after
normalisation, written exactly into a float copy of the split (``Dataset.normalize`` accepts floats in
0..255). Retraining goes through the shared ``train_model`` loop with the cell's recipe (``epochs`` and
``train_size`` may be reduced to fit a budget; both are recorded). A ``random`` explainer is the control:
ROAR asks whether an explainer degrades accuracy more than random removal does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from sgq_bench._base import EvalContext, Metric, MetricResult, Param, Split
from sgq_bench.data import batches, load_split, subset
from sgq_bench.metrics.functional import (
    FractionsMixin,
    fractions_param,
    k_of,
    pixel_scores,
    rank_positions,
    trapezoid_auc,
)
from sgq_bench.train import accuracy, build_model, train_model

ROAR_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def split_attributions(ctx: EvalContext, split: Split, batch: int = 1000) -> torch.Tensor:
    """The explainer's attributions of a whole split (predicted class), as per-pixel scores on CPU.

    One ``attribute`` call for the whole split (explainers chunk internally by their memory cap), so a
    seeded ``random`` ranking draws independent maps for every image instead of repeating per batch.
    """
    ctx.model.eval()
    x = torch.cat([xb for xb, _ in batches(ctx.dataset, split, batch, ctx.device)])
    with torch.no_grad():
        target = torch.cat([ctx.model(x[s:s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
    return pixel_scores(ctx.explainer.attribute(ctx.model, x, target)).cpu()


def masked_split(dataset: Any, split: Split, scores: torch.Tensor, fraction: float, keep: bool) -> Split:
    """A float copy of ``split`` (0..255 scale) whose top (ROAR) or all-but-top (KAR) pixels hold the mean."""
    n = scores.shape[1]
    pos = rank_positions(scores)
    k = k_of(fraction, n)
    top = pos < k
    replace_mask = ~top if keep else top
    c, h, w = split.images.shape[1:]
    mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
    imgs = split.images.float()
    imgs = torch.where(replace_mask.view(-1, 1, h, w), mean, imgs)
    return Split(imgs, split.labels)


class _Roar(FractionsMixin, Metric):
    family = "roar"
    needs_retraining = True
    keep = False
    params = {
        "fractions": fractions_param(ROAR_FRACTIONS, "fractions of pixels removed (ROAR) / kept (KAR)"),
        "epochs": Param(0, "retraining epochs; 0 = the cell's recipe", low=0),
        "train_size": Param(0, "training images for the retrain; 0 = the cell's recipe", low=0),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        if ctx.explainer is None or ctx.spec is None:
            from sgq_bench.errors import UsageError

            raise UsageError(f"metric {self.name!r} needs the explainer and the training spec in the context")
        spec = ctx.spec
        recipe = spec.recipe
        if self.epochs:
            recipe = replace(recipe, epochs=self.epochs)
        if self.train_size:
            recipe = replace(recipe, train_size=self.train_size)
        train = subset(load_split(ctx.dataset, True, ctx.data_root), recipe.train_size, seed=spec.seed + 104729)
        test = load_split(ctx.dataset, False, ctx.data_root)
        key = ("roar_scores", id(ctx.explainer), len(train), recipe.train_size)
        if key not in ctx.cache:  # shared by roar and kar
            ctx.cache[key] = (split_attributions(ctx, train), split_attributions(ctx, test))
        s_train, s_test = ctx.cache[key]
        accs = []
        for f in self.fractions:
            model, quantizer, objective = build_model(spec, ctx.dataset)
            train_model(model, quantizer, objective, ctx.dataset, masked_split(ctx.dataset, train, s_train, f, self.keep),
                        recipe, spec.seed, ctx.device, desc=f"{self.name} t={f}", progress=False)
            accs.append(accuracy(model, ctx.dataset, masked_split(ctx.dataset, test, s_test, f, self.keep), ctx.device))
        fr = list(self.fractions)
        y = torch.tensor(accs, dtype=torch.float64)
        value = float(trapezoid_auc(fr, y))
        return MetricResult(value=value, curve={"x": fr, "y": accs},
                            extra={"resolved_params": {"epochs": recipe.epochs, "train_size": len(train)},
                                   "final_epoch_accuracy": True})


class Roar(_Roar):
    """ROAR: test accuracy after removing the top fraction and retraining (lower = more faithful ranking)."""

    name = "roar"
    higher_is_better = False
    keep = False


class Kar(_Roar):
    """KAR: test accuracy keeping only the top fraction and retraining (higher = more faithful ranking)."""

    name = "kar"
    higher_is_better = True
    keep = True
