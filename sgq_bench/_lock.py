"""One writer at a time: advisory ``flock`` locks on a run directory and on a training's checkpoint.

Why: two processes appending to one ``results.jsonl`` lost rows (1 of 32 in each of 3 trials), so a run
holds ``DIR/.lock`` for its whole length. Two processes training one spec into one checkpoint directory
(a ``run`` and a standalone ``train``, or two runs with different ``--out``) overwrite each other's
partial state and train the model twice, so a training holds ``<checkpoint>.lock`` while it trains. The
second comer waits for the first (then resumes: it skips finished cells, or loads the finished
checkpoint) or, with a timeout, refuses with one line naming the holder. A lock dies with its
process, so a killed run never leaves anything locked.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sgq_bench.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs proceed unlocked
    fcntl = None  # type: ignore[assignment]


@contextmanager
def run_lock(out: Path, *, timeout_s: float | None = None, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of run directory ``out`` (waiting up to ``timeout_s``; None waits as long as it takes)."""
    with file_lock(Path(out) / ".lock", timeout_s=timeout_s, log=log,
                   waiting=lambda holder: f"waiting for {out}: another sgq-bench run is writing it ({holder})",
                   busy=lambda holder: f"{out} is being written by another sgq-bench run ({holder}); "
                   "wait for it to finish or use another --out"):
        yield


def training_lock_path(checkpoint: Path) -> Path:
    """The lock file of a training whose finished model goes to ``checkpoint``."""
    return checkpoint.with_name(checkpoint.stem + ".lock")


@contextmanager
def training_lock(checkpoint: Path, label: str, *, timeout_s: float | None = None,
                  log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the training that writes ``checkpoint`` (and its partial state)."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(training_lock_path(checkpoint), timeout_s=timeout_s, log=log,
                   waiting=lambda holder: f"waiting for {label}: another process is training it ({holder})",
                   busy=lambda holder: f"{label} is being trained by another process ({holder}) into "
                   f"{checkpoint.parent}; wait for it to finish or use another --checkpoint-dir", remove=True):
        yield


@contextmanager
def file_lock(path: Path, *, waiting: Callable[[str], str], busy: Callable[[str], str],
              timeout_s: float | None = None, log: Callable[[str], None] | None = None,
              remove: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, writing our pid and host into it for whoever waits.

    ``waiting(holder)`` is logged once when the lock is taken; ``busy(holder)`` is the error after
    ``timeout_s``. With ``remove`` the file is deleted on release (a checkpoint folder keeps no trace of
    a training that failed); a waiter that then finds it locked a deleted file retries on the new one.
    Without ``fcntl`` (Windows) nothing is locked."""
    if fcntl is None:
        yield
        return
    waited = False
    start = time.monotonic()
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - held for the context's duration
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            holder = _holder(path)
            if timeout_s is not None and time.monotonic() - start >= timeout_s:
                raise UsageError(busy(holder)) from None
            if not waited and log is not None:
                log(waiting(holder))
            waited = True
            time.sleep(0.5)
            continue
        if _same_file(fh, path):
            break
        fh.close()  # we locked a file its holder deleted on release: lock the current one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        if remove:
            path.unlink(missing_ok=True)
        fh.close()  # releases the lock


def _same_file(fh: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"
