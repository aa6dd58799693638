"""Published leaderboards: ``leaderboards/<dataset>.csv`` rows built from a run's summary.

Schema (documented column by column in ``leaderboards/README.md``): key columns, ``n_seeds``, one
``<metric>_mean`` / ``<metric>_std`` pair per metric column, provenance columns. Publishing validates
the existing file and the new rows, then merges: a row whose key is already present is *replaced*
(a rerun of the same suite version supersedes the old numbers), never duplicated. A malformed CSV is
refused with its line number and nothing is written.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text
from sgq_bench.errors import UsageError, did_you_mean
from sgq_bench.report.tables import BASELINE, FAMILY_ORDER, aggregate, load_rows

KEY_COLUMNS = ("dataset", "suite", "suite_version", "model", "method", "quantizer", "objective", "bits", "explainer")
# ``plugins``: "dist==version; ..." of the non-built-in plugins behind a row (docs/plugins.md); optional
# when reading, so files published before it existed stay valid.
PROVENANCE_COLUMNS = ("plugins", "sgq_bench_version", "git_commit", "torch_version", "device", "date")
OPTIONAL_COLUMNS = ("plugins",)
METRIC_COLUMN = re.compile(r"^(?P<metric>[A-Za-z0-9_]+)(?P<variant>\[[^\],]+\])?_(?P<stat>mean|std)$")
DEFAULT_DIR = Path("leaderboards")


def _fmt(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.6g}"


def rows_from_run(out: Path) -> dict[str, list[dict[str, str]]]:
    """Leaderboard rows per dataset from run directory ``out``.

    One row per (method, explainer); the method's model-level metrics (accuracy, efficiency: the
    summary rows with explainer ``-``) are repeated in each of its explainer rows, so every row can
    be ranked on its own. A method scored without explainers gets one row with explainer ``-``.
    """
    from sgq_bench._plugins import plugins_label, row_plugins

    raw = load_rows(out)
    srows, columns = aggregate(raw, n_boot=0)
    used: dict[tuple, list[dict[str, str]]] = defaultdict(list)  # (dataset, model, method, explainer)
    for r in raw:
        used[(r["dataset"], r["model"], r["method"], str(r.get("explainer")))] += row_plugins(r).values()
    prov: dict[tuple, dict[str, Any]] = {}
    for r in sorted(raw, key=lambda r: str(r.get("created", ""))):
        prov[(r["dataset"], r["model"], r["method"])] = {**(r.get("provenance") or {}), "created": r.get("created")}
    model_level = {r.key[:3]: r for r in srows if r.key[3] == "-"}
    explained = {r.key[:3] for r in srows if r.key[3] != "-"}
    out_rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for srow in srows:
        if srow.key[3] == "-" and srow.key[:3] in explained:
            continue
        dataset, model, method, explainer = srow.key
        cells = dict(model_level[srow.key[:3]].cells) if srow.key[:3] in model_level else {}
        cells.update(srow.cells)
        p = prov.get((dataset, model, method), {})
        row = {
            "dataset": dataset, "suite": str(srow.info["suite"]), "suite_version": str(srow.info["suite_version"]),
            "model": model, "method": method, "quantizer": str(srow.info["quantizer"]),
            "objective": str(srow.info["objective"]), "bits": srow.info["bits"], "explainer": explainer,
            "n_seeds": str(max((c.summary.n for c in cells.values() if c.summary), default=0)),
            "sgq_bench_version": str(p.get("sgq_bench_version", "")), "git_commit": str(p.get("git_commit", "")),
            "torch_version": str(p.get("torch_version", "")), "device": str(p.get("device", "")),
            "date": str(p.get("created") or "")[:10],
            "plugins": plugins_label([*used[(dataset, model, method, "-")], *used[tuple(srow.key)]]),
        }
        for col, cell in cells.items():
            if cell.summary is not None:
                row[f"{col}_mean"] = _fmt(cell.summary.mean)
                row[f"{col}_std"] = _fmt(cell.summary.std)
        out_rows[dataset].append(row)
    return dict(out_rows)


def row_key(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row.get(k, "") for k in KEY_COLUMNS)


def read_leaderboard(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a leaderboard CSV, validated; the first problem raises a UsageError with its line."""
    path = Path(path)
    if not path.exists():
        return [], []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc}); nothing was written") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as exc:
        raise UsageError(f"{path}: line 1: malformed CSV ({exc}); nothing was written") from None
    validate_header(header, f"{path}: line 1")
    rows, seen = [], {}
    try:
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise UsageError(f"{path}: line {line}: expected {len(header)} fields, got {len(fields)}; "
                                 "nothing was written")
            row = dict(zip(header, fields))
            validate_row(row, f"{path}: line {line}")
            key = row_key(row)
            if key in seen:
                raise UsageError(f"{path}: line {line}: duplicates the key of line {seen[key]} "
                                 f"({', '.join(key)}); nothing was written")
            seen[key] = line
            rows.append(row)
    except csv.Error as exc:
        raise UsageError(f"{path}: line {reader.line_num}: malformed CSV ({exc}); nothing was written") from None
    return header, rows


