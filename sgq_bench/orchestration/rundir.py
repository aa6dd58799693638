"""The run directory's bookkeeping: ``manifest.json`` (which suite configuration, every run's provenance),
``cells.jsonl`` (finished cells, by key), ``errors.jsonl`` (failures); and the checks made before any
work starts (writable, same configuration).

Why separate from the driver: ``status`` and ``--plan`` read the same files without running anything,
and must refuse a directory of another configuration exactly as ``run`` does.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sgq_bench import _io
from sgq_bench._io import append_jsonl
from sgq_bench._provenance import provenance
from sgq_bench.config.suite import Suite
from sgq_bench.errors import UsageError, warn


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove it is writable before any work starts (one-line error otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {str(out)!r} is not writable ({exc.strerror or exc})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a runner bookkeeping file; a corrupted line (a writer killed mid-line: its cell is simply not
    recorded) is skipped with a one-line warning naming file and line."""
    rows, bad = _io.read_jsonl_objects(path)
    for i, reason in bad:
        warn(f"{path}: line {i} is not a JSON object ({reason}); skipped")
    return rows


def done_keys(out: Path) -> set[str]:
    """Keys of the cells whose rows are all in ``out``'s results store (read only: nothing is migrated;
    a directory from before the store answers from its ``cells.jsonl``, as it was then)."""
    from sgq_bench import _store

    if not (Path(out) / _store.CELLS_DIR).is_dir():
        return {r["key"] for r in read_jsonl(Path(out) / "cells.jsonl") if r.get("status") == "done" and "key" in r}
    return _store.done_keys(out)


def read_manifest(out: Path, suite: Suite) -> dict[str, Any] | None:
    """``out/manifest.json`` (None if absent); a run directory of another suite configuration is refused,
    by ``run`` and by what reads a run directory for it (``status``, ``--plan``) alike."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
    if not same_configuration(manifest, suite):
        raise UsageError(
            f"{out} holds results of a different configuration of suite "
            f"{manifest.get('suite', {}).get('name')!r} (fingerprint {manifest.get('fingerprint')} != "
            f"{suite.fingerprint()}); use another --out, or the --set values that run used"
        )
    return manifest


def same_configuration(manifest: dict[str, Any], suite: Suite) -> bool:
    """Whether a manifest was written by this suite configuration (seeds aside: they only add or remove
    cells). Manifests from before seeds left the fingerprint are recognised by their recorded seeds."""
    stored = manifest.get("fingerprint")
    if stored == suite.fingerprint():
        return True
    seeds = (manifest.get("suite") or {}).get("seeds")
    return seeds is not None and stored == suite.seeded_fingerprint(seeds)


def manifest_device(manifest: dict[str, Any] | None) -> str | None:
    """The ``--device`` of a run directory's latest run (older manifests: from its provenance)."""
    runs = (manifest or {}).get("runs") or [{}]
    device = runs[-1].get("device") or str(runs[-1].get("provenance", {}).get("device", "")).split(":")[0]
    return device or None


def start_manifest(out: Path, suite: Suite, only: dict[str, set[str]], device: Any) -> dict[str, Any]:
    """Load ``manifest.json`` (refusing a different suite configuration) or start a new one."""
    manifest = read_manifest(out, suite) or {"runs": []}
    manifest["fingerprint"] = suite.fingerprint()  # an older manifest's seeded fingerprint is brought up to date
    manifest["suite"] = suite.as_dict()
    for earlier in manifest["runs"]:  # we hold the lock: a run still 'running' was killed (SIGKILL, power)
        if earlier.get("status") == "running":
            earlier.update(status="killed", note=f"found running by the run started {now()}; its process "
                           "ended without recording (SIGKILL or a crash); its finished cells are kept")
    manifest["runs"].append({
        "started": now(), "finished": None, "status": "running", "pid": os.getpid(),
        "only": {k: sorted(v) for k, v in only.items()}, "provenance": provenance(device),
    })
    return manifest


def safe_append(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Append bookkeeping rows; a full or read-only disk is reported in one line and the run goes on."""
    try:
        append_jsonl(path, rows)
        return True
    except OSError as exc:
        warn(f"could not write {path} ({exc.strerror or exc}); the run goes on")
        return False


def remove_stale_temps(*dirs: Any) -> None:
    """Our own temp files left by killed writes (older than an hour, so no live write is touched)."""
    for d in dirs:
        if d is not None and Path(d).is_dir():
            _io.remove_stale_temps(Path(d), recursive=True)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    _io.atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
