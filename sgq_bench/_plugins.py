"""Registration helpers behind ``sgq_bench.register`` and the plugin provenance recorded in rows.

A plugin package imports everything it needs from the public API::

    from sgq_bench import Param, Quantizer, register

Installed packages register through entry points (``[project.entry-points."sgq_bench.quantizers"]`` in
their ``pyproject.toml``; see docs/plugins.md); a notebook or a test calls :func:`register`. Both end
in the same typed, lazy registries, so the harness cannot tell a plugin from a built-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sgq_bench._registry import KINDS, registry


def register(kind: str, name: str | None = None, obj: Any = None, *, replace: bool = False) -> Any:
    """Register ``obj`` as a ``kind`` plugin (one of :data:`KINDS`), or return a decorator that does.

    Why a function as well as entry points: a notebook wants to try a new metric without packaging
    it. The object is type-checked now (a ``Metric`` subclass for ``metrics``, a callable for
    ``models``, ...) and ``name`` defaults to its ``name`` attribute. Taking an installed plugin's
    name needs ``replace=True``.

    Example::

        @register("metrics")
        class Sparsity90(Metric):
            name = "sparsity90"
            ...
    """
    return registry(kind).register(name, obj, replace=replace)


def available(kind: str) -> list[str]:
    """Names registered for ``kind``, broken ones included; nothing is imported."""
    return registry(kind).names()


def plugin_provenance(kind: str, name: str) -> dict[str, str]:
    """``{"name", "distribution", "version"}`` of a plugin, read from metadata without importing it.

    This is what result rows and leaderboards record, so a number names the release that made it.
    """
    entry = registry(kind).peek(name)
    if entry is None:
        registry(kind).get(name)  # raises the did-you-mean error
    return entry.provenance()


# Which registry each field of a result row names a plugin of.
ROLES = {"dataset": "datasets", "model": "models", "quantizer": "quantizers", "objective": "objectives",
         "explainer": "explainers", "metric": "metrics"}
HARNESS = "sgq-bench"  # the distribution whose pieces are built in (not listed as plugins)


def row_plugins(row: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Role -> provenance of every plugin a result row names (``row["quantizer"]`` etc.).

    Evaluation stores this in each row (``row["plugins"]``) when the numbers are made; reading it back
    from the registry is the fallback for rows written before that, and is correct as long as the same
    plugin versions are still installed.
    """
    recorded = row.get("plugins")
    if isinstance(recorded, Mapping) and recorded:
        return {role: dict(p) for role, p in recorded.items() if isinstance(p, Mapping)}
    out = {}
    for role, kind in ROLES.items():
        name = row.get(role)
        entry = registry(kind).peek(str(name)) if name not in (None, "", "-") else None
        if entry is not None:
            out[role] = entry.provenance()
    return out


BUILTIN_ONLY = "built-in"  # the plugins column of a row every piece of which ships with sgq-bench


def plugins_label(provenances: Iterable[Mapping[str, str]]) -> str:
    """``"dist==version; ..."`` of the distributions other than sgq-bench among ``provenances`` (sorted).

    This is the leaderboard's ``plugins`` column. A row made only by built-in pieces says
    :data:`BUILTIN_ONLY` rather than nothing, so that an empty cell can only mean "not recorded".
    """
    seen, any_known = set(), False
    for p in provenances:
        dist = str(p.get("distribution") or "")
        any_known = any_known or bool(dist)
        if dist and dist != HARNESS:
            seen.add(f"{dist}=={p['version']}" if p.get("version") else dist)
    return "; ".join(sorted(seen)) if seen else (BUILTIN_ONLY if any_known else "")


def report_broken(log: Any = None) -> list[str]:
    """Import every registered plugin once and return (and ``log``) one line per unusable one.

    Why a run calls this: a user who installed a plugin should learn it is broken even when the
    suite does not use it, once, by name, without the run failing.
    """
    lines = []
    for kind in KINDS:
        reg = registry(kind)
        fresh = [n for n in reg.names() if n not in reg._reported]
        for name, obj, entry in reg.items(warn=False):
            if obj is None and name in fresh:
                lines.append(f"warning: {kind} plugin {name!r} from distribution {entry.distribution!r} is "
                             f"unusable and skipped: {entry.error}")
    if log is not None:
        for line in lines:
            log(line)
    return lines


