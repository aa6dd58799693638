"""Registry-parametrised contract tests: whatever is registered when the tests run must honour the API.

Why parametrise over the registries: a plugin (built-in or installed) gets these checks for free, and a
new quantizer is automatically crossed with every objective, which is what "methods are a grid" means.
The check functions are plain functions so tests/test_example_plugin.py can run them on a plugin it
installs mid-session.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sgq_bench import _registry
from sgq_bench._base import Bits, EvalContext, Metric, MetricResult, TrainContext
from sgq_bench.config.methods import Method
from sgq_bench.config.suite import Recipe
from sgq_bench.data import load_dataset, load_split
from sgq_bench.metrics.efficiency import declared_layers
from sgq_bench.specs import ExecContext, TrainSpec
from sgq_bench.train import load_or_train

DATA_PARAMS = {"train_n": 64, "test_n": 32}

# Metrics whose defaults are sized for real evaluations; the grid only needs finite numbers, so any of
# these parameters a metric declares is shrunk. Unknown keys are ignored (plugins may not have them).
# A value below a parameter's declared minimum is raised to that minimum.
SMALL = {"n_runs": 3, "runs": 3, "warmup": 1, "repeats": 3, "nr_samples": 2, "n_subsets": 8, "subsets": 8,
         "n_perturb": 4, "steps": 8, "batch_sizes": "1,4", "epochs": 1, "train_size": 32, "fractions": (0.5,)}


def small_params(cls: type) -> dict:
    """SMALL restricted to what ``cls`` declares, of the declared type, within the declared minimum."""
    out = {}
    for key, value in SMALL.items():
        spec = cls.params.get(key)
        if spec is None or type(spec.default) is not type(value):
            continue
        out[key] = max(value, spec.low) if spec.low is not None and isinstance(value, (int, float)) else value
    return out


def _usable(kind: str) -> list[str]:
    return _registry.registry(kind).usable()


def synthetic():
    dataset = load_dataset("synthetic", DATA_PARAMS)
    return dataset, load_split(dataset, True), load_split(dataset, False)


def check_trains_one_step(quantizer: str, objective: str) -> None:
    """One optimizer step of ``quantizer`` x ``objective`` on synthetic/test_cnn: finite loss, weights move."""
    dataset, train, _ = synthetic()
    q = _registry.quantizers.get(quantizer)()
    o = _registry.objectives.get(objective)()
    torch.manual_seed(0)
    model = q.prepare(_registry.models.get("test_cnn")(dataset)).train()
    opt = torch.optim.SGD(q.param_groups(model, 1e-4), lr=0.05)
    x, y = dataset.normalize(train.images[:16]), train.labels[:16]
    before = [p.detach().clone() for p in model.parameters()]
    out = o.compute(model, x, y, TrainContext(generator=torch.Generator().manual_seed(0)))
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), f"{quantizer} x {objective}: loss {out.loss}"
    assert out.logits.shape == (16, dataset.num_classes)
    assert model.training, f"objective {objective!r} must leave the model in train mode"
    assert all(v.dim() == 0 for v in out.parts.values())
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert moved, f"{quantizer} x {objective}: no parameter changed after one step"


def check_declared_bits(quantizer: str) -> None:
    """``declared_bits()`` is a Bits read from the params, and the layers ``prepare`` marks agree with it:
    every marked weight layer at the declared weight bits, and some layer at the declared activation bits
    (others may differ, e.g. pact's 8-bit boundaries)."""
    q = _registry.quantizers.get(quantizer)()
    declared = q.declared_bits()
    assert isinstance(declared, Bits), f"quantizer {quantizer!r}: declared_bits() returned {declared!r}"
    model = q.prepare(_registry.models.get("test_cnn")(load_dataset("synthetic", DATA_PARAMS)))
    marks = declared_layers(model).values()
    weights = {b.weight for b in marks if b.weight < 32}
    acts = {b.act for b in marks if b.act < 32}
    assert weights == ({declared.weight} - {32}), f"{quantizer!r}: declares {declared}, marks weights {weights}"
    assert declared.act == 32 or declared.act in acts, f"{quantizer!r}: declares {declared}, marks acts {acts}"
    assert declared.act < 32 or not acts, f"{quantizer!r}: declares float activations, marks {acts}"


def tiny_model(quantizer: str = "none") -> nn.Module:
    """A test_cnn trained for a few steps on synthetic data (cached), in eval mode."""
    recipe = Recipe(optimizer="adam", lr=0.003, epochs=1, batch_size=16)
    spec = TrainSpec("synthetic", "test_cnn", Method(f"grid_{quantizer}", quantizer, "cross_entropy"), recipe, 0,
                     dict(DATA_PARAMS))
    return load_or_train(spec, ExecContext(progress=False)).model.eval(), spec


def check_explainer(name: str, quantizer: str = "none") -> None:
    """Attributions shaped like the input, finite, and the model left in eval mode with unchanged weights."""
    dataset, _, test = synthetic()
    model, _ = tiny_model(quantizer)
    x = dataset.normalize(test.images[:8])
    with torch.no_grad():
        target = model(x).argmax(1)
    explainer = _registry.explainers.get(name)()
    explainer.setup(dataset)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = explainer.attribute(model, x, target)
    assert a.shape == x.shape, f"explainer {name!r}: shape {tuple(a.shape)} != input {tuple(x.shape)}"
    assert torch.isfinite(a).all(), f"explainer {name!r} returned non-finite values"
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), f"{name!r} changed the model"


