"""CLI: ``run`` (a suite, resumable) and ``report`` (tables and figures of a run directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sgq_bench.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["seeds=[0,1]", "bits=4/2"]`` -> ``{"seeds": [0, 1], "bits": "4/2"}``.

    Values are read as TOML (numbers, booleans, lists, quoted strings); anything that is not valid
    TOML stays a plain string, so ``bits=4/2`` and ``datasets.mnist.recipe.optimizer=sgd`` work unquoted.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r} is not KEY=VALUE (e.g. --set bits=4/2)")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from sgq_bench.runner import run

    result = run(
        args.suite, out=args.out, only=args.only, overrides=parse_set(args.set), device=args.device,
        data_root=args.data_root, checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        progress=not args.quiet, report=not args.no_report, figures=not args.no_figures, threads=args.threads,
    )
    if result.summary_md:
        print(result.summary_md)
    print(f"\n{result.done} cell(s) run, {result.skipped} already done, {len(result.failed)} failed "
          f"in {result.wall_s:.1f} s -> {result.out}")
    if result.failed:
        print(f"failed: {', '.join(result.failed)} (details in {result.out / 'errors.jsonl'}); rerun to retry",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sgq_bench.report.tables import write_report

    print(write_report(Path(args.dir), figures=not args.no_figures))
    return 0


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) a suite: train/load, score, report")
    p.add_argument("--suite", required=True, help="smoke, quick, full, or a path to a suite TOML file")
    p.add_argument("--out", default=None, help="run directory (default runs/<suite>); rerunning resumes it")
    p.add_argument("--only", default=None, metavar="FIELD=VALUE,...",
                   help="restrict cells, e.g. dataset=mnist,method=sgt (fields: dataset, model, method, seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite value for this run, e.g. bits=4/2 or datasets.mnist.eval_size=200")
    p.add_argument("--data-root", default=None, help="folder holding the data (else $SGQ_BENCH_DATA, cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--checkpoint-dir", default=None, help="default: the user cache dir ($SGQ_BENCH_CACHE)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for this run (default: torch's); 1 helps on a shared CPU")
    p.add_argument("--no-report", action="store_true", help="skip summary tables and figures at the end")
    p.add_argument("--no-figures", action="store_true", help="write the tables but not the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="summary.csv / summary.md / figures of a run directory")
    p.add_argument("dir", help="run directory (holding results.jsonl)")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=cmd_report)
