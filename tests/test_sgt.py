"""Saliency-guided training objective, against docs/design.md ("Saliency-guided objective") and the official
SGT code's semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sgq_bench.builtin.objectives import SaliencyGuided, kl_clean_masked, mask_bottom_k, true_label_saliency
from torch import nn

from sgq_bench._base import TrainContext
from sgq_bench.data import Synthetic
from sgq_bench.errors import UsageError
from sgq_bench.models import test_cnn


@pytest.mark.parametrize("k", [0.5, 0.1, 0.37])
def test_mask_replaces_exactly_the_bottom_k_pixels_in_every_channel(k):
    n, c, h, w = 5, 3, 6, 7
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    saliency = torch.randn(n, h, w, generator=g)  # distinct values, so "bottom" is well defined
    out = mask_bottom_k(x, saliency, k, torch.Generator().manual_seed(1))
    n_mask = math.floor(k * h * w)
    changed = (out != x).any(dim=1)  # N x H x W
    for i in range(n):
        bottom = torch.zeros(h * w, dtype=torch.bool)
        bottom[saliency[i].flatten().argsort()[:n_mask]] = True
        assert torch.equal(changed[i].flatten(), bottom.view(h * w))
        assert int(changed[i].sum()) == n_mask
        lo = x[i].amin(dim=(1, 2)).view(c, 1, 1)
        hi = x[i].amax(dim=(1, 2)).view(c, 1, 1)
        assert torch.all((out[i] >= lo) & (out[i] <= hi))
    assert not out.requires_grad


def test_saliency_is_the_true_label_input_gradient_in_eval_mode_averaged_over_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 25, 3))
    model.train()
    x = torch.randn(4, 3, 5, 5)
    y = torch.tensor([0, 2, 1, 2])
    s = true_label_saliency(model, x, y, absolute=False)
    assert model.training  # restored
    model.eval()
    xr = x.clone().requires_grad_(True)
    model(xr).gather(1, y.view(-1, 1)).sum().backward()
    torch.testing.assert_close(s, xr.grad.mean(1))
    torch.testing.assert_close(true_label_saliency(model, x, y, absolute=True), xr.grad.mean(1).abs())


def test_kl_term_has_the_pinned_direction_and_vanishes_when_outputs_agree():
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 0.5]])
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    expected = (p * (p.log() - q.log())).sum()  # KL(f(x) || f(x_masked))
    torch.testing.assert_close(kl_clean_masked(a, b), expected)
    reverse = (q * (q.log() - p.log())).sum()
    assert not torch.allclose(kl_clean_masked(a, b), reverse)
    assert float(kl_clean_masked(a, a)) == 0.0


def test_objective_is_ce_plus_lambda_kl_and_grads_flow_through_both_passes():
    torch.manual_seed(0)
    model = test_cnn(Synthetic())
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    obj = SaliencyGuided(lam=0.5)
    out = obj.compute(model, x, y, TrainContext(generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out.loss.detach(), out.parts["ce"] + 0.5 * out.parts["kl"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("k", [0.0, 1.0, -0.1, 1.5])
def test_k_outside_open_unit_interval_is_a_usage_error(k):
    with pytest.raises(UsageError, match=r"k=.*outside the allowed range \(0.0, 1.0\)"):
        SaliencyGuided(k=k)
