"""Each metric against its reference (Quantus 0.6 / Captum) on the same model, inputs, attributions and draws.

The reference calls are the adapters of ``sgq_bench.bench.references`` (shared with ``bench metrics``).
Attributions are continuous random maps, so rankings have no ties: Quantus breaks ties with numpy's
unstable argsort, we average seeded random tie orders (docs/ranking_ties.md), and the two agree exactly
only where there is nothing to break (tests/test_ties.py covers tied maps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _metric_helpers import context, untrained

from sgq_bench.bench import references as ref
from sgq_bench.metrics import functional as _common
from sgq_bench.metrics.deletion import DeletionAUC, MorfAccuracy
from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation, Infidelity
from sgq_bench.metrics.road import RoadLerf, RoadMorf, _constant_start, _linear_impute, linear_impute
from sgq_bench.metrics.sparsity import Complexity, Sparseness

N = 12


@pytest.fixture(scope="module")
def case():
    model = untrained()
    ctx = context(model, n=N)
    g = torch.Generator().manual_seed(5)
    attr = torch.randn(ctx.x.shape, generator=g)
    pred = _common.predicted(ctx)
    return model, ctx, attr, pred


def test_deletion_equals_quantus_pixel_flipping(case):
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = DeletionAUC(steps=16).compute(ctx, attr)  # 256 pixels: 16 per step
    assert res.extra["tie_draws"] == 0
    q = ref.pixel_flipping(model, ctx.x, pred, _common.pixel_scores(attr), features_in_step=16)
    np.testing.assert_allclose(res.curve["y"][1:], q.mean(0), rtol=1e-4, atol=1e-6)
    # per-sample AUC: ours adds the clean point and uses the fraction axis; rebuild it from Quantus's curve
    clean = _common.clean_logits(ctx).softmax(1).gather(1, pred.view(-1, 1)).numpy()
    full = np.concatenate([clean, q], axis=1)
    np.testing.assert_allclose(res.per_sample, np.trapezoid(full, dx=1 / 16, axis=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [RoadMorf, RoadLerf])
def test_road_equals_quantus_without_noise(case, cls):
    """Noise off on both sides (Quantus draws from numpy's global RNG, we from a seeded generator)."""
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = cls(noise=0.0).compute(ctx, attr)
    pct = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    q = ref.road(model, ctx.x, ctx.y, _common.pixel_scores(attr), pct, noise=0.0, descending=cls is RoadMorf)
    np.testing.assert_allclose(res.curve["y"], q, rtol=1e-5)  # curves keep 6 digits


def test_imputation_equals_quantus_solver():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 28, 28, generator=g)
    pos = _common.rank_positions(torch.rand(6, 784, generator=g))
    for k in (78, 392, 705):
        ours = linear_impute(x, (pos < k).view(6, 1, 28, 28), tol=1e-7, max_iter=3000)
        order = torch.argsort(pos, dim=1)
        for i in range(6):
            np.testing.assert_allclose(ours[i].numpy(), ref.linear_imputation(x[i], order[i, :k]), atol=2e-5)


