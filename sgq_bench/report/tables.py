"""Turn a run directory's ``results.jsonl`` into ``summary.csv`` and ``summary.md`` (and figures).

One summary row per (dataset, model, method, explainer); one column group per metric (and variant,
e.g. ``latency_ms[int8@bs128]``) with mean, std, n, 95% t-CI across seeds and a p-value against the
``baseline`` method of the same dataset, model and explainer (see ``sgq_bench.report.stats``). Model-level
metrics (accuracy, efficiency) sit in the rows whose explainer is ``-``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text
from sgq_bench.errors import UsageError
from sgq_bench.report.stats import Summary, mean_per_sample, paired_bootstrap_p, summarize, welch_p

BASELINE = "baseline"
FAMILY_ORDER = ("accuracy", "deletion", "road", "roar", "sparsity", "faithfulness", "efficiency")
GROUP_KEYS = ("dataset", "model", "method", "explainer")
STAT_FIELDS = ("mean", "std", "n", "ci_low", "ci_high", "p")


def column_name(row: dict[str, Any]) -> str:
    """Metric column of a row: the metric name, plus ``[variant]`` when the metric has variants."""
    return row["metric"] if not row.get("variant") else f"{row['metric']}[{row['variant']}]"


def arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def bits_label(row: dict[str, Any]) -> str:
    w, a = row.get("w_bits"), row.get("a_bits")
    return "fp32" if (w, a) in ((32, 32), (None, None)) else f"W{w}A{a}"


@dataclass
class Cell:
    """All seeds' values of one metric column for one summary row."""

    values: dict[int, float] = field(default_factory=dict)  # seed -> value
    per_sample: dict[int, list[float]] = field(default_factory=dict)  # seed -> per-image values
    curves: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    higher_is_better: bool = True
    family: str = ""
    summary: Summary | None = None
    p: float = float("nan")
    p_test: str = ""


@dataclass
class SummaryRow:
    """One (dataset, model, method, explainer) row with its metric cells."""

    key: tuple[str, str, str, str]
    info: dict[str, Any]
    cells: dict[str, Cell] = field(default_factory=dict)


