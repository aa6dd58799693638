"""The plugin API in one import: base classes, result types and registration helpers.

A plugin package needs nothing else from sgq-bench::

    from sgq_bench.plugins import Param, Quantizer, register

Installed packages register through entry points (``[project.entry-points."sgq_bench.quantizers"]`` in
their ``pyproject.toml``; see docs/plugins.md); a notebook or a test calls :func:`register`. Both end
in the same typed, lazy registries, so the harness cannot tell a plugin from a built-in.
"""

from __future__ import annotations

from typing import Any

from sgq_bench._registry import KINDS, Entry, Registry, refresh, registry
from sgq_bench.api import (
    Dataset,
    EvalContext,
    Explainer,
    Metric,
    MetricResult,
    Objective,
    ObjectiveOutput,
    Plugin,
    Quantizer,
    Split,
    TrainContext,
)
from sgq_bench.params import Param


def register(kind: str, name: str | None = None, obj: Any = None, *, replace: bool = False) -> Any:
    """Register ``obj`` as a ``kind`` plugin (one of :data:`KINDS`), or return a decorator that does.

    Why a function as well as entry points: a notebook wants to try a new metric without packaging
    it. The object is type-checked now (a ``Metric`` subclass for ``metrics``, a callable for
    ``models``, ...) and ``name`` defaults to its ``name`` attribute. Taking an installed plugin's
    name needs ``replace=True``.

    Example::

        @register("metrics")
        class Sparsity90(Metric):
            name = "sparsity90"
            ...
    """
    return registry(kind).register(name, obj, replace=replace)


def available(kind: str) -> list[str]:
    """Names registered for ``kind``, broken ones included; nothing is imported."""
    return registry(kind).names()


def provenance(kind: str, name: str) -> dict[str, str]:
    """``{"name", "distribution", "version"}`` of a plugin, read from metadata without importing it.

    This is what result rows and leaderboards record, so a number names the release that made it.
    """
    entry = registry(kind).peek(name)
    if entry is None:
        registry(kind).get(name)  # raises the did-you-mean error
    return entry.provenance()


__all__ = [
    "KINDS",
    "Dataset",
    "Entry",
    "EvalContext",
    "Explainer",
    "Metric",
    "MetricResult",
    "Objective",
    "ObjectiveOutput",
    "Param",
    "Plugin",
    "Quantizer",
    "Registry",
    "Split",
    "TrainContext",
    "available",
    "provenance",
    "refresh",
    "register",
    "registry",
]
