"""Atomic file writes, appends and content hashing: nothing already computed is lost to a crash or Ctrl-C.

Files are created with mode ``0o666`` and the process umask applied by the kernel (0644 under the usual
umask 022), never ``mkstemp``'s 0600: results, summaries and checkpoints live in caches and run folders
that other users and jobs read. A write goes to ``.<name>.<8 chars>.tmp`` next to its target and is
renamed over it; a killed writer leaves such a temp file behind, which :func:`remove_stale_temps` deletes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

# The random part of a temp name: 8 characters of mkstemp's alphabet, so leftovers of earlier
# versions (which used mkstemp with the same prefix and suffix) match the same pattern.
_TEMP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): a cache key made of content, not names."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def temp_name(target: str) -> str:
    """A fresh temp-file name for ``target`` (``.<target>.<8 random chars>.tmp``)."""
    return f".{target}.{''.join(secrets.choice(_TEMP_ALPHABET) for _ in range(8))}.tmp"


def _create_temp(directory: Path, target: str) -> tuple[int, Path]:
    """Create a new temp file exclusively, mode 0o666 minus the umask (what ``open`` gives any file)."""
    for _ in range(100):
        tmp = directory / temp_name(target)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(directory))  # pragma: no cover


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a file creation durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


FAULT_ENV = "SGQ_BENCH_FAULT_AFTER_BYTES"
_written = [0]


def _fault_allowance(n: int) -> int:
    """Fault injection for the crash tests: with ``$SGQ_BENCH_FAULT_AFTER_BYTES=N`` set, the process kills
    itself (SIGKILL) once N bytes have been written through this module; returns how many of the next
    ``n`` bytes may be written first. Unset (always, outside tests): all of them."""
    budget = os.environ.get(FAULT_ENV)
    if not budget:
        return n
    allowed = max(0, min(n, int(budget) - _written[0]))
    _written[0] += allowed
    return allowed


def _die() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            size = fh.tell()
            allowed = _fault_allowance(size)
            if allowed < size:  # a kill part-way through this write: the temp file holds what got out
                fh.truncate(allowed)
                fh.flush()
                _die()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself: never writes through it
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """The error with the file we were writing as its filename (a full disk names our target, not a temp)."""
    named = OSError(exc.errno, exc.strerror or str(exc), str(path))
    if exc.errno == errno.ENOSPC:
        named.strerror = f"{exc.strerror} (free some space on {path.parent}, then rerun: what was written is intact)"
    return named


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks: the identity of a model file (``evaluate --weights``,
    a suite's ``[models.*]``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    _atomic(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` made atomic (torch is imported here only: config and the CLI stay free of it).

    The object is serialised in memory first and written by :func:`atomic_write_bytes`: torch's own
    writer turns a full disk into "enforce fail ... unexpected pos", which names neither the errno nor
    the file; our write gives ENOSPC with the checkpoint's name. (Checkpoints here are a few MB.)"""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per row: O(new rows), whole lines in one ``write``, then fsync.

    For logs (a run directory's ``cells.jsonl`` and ``errors.jsonl``), whose readers skip a torn line with
    a warning; result rows go to the per-cell store (``sgq_bench._store``), which is atomic per cell.

    The file is opened with ``O_APPEND``, so every write lands at the current end even with several
    writers, and the rows of one call go out in a single ``write`` of complete lines (a regular file
    takes it whole unless the disk fills). Earlier bytes are never rewritten.

    A file that does not end with a newline holds the partial last line of a writer that was killed
    mid-write. We terminate that fragment with a newline before our rows instead of cutting it off:
    truncating could race with another appender and destroy its complete row, whereas the fragment,
    now a line of its own, is invalid JSON that readers skip (with a warning), and every complete row,
    before or after it, stays readable.
    """
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode()
    if not data:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise OSError(errno.ELOOP, "refusing to append through a symbolic link", str(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            data = b"\n" + data
        allowed = _fault_allowance(len(data))
        view = memoryview(data)[:allowed]
        while view:  # a short write happens only on a full disk or a signal; then finish the rest
            view = view[os.write(fd, view):]
        os.fsync(fd)
        if allowed < len(data):
            _die()
    except OSError as exc:
        raise _naming(exc, path) from None
    finally:
        os.close(fd)
    if size == 0:
        _fsync_dir(path.parent)


def read_jsonl_objects(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The JSON-object lines of a log-like JSONL file and the (line number, reason) of every other
    non-empty line ([] for a missing file). Why lenient: a writer killed mid-line leaves a torn last line,
    which the callers skip (with a warning, or counted), never a reason to refuse the whole file."""
    if not Path(path).is_file():
        return [], []
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            bad.append((i, str(exc)))
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append((i, "not an object"))
    return rows, bad


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1)


def remove_stale_temps(directory: Path, older_than_s: float = 3600.0, *, recursive: bool = False) -> list[Path]:
    """Delete our own temp files (``.<name>.<8 chars>.tmp``) last modified over ``older_than_s`` ago.

    Why: a write killed between creating its temp file and renaming it (SIGKILL, power loss) leaves the
    temp file behind forever. Only regular files matching our temp pattern are touched, never links,
    folders or anything else; the age limit spares a write that another process is doing right now.
    Returns the removed paths; a missing folder removes nothing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cutoff = time.time() - older_than_s
    candidates = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = []
    for p in sorted(candidates):
        if not _TEMP_NAME.match(p.name) or p.is_symlink():
            continue
        try:
            st = p.lstat()
            if not p.is_file() or st.st_mtime > cutoff:
                continue
            p.unlink()
        except FileNotFoundError:  # another process cleaned it up (or renamed it) first
            continue
        removed.append(p)
    return removed
