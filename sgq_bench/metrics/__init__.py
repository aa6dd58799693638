"""Metrics: one family per module, each a ``sgq_bench._base.Metric`` registered via ``sgq_bench.metrics``
entry points in pyproject.toml (the harness's own metrics use the same mechanism as a plugin's)."""
