"""Published leaderboards: ``<leaderboards>/<dataset>.csv``, one row per published number.

Long format, ASCII column names (:data:`COLUMNS`), loadable with a plain ``pandas.read_csv``. Each row
is the across-seed summary of one (protocol, method, explainer, metric, variant): ``mean``, ``std``,
95% t-interval, ``n_seeds`` and the seeds, with its provenance (suite and version, evaluation size and
subset, training precision and recipe, package versions, git commit, device, date). The metric's
direction is recorded in the row (``higher_is_better``), so ranking never asks the live registry: a
metric whose plugin was uninstalled keeps its direction.

Publishing validates the existing file and the new rows before writing anything, then merges: a row
whose key (:data:`KEY_COLUMNS`) is present is *replaced*, never duplicated. Values that are not
finite are refused. Files in the earlier wide format (``<metric>_mean``/``<metric>_std`` columns) are
still read (converted in memory, direction taken from the registry, the only source those files
have); :func:`migrate_leaderboard` rewrites one in the long format.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgq_bench._io import atomic_write_text
from sgq_bench.errors import UsageError, did_you_mean, warn

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_DIR = Path("leaderboards")
KEY_COLUMNS = ("dataset", "suite", "suite_version", "eval_size", "eval_seed", "precision", "model", "method",
               "explainer", "metric", "variant")
COLUMNS = (
    "dataset", "suite", "suite_version", "eval_size", "eval_seed", "precision", "model", "method", "quantizer",
    "objective", "bits", "explainer", "metric", "variant", "family", "higher_is_better", "n_seeds", "seeds", "mean",
    "std", "ci_low", "ci_high", "recipe", "metric_params", "plugins", "sgq_bench_version", "torch_version",
    "captum_version", "quantus_version", "git_commit", "device", "date",
)
# Columns added after boards were published: a board without them still reads (empty there). Why
# ``metric_params``: ROAR/KAR retrain a learner, and a cheap learner's row must be told from a full one's
# without opening the run (the learner's recipe, fractions and train size are the metric's parameters).
OPTIONAL_COLUMNS = ("metric_params",)
REQUIRED_TEXT = ("dataset", "suite", "suite_version", "model", "method", "explainer", "metric")
SORT_KEYS = ("suite", "suite_version", "eval_size", "eval_seed", "precision", "model", "explainer", "metric",
             "variant", "method")
# The earlier wide format: key columns, n_seeds, <metric>[<variant>]_mean|_std, provenance.
LEGACY_KEYS = ("dataset", "suite", "suite_version", "model", "method", "quantizer", "objective", "bits", "explainer")
LEGACY_PROVENANCE = ("plugins", "sgq_bench_version", "git_commit", "torch_version", "device", "date")
LEGACY_METRIC = re.compile(r"^(?P<metric>[A-Za-z0-9_]+)(?:\[(?P<variant>[^\],]+)\])?_(?P<stat>mean|std)$")
SORT_NAME = re.compile(r"^(?P<metric>[A-Za-z0-9_.-]+)(?:\[(?P<variant>[^\]]+)\])?$")


def _fmt(v: Any) -> str:
    """A published number: 6 significant digits; empty when undefined."""
    if v is None:
        return ""
    v = float(v)
    return f"{v:.6g}" if math.isfinite(v) else ("nan" if math.isnan(v) else f"{v}")


def board_path(leaderboards: str | Path, dataset: str) -> Path:
    """``<leaderboards>/<dataset>.csv``, refused unless it lies directly in ``leaderboards``."""
    path = Path(leaderboards) / f"{dataset}.csv"
    if path.resolve().parent != Path(leaderboards).resolve():
        raise UsageError(f"dataset name {dataset!r} would put its leaderboard outside {leaderboards}")
    return path


def rows_from_run(run: str | Path, *, skip_undefined: bool = False) -> pd.DataFrame:
    """The leaderboard rows (strings, :data:`COLUMNS`) of run directory ``run``.

    A result with no finite value over any seed is refused (one line naming it and its reason), or
    left out with a warning when ``skip_undefined``.
    """
    import pandas as pd

    from sgq_bench._plugins import plugins_label, row_plugins
    from sgq_bench.report.controls import source_metric
    from sgq_bench.report.summary import GROUP_KEYS, summarize_results
    from sgq_bench.results import load_results

    results = load_results(run)
    summary = summarize_results(results, n_boot=0)  # adds the derived <metric>_vs_random groups
    undefined = summary[summary["n_seeds"] == 0]
    if len(undefined):
        first = undefined.iloc[0]
        what = (f"{first['method']}/{first['explainer']}/{first['metric']}"
                + (f"[{first['variant']}]" if first["variant"] else ""))
        if not skip_undefined:
            raise UsageError(f"{run}: {len(undefined)} result(s) have no finite value over any seed, e.g. {what} "
                             f"({first['reason']}); nothing was written (skip_undefined leaves them out)")
        warn(f"{run}: left out {len(undefined)} result(s) with no finite value, e.g. {what} ({first['reason']})")
        summary = summary[summary["n_seeds"] > 0]
    latest = results.sort_values("created", kind="stable").groupby(list(GROUP_KEYS), sort=False, dropna=False)
    info: dict[tuple, dict[str, str]] = {}
    for key, sub in latest:
        last = sub.iloc[-1]
        prov = last["provenance"] if isinstance(last["provenance"], dict) else {}
        used = [p for plugins in sub["plugins"] for p in row_plugins({"plugins": plugins}).values()]
        info[key] = {
            "recipe": json.dumps(last["recipe"], sort_keys=True, separators=(",", ":")),
            "metric_params": _common_params(sub["params"]),
            "plugins": plugins_label(used),
            **{k: str(prov.get(k, "")) for k in ("sgq_bench_version", "torch_version", "captum_version",
                                                 "quantus_version")},
            # every commit and device behind the number (scoring and training), not the last row's only
            "git_commit": _every(sub, "git_commit"), "device": _every(sub, "device"),
            "date": str(last["created"] or "")[:10],
        }
    metric_at = GROUP_KEYS.index("metric")
    records = []
    for r in summary.to_dict("records"):
        key = tuple(r[k] for k in GROUP_KEYS)
        if key not in info:  # a derived score carries the provenance of the map scores it was derived from
            key = key[:metric_at] + (source_metric(r["metric"], r["family"]),) + key[metric_at + 1:]
        row = {k: str(r[k]) for k in ("dataset", "suite", "suite_version", "eval_size", "eval_seed", "precision",
                                      "model", "method", "quantizer", "objective", "bits", "explainer", "metric",
                                      "variant", "family", "seeds")}
        row.update(higher_is_better=str(bool(r["higher_is_better"])), n_seeds=str(int(r["n_seeds"])),
                   mean=_fmt(r["mean"]), std=_fmt(r["std"]) if r["n_seeds"] >= 2 else "",
                   ci_low=_fmt(r["ci_low"]) if r["n_seeds"] >= 2 else "",
                   ci_high=_fmt(r["ci_high"]) if r["n_seeds"] >= 2 else "", **info[key])
        records.append(row)
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def _common_params(params: Any) -> str:
    """The metric parameters of a row's results as JSON; one that differs between seeds (a learner's
    checkpoint key) reads ``"per seed"``, so the row never shows one seed's value as everyone's."""
    dicts = [p if isinstance(p, dict) else {} for p in params]
    keys = sorted(set().union(*dicts)) if dicts else []
    dump = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
    out = {k: (dicts[0].get(k) if len({dump(d.get(k)) for d in dicts}) == 1 else "per seed") for k in keys}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def _every(rows: Any, field: str) -> str:
    """All values of a provenance ``field`` over a group's rows, where they were scored and where their
    models were trained: one value, or ``mixed: a;b`` (a ``-dirty`` commit stays marked as such)."""
    seen: set[str] = set()
    for column in ("provenance", "training_provenance"):
        for prov in rows[column] if column in rows else []:
            if isinstance(prov, dict) and prov.get(field):
                seen.add(str(prov[field]))
    values = sorted(seen)
    return values[0] if len(values) == 1 else ("mixed: " + ";".join(values) if values else "")


def validate_row(row: dict[str, str], where: str, *, need_direction: bool = True) -> None:
    """One leaderboard row (strings); the first problem is a one-line UsageError."""
    for k in REQUIRED_TEXT:
        if not row.get(k):
            raise UsageError(f"{where}: column {k!r} is empty; nothing was written")
    hib = row.get("higher_is_better", "")
    if hib not in ("True", "False") and (need_direction or hib != ""):
        raise UsageError(f"{where}: higher_is_better = {hib!r} is not True or False"
                         + ("" if hib else " (a legacy row whose metric is not installed: its direction is unknown)")
                         + "; nothing was written")
    n = row.get("n_seeds", "")
    if not n.isdigit() or int(n) < 1:
        raise UsageError(f"{where}: n_seeds = {n!r} is not an integer >= 1; nothing was written")
    for k in ("eval_size", "eval_seed"):
        v = row.get(k, "")
        if v and not v.isdigit():
            raise UsageError(f"{where}: {k} = {v!r} is not a non-negative integer; nothing was written")
    for k in ("mean", "std", "ci_low", "ci_high"):
        v = row.get(k, "")
        if v == "" and k != "mean":
            continue
        try:
            f = float(v)
        except ValueError:
            raise UsageError(f"{where}: {k} = {v!r} is not a number; nothing was written") from None
        if not math.isfinite(f):
            raise UsageError(f"{where}: {k} = {v!r} is not finite; only finite values are published; "
                             "nothing was written")


def key_of(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row.get(k, "") for k in KEY_COLUMNS)


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line, row) pairs of a CSV file; wrong field counts are refused by line."""
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
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise UsageError(f"{path}: line 1: header repeats column {dupes[0]!r}; nothing was written")
    rows = []
    try:
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise UsageError(f"{path}: line {reader.line_num}: expected {len(header)} fields, got {len(fields)}; "
                                 "nothing was written")
            rows.append((reader.line_num, dict(zip(header, fields))))
    except csv.Error as exc:
        raise UsageError(f"{path}: line {reader.line_num}: malformed CSV ({exc}); nothing was written") from None
    return header, rows


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """The rows of a leaderboard CSV as strings (:data:`COLUMNS`), validated; empty if there is no file.

    A file in the earlier wide format is converted (:func:`from_wide`). Any problem is a one-line
    UsageError naming the file and line.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS), dtype=str)
    header, lines = _read_csv_rows(path)
    if not header:
        return pd.DataFrame(columns=list(COLUMNS), dtype=str)
    if "metric" not in header and any(LEGACY_METRIC.match(c) for c in header):
        lines = from_wide(header, lines, f"{path}")
        header = list(COLUMNS)
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
    if missing:
        raise UsageError(f"{path}: line 1: header lacks column(s) {', '.join(missing)}; nothing was written")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise UsageError(f"{path}: line 1: column {unknown[0]!r} is not a leaderboard column; nothing was written")
    seen: dict[tuple, int] = {}
    for line, row in lines:
        validate_row(row, f"{path}: line {line}", need_direction=False)
        key = key_of(row)
        if key in seen:
            raise UsageError(f"{path}: line {line}: duplicates the key of line {seen[key]} "
                             f"({', '.join(key)}); nothing was written")
        seen[key] = line
    return pd.DataFrame.from_records([r for _, r in lines], columns=list(COLUMNS)).fillna("").astype(str)


def from_wide(header: list[str], lines: list[tuple[int, dict[str, str]]],
              where: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of the earlier wide format, one long row per non-empty ``<metric>[<variant>]_mean`` cell.

    The wide format recorded no direction, no evaluation size, subset, precision, seeds or recipe:
    those stay empty, except the direction, taken from the metric registry (empty when the metric is
    not installed; such a row cannot be ranked or written until its metric is installed). Model-level
    metrics (accuracy, efficiency), which that format repeated in every explainer's row, become one
    row with explainer ``-``.
    """
    from sgq_bench import _registry

    missing = [c for c in (*LEGACY_KEYS, "n_seeds") if c not in header]
    if missing:
        raise UsageError(f"{where}: line 1: header lacks column(s) {', '.join(missing)}; nothing was written")
    for c in header:
        if c not in (*LEGACY_KEYS, "n_seeds", *LEGACY_PROVENANCE) and not LEGACY_METRIC.match(c):
            raise UsageError(f"{where}: line 1: column {c!r} is neither a key/provenance column nor "
                             "<metric>[<variant>]_mean|_std; nothing was written")

    def describe(metric: str) -> tuple[str, str, bool]:
        """(higher_is_better, family, model-level) of a metric, from the registry."""
        try:
            cls = _registry.metrics.get(metric)
        except Exception:  # not installed, or a broken plugin: the direction is unknown, never guessed
            return "", "", False
        return (str(bool(getattr(cls, "higher_is_better", True))), str(getattr(cls, "family", "")),
                not getattr(cls, "needs_attributions", True))

    from scipy import stats as sp

    out: dict[tuple, tuple[int, dict[str, str]]] = {}
    for line, row in lines:
        n = row.get("n_seeds", "")
        for col in header:
            m = LEGACY_METRIC.match(col)
            if not m or m["stat"] != "mean" or row.get(col, "") == "":
                continue
            std = row.get(col[: -len("mean")] + "std", "")
            hib, family, model_level = describe(m["metric"])
            ci_low = ci_high = ""
            if std and n.isdigit() and int(n) >= 2:
                try:
                    half = float(sp.t.ppf(0.975, int(n) - 1)) * float(std) / math.sqrt(int(n))
                    ci_low, ci_high = _fmt(float(row[col]) - half), _fmt(float(row[col]) + half)
                except ValueError:
                    pass  # validate_row names the bad number
            new = {
                **{k: row.get(k, "") for k in LEGACY_KEYS}, **{k: row.get(k, "") for k in LEGACY_PROVENANCE},
                "eval_size": "", "eval_seed": "", "precision": "", "metric": m["metric"], "variant": m["variant"] or "",
                "family": family, "higher_is_better": hib, "n_seeds": n, "seeds": "", "mean": row[col], "std": std,
                "ci_low": ci_low, "ci_high": ci_high, "recipe": "", "captum_version": "", "quantus_version": "",
            }
            if model_level:
                new["explainer"] = "-"
            out.setdefault(key_of(new), (line, new))  # a model-level metric: its first explainer row's copy
    return list(out.values())


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    from sgq_bench.report.summary import REFERENCE

    order = df.assign(_x=df["explainer"] != "-", _r=df["method"] != REFERENCE)
    cols = ["suite", "suite_version", "eval_size", "eval_seed", "precision", "model", "_x", "explainer", "metric",
            "variant", "_r", "method"]
    return order.sort_values(cols, kind="stable").drop(columns=["_x", "_r"])


