"""Hand-computed cases for the pieces without a reference, and the shared ranking helpers."""

from __future__ import annotations

import math

import pytest
import torch
from _metric_helpers import context, smoke_spec, trained, untrained

from sgq_bench import _registry
from sgq_bench.errors import UsageError
from sgq_bench.metrics import functional as _common
from sgq_bench.metrics.deletion import DeletionAUC, InsertionAUC, gaussian_blur
from sgq_bench.metrics.roar import Kar, Roar, masked_split
from sgq_bench.metrics.sparsity import TopKMass, entropy, gini


def test_k_of_is_exact_integer_arithmetic():
    assert _common.k_of(0.29, 100) == 29  # float 100 * 0.29 = 28.999...
    assert _common.k_of(0.1, 784) == 78 and _common.k_of(0.3, 784) == 235


def test_rank_positions_break_ties_by_index():
    pos = _common.rank_positions(torch.tensor([[0.0, 2.0, 1.0, 2.0]]))
    assert pos.tolist() == [[3, 0, 2, 1]]
    asc = _common.rank_positions(torch.tensor([[0.0, 2.0, 1.0, 2.0]]), descending=False)
    assert asc.tolist() == [[0, 2, 1, 3]]


def test_gini_entropy_topk_on_known_maps():
    n = 100
    one_hot = torch.zeros(1, n)
    one_hot[0, 7] = 1.0
    uniform = torch.ones(1, n)
    assert float(gini(one_hot, eps=0.0)) == pytest.approx(1 - 1 / n)
    assert float(gini(uniform, eps=0.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(entropy(uniform)) == pytest.approx(math.log(n))
    assert float(entropy(one_hot)) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(float(entropy(torch.zeros(1, n))))
    ctx = context(untrained(), n=2)
    a = torch.zeros(2, 1, 16, 16)
    a[:, 0, 0, :5] = 1.0  # 5 hot pixels of 256; top 10% = 25 pixels hold all the mass
    a[1, 0, 5, 5] = 4.0
    assert TopKMass().compute(ctx, a).per_sample == pytest.approx([1.0, 1.0])
    assert TopKMass(k=1 / 256).compute(ctx, a).per_sample == pytest.approx([0.2, 4 / 9])


def test_fractions_param_parsing_and_errors():
    assert Roar(fractions="0.1,0.5").fractions == (0.1, 0.5)
    with pytest.raises(UsageError, match="fractions"):
        Roar(fractions=(0.5, 0.1))
    with pytest.raises(UsageError, match="fractions"):
        Kar(fractions=1.5)
    with pytest.raises(UsageError, match="steps"):
        DeletionAUC(steps=0)


def test_deletion_and_insertion_on_a_constant_model():
    """A model whose output ignores the input: every curve is flat at its softmax, AUC equals it."""

    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(x.shape[0], -1)

    ctx = context(Const(), n=4)
    p = math.exp(2) / (math.exp(2) + 3)
    a = torch.rand(ctx.x.shape, generator=torch.Generator().manual_seed(0))
    for metric in (DeletionAUC(steps=8), InsertionAUC(steps=8)):
        res = metric.compute(ctx, a)
        assert len(res.curve["x"]) == 9 and res.curve["x"][0] == 0 and res.curve["x"][-1] == 1
        assert res.value == pytest.approx(p, rel=1e-6)


def test_gaussian_blur_preserves_constant_interior():
    x = torch.ones(1, 1, 32, 32)
    out = gaussian_blur(x, 11, 5.0)
    assert float(out[0, 0, 16, 16]) == pytest.approx(1.0, abs=1e-6)  # kernel sums to 1
    assert float(out[0, 0, 0, 0]) < 0.6  # zero padding at the border, as RISE


def test_masked_split_replaces_with_train_mean():
    spec = smoke_spec()
    ds = _registry.datasets.get("synthetic")(**spec.dataset_params)
    from sgq_bench.data import load_split

    split = load_split(ds, False)
    from sgq_bench._base import Split

    small = Split(split.images[:3], split.labels[:3])
    pos = _common.rank_positions(torch.arange(256.0).repeat(3, 1))  # pixel 255 ranks first
    roar = masked_split(ds, small, pos, 0.5, keep=False)
    x = ds.normalize(roar.images.clone())  # normalize works in place on float input
    assert torch.allclose(x.flatten(1)[:, 128:], torch.zeros(3, 128), atol=1e-6)  # top half at the mean
    assert torch.equal(roar.images.flatten(1)[:, :128], small.images.float().flatten(1)[:, :128])
    kar = masked_split(ds, small, pos, 0.5, keep=True)
    assert torch.allclose(ds.normalize(kar.images.clone()).flatten(1)[:, :128], torch.zeros(3, 128), atol=1e-6)


def test_roar_and_kar_run_end_to_end_through_the_training_loop():
    from sgq_bench.explainers import Gradient

    model = trained()
    ctx = context(model, n=16)
    ctx.spec = smoke_spec()
    ctx.explainer = Gradient()
    for cls in (Roar, Kar):
        res = cls(fractions=(0.5,), epochs=1, train_size=128).compute(ctx, None)
        assert res.curve["x"] == [0.5] and 0.0 <= res.curve["y"][0] <= 1.0
        assert {"epochs": 1, "train_size": 128}.items() <= res.extra["resolved_params"].items()
        # each stored retrain says where it ran (its maps came from the model instance trained there)
        import json

        from sgq_bench.metrics.roar import task_dir

        for key in res.extra["retrain_keys"]:
            rec = json.loads((task_dir(getattr(ctx, "checkpoint_dir", None)) / "retrain" / f"{key}.json").read_text())
            assert rec["provenance"]["cpu_model"] and rec["provenance"]["torch_version"] and rec["created"]


def test_to_list_matches_six_significant_digit_formatting():
    import math

    import numpy as np

    from sgq_bench.metrics.functional import to_list

    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 12, 20000),
                           [0.0, 1000.0, 1e-7, 0.5, -2.5e10, float("nan"), float("inf")]])
    ours = to_list(torch.from_numpy(vals))
    ref = [float(f"{v:.6g}") for v in vals.tolist()]
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(ours, ref))