def load_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of ``out/results.jsonl`` (later rows win over earlier ones with the same key and variant)."""
    from sgq_bench.evaluate import read_results, row_key

    path = Path(out) / "results.jsonl"
    if not path.exists():
        raise UsageError(f"{out}: no results.jsonl here; run `sgq-bench run --suite ... --out {out}` first")
    latest: dict[Any, dict[str, Any]] = {}
    for row in read_results(path):
        latest[(*row_key(row), row.get("variant"))] = row  # variants of one metric share row_key
    return list(latest.values())


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def aggregate(rows: list[dict[str, Any]], *, n_boot: int = 5000) -> tuple[list[SummaryRow], dict[str, Cell]]:
    """Group rows into summary rows, summarise across seeds and test each against the baseline.

    Returns the summary rows (stable order: dataset, model, model-level first, then explainers,
    baseline first) and one prototype Cell per metric column (direction and family).
    """
    table: dict[tuple, SummaryRow] = {}
    columns: dict[str, Cell] = {}
    for r in rows:
        key = tuple(str(r.get(k)) for k in GROUP_KEYS)
        srow = table.get(key)
        if srow is None:
            srow = table[key] = SummaryRow(key, {
                "method_label": r.get("method_label") or r.get("method"), "quantizer": r.get("quantizer"),
                "objective": r.get("objective"), "bits": bits_label(r), "suite": r.get("suite"),
                "suite_version": r.get("suite_version"),
            })
        col = column_name(r)
        cell = srow.cells.setdefault(col, Cell(higher_is_better=bool(r.get("higher_is_better", True)),
                                               family=r.get("family") or ""))
        seed = int(r.get("seed", 0))
        cell.values[seed] = _float(r.get("value"))
        if r.get("per_sample"):
            cell.per_sample[seed] = [_float(v) for v in r["per_sample"]]
        if r.get("curve"):
            cell.curves[seed] = r["curve"]
        columns.setdefault(col, Cell(higher_is_better=cell.higher_is_better, family=cell.family))
    for srow in table.values():
        for col, cell in srow.cells.items():
            cell.summary = summarize(list(cell.values.values()))
            base = table.get((srow.key[0], srow.key[1], BASELINE, srow.key[3]))
            if srow.key[2] == BASELINE or base is None or col not in base.cells:
                continue
            cell.p, cell.p_test = _compare(cell, base.cells[col], n_boot)
    order = sorted(table.values(), key=_row_order)
    return order, columns


def _compare(cell: Cell, base: Cell, n_boot: int) -> tuple[float, str]:
    """Paired bootstrap over images when both sides have per-image values, else Welch across seeds."""
    seeds = sorted(set(cell.per_sample) & set(base.per_sample))
    if seeds:
        a = mean_per_sample([cell.per_sample[s] for s in seeds])
        b = mean_per_sample([base.per_sample[s] for s in seeds])
        if a is not None and b is not None and a.shape == b.shape:
            return paired_bootstrap_p(a, b, n_boot=n_boot, seed=0), "paired-bootstrap"
    return welch_p(list(cell.values.values()), list(base.values.values())), "welch"


def _row_order(srow: SummaryRow) -> tuple:
    dataset, model, method, explainer = srow.key
    return (dataset, model, explainer != "-", explainer, method != BASELINE, method)


def ordered_columns(columns: dict[str, Cell]) -> list[str]:
    """Metric columns by family (accuracy, deletion, ..., efficiency), then by name."""
    def rank(col: str) -> tuple:
        fam = columns[col].family
        return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), col)

    return sorted(columns, key=rank)


def _num(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}g}"


def to_csv(srows: list[SummaryRow], columns: dict[str, Cell]) -> str:
    """CSV text: key columns, then ``<metric> <↑|↓> <stat>`` for each metric column and statistic."""
    cols = ordered_columns(columns)
    header = ["dataset", "model", "method", "method_label", "quantizer", "objective", "bits", "explainer",
              "suite", "suite_version"]
    for col in cols:
        header += [f"{col} {arrow(columns[col].higher_is_better)} {s}" for s in STAT_FIELDS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for srow in srows:
        d, m, meth, ex = srow.key
        line = [d, m, meth, srow.info["method_label"], srow.info["quantizer"], srow.info["objective"],
                srow.info["bits"], ex, srow.info["suite"], srow.info["suite_version"]]
        for col in cols:
            cell = srow.cells.get(col)
            if cell is None or cell.summary is None:
                line += [""] * len(STAT_FIELDS)
                continue
            s = cell.summary
            line += [_num(s.mean, 8), _num(s.std, 8), s.n, _num(s.ci_low, 8), _num(s.ci_high, 8), _num(cell.p, 4)]
        w.writerow(line)
    return buf.getvalue()


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None or cell.summary is None or cell.summary.n == 0:
        return ""
    s = cell.summary
    text = _num(s.mean)
    if s.n >= 2:
        text += f" ± {_num(s.std, 2)} [{_num(s.ci_low)}, {_num(s.ci_high)}]"
    if math.isfinite(cell.p):
        text += f" p={cell.p:.2g}" if cell.p >= 1e-3 else " p<0.001"
    return text


def _md_table(srows: list[SummaryRow], cols: list[str], columns: dict[str, Cell], with_explainer: bool) -> str:
    head = ["method", "bits"] + (["explainer"] if with_explainer else [])
    head += [f"{c} {arrow(columns[c].higher_is_better)}" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for srow in srows:
        vals = [srow.key[2], srow.info["bits"]] + ([srow.key[3]] if with_explainer else [])
        vals += [_fmt_cell(srow.cells.get(c)) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def to_markdown(srows: list[SummaryRow], columns: dict[str, Cell]) -> str:
    """Markdown: per dataset, a model-level table (accuracy), an efficiency table, an explainer table.

    Cells read ``mean ± std [95% CI]`` (std and CI only with >= 2 seeds) and ``p`` against baseline.
    """
    out = ["# Summary", "",
           "mean ± std [95% t-CI] over seeds; p: vs `baseline` (paired bootstrap over evaluation images "
           "for per-image metrics, else Welch t-test over seeds); ↑ higher is better, ↓ lower is better.", ""]
    cols = ordered_columns(columns)
    for key in sorted({(r.key[0], r.key[1]) for r in srows}):
        rows = [r for r in srows if (r.key[0], r.key[1]) == key]
        seeds = {len(c.values) for r in rows for c in r.cells.values()}
        out += [f"## {key[0]} / {key[1]}", "", f"seeds per cell: {', '.join(map(str, sorted(seeds)))}", ""]
        model_rows = [r for r in rows if r.key[3] == "-"]
        expl_rows = [r for r in rows if r.key[3] != "-"]
        for title, rs, fam_pred, with_ex in (
            ("Accuracy", model_rows, lambda f: f != "efficiency", False),
            ("Efficiency", model_rows, lambda f: f == "efficiency", False),
            ("Interpretability", expl_rows, lambda f: True, True),
        ):
            present = [c for c in cols if fam_pred(columns[c].family) and any(c in r.cells for r in rs)]
            if rs and present:
                out += [f"### {title}", "", _md_table(rs, present, columns, with_ex), ""]
    return "\n".join(out)


def write_report(out: Path, *, figures: bool = True, n_boot: int = 5000) -> str:
    """Write ``summary.csv``, ``summary.md`` (and ``figures/``) for run directory ``out``; return the markdown."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: not a run directory")
    rows = load_rows(out)
    srows, columns = aggregate(rows, n_boot=n_boot)
    md = to_markdown(srows, columns)
    atomic_write_text(out / "summary.csv", to_csv(srows, columns))
    atomic_write_text(out / "summary.md", md + "\n")
    if figures:
        from sgq_bench.report.figures import write_figures

        write_figures(out, rows, srows)
    return md


def curves_by_method(srows: list[SummaryRow], col: str) -> dict[tuple, dict[str, list[float]]]:
    """Seed-averaged curve of metric column ``col`` per summary row key (rows whose curves share x)."""
    out: dict[tuple, dict[str, list[float]]] = {}
    for srow in srows:
        cell = srow.cells.get(col)
        if cell is None or not cell.curves:
            continue
        curves = list(cell.curves.values())
        xs = curves[0]["x"]
        same = [c for c in curves if list(c["x"]) == list(xs)]
        ys = defaultdict(list)
        for c in same:
            for i, y in enumerate(c["y"]):
                ys[i].append(_float(y))
        out[srow.key] = {"x": list(xs), "y": [sum(v) / len(v) for _, v in sorted(ys.items())]}
    return out
