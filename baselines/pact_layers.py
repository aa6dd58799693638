"""PACT activations and rescaled-DoReFa weight layers (fake quantization with straight-through gradients)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: clip(x, 0, alpha) then uniform ``bits``-bit rounding; d/d alpha = 1 exactly where x >= alpha.

    Written with ``torch.where`` so autograd gives the PACT gradients: d y/d x = 1 on [0, alpha), and the
    rounding passes gradients straight through.
    """
    levels = 2**bits - 1
    scale = alpha / levels
    if not (torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad)):
        # Inference: the same grid values in four in-place passes instead of about ten (evaluation
        # and attribution-free metrics spend most of their time here on CPU).
        return torch.clamp(x, min=0.0).clamp_(max=alpha).div_(scale).round_().mul_(scale)
    y = torch.where(x >= alpha, alpha.expand_as(x), F.relu(x))
    return y + (torch.round(y / scale) * scale - y).detach()


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa ``bits``-bit weights rescaled by the layer's max|w| (DESIGN.md §2).

    Plain DoReFa maps onto [-1, 1], which blows up BatchNorm-free nets; multiplying back by max|w|
    keeps the layer's scale. Values are odd multiples of max|w| / (2^k - 1): 2^k distinct values.
    """
    levels = 2**bits - 1
    t = torch.tanh(w)
    u = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    q = round_ste(u * levels) / levels
    return (2 * q - 1) * w.detach().abs().max()


class PACTReLU(nn.Module):
    """ReLU replaced by PACT: learnable clipping level ``alpha`` (one per layer) and k-bit outputs."""

    def __init__(self, bits: int, alpha_init: float = 10.0) -> None:
        super().__init__()
        self.act_bits = bits
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pact_quantize(x, self.alpha, self.act_bits)

    def extra_repr(self) -> str:
        return f"bits={self.act_bits}"


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weights are fake-quantized to ``weight_bits`` (rescaled DoReFa) on every forward."""

    weight_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, dorefa_weight(self.weight, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}"


class QuantLinear(nn.Linear):
    """Linear whose weights are fake-quantized to ``weight_bits`` (rescaled DoReFa) on every forward."""

    weight_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dorefa_weight(self.weight, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}"


def quantized_copy(layer: nn.Module, bits: int) -> nn.Module:
    """A QuantConv2d/QuantLinear sharing the float layer's parameters."""
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    new = cls.__new__(cls)
    new.__dict__ = layer.__dict__.copy()
    new._parameters = layer._parameters.copy()
    new._buffers = layer._buffers.copy()
    new._modules = layer._modules.copy()
    new.weight_bits = bits
    return new
