"""Each metric against its reference (Quantus 0.6 / Captum) on the same model, inputs, attributions and draws.

Attributions are continuous random maps (no ties: Quantus breaks ties with numpy's unstable quicksort,
we break them by pixel index). Quantus is given per-pixel scores with ``abs=False, normalise=False``
(its defaults would rescale them) and a batch size covering all inputs (its ROAD averages only the
first batch).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
from _metric_helpers import context, untrained
from captum.metrics import infidelity as captum_infidelity
from quantus.functions.perturb_func import noisy_linear_imputation

from sgq_bench.metrics import functional as _common
from sgq_bench.metrics.deletion import DeletionAUC, MorfAccuracy
from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation, Infidelity
from sgq_bench.metrics.road import RoadLerf, RoadMorf, linear_impute
from sgq_bench.metrics.sparsity import Complexity, Sparseness

warnings.filterwarnings("ignore", module="quantus")
N = 12


@pytest.fixture(scope="module")
def case():
    model = untrained()
    ctx = context(model, n=N)
    g = torch.Generator().manual_seed(5)
    attr = torch.randn(ctx.x.shape, generator=g)
    pred = _common.predicted(ctx)
    return model, ctx, attr, pred


def _np(t):
    return t.detach().cpu().numpy()


def _q(metric, model, ctx, a, y, **kw):
    return np.asarray(metric(model=model, x_batch=_np(ctx.x), y_batch=_np(y), a_batch=a, channel_first=True,
                             device="cpu", batch_size=N, **kw))


def test_deletion_equals_quantus_pixel_flipping(case):
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = DeletionAUC(steps=16).compute(ctx, attr)  # 256 pixels: 16 per step
    score = _np(_common.pixel_scores(attr).view(N, 1, 16, 16))
    q = _q(quantus.PixelFlipping(features_in_step=16, perturb_baseline=0.0, abs=False, normalise=False,
                                 disable_warnings=True), model, ctx, score, pred, softmax=True)
    np.testing.assert_allclose(res.curve["y"][1:], q.mean(0), rtol=1e-4, atol=1e-6)
    # per-sample AUC: ours adds the clean point and uses the fraction axis; rebuild it from Quantus's curve
    clean = _np(_common.clean_logits(ctx).softmax(1).gather(1, pred.view(-1, 1)))
    full = np.concatenate([clean, q], axis=1)
    np.testing.assert_allclose(res.per_sample, np.trapezoid(full, dx=1 / 16, axis=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [RoadMorf, RoadLerf])
def test_road_equals_quantus_without_noise(case, cls):
    """Noise off on both sides (Quantus draws from numpy's global RNG, we from a seeded generator)."""
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = cls(noise=0.0).compute(ctx, attr)
    score = _common.pixel_scores(attr).view(N, 1, 16, 16)
    a = score if cls is RoadMorf else score.max() + 1 - score  # reversed order, positive (Quantus asserts it)
    pct = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    q = quantus.ROAD(percentages=pct, noise=0.0, abs=False, normalise=False, disable_warnings=True)
    out = q(model=model, x_batch=_np(ctx.x), y_batch=_np(ctx.y), a_batch=_np(a), channel_first=True, device="cpu",
            batch_size=N)
    np.testing.assert_allclose(res.curve["y"], [out[p] for p in pct], rtol=1e-5)  # curves keep 6 digits


def test_imputation_equals_quantus_solver():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 28, 28, generator=g)
    pos = _common.rank_positions(torch.rand(6, 784, generator=g))
    for k in (78, 392, 705):
        ours = linear_impute(x, (pos < k).view(6, 1, 28, 28), tol=1e-7, max_iter=3000)
        order = torch.argsort(pos, dim=1)
        for i in range(6):
            ref = noisy_linear_imputation(_np(x[i]).astype(np.float64), _np(order[i, :k]), noise=0.0)
            np.testing.assert_allclose(_np(ours[i]), ref, atol=2e-5)


@pytest.mark.parametrize("cls,qcls", [(Sparseness, quantus.Sparseness), (Complexity, quantus.Complexity)])
def test_sparsity_equals_quantus_and_does_not_mutate(case, cls, qcls):
    model, ctx, attr, pred = case
    before = attr.clone()
    res = cls().compute(ctx, attr)
    assert torch.equal(attr, before)
    score = _np(_common.pixel_scores(attr).view(N, 1, 16, 16))
    passed = score.copy()
    q = _q(qcls(abs=False, normalise=False, disable_warnings=True), model, ctx, passed, pred)
    assert not np.array_equal(passed, score), "Quantus modifies the caller's array in place (why we copy)"
    np.testing.assert_allclose(res.per_sample, q, rtol=1e-4)


def test_faithfulness_correlation_equals_quantus_with_our_draws(case, monkeypatch):
    model, ctx, attr, pred = case
    ctx.cache = {}
    fc = FaithfulnessCorrelation(nr_runs=20, subset_size=25)
    res = fc.compute(ctx, attr)
    idx, _ = ctx.cache[("faithfulness_correlation", 20, 25, "black", 0)]
    rows = iter(_np(idx).transpose(1, 0, 2).reshape(-1, 25))  # Quantus loops runs, then images
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(rows))
    black = float(_common.fill_value(ctx, "black").flatten()[0])
    q = _q(quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=25, perturb_baseline=black, abs=False,
                                           normalise=False, disable_warnings=True, return_aggregate=False),
           model, ctx, _np(attr), pred, softmax=False)
    np.testing.assert_allclose(res.per_sample, q, rtol=1e-4, atol=1e-6)


def test_infidelity_equals_captum(case):
    model, ctx, attr, pred = case
    ctx.cache = {}
    inf = Infidelity()
    res = inf.compute(ctx, attr)
    noise, _ = ctx.cache[("infidelity", 10, 0.1, 0)]
    flat = noise.flatten(0, 1)
    with torch.no_grad():
        ref = captum_infidelity(model, lambda inp: (flat, inp - flat), ctx.x, attr, target=pred,
                                n_perturb_samples=10, max_examples_per_batch=N * 10, normalize=True)
    np.testing.assert_allclose(res.per_sample, _np(ref), rtol=1e-4, atol=1e-7)


def test_morf_accuracy_hand_computed(case):
    """No reference: accuracy after zeroing the top fraction, computed directly."""
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = MorfAccuracy(fractions=(0.25, 0.5)).compute(ctx, attr)
    score = _common.pixel_scores(attr)
    expect = []
    for k in (64, 128):
        top = torch.zeros_like(score, dtype=torch.bool)
        top.scatter_(1, torch.topk(score, k, dim=1).indices, True)
        xs = torch.where(top.view(N, 1, 16, 16), torch.zeros(()), ctx.x)
        expect.append(float((model(xs).argmax(1) == ctx.y).double().mean()))
    assert res.curve["y"] == pytest.approx(expect)
    assert res.value == pytest.approx((expect[0] + expect[1]) / 2)