def test_undefined_values_are_nan_with_their_reason():
    """A constant map has no correlation and an all-zero map no Gini index, entropy or top-k share: the
    value is NaN with the reason recorded, never a silent blank; partly undefined means the rest is averaged."""
    from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation
    from sgq_bench.metrics.sparsity import Complexity, Sparseness

    ctx = context(trained(), n=4)
    const = torch.full(ctx.x.shape, 0.3)
    res = FaithfulnessCorrelation(nr_runs=5).compute(ctx, const)
    assert math.isnan(res.value) and res.extra["n_undefined"] == 4
    assert res.extra["undefined_reason"] == "attribution sums constant over the subsets (constant map)"
    zero = torch.zeros(ctx.x.shape)
    for metric in (Sparseness(), Complexity(), TopKMass()):
        res = metric.compute(ctx, zero)
        assert math.isnan(res.value) and res.extra["undefined_reason"] == "all-zero attribution map", metric.name
    partly = torch.rand(ctx.x.shape, generator=torch.Generator().manual_seed(0))
    partly[0] = 0.0
    res = Sparseness().compute(ctx, partly)
    assert res.extra == {"n_undefined": 1, "undefined_reason": "all-zero attribution map"}
    assert res.value == pytest.approx(sum(res.per_sample[1:]) / 3)
    assert "undefined_reason" not in Sparseness().compute(ctx, partly[1:2].expand_as(partly).clone()).extra


def test_constant_model_leaves_correlation_undefined_with_its_reason():
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(x.shape[0], -1)

    from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation

    ctx = context(Const(), n=3)
    res = FaithfulnessCorrelation(nr_runs=5).compute(ctx, torch.rand(ctx.x.shape))
    assert math.isnan(res.value) and res.extra["undefined_reason"] == "model output unchanged by every subset"
