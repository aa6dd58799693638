"""sgq-bench: does saliency-guided training, PACT quantization, or both, give efficient AND
interpretable image classifiers? One protocol, every method, numbers with provenance."""

from sgq_bench._registry import (
    Registry,
    datasets,
    explainers,
    metrics,
    models,
    objectives,
    quantizers,
    registry,
)
from sgq_bench.api import (
    Dataset,
    EvalContext,
    Explainer,
    Metric,
    MetricResult,
    Objective,
    ObjectiveOutput,
    Param,
    Plugin,
    Quantizer,
    Split,
    TrainContext,
)
from sgq_bench.config import Recipe, Suite, load_suite
from sgq_bench.errors import SgqBenchError, UsageError
from sgq_bench.methods import Method, builtin_methods, get_method
from sgq_bench.plugins import provenance, register
from sgq_bench.runner import RunResult, run
from sgq_bench.train import TrainSpec, accuracy, load_or_train

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "EvalContext",
    "Explainer",
    "Method",
    "Metric",
    "MetricResult",
    "Objective",
    "ObjectiveOutput",
    "Param",
    "Plugin",
    "Quantizer",
    "Recipe",
    "RunResult",
    "Registry",
    "SgqBenchError",
    "Split",
    "Suite",
    "TrainContext",
    "TrainSpec",
    "UsageError",
    "accuracy",
    "builtin_methods",
    "datasets",
    "explainers",
    "get_method",
    "load_or_train",
    "load_suite",
    "metrics",
    "models",
    "objectives",
    "provenance",
    "quantizers",
    "register",
    "registry",
    "run",
]