def validate_header(header: list[str], where: str) -> None:
    missing = [c for c in (*KEY_COLUMNS, "n_seeds", *PROVENANCE_COLUMNS) if c not in header and c not in OPTIONAL_COLUMNS]
    if missing:
        raise UsageError(f"{where}: header lacks column(s) {', '.join(missing)}; nothing was written")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise UsageError(f"{where}: header repeats column {dupes[0]!r}; nothing was written")
    fixed = set(KEY_COLUMNS) | set(PROVENANCE_COLUMNS) | {"n_seeds"}
    for c in header:
        if c not in fixed and not METRIC_COLUMN.match(c):
            raise UsageError(f"{where}: column {c!r} is neither a key/provenance column nor "
                             "<metric>[<variant>]_mean|_std; nothing was written")


def validate_row(row: dict[str, str], where: str) -> None:
    for k in ("dataset", "suite", "suite_version", "model", "method", "explainer"):
        if not row.get(k):
            raise UsageError(f"{where}: key column {k!r} is empty; nothing was written")
    if not row.get("n_seeds", "").isdigit() or int(row["n_seeds"]) < 1:
        raise UsageError(f"{where}: n_seeds = {row.get('n_seeds')!r} is not an integer >= 1; nothing was written")
    for c, v in row.items():
        if METRIC_COLUMN.match(c) and v != "":
            try:
                float(v)
            except ValueError:
                raise UsageError(f"{where}: {c} = {v!r} is not a number; nothing was written") from None


def _column_order(columns: set[str]) -> list[str]:
    from sgq_bench import _registry

    def family(metric: str) -> int:
        try:
            fam = getattr(_registry.metrics.get(metric), "family", "")
        except UsageError:
            fam = ""
        return FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER)

    def rank(c: str) -> tuple:
        m = METRIC_COLUMN.match(c)
        return (family(m["metric"]), m["metric"], m["variant"] or "", m["stat"] != "mean")

    metric_cols = sorted((c for c in columns if METRIC_COLUMN.match(c)), key=rank)
    return [*KEY_COLUMNS, "n_seeds", *metric_cols, *PROVENANCE_COLUMNS]


def to_csv(rows: list[dict[str, str]]) -> str:
    header = _column_order({c for r in rows for c in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", restval="")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["suite"], r["suite_version"], r["explainer"] != "-", r["explainer"],
                                          r["method"] != BASELINE, r["method"])):
        w.writerow(r)
    return buf.getvalue()


