"""A run directory's report: ``summary.csv`` (tidy, long), ``summary.md`` (wide, for reading), ``figures/``.

``summary.csv`` has one row per (protocol, method, explainer, metric, variant) with ASCII snake_case
columns (``sgq_bench.report.summary.SUMMARY_COLUMNS``); load it with ``pandas.read_csv``. The Markdown
shows, per protocol (suite, suite version, dataset, model, evaluation size and subset, precision), one
wide table per kind of metric with ``mean ± std (n=seeds)`` and the Welch p-value against the
reference method, and the reason wherever a value is undefined.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sgq_bench._io import atomic_write_text
from sgq_bench.errors import UsageError
from sgq_bench.report.controls import CONTROL_FAMILY
from sgq_bench.report.summary import (
    NO_EXPLAINER,
    PROTOCOL_KEYS,
    REFERENCE,
    column_name,
    family_rank,
    method_order,
    protocols,
    summarize_results,
)
from sgq_bench.results import load_results

EPOCH_METRIC = "epoch_accuracy"  # reported as its own epoch x method table


def to_csv(summary: pd.DataFrame) -> str:
    """CSV text of the tidy summary (full float precision; empty cells where a statistic is undefined)."""
    return summary.to_csv(index=False, lineterminator="\n")


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}g}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return ""
    return " p<0.001" if p < 1e-3 else f" p={p:.2g}"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cell_text(r: Any) -> str:
    """``mean ± std (n=N) p=...``; ``undefined: <reason>`` where no seed has a value."""
    if r.n_seeds == 0:
        return f"undefined: {_md_escape(r.reason)}"
    text = _num(r.mean)
    if r.n_seeds >= 2:
        text += f" ± {_num(r.std, 2)}"
    text += f" (n={r.n_seeds})" + _p(r.p_welch)
    if r.n_undefined:
        text += f"; {r.n_undefined} undefined: {_md_escape(r.reason)}"
    return text


def _wide(rows: pd.DataFrame, with_explainer: bool, reference: str) -> str:
    """A Markdown table: one line per method (and explainer), one column per metric[variant]."""
    rows = rows.assign(column=[column_name(m, v) for m, v in zip(rows["metric"], rows["variant"])])
    order = rows.drop_duplicates("column").assign(rank=lambda d: d["family"].map(family_rank))
    cols = list(order.sort_values(["rank", "column"], kind="stable")["column"])
    arrows = dict(zip(rows["column"], rows["higher_is_better"]))
    head = ["method", "bits"] + (["explainer"] if with_explainer else [])
    head += [f"{c} {'↑' if arrows[c] else '↓'}" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    line_keys = ["explainer", "method"] if with_explainer else ["method"]
    methods = method_order(list(rows["method"]), reference)
    rows = rows.assign(m_rank=rows["method"].map(methods.index))
    for _, sub in rows.sort_values([*line_keys[:-1], "m_rank"], kind="stable").groupby(
            [*line_keys[:-1], "m_rank"], sort=False):
        cells = {c: cell_text(r) for c, r in zip(sub["column"], sub.itertuples(index=False))}
        first = sub.iloc[0]
        vals = [first["method"], first["bits"]] + ([first["explainer"]] if with_explainer else [])
        vals += [cells.get(c, "") for c in cols]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines)


def to_markdown(summary: pd.DataFrame, reference: str = REFERENCE) -> str:
    """Markdown: per protocol, an accuracy, an efficiency and an interpretability table."""
    out = ["# Summary", "",
           "Cells: mean ± std across trained models (n = seeds); p: Welch t-test across seeds against "
           f"`{reference}`. The 95% CIs, the difference to `{reference}` with its CI, the paired-by-seed test "
           "and the within-model bootstrap over images (which supports no claim about a method) are in "
           "`summary.csv`. ↑ higher is better, ↓ lower is better.", ""]
    for proto in protocols(summary):
        rows = summary[(summary[list(PROTOCOL_KEYS)].astype(str) == [str(v) for v in proto]).all(axis=1)]
        p = dict(zip(PROTOCOL_KEYS, proto))
        seeds = rows.groupby("method")["n_seeds"].max()
        out += [f"## {p['dataset']} / {p['model']}", "",
                f"suite `{p['suite']}` v{p['suite_version']}, {p['eval_size']} test images (eval seed "
                f"{p['eval_seed']}), {p['precision']} training; seeds: "
                + ", ".join(f"{m} {int(seeds[m])}" for m in method_order(list(seeds.index), reference)), ""]
        model_level = rows[rows["explainer"] == NO_EXPLAINER]
        explained = rows[rows["explainer"] != NO_EXPLAINER]
        against_control = explained["family"] == CONTROL_FAMILY
        by_epoch = model_level["metric"] == EPOCH_METRIC
        for title, part, with_ex in (
            ("Accuracy", model_level[(model_level["family"] != "efficiency") & ~by_epoch], False),
            ("Efficiency", model_level[model_level["family"] == "efficiency"], False),
            ("Interpretability", explained[~against_control], True),
        ):
            if len(part):
                out += [f"### {title}", "", _wide(part, with_ex, reference), ""]
        if against_control.any():
            out += ["### Interpretability against the random control", "",
                    "Each ranking score minus the same model's score with a random map, on the same images: what "
                    "the map adds beyond how the model reacts to losing pixels at all "
                    "(`sgq_bench/report/controls.py`). Compare methods here when they change the model.", "",
                    _wide(explained[against_control], True, reference), ""]
        if by_epoch.any() and model_level.loc[by_epoch, "n_seeds"].max() > 0:
            out += ["### Accuracy against training length", "",
                    "Test accuracy on the whole test split after each epoch, from the training log of the same "
                    "models; p: Welch across seeds against the reference at the same epoch.", "",
                    _by_epoch(model_level[by_epoch], reference), ""]
    return "\n".join(out)


def _by_epoch(rows: pd.DataFrame, reference: str) -> str:
    """One line per epoch, one column per method (the wide tables would need a column per epoch)."""
    rows = rows[rows["n_seeds"] > 0].assign(epoch=lambda d: d["variant"].str.removeprefix("epoch=").astype(int))
    methods = method_order(list(rows["method"]), reference)
    labels = dict(zip(rows["method"], rows["method_label"]))
    lines = ["| epoch | " + " | ".join(labels[m] for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for epoch, sub in rows.groupby("epoch", sort=True):
        cells = {r.method: cell_text(r) for r in sub.itertuples(index=False)}
        lines.append(f"| {epoch} | " + " | ".join(cells.get(m, "") for m in methods) + " |")
    return "\n".join(lines)


def write_report(out: Path, *, figures: bool = True, n_boot: int = 5000, reference: str | None = None,
                 claims: str | Path | None = None) -> str:
    """Write ``summary.csv``, ``summary.md`` (and ``figures/``) for run directory ``out``; return the markdown.

    ``reference``: the method others are compared with (default ``baseline``). A run without the default
    reference is reported without paired statistics, saying why (its work is not thrown away); a
    reference given explicitly must be a method of the run. ``claims`` (a claims TOML file, or a packaged
    set such as ``paper``): also ``claims.csv`` and ``claims.md``, the verdict of each claim across seeds
    (:mod:`sgq_bench.report.claims`), appended to the returned markdown.
    """
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: not a run directory")
    results = load_results(out)
    methods = set(results["method"])
    note = ""
    if reference is not None and reference not in methods:
        from sgq_bench.errors import did_you_mean

        raise UsageError(f"--reference {reference!r} is not a method of {out}.{did_you_mean(reference, methods)}")
    if reference is None:
        reference = REFERENCE
        if reference not in methods:
            note = (f"> No paired statistics: this run has no `{reference}` method to compare with (methods: "
                    f"{', '.join(sorted(methods))}); `sgq-bench report DIR --reference METHOD` picks one.\n\n")
    claim_list = None
    if claims is not None:  # parsed first: a bad claims file fails before anything is written
        from sgq_bench.report.claims import load_claims

        claim_list = load_claims(claims)
    summary = summarize_results(results, reference=reference, n_boot=n_boot)
    md = note + to_markdown(summary, reference)
    atomic_write_text(out / "summary.csv", to_csv(summary))
    atomic_write_text(out / "summary.md", md + "\n")
    if figures:
        from sgq_bench.report.figures import write_figures

        write_figures(out, results, summary, reference=reference)
    if claim_list is not None:
        from sgq_bench.report.claims import write_claims

        md += "\n" + write_claims(out, results, claim_list)
    return md


__all__ = ["cell_text", "to_csv", "to_markdown", "write_report"]
