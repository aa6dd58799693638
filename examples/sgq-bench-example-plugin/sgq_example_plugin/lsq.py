"""LSQ: learned step size quantization of weights and activations (Esser et al., ICLR 2020).

Every quantized tensor ``v`` has one learnable step ``s``: ``v_q = round(clip(v / s, -Q_n, Q_p)) * s``
with straight-through rounding, so ``s`` receives the gradient ``-v/s + round(v/s)`` inside the range and
``-Q_n`` or ``Q_p`` outside it. The step's gradient is scaled by ``g = 1 / sqrt(numel * Q_p)``, which the
paper shows keeps step updates on the same relative scale as weight updates.

Weights are signed (``Q_n = 2^(b-1)``, ``Q_p = 2^(b-1) - 1``): each quantized layer becomes an
``nn.Conv2d``/``nn.Linear`` subclass that keeps the float ``weight`` parameter and reads it through LSQ
on every forward, declared with ``mark_quantized`` (what the efficiency metrics read). Activations
are the outputs of each ReLU that follows a quantized layer (the same rule as the reference PACT
quantizer, so the two are comparable on one grid), unsigned (``Q_n = 0``, ``Q_p = 2^b - 1``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sgq_bench import Bits, Param, Quantizer, layer_bits, mark_quantized


def _scale_grad(t: torch.Tensor, g: float) -> torch.Tensor:
    """``t`` in the forward pass, ``g * grad`` in the backward pass."""
    return (t - t * g).detach() + t * g


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_scale: float) -> torch.Tensor:
    """Fake-quantize ``v`` onto the grid ``step * {-q_n, ..., q_p}`` with LSQ's gradients."""
    s = _scale_grad(step.abs().clamp_min(1e-8), grad_scale)
    u = torch.clamp(v / s, -q_n, q_p)
    return (u + (torch.round(u) - u).detach()) * s


def initial_step(v: torch.Tensor, q_p: int) -> torch.Tensor:
    """The paper's initialisation, ``2 mean|v| / sqrt(Q_p)``."""
    return (2 * v.detach().abs().mean() / math.sqrt(q_p)).clamp_min(1e-6)


class _LSQWeightMixin:
    """Shared by LSQConv2d/LSQLinear: a learned step and the weight read through LSQ on every forward.

    ``mark_quantized`` declares the weight's bits, so sgq-bench's efficiency metrics pack it at k bits
    (size, compression, BOPs); the step is the layer's one fp32 scale.
    """

    weight: nn.Parameter

    def _init_lsq(self, bits: int) -> None:
        mark_quantized(self, weight_bits=bits)  # type: ignore[arg-type]
        self.q_n, self.q_p = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        self.step = nn.Parameter(initial_step(self.weight, self.q_p))
        self.grad_scale = 1.0 / math.sqrt(self.weight.numel() * self.q_p)

    def quantized_weight(self) -> torch.Tensor:
        return lsq_quantize(self.weight, self.step, self.q_n, self.q_p, self.grad_scale)

    def extra_repr(self) -> str:
        bits = layer_bits(self)  # type: ignore[arg-type]
        return super().extra_repr() + f", weight_bits={bits.weight if bits else 32}"  # type: ignore[misc]


class LSQConv2d(_LSQWeightMixin, nn.Conv2d):
    """Conv2d with LSQ-quantized weights (signed, ``w_bits`` bits)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> LSQConv2d:
        """A quantized layer sharing ``conv``'s parameter tensors (so seeded initialisation is kept)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new._init_lsq(bits)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class LSQLinear(_LSQWeightMixin, nn.Linear):
    """Linear with LSQ-quantized weights (signed, ``w_bits`` bits)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int) -> LSQLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new._init_lsq(bits)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class LSQReLU(nn.Module):
    """ReLU followed by unsigned LSQ activation quantization; the step is initialised from the first batch.

    ``mark_quantized`` declares its output bits, which sgq-bench's BOPs count reads.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        mark_quantized(self, act_bits=bits)
        self.q_p = 2**bits - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(x)
        if not bool(self.initialized):
            with torch.no_grad():  # data-dependent init (LSQ paper), saved with the checkpoint
                self.step.copy_(initial_step(y, self.q_p))
                self.initialized.fill_(True)
        grad_scale = 1.0 / math.sqrt(y[0].numel() * self.q_p)
        return lsq_quantize(y, self.step, 0, self.q_p, grad_scale)

    def extra_repr(self) -> str:
        return f"bits={layer_bits(self).act}"  # type: ignore[union-attr]


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, attr = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


class LSQQuantizer(Quantizer):
    """LSQ: learned step size quantization of weights and activations (Esser et al. 2020)."""

    name = "lsq"
    params = {
        "w_bits": Param(4, "weight bits of quantized conv/linear layers", low=2, high=16),
        "a_bits": Param(4, "activation bits of quantized ReLU outputs", low=1, high=16),
        "quantize_first_last": Param(False, "also quantize the first conv and the last linear layer"),
    }

    def declared_bits(self) -> Bits:
        """From the params alone: the label and result rows read this without building a model."""
        return Bits(self.w_bits, self.a_bits)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap quantized layers for LSQ ones; replace each ReLU after a quantized layer by LSQReLU.

        "After" is module registration order, which sgq-bench's models keep equal to forward order.
        """
        named = list(model.named_modules())
        layers = [n for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise ValueError("lsq: the model has no Conv2d/Linear layer to quantize")
        float_layers = set() if self.quantize_first_last else {layers[0], layers[-1]}
        previous_quantized = False
        for name, module in named:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                previous_quantized = name not in float_layers
                if previous_quantized:
                    lsq_layer = LSQConv2d if isinstance(module, nn.Conv2d) else LSQLinear
                    _replace(model, name, lsq_layer.from_float(module, self.w_bits))
            elif isinstance(module, nn.ReLU) and previous_quantized:
                _replace(model, name, LSQReLU(self.a_bits))
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Steps get no weight decay: decay would pull them towards 0, i.e. towards clipping everything."""
        steps = [m.step for m in model.modules() if isinstance(m, (_LSQWeightMixin, LSQReLU))]
        ids = {id(s) for s in steps}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "weight_decay": weight_decay}, {"params": steps, "weight_decay": 0.0}]
