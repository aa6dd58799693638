"""Sanity on a trained model: a real explainer must beat the random control on the faithfulness metrics."""

from __future__ import annotations

import pytest
import torch
from _metric_helpers import context, trained

from sgq_bench.explainers import Gradient, RandomExplainer
from sgq_bench.metrics.deletion import DeletionAUC, InsertionAUC
from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation
from sgq_bench.metrics.road import RoadMorf


@pytest.fixture(scope="module")
def maps():
    model = trained()
    ctx = context(model, n=64)
    with torch.no_grad():
        target = model(ctx.x).argmax(1)
    assert float((target == ctx.y).double().mean()) > 0.9, "the smoke model should have learned the bars"
    grad, rand = Gradient(), RandomExplainer()
    grad.setup(ctx.dataset)
    return ctx, grad.attribute(model, ctx.x, target), rand.attribute(model, ctx.x, target)


@pytest.mark.parametrize("metric", [DeletionAUC(), InsertionAUC(), RoadMorf(), FaithfulnessCorrelation()],
                         ids=lambda m: m.name)
def test_gradient_beats_random(maps, metric):
    ctx, grad, rand = maps
    g, r = metric.compute(ctx, grad).value, metric.compute(ctx, rand).value
    assert (g > r) if metric.higher_is_better else (g < r), f"{metric.name}: gradient {g} vs random {r}"


def test_same_seed_same_numbers(maps):
    ctx, grad, _ = maps
    a = [FaithfulnessCorrelation().compute(context(ctx.model, n=64), grad).value for _ in range(2)]
    b = [RoadMorf().compute(context(ctx.model, n=64), grad).value for _ in range(2)]
    assert a[0] == a[1] and b[0] == b[1]
