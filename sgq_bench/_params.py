"""Declared, validated plugin parameters: every default is visible and recorded with each result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sgq_bench.errors import UsageError, did_you_mean


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

    def range_text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else repr(self.low)
        hi = "inf" if self.high is None else repr(self.high)
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Coerce ``value`` to the default's type and check its range; raise a one-line UsageError."""
        kind = type(self.default)
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
            except (TypeError, ValueError):
                raise UsageError(
                    f"{owner}: parameter {name}={value!r} must be a {kind.__name__} "
                    f"(allowed: {self.range_text()})"
                ) from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{owner}: parameter {name}={value!r} is not allowed; expected {self.range_text()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bad = (
                (self.low is not None and (value < self.low or (self.low_open and value == self.low)))
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))
            )
            if bad:
                raise UsageError(
                    f"{owner}: parameter {name}={value!r} is outside the allowed range {self.range_text()}"
                )
        return value


def resolve_params(owner: str, spec: dict[str, Param], given: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with ``given``; unknown names and out-of-range values raise UsageError."""
    given = dict(given or {})
    for key in given:
        if key not in spec:
            raise UsageError(f"{owner}: unknown parameter {key!r}.{did_you_mean(key, spec)}")
    return {name: p.check(owner, name, given.get(name, p.default)) for name, p in spec.items()}
