"""What the CLI tests share: invoking the click group and reading its one-line errors."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sgq_bench.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(res) -> str:
    """The single non-empty stderr line of a failed command (no traceback anywhere in the output)."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def logged_traceback(line: str) -> Path:
    """The log file a one-line error points at ('... (traceback in PATH)'); it must exist."""
    path = Path(line.split("traceback in ")[1][:-1])
    assert path.is_file(), line
    return path
