"""Declared, validated plugin parameters: every default is visible and recorded with each result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sgq_bench.errors import UsageError, did_you_mean

SEED_LIMIT = 2**31  # seeds are integers in [0, SEED_LIMIT): every RNG we seed (torch, numpy) takes them
INT_LIMIT = 2**63  # any other integer parameter must fit a signed 64-bit tensor index or count


@dataclass(frozen=True)
class Param:
    """One parameter of a plugin: its default, type, allowed range or choices, and a one-line doc."""

    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    choices: tuple | None = None
    # added after checkpoints were published: at its default it is left out of checkpoint keys (see
    # ``Plugin.key_config``), so every earlier model keeps its key and every run directory its fingerprint
    added_late: bool = False

    def range_text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else repr(self.low)
        hi = "inf" if self.high is None else repr(self.high)
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Coerce ``value`` to the default's type and check its range; raise a one-line UsageError."""
        kind, given = type(self.default), value
        if self.default is not None and kind is not type(value):
            try:
                if kind is bool:
                    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                        value = value.lower() in ("true", "1")
                    elif not isinstance(value, bool):
                        raise ValueError
                elif kind is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
                else:
                    value = kind(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
                raise UsageError(
                    f"{owner}: parameter {name}={_shown(value)} must be a {kind.__name__} "
                    f"(allowed: {self.range_text()})"
                ) from None
        problem = _non_finite(value)
        if problem:
            raise UsageError(f"{owner}: parameter {name}={_shown(given)} {problem} (allowed: {self.range_text()})")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{owner}: parameter {name}={value!r} is not allowed; expected {self.range_text()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bad = (
                (self.low is not None and (value < self.low or (self.low_open and value == self.low)))
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))
            )
            if bad:
                raise UsageError(
                    f"{owner}: parameter {name}={_shown(value)} is outside the allowed range {self.range_text()}"
                )
        if _oversized(value):
            raise UsageError(f"{owner}: parameter {name}={_shown(given)} is too large (beyond 64-bit integers; "
                             f"allowed: {self.range_text()})")
        return value


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened when huge (a 400-digit integer must not flood the one-line message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 12]}... ({len(text)} characters)"


def _items(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _non_finite(value: Any) -> str | None:
    """Why a number (or a sequence of them) cannot be a parameter value: NaN or inf, else None.

    Why here: every NaN comparison is false, so a range check alone lets ``k = nan`` through, and
    ``lr = inf`` passes ``> 0``.
    """
    if any(isinstance(v, float) and not math.isfinite(v) for v in _items(value)):
        return "is not a finite number"
    return None


def _oversized(value: Any) -> bool:
    """An integer (or one in a sequence) beyond signed 64 bits: it would overflow in torch or numpy."""
    return any(isinstance(v, int) and not isinstance(v, bool) and not -INT_LIMIT <= v < INT_LIMIT
               for v in _items(value))


def seed_param(default: int, doc: str) -> Param:
    """A seed parameter: an integer in [0, 2**31), the range every seeded generator accepts."""
    return Param(default, doc, low=0, high=SEED_LIMIT - 1)


def resolve_params(owner: str, spec: dict[str, Param], given: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with ``given``; unknown names and out-of-range values raise UsageError."""
    given = dict(given or {})
    for key in given:
        if key not in spec:
            raise UsageError(f"{owner}: unknown parameter {key!r}.{did_you_mean(key, spec)}")
    return {name: p.check(owner, name, given.get(name, p.default)) for name, p in spec.items()}
