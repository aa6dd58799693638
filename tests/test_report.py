"""Report: seed aggregation, t-CI, p-values (bootstrap vs Welch), CSV/Markdown layout and figures."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from _results import grid, row, write_run
from scipy import stats as sp

from sgq_bench.report.tables import aggregate, to_csv, to_markdown, write_report


def cells_of(srows, method, explainer, metric):
    for r in srows:
        if r.key[2] == method and r.key[3] == explainer:
            return r.cells[metric]
    raise KeyError((method, explainer, metric))


def test_aggregate_mean_ci_and_welch():
    srows, cols = aggregate(grid(), n_boot=500)
    acc = cells_of(srows, "pact", "-", "accuracy")
    vals = [0.91, 0.912, 0.914]
    assert acc.summary.n == 3 and acc.summary.mean == pytest.approx(np.mean(vals))
    lo, hi = sp.t.interval(0.95, 2, loc=np.mean(vals), scale=sp.sem(vals))
    assert acc.summary.ci_low == pytest.approx(lo) and acc.summary.ci_high == pytest.approx(hi)
    assert acc.p_test == "welch"
    assert acc.p == pytest.approx(sp.ttest_ind(vals, [0.9, 0.902, 0.904], equal_var=False).pvalue)
    assert np.isnan(cells_of(srows, "baseline", "-", "accuracy").p)  # no test of baseline against itself
    assert cols["size_bytes"].higher_is_better is False


def test_per_image_metrics_use_the_paired_bootstrap():
    srows, _ = aggregate(grid(shift=0.1), n_boot=500)
    ins = cells_of(srows, "sgt", "gradient", "insertion_auc")
    assert ins.p_test == "paired-bootstrap" and ins.p < 0.01
    same, _ = aggregate(grid(shift=0.0), n_boot=500)
    assert cells_of(same, "sgt", "gradient", "insertion_auc").p > 0.01
    # deletion has no per-image values here: Welch across seeds
    assert cells_of(srows, "sgt", "gradient", "deletion_auc").p_test == "welch"


def test_single_seed_has_no_interval_but_bootstrap_still_tests():
    srows, _ = aggregate(grid(seeds=(0,)), n_boot=500)
    ins = cells_of(srows, "sgt", "gradient", "insertion_auc")
    assert ins.summary.n == 1 and np.isnan(ins.summary.ci_low) and ins.p < 0.01
    assert np.isnan(cells_of(srows, "sgt", "gradient", "deletion_auc").p)  # Welch needs 2 seeds a side


def test_csv_has_one_row_per_method_explainer_and_directions_in_header():
    srows, cols = aggregate(grid(), n_boot=200)
    table = list(csv.DictReader(io.StringIO(to_csv(srows, cols))))
    assert len(table) == 4 * 3  # 4 methods x (model-level "-", gradient, random)
    header = table[0].keys()
    for stat in ("mean", "std", "n", "ci_low", "ci_high", "p"):
        assert f"insertion_auc ↑ {stat}" in header and f"deletion_auc ↓ {stat}" in header
    first = table[0]
    assert first["method"] == "baseline" and first["explainer"] == "-" and first["accuracy ↑ n"] == "3"


def test_markdown_tables_and_variants():
    rows = grid(seeds=(0, 1))
    rows += [row("baseline", s, "latency_ms", 2.0 + s, family="efficiency", higher=False, variant="int8@bs128")
             for s in (0, 1)]
    srows, cols = aggregate(rows, n_boot=200)
    md = to_markdown(srows, cols)
    assert "### Accuracy" in md and "### Efficiency" in md and "### Interpretability" in md
    assert "latency_ms[int8@bs128] ↓" in md and "insertion_auc ↑" in md and "p=" in md
    assert "± " in md and "[" in md


def test_later_duplicate_rows_win(tmp_path):
    rows = grid(seeds=(0,))
    dup = dict(rows[0], value=0.123)
    out = write_run(tmp_path / "run", rows + [dup])
    md = write_report(out, figures=False, n_boot=100)
    assert "0.123" in md
    assert (out / "summary.csv").exists() and (out / "summary.md").read_text().startswith("# Summary")


def test_figures_are_written(tmp_path):
    rows = grid(seeds=(0, 1))
    rows += [row(m, s, "roar", 0.5, explainer=ex, family="roar", curve={"x": [0.1, 0.5], "y": [0.8, 0.4]})
             for m in ("baseline", "sgt") for s in (0, 1) for ex in ("gradient", "random")]
    out = write_run(tmp_path / "run", rows)
    write_report(out, figures=True, n_boot=100)
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "pareto_synthetic.png" in names and "roar_synthetic.png" in names
    assert "curves_synthetic_gradient.png" in names and "curves_synthetic_random.png" in names
