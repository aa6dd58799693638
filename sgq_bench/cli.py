"""Command line: a thin layer over the Python API. Bad input exits 2 with one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sgq_bench.errors import SgqBenchError, UsageError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the whole usage)
        raise UsageError(f"{self.prog}: {message}")


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


def _add_common_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="registered dataset (see `sgq-bench list datasets`)")
    p.add_argument("--model", default=None, help="registered model; default: the suite's model for the dataset")
    p.add_argument("--method", default="baseline", help="baseline, pact, sgt, sgt_pact or a suite-defined one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suite", default="quick", help="suite whose recipe is used (name or path)")
    p.add_argument("--bits", default=None, help="quantizer bits W/A, e.g. 4/4 or 4/2")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (e.g. k=0.3)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--data-root", default=None, help="folder holding the data (else $SGQ_BENCH_DATA, cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--checkpoint-dir", default=None, help="default: the user cache dir")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sgq-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    p = sub.add_parser("list", help="what is registered, with one-line descriptions")
    p.add_argument("kind", nargs="?", default=None, help="quantizers, objectives, models, datasets, explainers, metrics, methods")

    p = sub.add_parser("train", help="train (or load from cache) one model and print its test accuracy")
    _add_common_train_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")

    p = sub.add_parser("bench", help="benchmarks (timings printed as ratios)")
    p.add_argument("what", choices=["train"], help="train: per-step cost of each method vs baseline")
    _add_common_train_args(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=3)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sgq-bench`` console script."""
    try:
        args = build_parser().parse_args(argv)
        from sgq_bench import commands  # noqa: F401  (registers the command functions)

        return COMMANDS[args.command](args)
    except SgqBenchError as exc:
        print(f"sgq-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sgq-bench: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
