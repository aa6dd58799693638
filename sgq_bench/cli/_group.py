"""The top-level click group: the one place where every failure becomes one line and an exit code.

Why one place: a command body only raises. Usage errors (click's and ours) exit 2; other
``SgqBenchError`` subclasses exit with their own code; faults of the environment (``OSError``: disk
full, read-only folder, a file where a folder is expected; a torch ``RuntimeError``; an unreadable
pickle) exit 1 naming what failed (with the traceback logged when the message alone may not explain it);
Ctrl-C exits 130. Anything else is a bug in sgq-bench: one line,
with the full traceback saved to a log file under the cache dir, exit 1. No traceback reaches a user.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sgq_bench._signals import sigterm_as_interrupt
from sgq_bench.errors import SgqBenchError

PROG = "sgq-bench"
INTERRUPTED = 130


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM turned into it) inside a command; carried past click's own Abort handling."""


class BenchGroup(click.Group):
    """A group that lists its commands in the order they were added and reports errors in one line.

    ``main`` returns the exit code when called with ``standalone_mode=False`` (handy from Python and
    tests) and exits with it otherwise (the console script, ``python -m sgq_bench``, ``CliRunner``).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            with sigterm_as_interrupt():  # kill or a time limit ends in one line and exit 130, like Ctrl-C
                rv = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - the whole point: nothing escapes as a traceback
            code = report_error(exc)
        if standalone_mode:
            sys.exit(code)
        return code


def _say(message: str) -> None:
    """One line on stderr, prefixed with the program name; a multi-line message keeps its first line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    click.echo(f"{PROG}: {lines[0] if lines else 'error'}", err=True)


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr and return the exit code it maps to."""
    if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # click >= 8.2
        exc.show()  # ``sgq-bench`` alone: the help text is the answer
        return exc.exit_code
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path.removeprefix(PROG).strip() if exc.ctx else ""
        _say(f"error: {where + ': ' if where else ''}{exc.format_message()}")
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        _say(f"error: {exc.format_message()}")
        return exc.exit_code
    if isinstance(exc, SgqBenchError):
        _say(f"error: {exc}")
        return exc.exit_code
    if isinstance(exc, (_Interrupted, KeyboardInterrupt, click.Abort)):
        _say("interrupted; finished work is saved, rerun to resume")
        return INTERRUPTED
    if isinstance(exc, OSError):
        _say(f"error: {describe_os_error(exc)}")
        return 1
    if isinstance(exc, pickle.UnpicklingError):
        path = _path_in_traceback(exc)
        _say(f"error: cannot load {path or 'a file'}: not a readable pickle ({_first_sentence(exc)}); "
             f"traceback in {save_traceback(exc)}")
        return 1
    if isinstance(exc, RuntimeError):  # torch's errors (a CUDA fault, out of memory, a bad tensor file)
        _say(f"error: {type(exc).__name__}: {_first_line(exc)} (traceback in {save_traceback(exc)})")
        return 1
    _say(f"internal error: {type(exc).__name__}: {_first_line(exc)} (traceback in {save_traceback(exc)})")
    return 1


def describe_os_error(exc: OSError) -> str:
    """'cannot write /x/y: No space left on device' style text naming the path when there is one."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else f"{type(exc).__name__}: {reason}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _first_sentence(exc: BaseException) -> str:
    """The first sentence only: torch appends advice to load with ``weights_only=False``, never ours."""
    return _first_line(exc).split(". ", 1)[0].rstrip(".")


def _frames(exc: BaseException) -> list[Any]:
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _path_in_traceback(exc: BaseException) -> str | None:
    """The file being loaded when ``exc`` was raised (innermost frame holding a path-like argument)."""
    for frame in reversed(_frames(exc)):
        for name in ("f", "path", "filename", "file"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)):
                return str(value)
    return None


def log_dir() -> Path:
    """``<cache dir>/logs``; the system temp folder when the cache dir cannot be used."""
    try:
        from sgq_bench.data import cache_dir

        return cache_dir() / "logs"
    except Exception:  # noqa: BLE001 - the error being reported may be exactly this import failing
        return Path(tempfile.gettempdir()) / "sgq-bench-logs"


def save_traceback(exc: BaseException) -> str:
    """Write the full traceback (and the command line) to a new log file; return its path."""
    text = f"{PROG} {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(type(exc), exc,
                                                                                          exc.__traceback__))
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return "(no log: neither the cache dir nor the temp dir is writable)"
