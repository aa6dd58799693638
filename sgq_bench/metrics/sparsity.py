"""Sparsity of attribution maps: Gini index (Quantus Sparseness), entropy (Quantus Complexity), top-k mass.

All three act on the per-pixel map |a| summed over channels (the same reduction used for ranking),
batched in torch: a sort or a sum over (B, H*W), milliseconds for thousands of maps. The input
tensor is never modified (Quantus's Sparseness and Complexity modify the caller's array in place).
"""

from __future__ import annotations

import torch

from sgq_bench.api import EvalContext, Metric, MetricResult, Param
from sgq_bench.metrics._common import k_of, one_thread, pixel_scores, to_list


def gini(scores: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Gini index per row of non-negative ``scores`` (B, N), after adding ``eps`` as Quantus does
    (so an all-zero map scores 0 instead of 0/0)."""
    a = torch.sort(scores.float(), dim=1).values.double() + eps  # float32 sort: same order, 2x faster
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    return ((2 * i - n - 1) * a).sum(1) / (n * a.sum(1))


def entropy(scores: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy (nats) per row of the map normalised to sum 1; ``eps`` inside the log as in
    Quantus. An all-zero map has no distribution: NaN."""
    a = scores.double()
    total = a.sum(1, keepdim=True)
    q = a / total
    h = -(q * torch.log(q + eps)).sum(1)
    return torch.where(total.squeeze(1) > 0, h, torch.full_like(h, float("nan")))


def _result(per: torch.Tensor, **extra) -> MetricResult:
    return MetricResult(value=float(per.nanmean()), per_sample=to_list(per), extra=extra)


class Sparseness(Metric):
    """Gini index of the per-pixel |attribution| (Chalasani et al. 2020; Quantus Sparseness). Higher = sparser."""

    name = "sparseness"
    family = "sparsity"
    higher_is_better = True
    params = {"eps": Param(1e-7, "added to every pixel before the Gini index (Quantus: 1e-7)", low=0.0)}

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        with one_thread(attributions.device):
            return _result(gini(pixel_scores(attributions), self.eps))


class Complexity(Metric):
    """Entropy of the normalised per-pixel |attribution| (Bhatt et al. 2020; Quantus Complexity). Lower = simpler."""

    name = "complexity"
    family = "sparsity"
    higher_is_better = False
    params = {"eps": Param(1e-12, "inside the logarithm (Quantus: 1e-12)", low=0.0)}

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        with one_thread(attributions.device):
            return _result(entropy(pixel_scores(attributions), self.eps))


class TopKMass(Metric):
    """Share of the total per-pixel |attribution| held by the top ``k`` fraction of pixels. Higher = more focused."""

    name = "topk_mass"
    family = "sparsity"
    higher_is_better = True
    params = {"k": Param(0.1, "fraction of pixels", low=0.0, high=1.0, low_open=True)}

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        with one_thread(attributions.device):
            s = pixel_scores(attributions).double()
            k = max(1, k_of(self.k, s.shape[1]))
            top = torch.topk(s, k, dim=1).values.sum(1)
            total = s.sum(1)
            per = torch.where(total > 0, top / total, torch.full_like(total, float("nan")))
            return _result(per, k_pixels=k)
