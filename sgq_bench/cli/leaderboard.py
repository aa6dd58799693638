"""``sgq-bench leaderboard publish DIR`` and ``leaderboard show [DATASET]``: one CSV per dataset."""

from __future__ import annotations

from pathlib import Path

import click

from sgq_bench.cli._options import WRITABLE_DIR

DEFAULT_DIR = Path("leaderboards")
_HELP = "leaderboard folder (default ./leaderboards)"


@click.group(short_help="publish a run to a leaderboard, or show one ranked")
def leaderboard() -> None:
    """Publish a run to <leaderboards>/<dataset>.csv, or show them ranked."""


@leaderboard.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--leaderboards", "--to", "folder", type=WRITABLE_DIR, default=DEFAULT_DIR, help=_HELP)
@click.option("--skip-undefined", is_flag=True,
              help="leave out results with no finite value over any seed (default: refuse to publish)")
def publish(run_dir: Path, folder: Path, skip_undefined: bool) -> None:
    """Validate and merge run DIR's rows (a row with the same key is replaced, never duplicated)."""
    from sgq_bench._lock import run_lock
    from sgq_bench.leaderboard import publish as publish_run
    from sgq_bench.results import require_results

    require_results(run_dir)  # a missing or empty run creates no leaderboard folder
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(folder, log=lambda s: click.echo(s, err=True)):  # two publishers wait for each other
        published = publish_run(run_dir, folder, skip_undefined=skip_undefined)
    for dataset, (added, replaced) in sorted(published.items()):
        click.echo(f"{folder / (dataset + '.csv')}: {added} row(s) added, {replaced} replaced")


@leaderboard.command()
@click.argument("dest", metavar="OUT", type=WRITABLE_DIR)
@click.option("--leaderboards", "--from", "folder", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_DIR, help=_HELP)
def site(dest: Path, folder: Path) -> None:
    """Write OUT/index.html: every leaderboard as a self-contained, sortable page (no server, no network)."""
    from sgq_bench.site import leaderboard_site

    click.echo(f"page: {leaderboard_site(folder, dest)}")


@leaderboard.command()
@click.argument("dataset", required=False)
@click.option("--sort", default="accuracy", show_default=True,
              help="metric column to rank by (its direction is recorded in the file)")
@click.option("--explainer", default=None, help="only rows of this explainer")
@click.option("--top", type=click.IntRange(min=1), default=None, help="show the best N rows (N >= 1)")
@click.option("--suite", default=None, help="only rows of this suite (e.g. mnist_seeds)")
@click.option("--leaderboards", "--to", "folder", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_DIR, help=_HELP)
def show(dataset: str | None, sort: str, explainer: str | None, top: int | None, suite: str | None,
         folder: Path) -> None:
    """Ranked table of one dataset's leaderboard (or of all of them)."""
    from sgq_bench.leaderboard import show as show_boards

    click.echo(show_boards(dataset, sort=sort, leaderboards=folder, explainer=explainer, top=top, suite=suite))