def check_metric(name: str) -> None:
    """A declared direction and family, and finite values on test_cnn (with gradient attributions)."""
    cls = _registry.metrics.get(name)
    assert issubclass(cls, Metric)
    assert isinstance(cls.higher_is_better, bool), f"metric {name!r} must declare higher_is_better"
    assert cls.family, f"metric {name!r} must declare a family"
    metric = cls(**small_params(cls))
    dataset, _, test = synthetic()
    model, spec = tiny_model()
    x, y = dataset.normalize(test.images[:16]), test.labels[:16]
    attributions = None
    if cls.needs_attributions:
        xr = x.clone().requires_grad_(True)
        (attributions,) = torch.autograd.grad(model(xr).gather(1, y.view(-1, 1)).sum(), xr)
    quantizer, _ = spec.method.build()
    # the tiny model trains one epoch (no per-epoch log); a log shaped as training writes it stands in
    log = {"history": [{"epoch": e, "train_loss": 0.5, "seconds": 1.0, "test_accuracy": 0.5} for e in (1, 2)]}
    ctx = EvalContext(model=model, dataset=dataset, x=x, y=y, device=torch.device("cpu"), spec=spec,
                      quantizer=quantizer, seed=0, train_meta=log)
    if "gradient" in _registry.explainers:  # retraining metrics (ROAR) re-rank the data with it
        ctx.explainer = _registry.explainers.get("gradient")()
        ctx.explainer.setup(dataset)
    out = metric.compute(ctx, attributions)
    results = out if isinstance(out, list) else [out]
    assert results and all(isinstance(r, MetricResult) for r in results)
    for r in results:
        assert math.isfinite(r.value), f"metric {name!r} ({r.variant}) returned {r.value}"


@pytest.mark.parametrize("quantizer", _usable("quantizers"))
@pytest.mark.parametrize("objective", _usable("objectives"))
def test_every_quantizer_trains_with_every_objective(quantizer: str, objective: str) -> None:
    check_trains_one_step(quantizer, objective)


@pytest.mark.parametrize("quantizer", _usable("quantizers"))
def test_every_quantizer_declares_the_bits_its_layers_carry(quantizer: str) -> None:
    check_declared_bits(quantizer)


@pytest.mark.parametrize("name", _usable("explainers"))
def test_every_explainer_returns_finite_input_shaped_attributions(name: str) -> None:
    check_explainer(name)


@pytest.mark.parametrize("name", _usable("metrics"))
def test_every_metric_declares_a_direction_and_is_finite(name: str) -> None:
    check_metric(name)


def test_every_model_builds_for_every_dataset_shape() -> None:
    dataset, _, test = synthetic()
    for name in _usable("models"):
        model = _registry.models.get(name)(dataset).eval()
        assert isinstance(model, nn.Module)
        assert any(isinstance(m, nn.ReLU) for m in model.modules()), f"model {name!r}: ReLUs must be modules"
        assert hasattr(model, "explain_layer"), f"model {name!r} must name its explain_layer"
        with torch.no_grad():
            assert model(dataset.normalize(test.images[:2])).shape == (2, dataset.num_classes)