def test_imputation_with_structured_holes_equals_quantus_solver():
    """Large holes (a digit-like ring known, the rest removed, as at LeRF's high fractions) are where the
    two-term start matters; the solution must still be the reference's."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 28, 28, generator=g) * 0.3 - 0.4
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    r = ((yy - 13.5) ** 2 + (xx - 13.5) ** 2).sqrt()
    known = torch.stack([(r - 8).abs() < 1.5, (r - 4).abs() < 1, xx == 3]).view(3, 1, 28, 28)
    ours = linear_impute(x, ~known, tol=1e-7, max_iter=3000)
    for i in range(3):
        order = (~known[i].flatten()).nonzero().flatten()
        np.testing.assert_allclose(ours[i].numpy(), ref.linear_imputation(x[i], order), atol=2e-5)


def test_constant_start_has_the_least_energy_error_of_its_multiples():
    """The start a*u minimises the energy-norm error over scalar multiples of u (here on random SPD
    systems, with A u given as -12 A u as the solver holds it)."""
    g = torch.Generator().manual_seed(2)
    n = 30
    q = torch.randn(4, n, n, generator=g, dtype=torch.float64)
    a_mat = q @ q.transpose(1, 2) + n * torch.eye(n, dtype=torch.float64)
    u, rhs = (torch.randn(4, n, generator=g, dtype=torch.float64) for _ in range(2))
    mv = lambda v: (a_mat @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    sol = torch.linalg.solve(a_mat, rhs.unsqueeze(-1)).squeeze(-1)
    energy = lambda v: torch.einsum("si,si->s", v - sol, mv(v - sol))  # noqa: E731
    a = _constant_start(u, -12 * mv(u), rhs, -1.0 / 12.0)
    best = energy(a * u)
    for t in torch.linspace(-3, 3, 121, dtype=torch.float64):
        assert (best <= energy((a + t * a.abs().clamp_min(1e-3)) * u) + 1e-9).all()


@pytest.mark.parametrize("cls,reference", [(Sparseness, ref.sparseness), (Complexity, ref.complexity)])
def test_sparsity_equals_quantus_and_does_not_mutate(case, cls, reference):
    model, ctx, attr, pred = case
    before = attr.clone()
    res = cls().compute(ctx, attr)
    assert torch.equal(attr, before)
    q = reference(model, ctx.x, pred, _common.pixel_scores(attr))
    np.testing.assert_allclose(res.per_sample, q, rtol=1e-4)


def test_faithfulness_correlation_equals_quantus_with_our_draws(case):
    model, ctx, attr, pred = case
    ctx.cache = {}
    fc = FaithfulnessCorrelation(nr_runs=20, subset_size=25)
    res = fc.compute(ctx, attr)
    idx, _ = ctx.cache[("faithfulness_correlation", 20, 25, "black", 0)]
    black = float(_common.fill_value(ctx, "black").flatten()[0])
    q = ref.faithfulness_correlation(model, ctx.x, pred, attr, idx, perturb_baseline=black)
    np.testing.assert_allclose(res.per_sample, q, rtol=1e-4, atol=1e-6)


def test_infidelity_equals_captum(case):
    model, ctx, attr, pred = case
    ctx.cache = {}
    res = Infidelity().compute(ctx, attr)
    noise, _ = ctx.cache[("infidelity", 10, 0.1, 0)]
    np.testing.assert_allclose(res.per_sample, ref.infidelity(model, ctx.x, pred, attr, noise), rtol=1e-4, atol=1e-7)


def test_references_leave_the_warning_filters_alone(case):
    model, ctx, attr, pred = case
    before = list(__import__("warnings").filters)
    ref.sparseness(model, ctx.x, pred, _common.pixel_scores(attr))
    assert list(__import__("warnings").filters) == before


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


def test_imputation_stopped_at_max_iter_keeps_its_iterate_not_the_removed_pixels():
    """A system that has not converged by max_iter must return its last iterate: returning the image
    unchanged would hand the model the very pixels ROAD removed."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 28, 28, generator=g)
    unknown = (_common.rank_positions(torch.rand(4, 784, generator=g)) < 700).view(4, 1, 28, 28)
    out = linear_impute(x, unknown, tol=1e-9, max_iter=2)
    changed = (out - x).abs()[unknown.expand_as(x)]
    assert (changed > 0).float().mean() > 0.99
    assert torch.equal(out[~unknown.expand_as(x)], x[~unknown.expand_as(x)])


