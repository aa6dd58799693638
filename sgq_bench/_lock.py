"""One writer per run directory: an advisory ``flock`` on ``DIR/.lock``, held for the whole run.

Why: two processes appending to one ``results.jsonl`` lost rows (1 of 32 in each of 3 trials). The
second ``run`` on the same ``--out`` waits for the first (it then resumes and skips finished cells) or,
with a timeout, refuses with one line naming the holder. The lock dies with its process, so a killed
run never leaves the directory locked.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sgq_bench.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs proceed unlocked
    fcntl = None  # type: ignore[assignment]


@contextmanager
def run_lock(out: Path, *, timeout_s: float | None = None, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of ``out`` (waiting up to ``timeout_s``; None waits as long as it takes)."""
    if fcntl is None:
        yield
        return
    path = Path(out) / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the context's duration
    try:
        waited = False
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if timeout_s is not None and time.monotonic() - start >= timeout_s:
                    raise UsageError(f"{out} is being written by another sgq-bench run ({holder}); "
                                     "wait for it to finish or use another --out") from None
                if not waited and log is not None:
                    log(f"waiting for {out}: another sgq-bench run is writing it ({holder})")
                waited = True
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"
