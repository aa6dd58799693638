"""The result-row schema: one typed definition, validated on every write and every read.

A result row is one number: one metric (and variant) of one explainer on one trained model, with
everything that determines it (method, recipe, checkpoint, evaluation subset, suite version) and
where it came from (provenance). the driver and ``evaluate`` store a cell's rows with :func:`store_cell` (``sgq_bench._store``: one file
per cell, ``results.jsonl`` its export); everything else
reads them with :func:`read_rows` or, as a long-format ``pandas.DataFrame``, with :func:`load_results`.

Why validate on read as well: a results file can be edited, truncated, or come from another tool or
version. A foreign or ill-typed row is refused in one line that names the file, the line and the
field, before any statistic is computed from it. A line that is not JSON (a truncated row, e.g. the
torn tail of a write that was killed, which ``_io.append_jsonl`` terminates and appends after) is
refused the same way rather than skipped: skipping would drop a number silently. In a run directory the
next run rebuilds the file from the store (and recomputes any cell whose stored rows are not intact).

This module imports neither torch nor pandas at import time: ``pandas`` is loaded by
:func:`load_results` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgq_bench import _store
from sgq_bench._bits import FLOAT, Bits, method_label
from sgq_bench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

RESULTS_FILE = "results.jsonl"
NO_EXPLAINER = "-"  # the explainer of model-level metrics (accuracy, efficiency)
# the columns that fix an evaluation protocol: rows are compared, averaged or matched only within one
PROTOCOL_KEYS = ("suite", "suite_version", "dataset", "model", "eval_size", "eval_seed", "precision")


@dataclass(frozen=True)
class Field:
    """One column of the schema: its JSON type, whether a row must have it, and whether null is allowed.

    ``fill`` marks an optional field that a row written before it existed gets on reading (null, or
    for ``precision`` the recipe's); other optional fields stay absent.
    """

    kind: str  # str | int | number | bool | dict | list
    required: bool = True
    nullable: bool = False
    fill: bool = False
    doc: str = ""


FIELDS: dict[str, Field] = {
    # what was trained
    "dataset": Field("str", doc="registered dataset"),
    "model": Field("str", doc="registered model"),
    "method": Field("str", doc="method name (quantizer + objective + their parameters)"),
    "method_label": Field("str", doc="Method.label(): the name and declared bits (pact W4A4), for tables"),
    "quantizer": Field("str", doc="quantizer plugin"),
    "objective": Field("str", doc="objective plugin"),
    "w_bits": Field("int", nullable=True, doc="weight bits of the quantized layers (32 = float)"),
    "a_bits": Field("int", nullable=True, doc="activation bits of the quantized layers (32 = float)"),
    "quantizer_params": Field("dict"),
    "objective_params": Field("dict"),
    "seed": Field("int", doc="training seed: the unit of replication"),
    "recipe": Field("dict", doc="training recipe"),
    "checkpoint_key": Field("str", doc="hash of everything that determines the weights (external-<sha256> for a "
                            "model trained elsewhere)"),
    "origin": Field("str", required=False, nullable=True, fill=True,
                    doc="trained (by sgq-bench, from its spec) or external (weights from a file)"),
    "weights_sha256": Field("str", required=False, nullable=True, fill=True,
                            doc="sha256 of an external model's weights file"),
    "precision": Field("str", required=False, fill=True, doc="training precision of the checkpoint (fp32 | bf16)"),
    "train_data_sha256": Field("str", required=False, nullable=True, fill=True, doc="fingerprint of the training data"),
    "training_provenance": Field("dict", required=False, nullable=True, fill=True,
                                 doc="where and by what the model was trained: device, git commit, versions "
                                     "(null for checkpoints made before it was recorded)"),
    # how it was evaluated
    "eval_size": Field("int", doc="test images actually evaluated"),
    "eval_seed": Field("int", doc="seed of the evaluation subset and of metric draws"),
    "suite": Field("str", nullable=True),
    "suite_version": Field("str", nullable=True),
    "explainer": Field("str", doc="explainer, or '-' for model-level metrics"),
    "explainer_params": Field("dict"),
    "attribution_time_s": Field("number", required=False, doc="seconds to compute the attributions"),
    "target": Field("str", required=False, doc="which class the attributions explain"),
    # the number
    "metric": Field("str"),
    "family": Field("str", doc="table group: accuracy, deletion, road, roar, sparsity, faithfulness, ... "
                    "(reports add vs_random rows, never stored)"),
    "variant": Field("str", nullable=True, doc="e.g. int8@bs128 for one of several measurements"),
    "value": Field("number", nullable=True, doc="null when undefined (then 'reason' says why)"),
    "reason": Field("str", required=False, nullable=True, fill=True, doc="why value is null"),
    "higher_is_better": Field("bool", doc="the metric's direction when the row was written"),
    "params": Field("dict", doc="every metric parameter, resolved"),
    "curve": Field("dict", nullable=True),
    "per_sample": Field("list", nullable=True, doc="one value per evaluation image"),
    "extra": Field("dict", required=False, doc="metric-specific details (tie statistics, timings)"),
    "plugins": Field("dict", required=False, doc="role -> plugin distribution and version"),
    # where it came from
    "provenance": Field("dict", doc="package versions, git commit, device"),
    "time_s": Field("number", doc="seconds the metric took"),
    "created": Field("str", doc="UTC time the row was written"),
}

# The identity of an evaluation for skip/resume. The variant rows of one metric share it (a metric's
# variants are computed and written together); :func:`result_key` adds the variant. Suite and version
# are part of it, so rows of two protocols in one file are never taken for reruns of each other.
KEY_FIELDS = ("suite", "suite_version", "dataset", "model", "method", "seed", "checkpoint_key", "explainer",
              "metric", "eval_size", "eval_seed")
# Nested fields: kept as object columns by load_results, dropped with ``nested=False``.
NESTED_FIELDS = tuple(k for k, f in FIELDS.items() if f.kind in ("dict", "list"))
# Values of extra lifted into columns of the DataFrame (tie statistics of ranking metrics).
EXTRA_COLUMNS = ("tie_fraction", "tie_draws", "tie_spread")

_KIND_NAMES = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
               "dict": "an object", "list": "a list"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    return isinstance(value, list)


def _default_precision(row: Mapping[str, Any]) -> str:
    """Precision of a row written before the field existed: the recipe's, when it was explicit.

    Rows from before bf16 training existed have no ``precision`` in their recipe and were fp32; a
    recipe with ``auto`` resolved per device, which such a row does not record.
    """
    recipe = row.get("recipe") if isinstance(row.get("recipe"), dict) else {}
    p = recipe.get("precision", "fp32")
    return p if p in ("fp32", "bf16") else "unknown"


def validate_row(row: Any, where: str) -> dict[str, Any]:
    """The row with optional fields filled in; a foreign or ill-typed row is a one-line UsageError.

    ``where`` prefixes the message (``file:line`` when reading, ``new row N`` when writing).
    """
    if not isinstance(row, dict):
        raise UsageError(f"{where}: not a result row (a JSON {type(row).__name__}, expected an object)")
    missing = [k for k, f in FIELDS.items() if f.required and k not in row]
    if missing:
        raise UsageError(f"{where}: not a sgq-bench result row: missing field(s) {', '.join(missing)}")
    unknown = sorted(k for k in row if k not in FIELDS)
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (not in the result schema, "
                         "sgq_bench.results.FIELDS)")
    out = dict(row)
    for key, f in FIELDS.items():
        if key not in out:
            if f.fill:
                out[key] = _default_precision(out) if key == "precision" else None
            continue
        value = out[key]
        if value is None:
            if f.nullable:
                continue
            raise UsageError(f"{where}: field {key!r} is null; expected {_KIND_NAMES[f.kind]}")
        if not _is_kind(value, f.kind):
            raise UsageError(f"{where}: field {key!r} = {_short(value)} is {type(value).__name__}; "
                             f"expected {_KIND_NAMES[f.kind]}")
    for key in ("dataset", "model", "method", "explainer", "metric", "checkpoint_key"):
        if not out[key]:
            raise UsageError(f"{where}: field {key!r} is empty")
    if out["eval_size"] < 1:
        raise UsageError(f"{where}: field 'eval_size' = {out['eval_size']} must be >= 1")
    if isinstance(out["value"], float) and not math.isfinite(out["value"]):
        raise UsageError(f"{where}: field 'value' = {out['value']} is not finite; an undefined value is "
                         "written as null with a 'reason'")
    return out


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def row_key(row: Mapping[str, Any]) -> tuple:
    """The identity of an evaluation for skip/resume: the values of :data:`KEY_FIELDS`."""
    return tuple(row.get(k) for k in KEY_FIELDS)


def result_key(row: Mapping[str, Any]) -> tuple:
    """The identity of one number: :func:`row_key` plus the variant (a later row with it wins)."""
    return (*row_key(row), row.get("variant"))


def store_cell(run_dir: str | Path, slug: str, cell_id: str, key: str | None,
               rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate every row, store them as one cell of the run directory's store, refresh ``results.jsonl``.

    Nothing is stored when any row is invalid (a bug in a metric must not leave half a cell behind), and
    the cell's rows appear together or not at all (``sgq_bench._store``). Returns the validated rows.
    """
    run_dir = Path(run_dir)
    checked = [validate_row(dict(r), f"{run_dir}: {cell_id} row {i}") for i, r in enumerate(rows, 1)]
    _store.write_cell(run_dir, slug, cell_id, key, checked, result_key)
    _store.export(run_dir)
    return checked


def cell_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """(slug, id) of the cell a row belongs to, as ``specs.Cell`` names them."""
    cid = f"{row.get('dataset')}/{row.get('model')}/{row.get('method')}/s{row.get('seed')}"
    return cid.replace("/", "-"), cid


def open_store(run_dir: str | Path, log: Any = None) -> set[str]:
    """Ready a run directory's store for writing: migrate an older directory once, rewrite
    ``results.jsonl`` from the store (healing a torn, edited or deleted export); returns the keys of the
    cells whose rows are all stored."""
    run_dir = Path(run_dir)
    from sgq_bench.errors import warn

    _store.migrate(run_dir, cell_of, result_key, log or warn)
    if (run_dir / _store.CELLS_DIR).is_dir():
        _store.export(run_dir)
    return _store.done_keys(run_dir)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a results JSONL file, validated ([] when the file does not exist).

    A line that is not JSON, or JSON but not a valid result row, is a UsageError naming ``file:line``
    (and the field).
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{lineno}: corrupted results line ({exc.msg}); if this is a run "
                                     "directory, rerun `sgq-bench run` on it: it rebuilds this file from its "
                                     "results store and recomputes what is missing") from None
                rows.append(validate_row(row, f"{path}:{lineno}"))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason}); not a results file") from None
    return rows


