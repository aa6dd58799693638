"""Right for the Right Reasons (Ross, Hughes & Doshi-Velez, IJCAI 2017) as a training objective.

``loss = CE(f(x), y) + lam * mean_n sum_{pixels} (A * d/dx sum_k log p_k(x))^2``

``A`` marks the input regions the model should *not* use. RRR takes it from human annotations; image
classification benchmarks rarely have any, so the objective offers two annotation-free choices:

* ``mask = "border"`` (default): the outer ``border`` pixels of the image. In MNIST and in the
  synthetic data the object never touches the frame, so any gradient there is a wrong reason.
* ``mask = "all"``: every pixel, i.e. input-gradient regularisation (Ross & Doshi-Velez, AAAI 2018),
  which smooths the model and its saliency maps.

The penalty is differentiated again (double back-propagation), so a step costs about 3 plain steps.
The gradient is taken through whatever model it is given, fake-quantized or not: that is what lets
RRR combine with every quantizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgq_bench import Objective, ObjectiveOutput, Param, TrainContext


def wrong_reason_mask(x: torch.Tensor, mask: str, border: int) -> torch.Tensor:
    """1 where gradients are penalised, broadcastable to ``x`` (1 x 1 x H x W)."""
    h, w = x.shape[-2:]
    if mask == "all":
        return torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    a = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    a[..., border : h - border, border : w - border] = 0.0
    return a


class RightForRightReasons(Objective):
    """Right for the Right Reasons: CE + lambda * squared input gradients of log-probabilities on masked pixels."""

    name = "rrr"
    params = {
        "lam": Param(10.0, "weight of the input-gradient penalty", low=0.0),
        "mask": Param("border", "which pixels must not matter: the image border, or all pixels",
                      choices=("border", "all")),
        "border": Param(2, "width in pixels of the border mask", low=1, high=64),
    }

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> ObjectiveOutput:
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        ce = F.cross_entropy(logits, y)
        log_p = F.log_softmax(logits, dim=1).sum()
        (grad,) = torch.autograd.grad(log_p, xr, create_graph=True)
        a = wrong_reason_mask(x, self.mask, self.border)
        penalty = (a * grad).pow(2).sum() / x.shape[0]
        return ObjectiveOutput(ce + self.lam * penalty, logits, {"ce": ce.detach(), "rrr": penalty.detach()})
