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


@pytest.mark.slow
def test_gradient_beats_random_on_real_mnist(data_root, tmp_path):
    """The same sanity on real MNIST: mnist_cnn trained 1 epoch on 10,000 images, 200 test images,
    through the evaluation entry point (so batching, caching and the inference copy are covered)."""
    from _metric_helpers import evaluate_spec

    from sgq_bench.cli.train import spec_from_argv

    args = (["--dataset", "mnist", "--method", "baseline", "--train-size", "10000",
                                      "--data-root", str(data_root)])
    names = ["deletion_auc", "insertion_auc", "road_morf", "faithfulness_correlation"]
    rows = evaluate_spec(spec_from_argv(args), explainers=["gradient", "random"], metrics=names, eval_size=200,
                         data_root=data_root, checkpoint_dir=tmp_path, results_path=tmp_path / "r.jsonl",
                         progress=False)
    value = {(r["explainer"], r["metric"]): r["value"] for r in rows}
    for r in rows:
        g, rnd = value[("gradient", r["metric"])], value[("random", r["metric"])]
        assert (g > rnd) if r["higher_is_better"] else (g < rnd), f"{r['metric']}: gradient {g} vs random {rnd}"
