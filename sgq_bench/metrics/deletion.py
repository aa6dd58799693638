"""Deletion / insertion (RISE, Petsiuk et al. 2018) and the SGT authors' MoRF accuracy curve.

Deletion removes pixels in attribution order (most important first) by setting them to the
per-channel mean (0 after normalisation); insertion starts from a blurred copy and puts the original
pixels back in the same order. Step i of ``steps`` touches the top ``floor(i * H*W / steps)`` pixels;
the score is the softmax probability of the class predicted on the clean input. Curves keep the
unperturbed end points (deletion starts at the clean input, insertion ends at it), so they have
``steps + 1`` points on the fraction axis 0..1 and the AUC is the trapezoid area over it.

Ties: which of several equally scored pixels goes first is decided by ``tie_draws`` seeded random
orders (index order would decide it otherwise), drawn only where a step's cut falls inside a tie group;
the value is their mean and ``extra`` records the spread (docs/ranking_ties.md).

Quantus PixelFlipping (features_in_step = H*W/steps, perturb_baseline = 0, softmax) computes
deletion's points 1..steps on tie-free maps; the test checks them equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgq_bench._base import EvalContext, Metric, MetricResult, Param
from sgq_bench.metrics.functional import (
    CurvePasses,
    FractionsMixin,
    attr_scores,
    clean_logits,
    forward,
    fractions_param,
    k_of,
    predicted,
    ranked_logits,
    removal_logits,
    sorted_scores,
    tie_draws_param,
    tie_extra,
    to_list,
    trapezoid_auc,
)


def _curve_result(ctx: EvalContext, attr: torch.Tensor, fracs: list[float], per_draw: torch.Tensor,
                  ambiguous: torch.Tensor) -> MetricResult:
    """per_draw: (D, steps, B) scores under D tie orders -> mean curve, per-image AUC (mean over draws),
    value = mean AUC, and the tie record."""
    auc = trapezoid_auc(fracs, per_draw.transpose(1, 2))  # (D, B)
    per_image = auc.mean(0)
    return MetricResult(value=float(per_image.mean()),
                        curve={"x": fracs, "y": to_list(per_draw.double().mean(0).mean(1))},
                        per_sample=to_list(per_image), extra=tie_extra(attr_scores(ctx, attr), ambiguous, auc,
                                                                   sorted_scores(ctx, attr)))


def class_prob(ctx: EvalContext, logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the clean prediction, (..., B, K) logits -> (..., B)."""
    cls = predicted(ctx)
    return logits.softmax(-1).gather(-1, cls.view(-1, 1).expand(*logits.shape[:-1], 1)).squeeze(-1)


class _StepCurve(CurvePasses, Metric):
    """A curve over ``steps`` equal steps of the whole image (deletion, insertion): its points."""

    steps: int

    def curve_points(self) -> int:
        return int(self.steps) + 1

    def step_points(self, ctx: EvalContext) -> tuple[list[int], list[float]]:
        """Pixels removed (or inserted) at each point, and the fractions they are of the image."""
        n = ctx.x.shape[2] * ctx.x.shape[3]
        return [i * n // self.steps for i in range(self.steps + 1)], [i / self.steps for i in range(self.steps + 1)]


class DeletionAUC(_StepCurve):
    """RISE deletion: AUC of the predicted-class probability as top-ranked pixels are removed (lower is better)."""

    name = "deletion_auc"
    family = "deletion"
    higher_is_better = False
    params = {
        "steps": Param(50, "removal steps over the whole image", low=1),
        "baseline": Param("mean", "removed pixels become the per-channel mean (0 after normalisation) "
                          "or black (normalised 0 pixel)", choices=("mean", "black")),
        "tie_draws": tie_draws_param(),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        ks, fractions = self.step_points(ctx)
        logits, ambiguous = removal_logits(ctx, attributions, ks, self.baseline, self.tie_draws)
        return _curve_result(ctx, attributions, fractions, class_prob(ctx, logits), ambiguous)


def gaussian_blur(x: torch.Tensor, klen: int, sigma: float) -> torch.Tensor:
    """RISE's blur: a normalised klen x klen Gaussian, per channel, zero padding (in normalised space)."""
    r = torch.arange(klen, dtype=torch.float64, device=x.device) - (klen - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    k2 = (k2 / k2.sum()).to(x.dtype)
    c = x.shape[1]
    return F.conv2d(x, k2.expand(c, 1, klen, klen), padding=klen // 2, groups=c)


class InsertionAUC(_StepCurve):
    """RISE insertion: AUC of the predicted-class probability as top-ranked pixels are put back onto a
    blurred copy (higher is better)."""

    name = "insertion_auc"
    family = "deletion"
    higher_is_better = True
    params = {
        "steps": Param(50, "insertion steps over the whole image", low=1),
        "blur_kernel": Param(11, "Gaussian blur kernel size (RISE: 11)", low=1),
        "blur_sigma": Param(5.0, "Gaussian blur sigma in pixels (RISE: 5)", low=0.0, low_open=True),
        "tie_draws": tie_draws_param(),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        ks, fractions = self.step_points(ctx)
        n = ctx.x.shape[2] * ctx.x.shape[3]
        key = ("blurred", self.blur_kernel, self.blur_sigma)
        if key not in ctx.cache:  # the blurred start is the same for every explainer
            blurred = gaussian_blur(ctx.x, self.blur_kernel, self.blur_sigma)
            ctx.cache[key] = (blurred, forward(ctx.model, blurred).float())
        blurred, blur_logits = ctx.cache[key]
        fixed = {0: lambda: blur_logits, n: lambda: clean_logits(ctx)}
        logits, ambiguous = ranked_logits(ctx, attributions, ks, ctx.x, blurred, key=("insertion", *key[1:]),
                                          draws=self.tie_draws, fixed=fixed)
        return _curve_result(ctx, attributions, fractions, class_prob(ctx, logits), ambiguous)


class MorfAccuracy(CurvePasses, FractionsMixin, Metric):
    """The SGT paper's curve: accuracy after removing the top fraction of pixels, no retraining (lower is better)."""

    name = "morf_accuracy"
    family = "deletion"
    higher_is_better = False
    params = {
        "fractions": fractions_param(doc="fractions of top-ranked pixels removed"),
        "baseline": Param("mean", "removed pixels become the per-channel mean (0 after normalisation) "
                          "or black", choices=("mean", "black")),
        "tie_draws": tie_draws_param(),
    }

    def curve_points(self) -> int:
        return len(self.fractions) + 1  # the fractions and the clean input

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        n = ctx.x.shape[2] * ctx.x.shape[3]
        ks = [k_of(f, n) for f in self.fractions]
        # shared with deletion_auc (same tie orders, same cache)
        logits, ambiguous = removal_logits(ctx, attributions, ks, self.baseline, self.tie_draws)
        correct = (logits.argmax(-1) == ctx.y.view(-1)).double()
        return _curve_result(ctx, attributions, list(self.fractions), correct, ambiguous)
