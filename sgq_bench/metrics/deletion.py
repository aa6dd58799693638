"""Deletion / insertion (RISE, Petsiuk et al. 2018) and the SGT authors' MoRF accuracy curve.

Deletion removes pixels in attribution order (most important first) by setting them to the
per-channel mean (0 after normalisation); insertion starts from a blurred copy and puts the original
pixels back in the same order. Step i of ``steps`` touches the top ``floor(i * H*W / steps)`` pixels;
the score is the softmax probability of the class predicted on the clean input. Curves keep the
unperturbed end points (deletion starts at the clean input, insertion ends at it), so they have
``steps + 1`` points on the fraction axis 0..1 and the AUC is the trapezoid area over it.

Quantus PixelFlipping (features_in_step = H*W/steps, perturb_baseline = 0, softmax) computes
deletion's points 1..steps; the test checks them equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgq_bench._base import EvalContext, Metric, MetricResult, Param
from sgq_bench.metrics.functional import (
    FractionsMixin,
    attr_store,
    clean_logits,
    forward,
    fractions_param,
    k_of,
    masked_logits,
    pixel_scores,
    predicted,
    rank_positions,
    removal_logits,
    to_list,
    trapezoid_auc,
)


def _curve_result(fracs: list[float], per_image: torch.Tensor, extra: dict | None = None) -> MetricResult:
    """per_image: (steps, B) scores -> mean curve, per-image AUC, value = mean AUC."""
    auc = trapezoid_auc(fracs, per_image.T)
    return MetricResult(value=float(auc.mean()), curve={"x": fracs, "y": to_list(per_image.double().mean(1))},
                        per_sample=to_list(auc), extra=extra or {})


class DeletionAUC(Metric):
    """RISE deletion: AUC of the predicted-class probability as top-ranked pixels are removed (lower is better)."""

    name = "deletion_auc"
    family = "deletion"
    higher_is_better = False
    params = {
        "steps": Param(50, "removal steps over the whole image", low=1),
        "baseline": Param("mean", "removed pixels become the per-channel mean (0 after normalisation) "
                          "or black (normalised 0 pixel)", choices=("mean", "black")),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        n = ctx.x.shape[2] * ctx.x.shape[3]
        ks = [i * n // self.steps for i in range(self.steps + 1)]
        logits = removal_logits(ctx, attributions, ks, self.baseline)
        cls = predicted(ctx)
        probs = logits.softmax(-1).gather(2, cls.view(1, -1, 1).expand(len(ks), -1, 1)).squeeze(2)
        return _curve_result([i / self.steps for i in range(self.steps + 1)], probs)


def gaussian_blur(x: torch.Tensor, klen: int, sigma: float) -> torch.Tensor:
    """RISE's blur: a normalised klen x klen Gaussian, per channel, zero padding (in normalised space)."""
    r = torch.arange(klen, dtype=torch.float64, device=x.device) - (klen - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    k2 = (k2 / k2.sum()).to(x.dtype)
    c = x.shape[1]
    return F.conv2d(x, k2.expand(c, 1, klen, klen), padding=klen // 2, groups=c)


class InsertionAUC(Metric):
    """RISE insertion: AUC of the predicted-class probability as top-ranked pixels are put back onto a
    blurred copy (higher is better)."""

    name = "insertion_auc"
    family = "deletion"
    higher_is_better = True
    params = {
        "steps": Param(50, "insertion steps over the whole image", low=1),
        "blur_kernel": Param(11, "Gaussian blur kernel size (RISE: 11)", low=1),
        "blur_sigma": Param(5.0, "Gaussian blur sigma in pixels (RISE: 5)", low=0.0, low_open=True),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        n = ctx.x.shape[2] * ctx.x.shape[3]
        ks = [i * n // self.steps for i in range(self.steps + 1)]
        key = ("blurred", self.blur_kernel, self.blur_sigma)
        if key not in ctx.cache:  # the blurred start is the same for every explainer
            blurred = gaussian_blur(ctx.x, self.blur_kernel, self.blur_sigma)
            ctx.cache[key] = (blurred, forward(ctx.model, blurred).float())
        blurred, blur_logits = ctx.cache[key]
        store = attr_store(ctx, attributions)
        if "pos_desc" not in store:
            store["pos_desc"] = rank_positions(pixel_scores(attributions))
        inner = [k for k in ks if 0 < k < n]
        mid = masked_logits(ctx.model, store["pos_desc"], inner, ctx.x, blurred)
        rows = {k: lg for k, lg in zip(inner, mid)}
        rows[0], rows[n] = blur_logits, clean_logits(ctx)
        logits = torch.stack([rows[k] for k in ks])
        cls = predicted(ctx)
        probs = logits.softmax(-1).gather(2, cls.view(1, -1, 1).expand(len(ks), -1, 1)).squeeze(2)
        return _curve_result([i / self.steps for i in range(self.steps + 1)], probs)


class MorfAccuracy(FractionsMixin, Metric):
    """The SGT paper's curve: accuracy after removing the top fraction of pixels, no retraining (lower is better)."""

    name = "morf_accuracy"
    family = "deletion"
    higher_is_better = False
    params = {
        "fractions": fractions_param(doc="fractions of top-ranked pixels removed"),
        "baseline": Param("mean", "removed pixels become the per-channel mean (0 after normalisation) "
                          "or black", choices=("mean", "black")),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        n = ctx.x.shape[2] * ctx.x.shape[3]
        ks = [k_of(f, n) for f in self.fractions]
        logits = removal_logits(ctx, attributions, ks, self.baseline)  # shared with deletion_auc
        correct = (logits.argmax(-1) == ctx.y.view(1, -1)).double()
        return _curve_result(list(self.fractions), correct)
