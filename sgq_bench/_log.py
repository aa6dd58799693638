"""Progress for people reading a log: stdlib ``logging`` under the ``sgq_bench`` logger, on stderr.

Why: progress bars vanish when stderr is not a terminal (nohup, CI, a cluster job), and a user tailing the
log must tell a hang from progress. With no bar, the run logs one line per finished task (its time, what
is left) and the training one per epoch and per resume, at INFO. ``sgq-bench --log-level`` (or the host
application's own logging configuration) decides what shows; stdout keeps carrying results only.
"""

from __future__ import annotations

import logging

LOGGER = "sgq_bench"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT = "[%(asctime)s] %(message)s"


def logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def setup(level: str = "INFO") -> None:
    """One stderr handler with timestamps on the ``sgq_bench`` logger (idempotent: a second call only sets
    the level). An application that configured logging itself keeps its handlers: ours is added only when
    the logger has none and the root logger has none either."""
    log = logger()
    log.setLevel(level.upper())
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