def to_csv(df: pd.DataFrame) -> str:
    return _sorted(df[list(COLUMNS)]).to_csv(index=False, lineterminator="\n")


def publish(run: str | Path, leaderboards: str | Path = DEFAULT_DIR, *,
            skip_undefined: bool = False) -> dict[str, tuple[int, int]]:
    """Merge run ``run``'s rows into ``<leaderboards>/<dataset>.csv``; returns ``{dataset: (added, replaced)}``.

    Every target file and every new row is validated before any file is written.
    """
    import pandas as pd

    new = rows_from_run(run, skip_undefined=skip_undefined)
    if not len(new):
        raise UsageError(f"{run}: no results to publish")
    plans = {}
    for dataset, rows in new.groupby("dataset", sort=True):
        path = board_path(leaderboards, str(dataset))
        old = read_leaderboard(path)
        for i, r in enumerate(rows.to_dict("records"), 1):
            validate_row(r, f"{run}: new row {i} ({dataset})")
        for i, r in enumerate(old.to_dict("records"), 1):
            validate_row(r, f"{path}: row {i}")  # a legacy row must have a known direction to be written
        old_keys = {key_of(r) for r in old.to_dict("records")}
        replaced = sum(1 for r in rows.to_dict("records") if key_of(r) in old_keys)
        merged = pd.concat([old, rows], ignore_index=True).drop_duplicates(list(KEY_COLUMNS), keep="last")
        plans[dataset] = (path, merged, len(rows) - replaced, replaced)
    try:
        Path(leaderboards).mkdir(parents=True, exist_ok=True)
        for path, rows, _, _ in plans.values():
            atomic_write_text(path, to_csv(rows))
    except OSError as exc:
        raise UsageError(f"leaderboards folder {str(leaderboards)!r} is not writable ({exc.strerror or exc})") from None
    return {d: (a, r) for d, (_, _, a, r) in plans.items()}


