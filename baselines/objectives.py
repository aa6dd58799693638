"""Reference objectives: ``cross_entropy`` and ``saliency_guided`` (Ismail et al., NeurIPS 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sgq_bench._base import Objective, ObjectiveOutput, Param, TrainContext


class CrossEntropy(Objective):
    """Plain cross-entropy on the clean batch."""

    name = "cross_entropy"

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> ObjectiveOutput:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return ObjectiveOutput(loss, logits, {"ce": loss.detach()})


def true_label_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Per-pixel saliency N x H x W: d logit_y / d x in eval mode, averaged over channels.

    Only the input gradient is requested, so no weight gradients are computed for this pass.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            picked = model(xr).gather(1, y.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(picked, xr)
    finally:
        model.train(was_training)
    s = grad.mean(dim=1)
    return s.abs() if absolute else s


def mask_bottom_k(x: torch.Tensor, saliency: torch.Tensor, k: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's floor(k*H*W) least-salient pixels (all channels) by uniform(min, max) noise.

    min/max are per sample and per channel, as in the official SGT code. Returns a detached tensor.
    """
    n, c, h, w = x.shape
    n_mask = int(math.floor(k * h * w))
    flat = saliency.reshape(n, h * w)
    idx = torch.topk(flat, n_mask, dim=1, largest=False, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view(n, 1, h, w)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    u = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return torch.where(mask, lo + (hi - lo) * u, x).detach()


def kl_clean_masked(logits: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax f(x) || softmax f(x_masked)), batch mean: the direction of the official SGT code."""
    return F.kl_div(F.log_softmax(masked_logits, 1), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)


class SaliencyGuided(Objective):
    """Saliency-guided training: CE + lambda * KL(f(x) || f(x with its least-salient pixels masked))."""

    name = "saliency_guided"
    params = {
        "k": Param(0.5, "fraction of pixels masked per sample", low=0.0, high=1.0, low_open=True, high_open=True),
        "lam": Param(1.0, "weight of the KL term", low=0.0),
        "abs": Param(False, "rank pixels by |saliency| instead of signed saliency"),
    }

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> ObjectiveOutput:
        saliency = true_label_saliency(model, x, y, self.abs)
        x_masked = mask_bottom_k(x, saliency, self.k, ctx.generator)
        if _has_batchnorm(model):
            # BatchNorm must see the clean and masked batches separately, as in the official code.
            logits, masked_logits = model(x), model(x_masked)
        else:
            # Without BatchNorm one forward of the concatenated batch is the same maths, and faster.
            logits, masked_logits = model(torch.cat([x, x_masked])).split(x.shape[0])
        ce = F.cross_entropy(logits, y)
        kl = kl_clean_masked(logits, masked_logits)
        return ObjectiveOutput(ce + self.lam * kl, logits, {"ce": ce.detach(), "kl": kl.detach()})


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
