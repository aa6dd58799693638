"""Configuration: suites (TOML files), recipes and methods, loaded into frozen dataclasses and validated."""

from sgq_bench.config.methods import Method, builtin_methods, get_method
from sgq_bench.config.suite import Recipe, Suite, load_suite

__all__ = ["Method", "Recipe", "Suite", "builtin_methods", "get_method", "load_suite"]
