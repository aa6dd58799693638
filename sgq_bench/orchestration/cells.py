"""A suite becomes cells (dataset x model x method x seed), optionally restricted by ``--only``.

Why cells: a cell is a pure function of its frozen spec (no shared mutable state), so a rerun, a resumed
run after a crash or Ctrl-C, or an executor farming work out to other machines all produce the same rows.
"""

from __future__ import annotations

from sgq_bench.config.suite import Suite
from sgq_bench.errors import UsageError, did_you_mean
from sgq_bench.specs import Cell, TrainSpec

ONLY_FIELDS = ("dataset", "model", "method", "seed")


def parse_only(text: str | None) -> dict[str, set[str]]:
    """``"dataset=mnist,method=sgt,method=pact"`` -> ``{"dataset": {"mnist"}, "method": {"sgt", "pact"}}``."""
    out: dict[str, set[str]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UsageError(f"--only {item!r} is not FIELD=VALUE (fields: {', '.join(ONLY_FIELDS)})")
        if key not in ONLY_FIELDS:
            raise UsageError(f"--only: unknown field {key!r}; allowed: {', '.join(ONLY_FIELDS)}")
        out.setdefault(key, set()).add(value)
    return out


def expand(suite: Suite, only: dict[str, set[str]] | None = None) -> list[Cell]:
    """The suite's cells in a stable order (dataset, seed, method), filtered by ``only``.

    The suite's ``[models.*]`` files come after the grid, one cell each (``Cell.weights``).

    Seed before method: a run stopped part-way (or several workers taking cells in this order) has
    whole seeds, each a complete comparison of the methods, rather than every seed of the first method.

    A value in ``only`` that matches nothing in the suite is an error with suggestions, so a typo
    does not silently run nothing.
    """
    only = only or {}
    choices = {
        "dataset": [d.name for d in suite.datasets],
        "model": [d.model for d in suite.datasets],
        "method": [m.name for m in suite.methods] + [x.method.name for x in suite.models],
        "seed": [str(s) for s in suite.seeds] + [str(x.seed) for x in suite.models],
    }
    for key, values in only.items():
        for v in values:
            if v not in choices[key]:
                raise UsageError(f"--only {key}={v}: the suite {suite.name!r} has no such {key}."
                                 f"{did_you_mean(v, choices[key])}")
    cells = []
    for entry in suite.datasets:
        params = suite.params_for(entry.name)
        for seed in suite.seeds:
            for method in suite.methods:
                fields_ = {"dataset": entry.name, "model": entry.model, "method": method.name, "seed": str(seed)}
                if any(fields_[k] not in v for k, v in only.items()):
                    continue
                spec = TrainSpec(entry.name, entry.model, method, entry.recipe, seed, dict(entry.dataset_params))
                cells.append(Cell(spec, suite.explainers, suite.metrics, entry.eval_size, params,
                                  suite.eval_seed, suite.name, suite.version))
    for ext in suite.models:  # [models.NAME]: files trained elsewhere, after the grid
        entry = suite.dataset(ext.dataset)
        fields_ = {"dataset": ext.dataset, "model": ext.model, "method": ext.method.name, "seed": str(ext.seed)}
        if any(fields_[k] not in v for k, v in only.items()):
            continue
        spec = TrainSpec(ext.dataset, ext.model, ext.method, entry.recipe, ext.seed, dict(entry.dataset_params))
        cells.append(Cell(spec, suite.explainers, suite.metrics, entry.eval_size, suite.params_for(ext.dataset),
                          suite.eval_seed, suite.name, suite.version, ext.weights, ext.sha256))
    return cells
