"""Faithfulness correlation (Bhatt et al. 2020, as Quantus FaithfulnessCorrelation) and infidelity (Captum).

Both perturb the input with draws that do not depend on the attribution (random pixel subsets; Gaussian
noise). The draws come from a generator seeded by the cell's seed, so every explainer of a cell sees the
same draws (a paired comparison) and the model's forwards on the perturbed inputs are computed once per
cell and cached; each explainer then costs only a gather and a correlation.
"""

from __future__ import annotations

import torch

from sgq_bench._base import EvalContext, Metric, MetricResult, Param
from sgq_bench._batching import MAX_IMAGES
from sgq_bench.metrics.functional import (
    clean_logits,
    fill_value,
    forward,
    k_of,
    mean_where_defined,
    one_thread,
    predicted,
    to_list,
)


def random_subsets(b: int, n: int, runs: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, runs, size) pixel indices, each row a uniform subset without replacement (the ``size``
    largest of i.i.d. uniforms)."""
    out = torch.empty(b, runs, size, dtype=torch.long)
    with one_thread(torch.device("cpu")):
        for r in range(runs):  # one run at a time bounds memory at (B, H*W)
            out[:, r] = torch.rand(b, n, generator=generator).topk(size, dim=1).indices
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dim: NaN where either side is constant (scipy warns and returns
    NaN there; checked on the range, since rounding in the mean can leave a constant row ulps off zero)."""
    flat = (a.amax(-1) == a.amin(-1)) | (b.amax(-1) == b.amin(-1))
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    r = (a * b).sum(-1) / (a.pow(2).sum(-1).sqrt() * b.pow(2).sum(-1).sqrt())
    return torch.where(flat, torch.full_like(r, float("nan")), r)


def _undefined_reason(sums: torch.Tensor, deltas: torch.Tensor, corr: torch.Tensor) -> str:
    """Why a correlation is NaN: one side does not vary over the subsets (no correlation exists)."""
    nan = torch.isnan(corr)
    flat_attr = bool((sums[nan].amax(-1) == sums[nan].amin(-1)).any())
    flat_model = bool((deltas[nan].amax(-1) == deltas[nan].amin(-1)).any())
    if flat_attr and not flat_model:
        return "attribution sums constant over the subsets (constant map)"
    if flat_model and not flat_attr:
        return "model output unchanged by every subset"
    return "attribution sums or model output constant over the subsets"


