"""Error types the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SgqBenchError(Exception):
    """Base class: an error the user should read as one line, not a traceback; ``exit_code`` is the CLI's
    (2 for bad input, 1 otherwise), given per subclass as ``class X(SgqBenchError, exit_code=2)``."""

    exit_code = 1

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class UsageError(SgqBenchError, exit_code=2):
    """Bad input (a name, a value, a path): the CLI exits with code 2."""


class DataNotFoundError(SgqBenchError, exit_code=2):
    """A dataset could not be found locally nor downloaded."""


class DataError(SgqBenchError, exit_code=2):
    """A data file is present but unusable (truncated, wrong dtype or shape, labels out of range)."""


class PluginError(SgqBenchError, exit_code=1):
    """A plugin broke its contract (named in the message)."""


class CheckpointError(SgqBenchError, exit_code=1):
    """A checkpoint file is unreadable or fails its checksum: its weights are never used."""


class AttributionError(SgqBenchError, exit_code=1):
    """An explainer returned a map no metric may score (non-finite values, or not shaped like its input)."""


class TrainingDiverged(SgqBenchError, exit_code=1):
    """The training loss became NaN or infinite."""


def warn(message: str) -> None:
    """A one-line warning on stderr (stdout carries results only)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ' Did you mean ...?' hint listing the closest names, or the full list if none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return " Available: " + ", ".join(choices) + "." if choices else " Nothing is registered."
