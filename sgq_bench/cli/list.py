"""``sgq-bench list [KIND]``: what is registered; ``list --params NAME``: a plugin's declared parameters."""

from __future__ import annotations

from typing import Any

import click

from sgq_bench.errors import UsageError, did_you_mean

METHODS = "methods"
SUITES = "suites"


def _kinds() -> list[str]:
    from sgq_bench._registry import KINDS

    return [*KINDS, METHODS, SUITES]


def show_suites() -> None:
    """Every suite a name finds, with where it lives and its description (``--show NAME`` prints one)."""
    from sgq_bench.config.suite import available_suites

    click.echo(f"{SUITES}:")
    for name, path in available_suites():
        click.echo(f"  {name:<24} {_description(path)}  [{path}]")


def _description(path: Any) -> str:
    import re

    m = re.search(r'^description\s*=\s*"(.*)"\s*$', path.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else ""


def show_suite_file(name: str) -> None:
    """The suite file a name finds, verbatim, so a user can copy it (``--out``-free: it only prints)."""
    from sgq_bench.config.suite import load_suite, suite_path

    path = suite_path(name)
    load_suite(str(path))  # a name that finds no valid suite fails in one line, with suggestions
    click.echo(f"# {path}\n" + path.read_text(encoding="utf-8").rstrip())


def allowed_text(param: Any) -> str:
    """What a Param accepts, in words a user can type."""
    if param.choices is not None:
        return param.range_text()
    if isinstance(param.default, bool):
        return "true or false"
    if isinstance(param.default, (int, float)) or param.low is not None or param.high is not None:
        return param.range_text()
    return "any"


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in [head, *rows])


def params_table(declared: dict[str, Any], values: dict[str, Any] | None = None, *origin: str) -> list[tuple]:
    """Rows (name, default, allowed, [origin,] doc); ``values`` overrides the declared defaults."""
    values = values or {}
    return [(name, repr(values.get(name, p.default)), allowed_text(p), *origin, p.doc) for name, p in declared.items()]


def show_params(name: str, kind: str | None) -> None:
    """Print the Param table of every plugin (or method) called ``name``."""
    from sgq_bench import _registry
    from sgq_bench.config.methods import builtin_methods

    methods = builtin_methods()
    kinds = [k for k in ([kind] if kind else _kinds()) if k != SUITES]  # a suite has no declared params
    found = [k for k in kinds if (name in methods if k == METHODS else name in _registry.registry(k))]
    if not found:
        every = set(methods) if METHODS in kinds else set()
        for k in kinds:
            if k != METHODS:
                every |= set(_registry.registry(k).names())
        where = f" among {kind}" if kind else ""
        raise UsageError(f"no plugin or method named {name!r}{where}.{did_you_mean(name, every)}")
    blocks = []
    for k in found:
        if k == METHODS:
            m = methods[name]
            q, o = _registry.quantizers.get(m.quantizer), _registry.objectives.get(m.objective)
            head = ("name", "value", "allowed", "declared by", "doc")
            rows = (params_table(q.params, m.quantizer_params, f"quantizer {m.quantizer}")
                    + params_table(o.params, m.objective_params, f"objective {m.objective}"))
            title = f"methods/{name}: quantizer {m.quantizer} + objective {m.objective}. {m.description}".strip()
        else:
            entry = _registry.registry(k).entry(name)
            head = ("name", "default", "allowed", "doc")
            rows = params_table(getattr(entry.target, "params", {}) or {})
            version = f" {entry.version}" if entry.version else ""
            title = f"{k}/{name} ({entry.reference}; {entry.distribution}{version})"
        blocks.append(title + "\n" + (_table(rows, head) if rows else "  (no declared parameters)"))
    click.echo("\n\n".join(blocks))


def show_registered(kind: str | None) -> None:
    from sgq_bench import _registry
    from sgq_bench._registry import describe
    from sgq_bench.config.methods import builtin_methods

    for k in [kind] if kind else _kinds():
        if k == SUITES:
            show_suites()
            continue
        click.echo(f"{k}:")
        if k == METHODS:
            for name, m in builtin_methods().items():
                click.echo(f"  {name:<24} {m.quantizer} + {m.objective}: {m.description}")
            continue
        rows = _registry.registry(k).items(warn=False)  # the BROKEN row is the report
        if not rows:
            click.echo("  (none registered)")
        for name, obj, entry in rows:
            text = f"BROKEN: {entry.error}" if obj is None else describe(obj)
            click.echo(f"  {name:<24} {text}  [{entry.distribution}{' ' + entry.version if entry.version else ''}]")


@click.command("list", short_help="what is registered; --params NAME: a plugin's parameters")
@click.argument("kind", required=False)
@click.option("--params", "params_of", metavar="NAME",
              help="print the declared parameters of plugin or method NAME (name, default, allowed, doc)")
@click.option("--show", "suite_name", metavar="SUITE",
              help="print suite SUITE's file (a shipped suite to copy and edit), with its path")
def list_(kind: str | None, params_of: str | None, suite_name: str | None) -> None:
    """What is registered, with one-line descriptions.

    KIND is one of quantizers, objectives, models, datasets, explainers, metrics, methods or suites.
    """
    if kind is not None and kind not in _kinds():
        raise UsageError(f"unknown kind {kind!r}.{did_you_mean(kind, _kinds())}")
    if suite_name is not None:
        show_suite_file(suite_name)
    elif params_of is not None:
        show_params(params_of, kind)
    else:
        show_registered(kind)