def test_imputation_split_into_solves_changes_nothing(monkeypatch):
    """Each system's solution is independent of the others solved with it: solving 7 at a time (and
    in a different mix of fractions) gives bitwise the values of one solve of all of them."""
    import sgq_bench.metrics.road as road

    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 1, 28, 28, generator=g)
    k = torch.tensor([80, 400, 700]).repeat_interleave(16).view(-1, 1)
    unknown = (_common.rank_positions(torch.rand(48, 784, generator=g)) < k).view(48, 1, 28, 28)
    monkeypatch.setattr(road, "SOLVE_SYSTEMS", 1000)
    whole = road.linear_impute(x, unknown)
    monkeypatch.setattr(road, "SOLVE_SYSTEMS", 7)
    assert torch.equal(road.linear_impute(x, unknown), whole)


def test_imputation_threads_follow_idle_cpus_and_never_change_the_result(monkeypatch):
    """Two threads where two CPUs are idle, one where another process is running; bitwise the same."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 1, 28, 28, generator=g)
    unknown = (_common.rank_positions(torch.rand(64, 784, generator=g)) < 500).view(64, 1, 28, 28)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chosen, outs = {}, {}
        for busy in (0, 1, None):
            with _common.idle_threads(torch.device("cpu"), others=lambda busy=busy: busy) as n:
                chosen[busy] = n
                outs[busy] = _linear_impute(x, unknown, 1e-5, None, torch.float32)
        assert chosen == {0: 2, 1: 1, None: 1}
        assert torch.get_num_threads() == 2
        assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(saved)


def test_others_running_reads_the_kernels_count(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("1.44 1.72 1.87 4/116 21452\n")
    tasks = tmp_path / "task"
    for tid, state in ((10, "R"), (11, "S"), (12, "R")):  # ours: the reader and a spinning worker
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (pt_main (x) thread) {state} 1 2 3\n")
    assert _common.others_running(str(f), str(tasks), gap_s=0) == 2
    assert _common.others_running(str(tmp_path / "missing"), gap_s=0) is None


@pytest.mark.parametrize("h,w", [(7, 11), (11, 7), (1, 5), (5, 1), (3, 3)])
def test_imputation_solves_roads_system_on_any_shape(h, w):
    """The flat layout (one shared zero column per row) against ROAD's system written out densely: each
    removed pixel is the weighted mean (1/6 edge, 1/12 diagonal) of its in-image neighbours."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64)
    unknown = torch.rand(2, 1, h, w, generator=g) < 0.6
    out = _linear_impute(x, unknown, 1e-12, 5000, torch.float64)
    n = h * w
    for b in range(2):
        a_mat = torch.eye(n, dtype=torch.float64)
        for y in range(h):
            for xx in range(w):
                i = y * w + xx
                if not unknown[b, 0, y, xx]:
                    continue
                a_mat[i, i] = 0.0
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if (dy or dx) and 0 <= y + dy < h and 0 <= xx + dx < w:
                            wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                            a_mat[i, i] += wt
                            a_mat[i, (y + dy) * w + xx + dx] -= wt
        for c in range(2):
            rhs = torch.where(unknown[b, 0].flatten(), torch.zeros(()), x[b, c].flatten()).double()
            sol = torch.linalg.solve(a_mat, rhs).view(h, w)
            torch.testing.assert_close(out[b, c], sol, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cls", [RoadMorf, RoadLerf])
def test_road_values_do_not_depend_on_how_chunks_are_grouped_into_solves(case, cls, monkeypatch):
    """Chunks fix the noise stream; grouping them into one imputation call or one each must give
    bitwise the same values, tie draws included."""
    import sgq_bench.metrics.road as road

    model, ctx, attr, pred = case
    tied = (attr * 2).round()  # ties: ambiguous cuts, so a second tie order is drawn
    monkeypatch.setattr(road, "MAX_IMAGES", 9 * 3)  # chunks of 3 images x 9 fractions
    results = []
    for group in (1, 10**6):
        monkeypatch.setattr(road, "SOLVE_GROUP", group)
        ctx.cache = {}
        results.append(cls().compute(ctx, tied))
    assert results[0].extra["tie_draws"] == 2
    assert results[0].value == results[1].value
    assert results[0].per_sample == results[1].per_sample