def latest(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per :func:`result_key`, the last one written (a rerun supersedes the earlier number)."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        out[result_key(r)] = dict(r)
    return list(out.values())


def results_path(run: str | Path) -> Path:
    """``run`` itself when it is a file, else ``run/results.jsonl``."""
    run = Path(run)
    return run if run.is_file() else run / RESULTS_FILE


def _row_bits(w_bits: Any, a_bits: Any) -> Bits | None:
    """A row's bits as a ``Bits``; None when unknown or outside Bits' range (a foreign row)."""
    try:
        return Bits(int(w_bits), int(a_bits))
    except (TypeError, ValueError):
        return None


def bits_label(w_bits: Any, a_bits: Any) -> str:
    """A row's bits as ``Bits.label`` prints them (``W4A4``; ``fp32`` for 32/32 or unknown bits)."""
    bits = _row_bits(w_bits, a_bits)
    if bits is None:
        return FLOAT.label if w_bits is None or a_bits is None else f"W{w_bits}A{a_bits}"
    return bits.label


def row_method_label(row: Mapping[str, Any]) -> str:
    """A row's method label in today's format (``pact W4A4``), from its method and bits.

    Why recomputed on read: rows written before the one label format say ``pact[W4A4]``; a run that
    mixes both would show one method under two names.
    """
    bits = _row_bits(row.get("w_bits"), row.get("a_bits"))
    if bits is None:
        return str(row.get("method_label") or row["method"])
    return method_label(str(row["method"]), bits)


COLUMNS = (
    "suite", "suite_version", "dataset", "model", "method", "method_label", "quantizer", "objective", "w_bits",
    "a_bits", "bits", "seed", "precision", "checkpoint_key", "train_data_sha256", "eval_size", "eval_seed",
    "explainer", "metric", "family", "variant", "value", "reason", "higher_is_better", *EXTRA_COLUMNS,
    "device", "time_s", "attribution_time_s", "target", "created",
)


def _no_rows(path: Path, run: str | Path) -> str:
    return f"{path}: no result rows (an empty file); run `sgq-bench run --suite ... --out {run}` to produce some"


def require_results(run: str | Path) -> Path:
    """The results file of ``run``, checked cheaply before a command takes a lock or creates anything:
    a missing or empty (whitespace only) file is the one-line UsageError that :func:`load_results` gives."""
    path = results_path(run)
    if not path.is_file():
        raise UsageError(f"{run}: no {RESULTS_FILE} here; run `sgq-bench run --suite ... --out {run}` first")
    with path.open("rb") as fh:
        if not fh.read(4096).strip() and path.stat().st_size <= 4096:
            raise UsageError(_no_rows(path, run))
    return path


def load_results(run: str | Path, *, nested: bool = True, dedupe: bool = True) -> pd.DataFrame:
    """The results of a run directory (or a results JSONL file) as a long-format DataFrame.

    One row per result (metric x variant x explainer x trained model). Columns: :data:`COLUMNS`
    (``bits`` = ``W4A4``/``fp32``; ``tie_fraction``/``tie_draws``/``tie_spread`` lifted from
    ``extra``; ``device`` from ``provenance``), then, unless ``nested=False``, the nested fields
    (:data:`NESTED_FIELDS`: curve, per_sample, params, recipe, provenance, ...) as object columns.
    ``variant``, ``suite`` and ``suite_version`` are ``""`` where the row has none, so that they
    group like any other value; ``value`` is NaN where undefined, with ``reason`` saying why.
    ``dedupe`` keeps the last row of each :func:`result_key` (a rerun supersedes earlier numbers).
    """
    import pandas as pd

    path = require_results(run)
    rows = read_rows(path)
    if not rows:
        raise UsageError(_no_rows(path, run))
    if dedupe:
        rows = latest(rows)
    records = []
    for r in rows:
        extra = r.get("extra") or {}
        rec = {k: r.get(k) for k in COLUMNS if k in FIELDS}
        rec["bits"] = bits_label(r["w_bits"], r["a_bits"])
        rec["method_label"] = row_method_label(r)
        rec["device"] = (r.get("provenance") or {}).get("device")
        for k in EXTRA_COLUMNS:
            v = extra.get(k)
            rec[k] = float(v) if _is_kind(v, "number") else float("nan")
        if nested:
            rec.update({k: r.get(k) for k in NESTED_FIELDS})
        records.append(rec)
    columns = [*COLUMNS, *(NESTED_FIELDS if nested else ())]
    df = pd.DataFrame.from_records(records, columns=columns)
    for k in ("suite", "suite_version", "variant"):
        df[k] = df[k].fillna("").astype(str)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    for k in ("seed", "eval_size", "eval_seed"):
        df[k] = df[k].astype("int64")
    for k in ("w_bits", "a_bits"):
        df[k] = df[k].astype("Int64")
    df["higher_is_better"] = df["higher_is_better"].astype(bool)
    for k in ("time_s", "attribution_time_s", *EXTRA_COLUMNS):
        df[k] = pd.to_numeric(df[k], errors="coerce").astype("float64")
    return df


__all__ = ["COLUMNS", "EXTRA_COLUMNS", "FIELDS", "KEY_FIELDS", "NESTED_FIELDS", "NO_EXPLAINER", "PROTOCOL_KEYS",
           "RESULTS_FILE", "Field", "cell_of", "open_store", "store_cell", "bits_label", "latest", "load_results", "read_rows", "result_key",
           "results_path", "row_method_label", "row_key", "validate_row"]
