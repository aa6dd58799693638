"""The results store under faults: a SIGKILL at any byte of any write, concurrent writers, a symlinked
results file, an empty one. After each fault the next run heals the directory by itself; the final rows
equal an uninterrupted run's, with no duplicate key and no hole."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sgq_bench import _store
from sgq_bench.results import result_key

ONLY = "method=baseline,method=pact"
SPEC_FREE = ("efficiency",)  # timings are measurements, not functions of the spec


def _proc(out: Path, ck: Path, *extra: str, env: dict[str, str] | None = None,
          timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sgq_bench", "run", "--suite", "smoke", "--only", ONLY, "--out", str(out),
           "--checkpoint-dir", str(ck), "--quiet", "--no-report", "--threads", "1", *extra]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout,
                          capture_output=True, text=True)


def _run(out: Path, ck: Path, *extra: str, env: dict[str, str] | None = None, timeout: int = 300) -> int:
    return _proc(out, ck, *extra, env=env, timeout=timeout).returncode


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def _values(rows: list[dict]) -> dict:
    return {result_key(r): r["value"] for r in rows if r["family"] not in SPEC_FREE}


def _written_bytes(*dirs: Path) -> int:
    return sum(p.stat().st_size for d in dirs for p in d.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    assert _run(root / "run", root / "ck") == 0
    return root


def test_sigkill_at_20_points_of_the_writes_heals_to_the_uninterrupted_rows(reference, tmp_path):
    """Fault injection (``$SGQ_BENCH_FAULT_AFTER_BYTES``): the run kills itself after N bytes of its writes,
    for 20 values of N from a few bytes to the size of a whole run; the same directory is rerun after each
    kill, and a last plain run finishes it. No file is edited by hand at any point."""
    total = _written_bytes(reference / "run", reference / "ck")
    points = sorted({int(50 * (total / 50) ** (i / 19)) for i in range(20)})
    out, ck = tmp_path / "run", tmp_path / "ck"
    codes = [_run(out, ck, env={"SGQ_BENCH_FAULT_AFTER_BYTES": str(n)}) for n in points]
    assert codes.count(-signal.SIGKILL) >= 10, codes  # most points did land inside a write
    assert set(codes) <= {0, -signal.SIGKILL}, codes
    assert _run(out, ck) == 0
    _assert_equal_to_reference(out, reference)
    assert not list(out.rglob(".*.tmp")) or all(time.time() - p.stat().st_mtime < 3600 for p in out.rglob(".*.tmp"))


def test_run_and_evaluate_on_one_directory_at_once_lose_and_duplicate_nothing(reference, tmp_path):
    """`evaluate --out` waits for the lock a `run` holds on the same directory; both land, once each."""

    out, ck = tmp_path / "run", tmp_path / "ck"
    shutil.copytree(reference / "ck", ck)  # trained already: both writers only score
    cmd = [sys.executable, "-m", "sgq_bench", "run", "--suite", "smoke", "--only", ONLY, "--out", str(out),
           "--checkpoint-dir", str(ck), "--quiet", "--no-report", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ev = subprocess.run([sys.executable, "-m", "sgq_bench", "evaluate", "--suite", "smoke", "--dataset",
                             "synthetic", "--method", "baseline", "--checkpoint-dir", str(ck), "--out", str(out),
                             "--explainers", "gradient", "--metrics", "accuracy,complexity"],
                            env=env, capture_output=True, text=True, timeout=300)
        assert runner.wait(timeout=300) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
    assert ev.returncode == 0, ev.stderr
    rows = _rows(out)
    keys = [result_key(r) for r in rows]
    assert len(keys) == len(set(keys))
    stored = sum(len(cell_rows) for _, cell_rows in _store.stored_cells(out).values())
    assert stored == len(rows)


def test_the_store_never_writes_through_a_symlink(reference, tmp_path):
    """results.jsonl pointing at a file elsewhere: the run replaces the link by its own file; the other file
    is untouched."""
    out = tmp_path / "run"
    shutil.copytree(reference / "run", out)
    elsewhere = tmp_path / "someone_elses.jsonl"
    elsewhere.write_text("precious\n")
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").symlink_to(elsewhere)
    assert _run(out, reference / "ck") == 0
    assert elsewhere.read_text() == "precious\n"
    assert not (out / "results.jsonl").is_symlink() and _rows(out) == _rows(reference / "run")


def test_an_empty_results_file_is_one_line_not_a_crash(tmp_path):
    from click.testing import CliRunner

    from sgq_bench.cli import main

    (tmp_path / "results.jsonl").write_text("")
    for args in (["report", str(tmp_path)], ["leaderboard", "publish", str(tmp_path), "--to", str(tmp_path / "lb")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [x for x in (res.stderr or res.output).splitlines() if x.strip()]
        assert len(lines) == 1 and "no result rows" in lines[0], lines


def test_an_empty_directory_is_one_line_and_nothing_is_created(tmp_path):
    """An empty run directory for `report` and `leaderboard publish`, and a directory given as `--suite`:
    one line, exit 2, and no lock file or leaderboard folder left behind."""
    from click.testing import CliRunner

    from sgq_bench.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {("report", str(empty)): "no results.jsonl here",
             ("leaderboard", "publish", str(empty), "--to", str(empty / "lb")): "no results.jsonl here",
             ("run", "--suite", str(empty), "--out", str(tmp_path / "out")): "is a directory; a suite is a name"}
    for args, said in cases.items():
        res = CliRunner().invoke(main, list(args))
        assert res.exit_code == 2, (args, res.output)
        lines = [x for x in (res.stderr or res.output).splitlines() if x.strip()]
        assert len(lines) == 1 and said in lines[0], (args, lines)
    assert list(empty.iterdir()) == [] and not (tmp_path / "out").exists()


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path, monkeypatch):
    """ENOSPC while a cell is stored: the error names the cell file (not a temp file) and says what to do;
    the store and results.jsonl keep what they held."""
    import errno

    from _results import row

    from sgq_bench import _io
    from sgq_bench.cli._group import describe_os_error
    from sgq_bench.results import store_cell

    store_cell(tmp_path, "a", "a", "k1", [row("baseline", 0, "accuracy", 0.9)])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(OSError) as err:
        store_cell(tmp_path, "b", "b", "k2", [row("pact", 0, "accuracy", 0.8)])
    text = describe_os_error(err.value)
    assert str(tmp_path / "cells" / "b.jsonl") in text and "free some space" in text
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@contextlib.contextmanager
def _tmpfs(path: Path, size: int) -> Iterator[Callable[[int], None]]:
    """A real small tmpfs at ``path`` (needs root or CAP_SYS_ADMIN, else the test skips, saying so);
    yields a function that resizes it (``free space``)."""
    path.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: the real full-disk test needs one")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {got.stderr.strip()}")

    def resize(new: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(path)], check=True, capture_output=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _assert_equal_to_reference(out: Path, reference: Path) -> None:
    rows, ref_rows = _rows(out), _rows(reference / "run")
    keys = [result_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "a duplicate key"
    assert set(keys) == {result_key(r) for r in ref_rows}, "a missing or extra row"
    got, want = _values(rows), _values(ref_rows)
    assert all(got[k] == pytest.approx(want[k], rel=1e-6, nan_ok=True) for k in want)


@pytest.mark.parametrize("full", ["out", "checkpoint-dir"])
def test_a_real_full_disk_is_one_line_naming_the_file_and_a_rerun_completes(reference, tmp_path, full):
    """A real tmpfs too small for the run, as ``--out`` and separately as ``--checkpoint-dir``: every
    error line names the file it could not write (no traceback); after the tmpfs is grown ("space is
    freed") a plain rerun completes with rows equal to an uninterrupted run's."""
    need = _written_bytes(reference / ("run" if full == "out" else "ck"))
    disk = tmp_path / "disk"
    with _tmpfs(disk, max(4096, need // 2 // 4096 * 4096)) as resize:
        out = disk / "run" if full == "out" else tmp_path / "run"
        ck = tmp_path / "ck" if full == "out" else disk
        failed = _proc(out, ck)
        assert failed.returncode == 1, failed.stderr
        said = failed.stdout + failed.stderr
        assert "Traceback" not in said
        errors = [x for x in said.splitlines() if "No space left on device" in x]
        assert errors, said
        assert all(re.search(rf"'?{re.escape(str(disk))}/\S+", x) for x in errors), errors
        resize(64 * 2**20)
        done = _proc(out, ck)
        assert done.returncode == 0, done.stderr
        _assert_equal_to_reference(out, reference)


def test_report_refuses_a_directory_another_writer_holds(reference, tmp_path, monkeypatch):
    """`report` writes into the run directory: while another process holds its lock it names the holder
    in one line (exit 2) instead of writing beside it."""
    import importlib

    from click.testing import CliRunner

    from sgq_bench.cli import main

    report_cli = importlib.import_module("sgq_bench.cli.report")

    out = tmp_path / "run"
    shutil.copytree(reference / "run", out)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from sgq_bench._lock import run_lock\n"
        f"with run_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(report_cli, "LOCK_WAIT_S", 0.5)
        res = CliRunner().invoke(main, ["report", str(out), "--no-figures"])
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2 and "being written by another sgq-bench run" in (res.stderr or res.output)