def publish(out: Path, to: Path = DEFAULT_DIR) -> dict[str, tuple[int, int]]:
    """Merge run ``out``'s rows into ``to/<dataset>.csv``; returns ``{dataset: (added, replaced)}``.

    Every target file and every new row is validated before any file is written.
    """
    new = rows_from_run(Path(out))
    if not new:
        raise UsageError(f"{out}: no results to publish")
    to = Path(to)
    plans = {}
    for dataset, rows in new.items():
        path = to / f"{dataset}.csv"
        _, old = read_leaderboard(path)
        for i, r in enumerate(rows, 1):
            validate_row(r, f"{out}: new row {i} ({dataset})")
        merged = {row_key(r): r for r in old}
        replaced = sum(1 for r in rows if row_key(r) in merged)
        for r in rows:
            merged[row_key(r)] = r
        plans[dataset] = (path, list(merged.values()), len(rows) - replaced, replaced)
    try:
        to.mkdir(parents=True, exist_ok=True)
        for path, rows, _, _ in plans.values():
            atomic_write_text(path, to_csv(rows))
    except OSError as exc:
        raise UsageError(f"--to {str(to)!r} is not writable ({exc.strerror or exc})") from None
    return {d: (a, r) for d, (_, _, a, r) in plans.items()}


def _direction(column: str) -> bool:
    """True when higher is better for a metric column (from the metric registry; default True)."""
    from sgq_bench import _registry

    base = column.split("[", 1)[0]
    try:
        return bool(getattr(_registry.metrics.get(base), "higher_is_better", True))
    except UsageError:
        return True


def show(dataset: str | None = None, *, sort: str = "accuracy", to: Path = DEFAULT_DIR,
         explainer: str | None = None, top: int | None = None) -> str:
    """A ranked plain-text table per dataset (best first by ``sort``'s direction; blanks last)."""
    to = Path(to)
    files = sorted(to.glob("*.csv")) if dataset is None else [to / f"{dataset}.csv"]
    if dataset is not None and not files[0].exists():
        known = [p.stem for p in to.glob("*.csv")]
        raise UsageError(f"no leaderboard for dataset {dataset!r} in {to}.{did_you_mean(dataset, known)}")
    if not files:
        raise UsageError(f"no leaderboards in {to}; publish one with `sgq-bench leaderboard publish DIR`")
    blocks = []
    for path in files:
        header, rows = read_leaderboard(path)
        col = f"{sort}_mean"
        if col not in header:
            metrics = sorted({METRIC_COLUMN.match(c)["metric"] + (METRIC_COLUMN.match(c)["variant"] or "")
                              for c in header if METRIC_COLUMN.match(c)})
            raise UsageError(f"{path}: no metric {sort!r} to sort by.{did_you_mean(sort, metrics)}")
        if explainer is not None:
            rows = [r for r in rows if r["explainer"] == explainer]
        up = _direction(sort)

        def rank(r: dict[str, str], col: str = col, up: bool = up) -> tuple:
            v = r.get(col, "")
            return (v == "", -float(v) if (v and up) else (float(v) if v else 0.0))

        rows = sorted(rows, key=rank)[:top]
        acc = "accuracy_mean" if sort != "accuracy" and "accuracy_mean" in header else None
        head = ["#", "method", "bits", "explainer", f"{sort} {'↑' if up else '↓'}", *(["accuracy"] if acc else []),
                "seeds", "suite", "date"]
        lines = [head]
        for i, r in enumerate(rows, 1):
            std = r.get(f"{sort}_std", "")
            val = r.get(col, "") + (f" ± {std}" if std else "")
            lines.append([str(i), r["method"], r["bits"], r["explainer"], val, *([r.get(acc, "")] if acc else []),
                          r["n_seeds"], f"{r['suite']} v{r['suite_version']}", r["date"]])
        widths = [max(len(x[j]) for x in lines) for j in range(len(head))]
        text = "\n".join("  ".join(x[j].ljust(widths[j]) for j in range(len(head))).rstrip() for x in lines)
        blocks.append(f"{path.stem} ({path})\n{text}")
    return "\n\n".join(blocks)
