"""Atomic writes and appends: normal permissions, true appends, safe partial lines, stale temp cleanup."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from sgq_bench import _io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("write", [
    lambda p: _io.atomic_write_text(p, "x"),
    lambda p: _io.atomic_write_bytes(p, b"x"),
    lambda p: _io.atomic_torch_save(p, {"w": [1, 2]}),
    lambda p: _io.append_jsonl(p, [{"a": 1}]),
], ids=["text", "bytes", "torch", "jsonl"])
def test_written_files_get_normal_permissions(tmp_path: Path, umask_022, write) -> None:
    path = tmp_path / "sub" / "f"
    write(path)
    assert mode(path) == 0o644
    write(path)  # replacing or appending keeps them
    assert mode(path) == 0o644


def test_permissions_follow_a_stricter_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        _io.atomic_write_text(tmp_path / "private", "x")
        _io.append_jsonl(tmp_path / "private.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert mode(tmp_path / "private") == 0o600
    assert mode(tmp_path / "private.jsonl") == 0o600


def test_atomic_write_leaves_no_temp_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    _io.atomic_write_text(path, "old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _io._atomic(path, boom)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_append_appends_without_rewriting(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _io.append_jsonl(path, [{"i": 0}, {"i": 1}])
    before = path.read_bytes()
    inode = path.stat().st_ino
    with path.open("rb") as reader:  # a reader holding the file open sees the new rows in place
        _io.append_jsonl(path, [{"i": 2}])
        assert path.stat().st_ino == inode
        assert reader.read() == before + b'{"i": 2}\n'
    assert path.read_bytes().startswith(before)
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_append_is_linear_not_a_rewrite(tmp_path: Path) -> None:
    """Appending to a large file must not copy it: time one append to a 20 MB file against a tiny one."""
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_bytes(b'{"pad": 0}\n' * 2_000_000)
    _io.append_jsonl(small, [{"i": 0}])

    def one(path: Path) -> float:
        t = time.perf_counter()
        _io.append_jsonl(path, [{"i": 1}])
        return time.perf_counter() - t

    t_big = min(one(big) for _ in range(3))
    t_small = min(one(small) for _ in range(3))
    assert t_big < t_small * 5 + 0.01, (t_big, t_small)  # a 20 MB rewrite takes tens of ms plus an fsync of it


def test_append_after_a_killed_writer_keeps_every_complete_row(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _io.append_jsonl(path, [{"i": 0}])
    with path.open("ab") as fh:
        fh.write(b'{"i": 1, "trunc')  # what a writer killed mid-line leaves
    _io.append_jsonl(path, [{"i": 2}, {"i": 3}])
    lines = path.read_bytes().split(b"\n")
    assert lines == [b'{"i": 0}', b'{"i": 1, "trunc', b'{"i": 2}', b'{"i": 3}', b""]
    good = []
    for line in lines[:-1]:
        try:
            good.append(json.loads(line)["i"])
        except json.JSONDecodeError:
            pass
    assert good == [0, 2, 3]


def test_append_of_no_rows_creates_nothing(tmp_path: Path) -> None:
    _io.append_jsonl(tmp_path / "none.jsonl", [])
    assert not (tmp_path / "none.jsonl").exists()


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_remove_stale_temps_deletes_only_old_temp_files_of_ours(tmp_path: Path) -> None:
    old_ours = [tmp_path / ".results.jsonl.ab12cd_9.tmp", tmp_path / ".model.pt.zzzzzzzz.tmp",
                tmp_path / f".{'summary.csv'}.{_io.temp_name('summary.csv')[-12:-4]}.tmp"]
    fresh_ours = tmp_path / ".manifest.json.k3j4h5g6.tmp"
    not_ours = [tmp_path / "results.tmp", tmp_path / ".notes.tmp", tmp_path / ".x.short.tmp",
                tmp_path / ".x.UPPERCAS.tmp", tmp_path / "data.abcdefgh.tmp", tmp_path / "results.jsonl"]
    for p in [*old_ours, fresh_ours, *not_ours]:
        p.write_text("x")
        _age(p, 7200)
    _age(fresh_ours, 10)
    folder = tmp_path / ".dir.abcdefgh.tmp"
    folder.mkdir()
    _age(folder, 7200)
    link = tmp_path / ".link.abcdefgh.tmp"
    link.symlink_to(tmp_path / "results.jsonl")
    _age(link, 7200)
    nested = tmp_path / "sub" / ".deep.abcdefgh.tmp"
    nested.parent.mkdir()
    nested.write_text("x")
    _age(nested, 7200)

    removed = _io.remove_stale_temps(tmp_path, older_than_s=3600)
    assert sorted(removed) == sorted(old_ours)
    for p in [fresh_ours, *not_ours, folder, link, nested]:
        assert p.exists() or p.is_symlink(), p
    assert _io.remove_stale_temps(tmp_path, older_than_s=3600, recursive=True) == [nested]


def test_remove_stale_temps_catches_a_real_leftover(tmp_path: Path) -> None:
    """A temp file left by an interrupted atomic write has the name the cleaner looks for."""
    path = tmp_path / "checkpoint.pt"

    def killed(fh):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _io._atomic(path, killed)
    fd, tmp = _io._create_temp(tmp_path, path.name)  # what SIGKILL (no cleanup) leaves
    os.close(fd)
    _age(tmp, 7200)
    assert _io.remove_stale_temps(tmp_path, older_than_s=60) == [tmp]
    assert _io.remove_stale_temps(tmp_path / "missing") == []
