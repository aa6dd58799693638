"""Ranking metrics do not depend on how ties fall (docs/ranking_ties.md).

The construction: transposing the image, the map and the model's input together (the model transposes
its input back first) changes nothing a metric should see: every masked image is the transpose of the
original one, and deletion's constant fill, insertion's isotropic blur and ROAD's 8-neighbour imputation
all commute with the transpose. The only difference is which tied pixel comes first in raster order
(row-major on one side, column-major on the other). Index-order tie-breaking gives different values
(checked, so the test has teeth); tie-invariant metrics give the same value: exactly where the
computation is exact, within the documented Monte-Carlo tolerance where tie orders are drawn.
"""

from __future__ import annotations

import math

import pytest
import torch
from _metric_helpers import context, trained

from sgq_bench.metrics import functional, road
from sgq_bench.metrics.deletion import DeletionAUC, InsertionAUC, MorfAccuracy
from sgq_bench.metrics.road import RoadLerf, RoadMorf
from sgq_bench.metrics.sparsity import Complexity, Sparseness, TopKMass

N = 32
DRAWS = 16


def linear_model(seed: int = 0) -> torch.nn.Module:
    """A seeded linear classifier of 16x16 images that reads mostly the top four rows (classes 0 and 1):
    raster order then removes its evidence first, column-major order last, so tie order shows (a trained
    bar detector is too robust to show it on 16x16 images)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 16, 16, generator=g) / 64
    w[0, :4] += 1 / 8
    w[1, :4] -= 1 / 8
    lin = torch.nn.Linear(256, 4)
    with torch.no_grad():
        lin.weight.copy_(w.view(4, 256))
        lin.bias.zero_()
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


class Transposed(torch.nn.Module):
    """``model`` applied to the transpose of its input: f'(x^T) = f(x)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.transpose(-1, -2))


def tied_maps(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Maps made of tie groups: every other map constant (one group), the others with scores in
    {0, 1, 2, 3} (40% exact zeros, as gradient maps hold)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape, generator=g)
    a = torch.bucketize(u, torch.tensor([0.4, 0.7, 0.9])).float()
    a[::2] = 1.0
    return a


@pytest.fixture(scope="module")
def problem():
    model = linear_model()
    ctx = context(model, n=N)
    a = tied_maps(ctx.x)
    ctx_t = context(Transposed(model), n=N)
    ctx_t.x = ctx.x.transpose(-1, -2).contiguous()
    return ctx, a, ctx_t, a.transpose(-1, -2).contiguous()


METRICS = [DeletionAUC(steps=16, tie_draws=DRAWS), InsertionAUC(steps=16, tie_draws=DRAWS),
           MorfAccuracy(tie_draws=DRAWS), RoadMorf(noise=0.0, tie_draws=DRAWS),
           RoadLerf(noise=0.0, tie_draws=DRAWS)]  # ROAD's noise is drawn in raster order: off on both sides


def _value(metric, ctx, a):
    ctx.cache = {}
    return metric.compute(ctx, a)


def index_order(monkeypatch):
    """Make every tie order the old one (pixel index), as before tie handling."""
    def pos(ctx, attr, descending, draw):
        return functional.rank_positions(functional.pixel_scores(attr), descending)

    monkeypatch.setattr(functional, "draw_positions", pos)
    monkeypatch.setattr(road, "draw_positions", pos)


@pytest.fixture(scope="module")
def drawn(problem):
    """Each metric on the problem and on its transpose, with random tie orders; and the Monte-Carlo
    tolerance: each value averages DRAWS tie orders, so its standard error is tie_spread / sqrt(DRAWS);
    two independent estimates lie within 4 x their combined standard error."""
    ctx, a, ctx_t, a_t = problem
    out = {}
    for metric in METRICS:
        r, r_t = _value(metric, ctx, a), _value(metric, ctx_t, a_t)
        tol = 4 * math.hypot(r.extra["tie_spread"], r_t.extra["tie_spread"]) / math.sqrt(DRAWS)
        out[metric.name] = (r, r_t, tol)
    return out


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_value_does_not_depend_on_which_tied_pixel_comes_first(drawn, metric):
    r, r_t, tol = drawn[metric.name]
    assert r.extra["tie_draws"] == r_t.extra["tie_draws"] == DRAWS
    assert r.extra["tie_fraction"] == r_t.extra["tie_fraction"] == 1.0
    assert 0 < r.extra["tie_spread"] < 0.1
    assert abs(r.value - r_t.value) <= tol, (r.value, r_t.value, tol)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_index_order_would_fail_this_test(problem, drawn, metric, monkeypatch):
    ctx, a, ctx_t, a_t = problem
    _, _, tol = drawn[metric.name]
    index_order(monkeypatch)
    r, r_t = _value(metric, ctx, a), _value(metric, ctx_t, a_t)
    assert abs(r.value - r_t.value) > tol, (r.value, r_t.value, tol)


