"""``sgq-bench status``: where a suite's run stands, cell by cell, while it runs or after it stopped."""

from __future__ import annotations

from pathlib import Path

import click

from sgq_bench.cli._options import checkpoint_dir_option, data_root_option, suite_option
from sgq_bench.cli._values import parse_pairs


@click.command(short_help="each cell's state and training progress in a run directory")
@suite_option(default=None, help="the suite the run directory holds (name or TOML path)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run directory (default runs/<suite>)")
@click.option("--only", default=None, metavar="FIELD=VALUE,...", help="restrict cells, as in run")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="the run's --set values, if any")
@data_root_option
@click.option("--device", default=None, help="the run's --device (default: the run directory's last one); it "
              "decides precision = auto, hence which checkpoints are the run's")
@checkpoint_dir_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per cell instead of the table")
def status(suite: str, out: Path | None, only: str | None, assignments: tuple[str, ...], data_root: str | None,
           device: str | None, checkpoint_dir: Path | None, as_json: bool) -> None:
    """Each cell of the suite: done, trained (scores pending), training (epoch, test accuracy, time left at
    its own pace, as of its last saved state), failed (why) or waiting. Writes nothing; safe mid-run."""
    from sgq_bench.orchestration.status import format_status, suite_status

    overrides = parse_pairs(assignments, "--set", "bits=4/2")
    frame = suite_status(suite, out=out, only=only, overrides=overrides, device=device, data_root=data_root,
                         checkpoint_dir=checkpoint_dir)
    if as_json:
        click.echo(frame.to_json(orient="records", lines=True).rstrip("\n"))
    else:
        click.echo(format_status(frame))
