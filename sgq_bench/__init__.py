"""sgq-bench: does saliency-guided training, PACT quantization, or both, give efficient AND
interpretable image classifiers? One protocol, every method, numbers with provenance.

This module is the one public API, for users and plugin authors alike::

    import sgq_bench as sb
    sb.run("quick"); df = sb.load_results("runs/quick")
    from sgq_bench import Param, Quantizer, register      # a plugin

Names are loaded on first use (PEP 562), so ``import sgq_bench`` and the CLI's ``--help`` stay free of
torch; the modules they come from are private (``_base``, ``_registry``, ...) or documented
subpackages (``config``, ``metrics.functional``, ``report``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # plugin base classes and types
    "Dataset": "sgq_bench._base", "EvalContext": "sgq_bench._base", "Explainer": "sgq_bench._base",
    "Metric": "sgq_bench._base", "MetricResult": "sgq_bench._base", "Objective": "sgq_bench._base",
    "ObjectiveOutput": "sgq_bench._base", "Plugin": "sgq_bench._base", "Quantizer": "sgq_bench._base",
    "Split": "sgq_bench._base", "TrainContext": "sgq_bench._base", "Param": "sgq_bench._params",
    # declared bits: a quantizer's (``declared_bits``) and each layer's (``mark_quantized``/``layer_bits``)
    "Bits": "sgq_bench._base", "mark_quantized": "sgq_bench._base", "layer_bits": "sgq_bench._base",
    # registries and registration
    # (one registry per kind: ``registry("metrics")``; not exported as ``metrics`` etc., names that
    # belong to the subpackages ``sgq_bench.metrics``, ``sgq_bench.models`` and ``sgq_bench.explainers``)
    "Registry": "sgq_bench._registry", "registry": "sgq_bench._registry",
    "register": "sgq_bench._plugins", "plugin_provenance": "sgq_bench._plugins",
    # helpers for plugin authors: batched, memory-safe forward passes
    "forward": "sgq_bench._batching", "max_batch": "sgq_bench._batching",
    # configuration, training, running, results
    "Method": "sgq_bench.config.methods", "builtin_methods": "sgq_bench.config.methods",
    "get_method": "sgq_bench.config.methods", "Recipe": "sgq_bench.config.suite", "Suite": "sgq_bench.config.suite",
    "load_suite": "sgq_bench.config.suite", "TrainSpec": "sgq_bench.specs", "accuracy": "sgq_bench.train",
    "load_or_train": "sgq_bench.train", "RunResult": "sgq_bench.orchestration.runner", "run": "sgq_bench.orchestration.runner",
    "load_results": "sgq_bench.results", "provenance": "sgq_bench._provenance",
    # the units of work and where they run (a retraining metric's tasks subclass Task)
    "Task": "sgq_bench.specs", "ExecContext": "sgq_bench.specs", "Cell": "sgq_bench.specs",
    "CostModel": "sgq_bench.specs",
    # errors
    "SgqBenchError": "sgq_bench.errors", "UsageError": "sgq_bench.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sgq_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
