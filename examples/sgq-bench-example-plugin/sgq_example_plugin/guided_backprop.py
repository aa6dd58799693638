"""Guided Backpropagation (Springenberg et al., ICLR 2015 workshop) through captum.

Guided backprop keeps only positive gradients at every ReLU on the way back. Captum applies that rule
to ``nn.ReLU`` modules; quantizers replace ReLUs by their own activation modules (``PACTReLU``,
``LSQReLU``), so this explainer applies the same rule to any module whose class name ends in
``ReLU``. Without that, a quantized model would be explained by a different method (plain
gradients at the quantized layers) than its float twin, and the comparison would be unfair.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from sgq_bench import Explainer


def _relu_like(module: nn.Module) -> bool:
    return not isinstance(module, nn.ReLU) and type(module).__name__.endswith("ReLU")


def _positive_grad(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
    return tuple(None if g is None else F.relu(g) for g in grad_input)


class GuidedBackprop(Explainer):
    """Guided backpropagation (captum), also through quantized ReLU modules."""

    name = "guided_backprop"
    params = {}

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hooks = [m.register_full_backward_hook(_positive_grad) for m in model.modules() if _relu_like(m)]
        try:
            with warnings.catch_warnings():  # captum warns on every call that it sets hooks
                warnings.simplefilter("ignore", UserWarning)
                with torch.enable_grad():
                    out = CaptumGuidedBackprop(model).attribute(x.detach().clone(), target=target)
        finally:
            for h in hooks:
                h.remove()
        return out.detach()
