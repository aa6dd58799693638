"""``sgq-bench report DIR``: summary tables (and figures) of a run directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(short_help="summary tables and figures of a run directory")
@click.argument("run_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--figures/--no-figures", default=True, help="also draw the figures")
def report(run_dir: Path, figures: bool) -> None:
    """summary.csv, summary.md and figures/ of run directory DIR (holding results.jsonl)."""
    from sgq_bench.report.tables import write_report

    click.echo(write_report(run_dir, figures=figures))