def migrate_leaderboard(path: str | Path) -> int:
    """Rewrite a wide-format leaderboard file in the long format (directions frozen from the registry).

    Returns the number of rows written. A file already in the long format is rewritten unchanged in
    content. Refused (nothing written) when a metric's direction is unknown (its plugin not installed).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such leaderboard file")
    df = read_leaderboard(path)
    for i, r in enumerate(df.to_dict("records"), 1):
        validate_row(r, f"{path}: row {i}")
    atomic_write_text(path, to_csv(df))
    return len(df)


def check_top(top: Any) -> int | None:
    """``--top N``: None (all rows) or an integer >= 1; anything else is a one-line UsageError."""
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UsageError(f"--top {top!r} must be an integer >= 1 (the number of best rows to show)")
    return top


def show(dataset: str | None = None, *, sort: str = "accuracy", leaderboards: str | Path = DEFAULT_DIR,
         explainer: str | None = None, top: int | None = None, suite: str | None = None) -> str:
    """A ranked plain-text table per dataset: best first in the direction recorded in the file.

    ``sort`` is a metric, or ``metric[variant]``. Model-level metrics (explainer ``-``) are ranked
    whatever ``explainer`` says; for the others, ``explainer`` keeps that explainer's rows. ``suite``
    keeps one suite's rows (a one-seed pipeline check and a 5-seed study rank apart, not mixed).
    """
    top = check_top(top)
    m = SORT_NAME.match(sort or "")
    if not m:
        raise UsageError(f"--sort {sort!r} is not METRIC or METRIC[VARIANT]")
    leaderboards = Path(leaderboards)
    files = sorted(leaderboards.glob("*.csv")) if dataset is None else [board_path(leaderboards, dataset)]
    if dataset is not None and not files[0].exists():
        known = [p.stem for p in leaderboards.glob("*.csv")]
        raise UsageError(f"no leaderboard for dataset {dataset!r} in {leaderboards}.{did_you_mean(dataset, known)}")
    if not files:
        raise UsageError(f"no leaderboards in {leaderboards}; publish one with `sgq-bench leaderboard publish DIR`")
    return "\n\n".join(_show_one(path, m["metric"], m["variant"] or "", sort, explainer, top, suite)
                       for path in files)


def _mean_text(mean: str, std: str) -> str:
    """``mean ± std`` at 4 and 2 significant digits (the CSV keeps full precision)."""
    try:
        text = f"{float(mean):.4g}"
        return text + (f" ± {float(std):.2g}" if std else "")
    except ValueError:
        return f"{mean} ± {std}" if std else str(mean)


def _show_one(path: Path, metric: str, variant: str, sort: str, explainer: str | None, top: int | None,
              suite: str | None = None) -> str:
    df = read_leaderboard(path)
    if not len(df):
        raise UsageError(f"{path}: an empty leaderboard (no rows); publish a run to it: "
                         f"sgq-bench leaderboard publish DIR --leaderboards {path.parent}")
    if suite is not None:
        if suite not in set(df["suite"]):
            raise UsageError(f"{path}: no rows of suite {suite!r}.{did_you_mean(suite, set(df['suite']))}")
        df = df[df["suite"] == suite]
    sel = df[(df["metric"] == metric) & (df["variant"] == variant)]
    if not len(sel):
        names = sorted({f"{a}[{b}]" if b else a for a, b in zip(df["metric"], df["variant"])})
        raise UsageError(f"{path}: no metric {sort!r} to sort by.{did_you_mean(sort, names)}")
    if explainer is not None and (sel["explainer"] != "-").any():
        sel = sel[sel["explainer"] == explainer]
        if not len(sel):
            known = sorted(set(df.loc[df["metric"] == metric, "explainer"]))
            raise UsageError(f"{path}: no {sort} rows for explainer {explainer!r}.{did_you_mean(explainer, known)}")
    directions = set(sel["higher_is_better"])
    if "" in directions:
        raise UsageError(f"{path}: the direction of {sort} is not recorded (a wide-format file whose metric is not "
                         "installed); install the metric and run migrate_leaderboard, or republish")
    if len(directions) > 1:
        raise UsageError(f"{path}: rows disagree on the direction of {sort} (higher_is_better is both True and "
                         "False); republish them")
    up = directions == {"True"}
    values = sel["mean"].astype(float)
    rank = values.where(values.map(math.isfinite))
    sel = sel.assign(_rank=-rank if up else rank).sort_values(["_rank", "suite", "method", "explainer"],
                                                                 kind="stable", na_position="last")
    if top is not None:
        sel = sel.head(top)
    acc_rows = df[(df["metric"] == "accuracy") & (df["variant"] == "")]
    proto = ["suite", "suite_version", "eval_size", "eval_seed", "precision", "model", "method"]
    acc = {tuple(r[k] for k in proto): r["mean"] for r in acc_rows.to_dict("records")}
    show_acc = metric != "accuracy" and bool(acc)
    head = ["#", "method", "bits", "explainer", f"{sort} {'↑' if up else '↓'}", *(["accuracy"] if show_acc else []),
            "seeds", "suite", "eval_size", "date"]
    lines = [head]
    for i, r in enumerate(sel.to_dict("records"), 1):
        val = _mean_text(r["mean"], r["std"])
        lines.append([str(i), r["method"], r["bits"], r["explainer"], val,
                      *([_mean_text(acc[key], "") if (key := tuple(r[k] for k in proto)) in acc else ""]
                        if show_acc else []), r["n_seeds"],
                      f"{r['suite']} v{r['suite_version']}", r["eval_size"] or "?", r["date"]])
    widths = [max(len(x[j]) for x in lines) for j in range(len(head))]
    text = "\n".join("  ".join(x[j].ljust(widths[j]) for j in range(len(head))).rstrip() for x in lines)
    return f"{path.stem} ({path})\n{text}"


__all__ = ["COLUMNS", "DEFAULT_DIR", "KEY_COLUMNS", "board_path", "check_top", "from_wide", "migrate_leaderboard",
           "publish", "read_leaderboard", "rows_from_run", "show", "validate_row"]
