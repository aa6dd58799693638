"""PACT activations and rescaled DoReFa weights, against the formulas of docs/design.md ("PACT quantizer")."""

from __future__ import annotations

import pytest
import torch
from sgq_bench.builtin.pact_layers import (
    PACTReLU,
    QuantConv2d,
    QuantLinear,
    ResidualQuantBatchNorm2d,
    dorefa_weight,
    pact_quantize,
)
from sgq_bench.builtin.quantizers import PACTQuantizer
from torch import nn

from sgq_bench._base import Bits, layer_bits
from sgq_bench.config.methods import Method
from sgq_bench.data import CIFAR10, MNIST, Synthetic
from sgq_bench.errors import UsageError
from sgq_bench.models import mnist_cnn, resnet20, test_cnn
from sgq_bench.results import bits_label


def test_pact_forward_matches_formula_on_hand_made_inputs():
    alpha = torch.tensor(2.0)
    x = torch.tensor([-1.0, 0.0, 0.3, 0.5, 0.9, 1.9, 2.0, 5.0])
    # 2 bits: levels {0, 2/3, 4/3, 2}; y = clip(x, 0, 2) then round(y * 3 / 2) * 2 / 3
    expected = torch.tensor([0.0, 0.0, 0.0, 2 / 3, 2 / 3, 2.0, 2.0, 2.0])
    torch.testing.assert_close(pact_quantize(x, alpha, 2), expected)
    # 4 bits by the general formula
    k = 4
    y = x.clamp(0, 2.0)
    ref = torch.round(y * (2**k - 1) / 2.0) * 2.0 / (2**k - 1)
    torch.testing.assert_close(pact_quantize(x, alpha, k), ref)


def test_pact_alpha_gradient_is_one_exactly_where_x_reaches_alpha():
    x = torch.tensor([-1.0, 0.5, 1.99, 2.0, 2.5, 7.0])
    alpha = torch.tensor(2.0, requires_grad=True)
    xr = x.clone().requires_grad_(True)
    out = pact_quantize(xr, alpha, 4)
    # per-element d/d alpha via one backward per element
    for i in range(len(x)):
        (ga, gx) = torch.autograd.grad(out[i], (alpha, xr), retain_graph=True)
        assert float(ga) == (1.0 if x[i] >= 2.0 else 0.0), i
        # straight-through inside the clip range, zero outside
        assert float(gx[i]) == (1.0 if 0.0 < x[i] < 2.0 else 0.0), i


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_dorefa_rescaled_weights_take_at_most_2k_values_on_the_odd_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * 0.05
    q = dorefa_weight(w, bits)
    values = torch.unique(q)
    assert len(values) <= 2**bits
    n = 2**bits - 1
    m = w.abs().max()
    # odd multiples of max|w| / (2^k - 1), within ±max|w|
    ints = q / (m / n)
    torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)
    assert torch.all(ints.round().remainder(2) == 1)
    assert float(q.abs().max()) <= float(m) * (1 + 1e-6)
    # the formula itself
    t = torch.tanh(w)
    ref = (2 * torch.round((t / (2 * t.abs().max()) + 0.5) * n) / n - 1) * m
    torch.testing.assert_close(q, ref)


def test_pact_transform_keeps_first_and_last_float_and_swaps_following_relus():
    model = PACTQuantizer(w_bits=4, a_bits=2).prepare(mnist_cnn(MNIST()))
    assert type(model.conv1) is nn.Conv2d and type(model.fc2) is nn.Linear
    assert isinstance(model.conv2, QuantConv2d) and isinstance(model.fc1, QuantLinear)
    assert isinstance(model.relu1, PACTReLU) and model.relu1.act_bits == 8  # boundary: float conv1 -> conv2
    assert isinstance(model.relu2, PACTReLU) and isinstance(model.relu3, PACTReLU)
    assert type(PACTQuantizer(boundary_bits=0).prepare(mnist_cnn(MNIST())).relu1) is nn.ReLU
    assert model.relu2.act_bits == 2 and model.conv2.weight_bits == 4
    full = PACTQuantizer(quantize_first_last=True).prepare(mnist_cnn(MNIST()))
    assert isinstance(full.conv1, QuantConv2d) and isinstance(full.fc2, QuantLinear)
    assert isinstance(full.relu1, PACTReLU)


@pytest.mark.parametrize("w_bits,a_bits,label", [(4, 4, "W4A4"), (8, 8, "W8A8"), (4, 2, "W4A2")])
def test_declared_bits_agree_with_the_built_model_label_and_row(w_bits, a_bits, label, monkeypatch):
    q = PACTQuantizer(w_bits=w_bits, a_bits=a_bits)
    assert q.declared_bits() == Bits(w_bits, a_bits) and q.declared_bits().label == label
    model = q.prepare(mnist_cnn(MNIST()))
    marks = {name: layer_bits(m) for name, m in model.named_modules() if layer_bits(m) is not None}
    # conv2/fc1 at the declared weight bits, relu2/relu3 at the declared activation bits, relu1 the 8-bit boundary
    assert marks == {"relu1": Bits(32, 8), "conv2": Bits(w_bits, 32), "relu2": Bits(32, a_bits),
                     "fc1": Bits(w_bits, 32), "relu3": Bits(32, a_bits)}
    assert model.conv2.weight_bits == w_bits and model.relu2.act_bits == a_bits  # views of the declaration
    assert not any("bits" in k for k in model.state_dict())  # a plain attribute: checkpoints are unchanged
    monkeypatch.setattr(PACTQuantizer, "prepare", lambda self, m: pytest.fail("label() built a model"))
    method = Method("pact", "pact", "cross_entropy", {"w_bits": w_bits, "a_bits": a_bits})
    assert method.label() == f"pact {label}" and bits_label(w_bits, a_bits) == label
    assert Method(f"pact_{label.lower()}", "pact", "cross_entropy", {"w_bits": w_bits, "a_bits": a_bits}).label() \
        == f"pact_{label.lower()}"  # already named by its bits


