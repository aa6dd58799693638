"""Where a (possibly running) suite stands, cell by cell: done, scoring, training (how far), failed, waiting.

Why: with several workers or a Ray cluster, a run's own progress bar shows tasks, not the epochs of
hour-long trainings, and a stopped run says nothing until it is rerun. Everything needed is on disk
already: ``cells.jsonl`` and ``errors.jsonl`` in the run directory, and each training's checkpoint or
mid-training state (epoch, step, seconds so far, per-epoch test accuracy) in the checkpoint cache. This
module writes nothing and never takes the run lock, so it can watch a run while it writes.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sgq_bench.specs import TrainSpec

STATES = ("done", "trained", "training", "stopped", "failed", "waiting")
# A running training saves its state every epoch and every SAVE_EVERY_S (10 min); a state this old belongs
# to one that is not running now (stopped or killed; a rerun resumes it).
STALE_AFTER_S = 1200.0


def suite_status(suite: Any, *, out: Any = None, only: Any = None, overrides: dict[str, Any] | None = None,
                 device: str | None = None, data_root: Any = None, checkpoint_dir: Any = None) -> Any:
    """One row per cell of ``suite`` (a pandas DataFrame) with its state and training progress.

    Columns: ``cell``, ``state`` (one of ``STATES``; ``trained`` means the model exists and its scores do
    not yet; ``stopped``, a training whose saved state is older than ``STALE_AFTER_S``), ``epoch``/``epochs``, ``step``/``steps``, ``test_accuracy`` (after the last finished epoch),
    ``train_s`` (training seconds so far), ``left_s`` (the rest at this training's own pace so far),
    ``saved_ago_s`` (age of the mid-training state: a state that stops getting younger is not running),
    ``precision`` (as resolved on ``device``) and ``checkpoint`` (the file name, which carries the content
    key of everything that determines the weights: the provenance of a finished model's ``test_accuracy``;
    while a cell is ``training`` or ``stopped`` its accuracy comes from the mid-training state beside it),
    and ``error`` (the last error of a failed cell). Progress is as of the last saved state (every epoch
    and every 10 minutes). ``device`` defaults to the run directory's last ``--device``: it decides
    ``precision = "auto"``, hence which checkpoints are this run's.
    """
    import pandas as pd

    from sgq_bench.config.suite import Suite, load_suite
    from sgq_bench.orchestration.cells import expand, parse_only
    from sgq_bench.orchestration.rundir import done_keys, manifest_device, read_jsonl, read_manifest

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), overrides)
    only = parse_only(only) if isinstance(only, str) or only is None else only
    out = Path(out) if out is not None else Path("runs") / suite.name
    manifest = read_manifest(out, suite) if out.is_dir() else None  # another configuration: refused
    if device is None and manifest_device(manifest):
        device = manifest_device(manifest)
        from sgq_bench.errors import UsageError
        from sgq_bench.train import resolve_device

        try:
            resolve_device(device)
        except UsageError:
            raise UsageError(f"{out} was run with --device {device}, which this machine lacks; its checkpoints "
                             "are found by the device's precision: run status where it ran, or pass --device") from None
    device = device or "cpu"
    finished = done_keys(out) if out.is_dir() else set()
    errors: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(out / "errors.jsonl") if out.is_dir() else []:
        errors[r.get("key") or r.get("cell")] = r  # the last error of each cell key
    rows = []
    for cell in expand(suite, only):
        row = {"cell": cell.id, **_training_progress(cell.spec, device, data_root, checkpoint_dir)}
        err = errors.get(cell.key()) or next((e for e in errors.values() if e.get("cell") == cell.id
                                              and not e.get("key")), None)
        if cell.key() in finished:
            row["state"] = "done"
        elif err is not None and _after(err.get("time"), row.get("saved_at")):
            row["state"], row["error"] = "failed", f"{err.get('error')}: {err.get('message')}"
        rows.append(row)
    columns = ["cell", "state", "epoch", "epochs", "step", "steps", "test_accuracy", "train_s", "left_s",
               "saved_ago_s", "precision", "checkpoint", "error"]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    frame = frame.astype({c: "Int64" for c in ("epoch", "epochs", "step", "steps")})
    frame.attrs.update(suite=suite.name, version=suite.version, out=str(out), device=device)
    return frame


def _training_progress(spec: TrainSpec, device: Any, data_root: Any, checkpoint_dir: Any) -> dict[str, Any]:
    """The state of ``spec``'s training from its checkpoint or mid-training state (read and verified)."""
    from sgq_bench import checkpoints
    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.errors import SgqBenchError
    from sgq_bench.train import locate_checkpoint, training_steps

    where = locate_checkpoint(spec, device=device, data_root=data_root, checkpoint_dir=checkpoint_dir)
    recipe = where.spec.recipe
    n_full = len(load_split(load_dataset(spec.dataset, spec.dataset_params), True, data_root))
    n_train = min(n_full, recipe.train_size) if recipe.train_size else n_full
    steps = training_steps(recipe, n_train)
    row: dict[str, Any] = {"state": "waiting", "epochs": recipe.epochs, "steps": steps,
                           "precision": recipe.precision, "checkpoint": where.path.name}
    # Each file is looked at once (stat, then load): a running training replaces its state, and removes it
    # when the final checkpoint is written, at any moment.
    try:
        mtime = where.path.stat().st_mtime
        meta = checkpoints.load(where.path)["meta"]
        return {**row, "state": "trained", "epoch": recipe.epochs, "step": meta.get("steps", steps),
                "test_accuracy": _last_accuracy(meta.get("history")), "train_s": meta.get("train_seconds"),
                "left_s": 0.0, "saved_at": mtime}
    except FileNotFoundError:
        pass
    except SgqBenchError as exc:
        if where.path.exists():  # run fails on a damaged model too, until it is deleted
            return {**row, "state": "failed", "error": str(exc)}
    partial = checkpoints.partial_path(where.path)
    try:
        mtime = partial.stat().st_mtime
        state = checkpoints.load(partial)
    except (FileNotFoundError, SgqBenchError):
        return row  # no saved state, or one that run would discard (training then starts over)
    step, elapsed = int(state.get("step", 0)), float(state.get("elapsed", 0.0))
    age = max(0.0, time.time() - mtime)
    return {**row, "state": "training" if age < STALE_AFTER_S else "stopped", "epoch": int(state.get("epoch", 0)),
            "step": step,
            "test_accuracy": _last_accuracy(state.get("history")), "train_s": elapsed,
            "left_s": elapsed / step * (steps - step) if step else None,
            "saved_ago_s": age, "saved_at": mtime}


def _last_accuracy(history: Any) -> float | None:
    accs = [h["test_accuracy"] for h in history or [] if isinstance(h, dict) and "test_accuracy" in h]
    return float(accs[-1]) if accs else None


def _after(when: str | None, saved_at: float | None) -> bool:
    """Whether an error logged at ``when`` (ISO time, whole seconds) is newer than the model or training
    state saved at ``saved_at``: a cell that failed and then trained on in a later run is not failed."""
    if saved_at is None or not when:
        return True
    try:
        return datetime.fromisoformat(when).timestamp() + 1.0 > saved_at  # + 1: the log keeps no fraction
    except ValueError:
        return True


def format_status(frame: Any) -> str:
    """The status table as text: one line per cell, then the counts per state and the time left."""
    lines = [f"{'cell':<36} {'state':<9} {'epoch':>7} {'progress':>8} {'test acc':>8} {'trained':>9} "
             f"{'left':>9} {'saved':>9}"]
    for r in frame.itertuples(index=False):
        epoch = f"{int(r.epoch)}/{int(r.epochs)}" if _has(r.epoch) else ""
        progress = f"{r.step / r.steps:.0%}" if _has(r.step) else ""
        acc = f"{r.test_accuracy:.4f}" if _has(r.test_accuracy) else ""
        saved = f"{_hms(r.saved_ago_s)} ago" if _has(r.saved_ago_s) else ""
        lines.append(f"{r.cell:<36} {r.state:<9} {epoch:>7} {progress:>8} {acc:>8} {_hms(r.train_s):>9} "
                     f"{_hms(r.left_s):>9} {saved:>9}")
        if r.state == "failed" and _has(r.error):
            lines.append(f"    {r.error}")
    counts = frame["state"].value_counts()
    tally = ", ".join(f"{int(counts[s])} {s}" for s in STATES if s in counts)
    meta = frame.attrs
    lines.append(f"suite {meta.get('suite')} v{meta.get('version')} in {meta.get('out')}: {len(frame)} cells: {tally}")
    for state, what in (("training", "under way"), ("stopped", "stopped (a rerun resumes them)")):
        part = frame[frame["state"] == state]
        if len(part):
            lines.append(f"the {len(part)} training(s) {what} need {_hms(part['left_s'].dropna().sum())} more in "
                         "all, each at its own pace so far; `run --plan` prices everything left")
    return "\n".join(lines)


def _has(value: Any) -> bool:
    import pandas as pd

    return not pd.isna(value)


def _hms(seconds: Any) -> str:
    if not _has(seconds):
        return ""
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
