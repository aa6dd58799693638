"""Explainers: shape/determinism over the registry, and equality with captum called directly."""

from __future__ import annotations

import pytest
import torch
from _metric_helpers import context, untrained
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

import sgq_bench.explainers as E
from sgq_bench import _registry


@pytest.fixture(scope="module")
def setup():
    model = untrained()
    ctx = context(model, n=12)
    target = model(ctx.x).argmax(1)
    return model, ctx, target


@pytest.mark.parametrize("name", _registry.explainers.names())
def test_shape_finite_deterministic(name, setup):
    model, ctx, target = setup
    ex = _registry.explainers.get(name)()
    ex.setup(ctx.dataset)
    a = ex.attribute(model, ctx.x, target)
    assert a.shape == ctx.x.shape and torch.isfinite(a).all()
    assert torch.equal(a, ex.attribute(model, ctx.x, target)), "same seed and inputs must give the same map"
    assert not a.requires_grad


def test_gradient_is_captum_saliency(setup):
    model, ctx, target = setup
    ref = Saliency(model).attribute(ctx.x.clone().requires_grad_(), target=target, abs=False)
    torch.testing.assert_close(E.Gradient().attribute(model, ctx.x, target), ref)


def test_integrated_gradients_black_baseline(setup, monkeypatch):
    model, ctx, target = setup
    ex = E.IntegratedGradientsExplainer()
    ex.setup(ctx.dataset)
    black = torch.full_like(ctx.x, (0 - ctx.dataset.mean[0]) / ctx.dataset.std[0])
    ref = IntegratedGradients(model).attribute(ctx.x, baselines=black, target=target, n_steps=32)
    torch.testing.assert_close(ex.attribute(model, ctx.x, target), ref, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(E, "max_batch", lambda m, x: 40)  # chunks of 1 image x 32 steps: same numbers
    torch.testing.assert_close(ex.attribute(model, ctx.x, target), ref, rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_noise_tunnel_with_seeded_rng(setup):
    model, ctx, target = setup
    ex = E.SmoothGrad(seed=3)
    ex.setup(ctx.dataset)
    state = torch.random.get_rng_state()
    ours = ex.attribute(model, ctx.x, target)
    assert torch.equal(state, torch.random.get_rng_state()), "the caller's RNG must be untouched"
    torch.manual_seed(3 * 1_000_003 + 0)
    sigma = 0.15 * (1 / ctx.dataset.std[0])
    ref = NoiseTunnel(Saliency(model)).attribute(ctx.x.clone().requires_grad_(), nt_type="smoothgrad",
                                                 nt_samples=16, stdevs=sigma, target=target,
                                                 nt_samples_batch_size=16, abs=False)
    torch.testing.assert_close(ours, ref)
    assert not torch.equal(ours, E.SmoothGrad(seed=4).attribute(model, ctx.x, target))


def test_gradcam_upsampled_layer_gradcam(setup):
    model, ctx, target = setup
    ref = LayerGradCam(model, model.conv2).attribute(ctx.x, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (16, 16), "bilinear")
    torch.testing.assert_close(E.GradCAM().attribute(model, ctx.x, target), ref)


def test_random_is_seeded(setup):
    model, ctx, target = setup
    a = E.RandomExplainer(seed=1).attribute(model, ctx.x, target)
    assert torch.equal(a, E.RandomExplainer(seed=1).attribute(model, ctx.x, target))
    assert not torch.equal(a, E.RandomExplainer(seed=2).attribute(model, ctx.x, target))


def test_check_attributions_passes_a_valid_map_through(setup):
    _, ctx, _ = setup
    a = torch.randn(ctx.x.shape)
    assert E.check_attributions("gradient", a, ctx.x) is a


@pytest.mark.parametrize("bad,match", [
    (lambda x: torch.full_like(x, float("nan")), r"explainer 'broken' returned non-finite attributions: 3072 NaN and "
                                                 r"0 inf values in 12 of 12 images"),
    (lambda x: torch.where(torch.arange(x.numel()).view(x.shape) == 5, float("inf"), x),
     r"0 NaN and 1 inf values in 1 of 12 images"),
    (lambda x: x[:, :, :8], r"explainer 'broken' returned attributions of shape \(12, 1, 8, 16\), expected the "
                            r"input's shape \(12, 1, 16, 16\)"),
    (lambda x: x.long(), r"torch.int64 attributions, expected floats"),
], ids=["nan", "inf", "shape", "dtype"])
def test_check_attributions_names_the_explainer_in_one_line(setup, bad, match):
    from sgq_bench.errors import AttributionError, SgqBenchError

    _, ctx, _ = setup
    with pytest.raises(AttributionError, match=match) as err:
        E.check_attributions("broken", bad(ctx.x), ctx.x)
    assert "\n" not in str(err.value) and isinstance(err.value, SgqBenchError) and err.value.exit_code == 1
