"""The one signal path: how SIGINT/SIGTERM turn into a gentle stop, for the CLI, the runner, training and
the Ray driver alike.

Two behaviours, both here:
- ``sigterm_as_interrupt()``: SIGTERM (``kill``, a scheduler's time limit) raises ``KeyboardInterrupt`` like
  Ctrl-C, so ``finally`` blocks record the run as interrupted and the CLI ends in one line, exit 130.
- ``StopFlag``: inside a training loop a signal only sets a flag; the loop saves its state at its next
  step and then raises. Why: an exception inside backward or the optimizer step would leave half-updated
  weights. A second signal interrupts at once. A stop file (a distributed run's way to stop its workers'
  trainings without a racy Ray cancel) requests the same stop.
Handlers can only be installed on the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the duration of the block, SIGTERM raises ``KeyboardInterrupt`` (the previous handler comes back)."""
    if not _main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Put back the SIGTERM handler after the block: ``ray.init`` replaces it by a crash logger that exits at
    once, which would skip the gentle stop."""
    old = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class StopFlag:
    """SIGINT/SIGTERM set ``requested`` (a second one raises); so does the existence of ``stop_file``.

    Used as a context manager around a training loop, which polls ``requested`` at each step boundary.
    """

    def __init__(self, stop_file: str | os.PathLike[str] | None = None) -> None:
        self.raised = False
        self._stop_file = None if stop_file is None else os.fspath(stop_file)
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.raised or (self._stop_file is not None and os.path.exists(self._stop_file))

    def __enter__(self) -> StopFlag:
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.raised:
            _raise_interrupt(signum, frame)
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
