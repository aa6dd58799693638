"""``sgq-bench report DIR``: summary tables (and figures) of a run directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(short_help="summary tables and figures of a run directory")
@click.argument("run_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--figures/--no-figures", default=True, help="also draw the figures")
@click.option("--reference", default=None, metavar="METHOD",
              help="method the other methods are compared with (p-values, differences); default baseline")
@click.option("--claims", default=None, metavar="NAME|FILE",
              help="also write claims.csv/claims.md: the verdict of each claim across seeds ('paper': the seed "
                   "paper's claims, or a TOML file of [[claim]] tables)")
@click.option("--agree-with", "agree_with", default=None, metavar="FULL_DIR",
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="also write DIR/agreement.md/.json: Kendall's tau of DIR's ROAR/KAR ranking (a cheap learner) "
                   "against FULL_DIR's (the full learner), with split-half taus and per-cell differences")
@click.option("--html", is_flag=True,
              help="also write DIR/index.html: a self-contained page (sortable tables, claims, figures, provenance)")
def report(run_dir: Path, figures: bool, reference: str | None, claims: str | None, agree_with: Path | None,
           html: bool) -> None:
    """summary.csv, summary.md and figures/ of run directory DIR (holding results.jsonl)."""
    from sgq_bench._lock import run_lock
    from sgq_bench.report.tables import write_report
    from sgq_bench.results import require_results

    given = {"reference": reference} if reference is not None else {}
    if not run_dir.is_dir():
        click.echo(write_report(run_dir, figures=figures, claims=claims, **given))  # its own one-line error
        return
    require_results(run_dir)  # nothing to report: say so before taking the lock (which leaves a file)
    # one writer per run directory: a run that holds it for hours is named at once, not waited for
    with run_lock(run_dir, timeout_s=LOCK_WAIT_S, log=lambda s: click.echo(s, err=True)):
        click.echo(write_report(run_dir, figures=figures, claims=claims, **given))
        if agree_with is not None:
            from sgq_bench.report.agreement import agreement_report

            click.echo(agreement_report(run_dir, agree_with, out=run_dir))
        if html:
            from sgq_bench.site import run_site

            click.echo(f"page: {run_site(run_dir)}")


LOCK_WAIT_S = 10.0