def test_resnet20_pact_quantizes_every_inner_conv():
    model = PACTQuantizer().prepare(resnet20(CIFAR10()))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(c, QuantConv2d) for c in convs) == len(convs) - 1 == 18
    assert sum(isinstance(m, PACTReLU) for m in model.modules()) == 19  # 18 + the boundary after conv1
    residual = [n for n, m in model.named_modules() if isinstance(m, ResidualQuantBatchNorm2d)]
    assert residual == [f"layer{s}.{b}.bn2" for s in (1, 2, 3) for b in range(3)]  # each BN entering an add
    plain = PACTQuantizer(boundary_bits=0).prepare(resnet20(CIFAR10()))
    assert not any(isinstance(m, ResidualQuantBatchNorm2d) for m in plain.modules())
    assert 0.26e6 < sum(p.numel() for p in model.parameters() if p.dim() > 1) < 0.28e6


@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (2, 2), (4, 2)])
def test_each_quantized_layer_uses_at_most_2k_weights_and_activations(w_bits, a_bits):
    torch.manual_seed(0)
    ds = Synthetic()
    model = PACTQuantizer(w_bits=w_bits, a_bits=a_bits, alpha_init=1.0).prepare(test_cnn(ds)).eval()
    acts = {}
    for name, mod in model.named_modules():
        if isinstance(mod, PACTReLU):
            mod.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o.detach()))
    x = torch.randn(64, 1, 16, 16)
    model(x)
    assert acts, "no PACT activation ran"
    for name, out in acts.items():
        bits = model.get_submodule(name).act_bits
        assert bits == (8 if name == "relu1" else a_bits)  # relu1: the boundary after the float first layer
        assert len(torch.unique(out)) <= 2**bits
    for mod in model.modules():
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            assert len(torch.unique(dorefa_weight(mod.weight, w_bits))) <= 2**w_bits


def test_alpha_gets_at_least_the_pinned_weight_decay():
    q = PACTQuantizer()
    model = q.prepare(test_cnn(Synthetic()))
    groups = q.param_groups(model, weight_decay=0.0)
    assert groups[1]["weight_decay"] == pytest.approx(1e-4)
    assert all(p.dim() == 0 for p in groups[1]["params"])


@pytest.mark.parametrize("bad", [{"w_bits": 0}, {"w_bits": 33}, {"a_bits": 0}, {"alpha_init": 0.0}])
def test_out_of_range_bits_are_usage_errors_naming_value_and_range(bad):
    with pytest.raises(UsageError) as err:
        PACTQuantizer(**bad)
    key, value = next(iter(bad.items()))
    assert f"{key}={value!r}" in str(err.value) and "allowed range" in str(err.value)


def test_inference_path_gives_the_training_path_values():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5) * 3
    alpha = torch.tensor(2.5, requires_grad=True)
    train_out = pact_quantize(x, alpha, 3)
    with torch.no_grad():
        fast = pact_quantize(x, alpha, 3)
    torch.testing.assert_close(fast, train_out.detach(), atol=1e-6, rtol=0)
    assert len(torch.unique(fast)) <= 8


def test_residual_batchnorm_rounds_onto_the_int8_grid_with_a_tracked_range():
    torch.manual_seed(0)
    model = PACTQuantizer().prepare(resnet20(CIFAR10()))
    bn = model.layer1[0].bn2
    assert isinstance(bn, ResidualQuantBatchNorm2d) and float(bn.out_range) == 0.0
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    bn.train()
    y = bn(x)  # the first call sets the range to the batch's max|y|
    first = float(bn.out_range)
    assert first > 0
    steps = y / bn.out_scale()
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.min() >= -128 and steps.max() <= 127
    y.sum().backward()  # straight-through: inside the range the gradient is BatchNorm's own
    assert x.grad is not None and torch.isfinite(x.grad).all()
    bn(3 * x.detach())  # training: moving average towards the larger peak
    assert first < float(bn.out_range) < 3 * first
    bn.eval()
    kept = float(bn.out_range)
    bn(10 * x.detach())  # eval: the range is used, not updated
    assert float(bn.out_range) == kept


def test_untraceable_models_get_no_residual_boundaries():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = self.bn(self.conv(x))
            if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                h = h + self.bn2(self.conv2(h))
            return self.fc(h.mean((2, 3)))

    model = PACTQuantizer().prepare(Branchy())
    assert not any(isinstance(m, ResidualQuantBatchNorm2d) for m in model.modules())
    assert isinstance(model.conv2, QuantConv2d)


def test_resnet20_pact_trains_under_bf16_autocast_with_an_fp32_range():
    """Under CPU bf16 autocast the residual BatchNorm's output is bf16; its tracked range must stay fp32
    (the cifar10_long recipe trains PACT this way; lerp_ refused a bf16 end point)."""
    torch.manual_seed(0)
    model = PACTQuantizer().prepare(resnet20(CIFAR10())).train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):  # the first step sets the range, the second moves it
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
    bn = model.layer1[0].bn2
    assert bn.out_range.dtype == torch.float32 and float(bn.out_range) > 0
