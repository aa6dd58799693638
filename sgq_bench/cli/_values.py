"""The one grammar for values given on the command line: ``KEY=VALUE`` with the value read as TOML.

Why TOML: suites are TOML, so ``--set seeds=[0,1]``, ``--param k=0.3`` and ``--param abs=true`` mean
what they would mean in a suite file. Text that is not a TOML value stays a plain string, so
``bits=4/2`` and ``optimizer=sgd`` need no quotes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from sgq_bench.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_value(text: str) -> Any:
    """``'4'`` -> 4, ``'0.5'`` -> 0.5, ``'true'`` -> True, ``'[0, 1]'`` -> [0, 1]; other text stays a string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.lower() in ("true", "false"):  # TOML booleans are lower case; users type True too
        return text.lower() == "true"
    return text


def parse_pairs(items: Sequence[str] | None, flag: str, example: str) -> dict[str, Any]:
    """``['a=1', 'b=x']`` -> ``{'a': 1, 'b': 'x'}``; a malformed item is one usage error naming it."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE (e.g. {flag} {example})")
        out[key.strip()] = parse_value(value)
    return out


def parse_metric_params(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``['deletion_auc.steps=20', 'roar.fractions=0.1,0.5']`` -> ``{'deletion_auc': {'steps': 20}, ...}``.

    A comma-separated value becomes a list (``0.1,0.5`` is ``[0.1, 0.5]``, as is the TOML ``[0.1, 0.5]``).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        metric, dot, param = key.strip().partition(".")
        if not sep or not dot or not metric or not param:
            raise UsageError(f"--metric-param {item!r} is not METRIC.KEY=VALUE (e.g. deletion_auc.steps=20)")
        value = parse_value(text)
        if isinstance(value, str) and "," in value:
            value = [parse_value(v) for v in value.split(",")]
        out.setdefault(metric, {})[param] = value
    return out


def parse_names(text: str | None, flag: str) -> list[str] | None:
    """``'a, b'`` -> ``['a', 'b']``; None stays None (the default applies); an empty list is refused."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{flag} {text!r} names nothing; expected a comma-separated list")
    return names
