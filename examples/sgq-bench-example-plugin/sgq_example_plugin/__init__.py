"""An example sgq-bench plugin: one quantizer, one objective, one explainer and two metrics, one of them a
retraining metric (``roar_blur``) that schedules its own tasks.

Nothing here is imported by sgq-bench by name: the package's ``pyproject.toml`` declares entry points
in the ``sgq_bench.*`` groups, and sgq-bench imports a piece the first time a suite uses it.
"""

__version__ = "0.1.0"