class FaithfulnessCorrelation(Metric):
    """Pearson correlation, over random pixel subsets, between the attribution summed on the subset and the
    drop of the predicted-class logit when the subset is set to the baseline (higher is better).

    Bhatt et al. 2020 as Quantus FaithfulnessCorrelation computes it (checked against it in the parity tests).
    """

    name, family, higher_is_better = "faithfulness_correlation", "faithfulness", True
    params = {
        "nr_runs": Param(100, "random subsets per image", low=2),
        "subset_size": Param(0, "pixels per subset; 0 = 10% of the pixels (78 on MNIST, 102 on CIFAR-10)", low=0),
        "baseline": Param("black", "value of the removed pixels: black (normalised 0 pixel, Quantus's default) "
                          "or mean (0 after normalisation)", choices=("black", "mean")),
    }

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return float(n_images * (int(self.nr_runs) + 1))

    def _draws(self, ctx: EvalContext, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("faithfulness_correlation", self.nr_runs, size, self.baseline, ctx.seed)
        if key not in ctx.cache:
            b, c, h, w = ctx.x.shape
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 11)
            idx = random_subsets(b, h * w, self.nr_runs, size, gen).to(ctx.x.device)
            cls = predicted(ctx)
            base = clean_logits(ctx).gather(1, cls.view(-1, 1)).squeeze(1)
            fill = fill_value(ctx, self.baseline)
            deltas = torch.empty(b, self.nr_runs, device=ctx.x.device)
            per = max(1, MAX_IMAGES // b) if b <= MAX_IMAGES else 1
            bi = min(b, MAX_IMAGES)
            with torch.inference_mode():
                for s in range(0, b, bi):
                    sl = slice(s, s + bi)
                    nb = ctx.x[sl].shape[0]
                    for r0 in range(0, self.nr_runs, per):
                        rr = idx[sl, r0:r0 + per].transpose(0, 1)  # (R, nb, size)
                        with one_thread(ctx.x.device):  # data preparation: small memory-bound ops
                            mask = torch.zeros(rr.shape[0], nb, h * w, dtype=torch.bool, device=ctx.x.device)
                            mask.scatter_(2, rr, True)
                            xs = torch.where(mask.view(rr.shape[0], nb, 1, h, w), fill, ctx.x[sl].unsqueeze(0))
                            xs = xs.view(-1, c, h, w)
                        out = forward(ctx.model, xs).float().view(rr.shape[0], nb, -1)
                        pert = out.gather(2, cls[sl].view(1, -1, 1).expand(rr.shape[0], -1, 1)).squeeze(2)
                        deltas[sl, r0:r0 + per] = (base[sl].view(1, -1) - pert).T
            ctx.cache[key] = (idx, deltas)
        return ctx.cache[key]

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        b, c, h, w = ctx.x.shape
        size = self.subset_size or max(1, k_of(0.1, h * w))
        if size >= h * w:
            from sgq_bench.errors import UsageError

            raise UsageError(f"metric 'faithfulness_correlation': subset_size={size} must be < {h * w} pixels")
        idx, deltas = self._draws(ctx, size)
        a = attributions.detach().sum(1).flatten(1)  # signed, summed over channels
        sums = a.gather(1, idx.flatten(1)).view(b, self.nr_runs, size).sum(-1)
        corr = pearson(sums, deltas)
        value, undefined = mean_where_defined(corr, _undefined_reason(sums, deltas, corr))
        return MetricResult(value=value, per_sample=to_list(corr),
                            extra={"resolved_params": {"subset_size": size}, **undefined})


class Infidelity(Metric):
    """Captum infidelity with ``normalize=True``: mean squared error between I.a and f(x) - f(x - I) under
    Gaussian perturbations I, after the optimal scaling of the attribution (lower is better)."""

    name = "infidelity"
    family = "faithfulness"
    higher_is_better = False
    params = {
        "n_perturb_samples": Param(10, "perturbations per image (Captum's default)", low=1),
        "noise_std": Param(0.1, "std of the Gaussian perturbation, in normalised input units", low=0.0,
                           low_open=True),
        "normalize": Param(True, "scale attributions by the optimal beta first (Captum normalize=True)"),
    }

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return float(n_images * (int(self.n_perturb_samples) + 1))

    def _draws(self, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("infidelity", self.n_perturb_samples, self.noise_std, ctx.seed)
        if key not in ctx.cache:
            b = ctx.x.shape[0]
            n = self.n_perturb_samples
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 13)
            noise = (torch.randn((b, n, *ctx.x.shape[1:]), generator=gen) * self.noise_std).to(ctx.x)
            cls = predicted(ctx)
            base = clean_logits(ctx).gather(1, cls.view(-1, 1)).squeeze(1)
            diffs = torch.empty(b, n, device=ctx.x.device)
            per = max(1, MAX_IMAGES // n)
            with torch.inference_mode():
                for s in range(0, b, per):
                    sl = slice(s, s + per)
                    xs = (ctx.x[sl].unsqueeze(1) - noise[sl]).flatten(0, 1)
                    out = forward(ctx.model, xs).float().view(-1, n, clean_logits(ctx).shape[1])
                    pert = out.gather(2, cls[sl].view(-1, 1, 1).expand(-1, n, 1)).squeeze(2)
                    diffs[sl] = base[sl].view(-1, 1) - pert
            ctx.cache[key] = (noise, diffs)
        return ctx.cache[key]

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        noise, diffs = self._draws(ctx)
        a = attributions.detach().to(noise.dtype)
        dot = torch.einsum("bn...,b...->bn", noise.flatten(2), a.flatten(1)).double()  # I . a
        d = diffs.double()
        if self.normalize:
            beta = (dot * d).sum(1) / (dot * dot).sum(1)
            beta = torch.where(torch.isfinite(beta), beta, torch.zeros_like(beta))  # Captum's safe_div
            dot = dot * beta.view(-1, 1)
        infid = (dot - d).pow(2).mean(1)
        return MetricResult(value=float(infid.mean()), per_sample=to_list(infid))
