"""Monotonicity correlation (Nguyen & Martinez 2020), batched in torch, checked against Quantus.

For each image, pixels are sorted by attribution (ascending) and cut into groups of
``features_in_step``. Each group alone is replaced by a baseline value ``nr_samples`` times; the
effect of a group is the mean squared change of the true class's softmax probability, divided by the
squared clean probability. The score is the Spearman correlation, over groups, between a group's total
attribution and its effect: +1 when the explainer's ordering of importance matches the model's.

Why our own implementation: Quantus' ``MonotonicityCorrelation`` loops in numpy over steps and repeats
and runs the model once per (step, repeat) batch; here every perturbed copy of a chunk of images goes
through the model in one batch. With ``perturb_baseline="black"`` (or ``"mean"``) it reproduces Quantus
called with ``abs=True, normalise=False`` on the same per-pixel attributions (tests/test_example_plugin.py
checks this). Differences, on purpose:

* attributions are reduced to one score per pixel (sum of absolute values over channels, as every
  sgq-bench metric does), and a pixel is perturbed in all its channels;
* ``"uniform"`` draws each baseline value between the image's own min and max (Quantus draws from
  [0, 1], which is an arbitrary range for normalised inputs);
* a correlation with a constant side (e.g. a model whose output no group can change) is 0, not NaN, and
  how many there were is reported in ``extra["degenerate"]``.
"""

from __future__ import annotations

import torch
from torch import nn

from sgq_bench import EvalContext, Metric, MetricResult, Param


def pixel_scores(attributions: torch.Tensor) -> torch.Tensor:
    """N x C x H x W attributions -> N x (H*W) per-pixel importance (sum of |a| over channels)."""
    return attributions.abs().sum(dim=1).flatten(1)


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks (1-based) with ties given their average rank, as ``scipy.stats.rankdata``."""
    less = (v.unsqueeze(1) < v.unsqueeze(2)).sum(dim=2)
    equal = (v.unsqueeze(1) == v.unsqueeze(2)).sum(dim=2)
    return less + (equal + 1) / 2.0


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise Spearman correlation and a mask of rows where one side is constant (set to 0)."""
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    degenerate = denom <= 1e-12
    corr = (ra * rb).sum(dim=1) / denom.clamp_min(1e-12)
    return torch.where(degenerate, torch.zeros_like(corr), corr), degenerate


def _baselines(x: torch.Tensor, kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One replacement value per (image, step, repeat), broadcast over the group's pixels and channels."""
    flat = x.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    if kind == "black":
        base = lo
    elif kind == "mean":
        base = flat.mean(dim=1)
    else:
        u = torch.rand(shape, generator=generator).to(x.device, x.dtype)
        return lo.view(-1, 1, 1) + (hi - lo).view(-1, 1, 1) * u
    return base.view(-1, 1, 1).expand(shape)


@torch.no_grad()
def monotonicity_correlation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    scores: torch.Tensor,
    *,
    features_in_step: int,
    nr_samples: int,
    perturb_baseline: str,
    generator: torch.Generator,
    batch_size: int = 4096,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image monotonicity correlation (N,) and the degenerate-row mask; ``scores`` is N x (H*W)."""
    n, c, h, w = x.shape
    n_feat = h * w
    steps = -(-n_feat // features_in_step)
    order = scores.argsort(dim=1)
    step_of_rank = torch.arange(n_feat, device=x.device) // features_in_step
    step_of_pixel = torch.empty_like(order).scatter_(1, order, step_of_rank.expand(n, -1))  # N x F
    atts = torch.zeros(n, steps, device=x.device, dtype=scores.dtype).scatter_add_(1, step_of_pixel, scores)
    base = _baselines(x, perturb_baseline, (n, steps, nr_samples), generator)  # N x S x R

    p0 = torch.softmax(model(x), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    inv = torch.where(p0.abs() >= eps, 1.0 / p0.abs().clamp_min(eps), torch.ones_like(p0)) ** 2
    effects = torch.empty(n, steps, device=x.device)
    chunk = max(1, batch_size // (steps * nr_samples))
    groups = torch.arange(steps, device=x.device)
    for i in range(0, n, chunk):
        xs, sp = x[i : i + chunk], step_of_pixel[i : i + chunk]
        m = xs.shape[0]
        mask = (sp.unsqueeze(1) == groups.view(1, -1, 1)).view(m, steps, 1, 1, h, w)  # which pixels per step
        b = base[i : i + chunk].view(m, steps, nr_samples, 1, 1, 1)
        pert = torch.where(mask, b, xs.view(m, 1, 1, c, h, w))  # m x S x R x C x H x W
        logits = model(pert.reshape(-1, c, h, w))
        yy = y[i : i + chunk].repeat_interleave(steps * nr_samples)
        p = torch.softmax(logits, dim=1).gather(1, yy.view(-1, 1)).view(m, steps, nr_samples)
        effects[i : i + m] = ((p - p0[i : i + m].view(m, 1, 1)) ** 2).mean(dim=2) * inv[i : i + m].view(m, 1)
    return spearman_rows(atts, effects)


class MonotonicityCorrelation(Metric):
    """Monotonicity correlation (Nguyen & Martinez 2020): Spearman of attribution vs. effect of perturbing."""

    name = "monotonicity_correlation"
    family = "faithfulness"
    higher_is_better = True
    needs_attributions = True
    params = {
        "features_in_step": Param(16, "pixels perturbed together in one step", low=1),
        "nr_samples": Param(8, "random baseline draws per step", low=1),
        "perturb_baseline": Param("uniform", "replacement value: uniform in the image's [min, max], its min, or mean",
                                  choices=("uniform", "black", "mean")),
        "batch_size": Param(4096, "perturbed images per forward pass (speed only)", low=1),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        if attributions is None:
            raise ValueError("monotonicity_correlation needs attributions")
        model = ctx.model
        was_training = model.training
        model.eval()
        try:
            corr, degenerate = monotonicity_correlation(
                model, ctx.x, ctx.y, pixel_scores(attributions.to(ctx.x.device)),
                features_in_step=self.features_in_step, nr_samples=self.nr_samples,
                perturb_baseline=self.perturb_baseline,
                generator=torch.Generator().manual_seed(ctx.seed * 7919 + 17), batch_size=self.batch_size,
            )
        finally:
            model.train(was_training)
        values = corr.cpu().tolist()
        return MetricResult(float(corr.mean()), per_sample=values, extra={"degenerate": int(degenerate.sum())})