def test_exact_where_tied_pixels_are_inert():
    """Deletion with a black fill on maps whose tied pixels are all black: whichever of them goes first,
    the image is the same, so no draw is needed and the value is exactly invariant."""
    ctx, ctx_t = context(linear_model(), n=N), context(Transposed(linear_model()), n=N)
    black = float(functional.fill_value(ctx, "black"))
    x = ctx.x.clone()
    x[:, :, :8] = black  # the top half black
    a = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    a[:, :, :8] = 0.0  # ... and tied at zero; the rest continuous
    ctx.x, ctx_t.x = x, x.transpose(-1, -2).contiguous()
    metric = DeletionAUC(steps=16, baseline="black", tie_draws=DRAWS)
    r, r_t = _value(metric, ctx, a), _value(metric, ctx_t, a.transpose(-1, -2).contiguous())
    assert r.value == r_t.value and r.per_sample == r_t.per_sample
    assert r.extra["tie_draws"] == 0 and r.extra["tie_spread"] == 0.0 and r.extra["tie_fraction"] == 0.5
    assert r.extra["tied_cuts"] == 0.0


@pytest.mark.parametrize("metric", [DeletionAUC(steps=16), InsertionAUC(steps=16), MorfAccuracy(), RoadMorf(),
                                    RoadLerf()], ids=lambda m: m.name)
def test_without_ties_the_value_is_the_index_order_value(metric, monkeypatch):
    """No ties: every tie order is the same ranking, so the value equals the old index-order one exactly."""
    ctx = context(trained(), n=N)
    a = torch.randn(ctx.x.shape, generator=torch.Generator().manual_seed(1))
    new = _value(metric, ctx, a)
    assert new.extra["tie_draws"] == 0 and new.extra["tie_spread"] == 0.0 and new.extra["tie_fraction"] == 0.0
    index_order(monkeypatch)
    old = _value(metric, ctx, a)
    assert new.value == old.value and new.per_sample == old.per_sample and new.curve == old.curve


def test_draws_are_recomputed_only_at_ambiguous_cuts(problem, monkeypatch):
    """Cost: an image whose cuts all fall between distinct scores is forwarded once per step."""
    ctx, a, _, _ = problem
    a = a.clone()
    a[1:] = torch.randn(a[1:].shape, generator=torch.Generator().manual_seed(2))  # only image 0 is tied
    counted = []
    real = functional.forward
    monkeypatch.setattr(functional, "forward", lambda m, xs: counted.append(xs.shape[0]) or real(m, xs))
    res = _value(DeletionAUC(steps=16, tie_draws=4), ctx, a)
    assert res.extra["tie_draws"] == 4 and res.extra["tied_cuts"] == pytest.approx(15 / (17 * N))
    # clean forward + 15 inner steps of every image + the all-filled image + 3 draws x 15 cuts of image 0
    assert sum(counted) == N + 15 * N + 1 + 3 * 15


def test_rank_positions_random_ties():
    s = torch.tensor([[0.0, 2.0, 1.0, 2.0, 0.0, 0.0]])
    assert functional.rank_positions(s).tolist() == [[3, 0, 2, 1, 4, 5]]  # index order
    firsts = torch.zeros(6)
    for d in range(400):
        pos = functional.rank_positions(s, generator=functional.tie_generator(0, d))
        assert pos[0, 2] == 2 and sorted(pos[0, [1, 3]].tolist()) == [0, 1]  # distinct scores: fixed ranks
        firsts[pos[0].argmin()] += 1
        asc = functional.rank_positions(s, descending=False, generator=functional.tie_generator(0, d))
        assert sorted(asc[0, [0, 4, 5]].tolist()) == [0, 1, 2] and asc[0, 2] == 3
    assert firsts[[1, 3]].tolist() == pytest.approx([200, 200], abs=40)  # each tied pixel first half the time
    assert torch.equal(functional.rank_positions(s, generator=functional.tie_generator(5, 1)),
                       functional.rank_positions(s, generator=functional.tie_generator(5, 1)))


def test_ambiguous_cuts_and_tie_share():
    s = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0, 0.0]])
    # descending order 3,2,2,1,0,0: the cut after 2 pixels splits the 2s, after 5 splits the 0s
    assert functional.ambiguous_cuts(s, [0, 1, 2, 3, 4, 5, 6]).squeeze(1).tolist() == [
        False, False, True, False, False, True, False]
    assert functional.ambiguous_cuts(s, [1], descending=False).tolist() == [[True]]  # ascending: the 0s first
    inert = torch.tensor([[False, False, False, False, True, True]])
    assert functional.ambiguous_cuts(s, [2, 5], inert=inert).squeeze(1).tolist() == [True, False]
    assert functional.tie_share(s).tolist() == [4 / 6]


@pytest.mark.parametrize("metric", [Sparseness(), Complexity(), TopKMass(k=0.3)], ids=lambda m: m.name)
def test_sparsity_metrics_are_order_free(problem, metric):
    """Gini, entropy and top-k mass are functions of the multiset of scores (top-k: of the k largest
    values, whichever tied pixel holds the k-th): transposing changes nothing, exactly."""
    ctx, a, ctx_t, a_t = problem
    a = a.clone()
    a[0] += torch.arange(256.0).view(16, 16) / 256  # not constant: the all-constant map is the Gini/entropy edge
    assert metric.compute(ctx, a).per_sample == metric.compute(ctx_t, a.transpose(-1, -2)).per_sample


def test_topk_mass_splits_the_boundary_tie_group():
    """k = 3 of [5, 2, 2, 2, 0, ...]: the top 3 hold 5 + 2 + 2 whichever two of the tied 2s count."""
    ctx = context(trained(), n=1)
    a = torch.zeros(1, 1, 16, 16)
    a.view(-1)[[7, 30, 100, 200]] = torch.tensor([5.0, 2.0, 2.0, 2.0])
    assert TopKMass(k=3 / 256).compute(ctx, a).per_sample == pytest.approx([9 / 11])
