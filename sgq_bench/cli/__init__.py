"""The ``sgq-bench`` command line: a thin layer over the Python API.

One module per command or command group; the list below is the whole command set (nothing is found
by scanning files). Shared options live in ``_options``, and ``_group.BenchGroup`` turns every failure
into one line and an exit code. Command modules import torch only inside their bodies, so ``--help``
and ``--version`` answer at once.
"""

from __future__ import annotations

import click

from sgq_bench.cli._group import BenchGroup
from sgq_bench.cli.bench import bench
from sgq_bench.cli.evaluate import evaluate
from sgq_bench.cli.leaderboard import leaderboard
from sgq_bench.cli.list import list_
from sgq_bench.cli.report import report
from sgq_bench.cli.run import run
from sgq_bench.cli.status import status
from sgq_bench.cli.train import train

COMMANDS = (list_, train, evaluate, run, status, report, leaderboard, bench)  # in the order of the data flow


def version() -> str:
    """The installed distribution's version, else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("sgq-bench")
    except metadata.PackageNotFoundError:
        from sgq_bench import __version__

        return __version__


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"sgq-bench {version()}")
        ctx.exit()


@click.group("sgq-bench", cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print the version and exit")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True,
              help="progress lines on stderr (a task finished, an epoch done, a training resumed) where no "
                   "progress bar shows them; WARNING silences them")
def main(log_level: str) -> None:
    """sgq-bench: do saliency-guided training and PACT quantization give efficient AND interpretable
    image classifiers? Train, evaluate, run suites, report and publish, with one protocol for every method.
    """
    from sgq_bench._log import setup

    setup(log_level)


for _command in COMMANDS:
    main.add_command(_command)

__all__ = ["main"]
