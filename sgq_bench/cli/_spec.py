"""From the model-picking flags (``_options.model_options``) to a validated ``TrainSpec``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sgq_bench.errors import UsageError

if TYPE_CHECKING:
    from sgq_bench.specs import TrainSpec


def train_spec(*, dataset: str, model: str | None, method: str, seed: int, suite: str, bits: str | None,
               params: Sequence[str], epochs: int | None, train_size: int | None, **_: Any) -> TrainSpec:
    """The TrainSpec the flags describe; a bad name or value is a one-line UsageError."""
    from sgq_bench import _registry
    from sgq_bench.cli._values import parse_pairs
    from sgq_bench.config.suite import load_suite, override_recipe, parse_bits
    from sgq_bench.specs import TrainSpec

    loaded = load_suite(suite)
    if dataset not in [d.name for d in loaded.datasets]:
        _registry.datasets.get(dataset)  # unknown dataset -> suggestions
        raise UsageError(f"suite {loaded.name!r} has no recipe for dataset {dataset!r}; pass --suite with one")
    plan = loaded.dataset(dataset)
    model = model or plan.model
    _registry.models.get(model)
    overrides = parse_pairs(params, "--param", "k=0.3")
    if bits is not None:
        w, a = parse_bits(bits, "command line", "--bits")
        overrides = {"w_bits": w, "a_bits": a, **overrides}
    resolved = loaded.method(method).with_params(overrides).resolved()
    recipe = override_recipe(plan.recipe, f"{loaded.path}: datasets.{dataset}", epochs=epochs, train_size=train_size)
    return TrainSpec(dataset, model, resolved, recipe, seed, plan.dataset_params)
