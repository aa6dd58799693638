"""CLI: ``leaderboard publish DIR [--to]`` and ``leaderboard show [DATASET] [--sort METRIC]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sgq_bench.cli import _Parser


def cmd_publish(args: argparse.Namespace) -> int:
    from sgq_bench.leaderboard import publish

    for dataset, (added, replaced) in sorted(publish(Path(args.dir), Path(args.to)).items()):
        print(f"{Path(args.to) / (dataset + '.csv')}: {added} row(s) added, {replaced} replaced")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sgq_bench.leaderboard import show

    print(show(args.dataset, sort=args.sort, to=Path(args.to), explainer=args.explainer, top=args.top))
    return 0


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    lb = sub.add_parser("leaderboard", help="publish a run to leaderboards/<dataset>.csv, or show them ranked")
    lsub = lb.add_subparsers(dest="leaderboard", parser_class=_Parser, required=True, metavar="ACTION")

    p = lsub.add_parser("publish", help="validate and merge a run's rows (same key replaced, never duplicated)")
    p.add_argument("dir", help="run directory (holding results.jsonl)")
    p.add_argument("--to", default="leaderboards", help="leaderboard folder (default leaderboards/)")
    p.set_defaults(func=cmd_publish)

    p = lsub.add_parser("show", help="ranked table of one dataset's leaderboard (or all)")
    p.add_argument("dataset", nargs="?", default=None)
    p.add_argument("--sort", default="accuracy", help="metric column to rank by (direction from the metric)")
    p.add_argument("--explainer", default=None, help="only rows of this explainer")
    p.add_argument("--top", type=int, default=None, help="show the best N rows")
    p.add_argument("--to", default="leaderboards", help="leaderboard folder (default leaderboards/)")
    p.set_defaults(func=cmd_show)
