"""Command line: a thin layer over the Python API. Bad input exits 2 with one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sgq_bench.errors import SgqBenchError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the whole usage)
        sub = self.prog.removeprefix("sgq-bench").strip()
        raise UsageError(f"{sub}: {message}" if sub else message)


def parse_value(text: str) -> Any:
    """'4' -> 4, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; a malformed item is a usage error naming it."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_bits(text: str | None) -> dict[str, Any]:
    """'4/2' -> {'w_bits': 4, 'a_bits': 2}."""
    if text is None:
        return {}
    w, sep, a = text.partition("/")
    try:
        return {"w_bits": int(w), "a_bits": int(a if sep else w)}
    except ValueError:
        raise UsageError(f"--bits {text!r} is not W/A integers (e.g. 4/4 or 4/2)") from None


def build_parser() -> argparse.ArgumentParser:
    """The parser; every ``sgq_bench/cli_*.py`` module adds its subcommands via ``register``.

    Why modules: each command family (train, evaluate, run, report, leaderboard, deploy) lives in its
    own small module; ``register(sub, bench)`` gets the top-level subparsers and the ``bench`` ones.
    Each parser sets ``func`` (a handler taking the Namespace and returning an exit code).
    """
    parser = _Parser(prog="sgq-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True, metavar="COMMAND")
    bench_parser = sub.add_parser("bench", help="benchmarks (timings printed as ratios)")
    bench = bench_parser.add_subparsers(dest="bench", parser_class=_Parser, required=True, metavar="WHAT")
    package = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        if info.name.startswith("cli_"):
            importlib.import_module(f"sgq_bench.{info.name}").register(sub, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sgq-bench`` console script."""
    try:
        args = build_parser().parse_args(argv)
        from sgq_bench._batching import keep_freed_memory

        keep_freed_memory()  # CPU passes reuse freed pages instead of faulting in new ones (2x faster)
        return int(args.func(args) or 0)
    except SgqBenchError as exc:
        print(f"sgq-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sgq-bench: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
