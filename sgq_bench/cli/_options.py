"""Options shared by several commands, declared once as decorators (same name, type, help everywhere).

Values are checked here, at parse time, before a command body runs: a bad ``--seed`` or an unwritable
``--out`` costs nothing, never the work already done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

F = TypeVar("F", bound=Callable[..., Any])

SEED_LIMIT = 2**31  # seeds go to numpy and torch generators, which take 32-bit seeds


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


class WritableDir(click.ParamType):
    """A folder we will write into: it exists as a writable folder, or can be created as one.

    Nothing is created here (a command refused later for another reason leaves no empty folder);
    the nearest existing ancestor must be a folder we may write into.
    """

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value).expanduser()
        probe = path
        try:
            while not probe.exists() and probe != probe.parent:
                if probe.is_symlink():
                    self._refuse(value, f"{probe} is a dangling symlink", param, ctx)
                probe = probe.parent
        except OSError as exc:
            self._refuse(value, f"{probe} cannot be inspected ({exc.strerror or exc})", param, ctx)
        if not probe.is_dir():
            self._refuse(value, "it is a file" if probe == path else f"{probe} is a file", param, ctx)
        if not os.access(probe, os.W_OK | os.X_OK):
            self._refuse(value, "it is read-only" if probe == path else f"{probe} is read-only", param, ctx)
        return path

    def _refuse(self, value: Any, why: str, param: click.Parameter | None, ctx: click.Context | None) -> None:
        self.fail(f"{str(value)!r} is not writable: {why}; expected a writable directory", param, ctx)


WRITABLE_DIR = WritableDir()


def device_option(fn: F) -> F:
    return click.option("--device", default="cpu", show_default=True,
                        help="cpu, cuda, cuda:N or auto (cuda when available)")(fn)


def data_root_option(fn: F) -> F:
    return click.option("--data-root", type=click.Path(file_okay=False), default=None,
                        help="folder holding the data (else $SGQ_BENCH_DATA, then the cache dir)")(fn)


def checkpoint_dir_option(fn: F) -> F:
    return click.option("--checkpoint-dir", type=WRITABLE_DIR, default=None,
                        help="where trained models are cached (default: the user cache dir, $SGQ_BENCH_CACHE)")(fn)


def threads_option(default: int | None = None, help: str = "torch intra-op threads (default: torch's); "
                   "1 is often faster on a shared CPU") -> Callable[[F], F]:
    return click.option("--threads", type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help=help)


def suite_option(default: str | None = "quick", help: str = "suite whose recipe is used (name or path)"
                 ) -> Callable[[F], F]:
    return click.option("--suite", default=default, required=default is None, show_default=default is not None,
                        help=help)


def seed_option(fn: F) -> F:
    return click.option("--seed", type=click.IntRange(0, SEED_LIMIT - 1), default=0, show_default=True,
                        help="training seed, 0 <= seed < 2**31")(fn)


def _progress_default(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
    """Bars only on a terminal: in a log file or a pipe they are noise. ``--quiet`` turns them off too."""
    if value is None:
        return False if ctx.meta.get("sgq_quiet") else sys.stderr.isatty()
    return value


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--quiet``: no bars and no progress lines (the log level goes to WARNING unless ``--log-level``
    was given), so a scripted run prints its summary and its warnings only."""
    if not value:
        return
    ctx.meta["sgq_quiet"] = True
    root = ctx.find_root()
    if root.get_parameter_source("log_level") is not ParameterSource.COMMANDLINE:
        from sgq_bench._log import logger

        logger().setLevel("WARNING")


def progress_option(fn: F) -> F:
    fn = click.option("--progress/--no-progress", default=None, callback=_progress_default,
                      help="progress bars on stderr (default: on when stderr is a terminal)")(fn)
    return click.option("--quiet", is_flag=True, is_eager=True, expose_value=False, callback=_quiet,
                        help="no progress bars and no progress lines (warnings and the summary still show)")(fn)


def model_options(method: str = "baseline") -> Callable[[F], F]:
    """The flags that pick one trained model (train, evaluate and the benches share them)."""
    return _compose(
        click.option("--dataset", default="mnist", show_default=True,
                     help="registered dataset (see `sgq-bench list datasets`)"),
        click.option("--model", default=None, help="registered model (default: the suite's model for the dataset)"),
        click.option("--method", default=method, show_default=True,
                     help="baseline, pact, sgt, sgt_pact or a suite-defined method"),
        seed_option,
        suite_option(),
        click.option("--bits", default=None, metavar="W/A", help="quantizer bits, e.g. 4/4, 4/2 or W4A2"),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="method parameter (e.g. --param k=0.3); repeatable"),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="override the recipe's epochs"),
        click.option("--train-size", type=click.IntRange(min=1), default=None,
                     help="train on a seeded subset of this many images"),
        data_root_option,
        device_option,
        checkpoint_dir_option,
    )
