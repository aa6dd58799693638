"""``sgq-bench run``: run (or resume) a suite, cell by cell, then write its report."""

from __future__ import annotations

from pathlib import Path

import click

from sgq_bench.cli._options import (
    WRITABLE_DIR,
    checkpoint_dir_option,
    data_root_option,
    device_option,
    progress_option,
    suite_option,
    threads_option,
)
from sgq_bench.cli._values import parse_pairs


@click.command(short_help="run or resume a suite: train, score, report")
@suite_option(default=None, help="smoke, quick, full, ... or a path to a suite TOML file")
@click.option("--out", type=WRITABLE_DIR, default=None,
              help="run directory (default runs/<suite>); rerunning into it resumes")
@click.option("--only", default=None, metavar="FIELD=VALUE,...",
              help="restrict cells, e.g. dataset=mnist,method=sgt (fields: dataset, model, method, seed)")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="override a suite value for this run, e.g. bits=4/2 or datasets.mnist.eval_size=200; repeatable")
@data_root_option
@device_option
@checkpoint_dir_option
@threads_option()
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="cells run at once (default: the executor's choice; serial runs one)")
@click.option("--executor", type=click.Choice(["serial", "ray"]), default="serial", show_default=True,
              help="run cells in this process, or farm them out to a Ray cluster")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster address (with --executor ray; default: start a local one)")
@click.option("--plan", is_flag=True, help="print what would run (cells, cached models, estimated cost) and exit")
@click.option("--recalibrate", is_flag=True,
              help="with --plan: time the steps again, not from the cached calibration (overwrites it)")
@click.option("--report/--no-report", default=True, help="write summary tables and figures at the end")
@click.option("--figures/--no-figures", default=True, help="with the report, also draw the figures")
@click.option("--claims", default=None, metavar="NAME|FILE",
              help="with the report, also claims.csv/claims.md: each claim's verdict across seeds ('paper', or a "
                   "TOML file of [[claim]] tables)")
@progress_option
def run(suite: str, out: Path | None, only: str | None, assignments: tuple[str, ...], data_root: str | None,
        device: str, checkpoint_dir: Path | None, threads: int | None, workers: int | None, executor: str,
        address: str | None, plan: bool, recalibrate: bool, report: bool, figures: bool, claims: str | None,
        progress: bool) -> int:
    """Run (or resume) a suite: train or load each model, score it, write the report."""
    overrides = parse_pairs(assignments, "--set", "bits=4/2")
    if recalibrate and not plan:
        raise click.UsageError("--recalibrate retimes the plan's calibration; use it with --plan")
    if plan:
        from sgq_bench.orchestration.plan import format_plan

        click.echo(format_plan(suite, only=only, overrides=overrides, device=device, workers=workers,
                               data_root=data_root, checkpoint_dir=checkpoint_dir, out=out, threads=threads,
                               recalibrate=recalibrate))
        return 0
    from sgq_bench._batching import keep_freed_memory
    from sgq_bench.orchestration.calibration import MeasuredCosts
    from sgq_bench.orchestration.runner import run as run_suite

    keep_freed_memory()  # CPU passes reuse freed pages instead of faulting in new ones (2x faster)
    result = run_suite(suite, out=out, only=only, overrides=overrides, device=device, data_root=data_root,
                       checkpoint_dir=checkpoint_dir, progress=progress, report=report, figures=figures,
                       threads=threads, executor=executor, address=address, workers=workers, claims=claims,
                       estimates=MeasuredCosts(device, data_root, measure=False))  # the plan's, never timed now
    if result.summary_md:
        click.echo(result.summary_md)
    click.echo(f"\n{result.done} cell(s) run, {result.skipped} already done, {len(result.failed)} failed "
               f"in {result.wall_s:.1f} s -> {result.out}")
    if result.failed:
        click.echo(f"failed: {', '.join(result.failed)} (details in {result.out / 'errors.jsonl'}); rerun to retry",
                   err=True)
        return 1
    return 0
