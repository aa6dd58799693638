"""Kendall's tau between two protocols' (method x explainer) rankings: checked against a hand count."""

from __future__ import annotations

import json

import pytest
from _results import row, write_run

from sgq_bench.errors import UsageError
from sgq_bench.report.agreement import ranking_agreement

CELLS = [("baseline", "gradient"), ("sgt", "gradient"), ("pact", "gradient"), ("baseline", "random")]


def run_with(tmp_path, name, values):
    rows = [row(m, s, "roar", v + s / 1000, explainer=e, family="roar", higher=False)
            for (m, e), v in zip(CELLS, values) for s in (0, 1)]
    return write_run(tmp_path / name, rows)


def test_tau_is_the_hand_count_of_concordant_pairs(tmp_path):
    full = run_with(tmp_path, "full", [0.30, 0.20, 0.40, 0.90])
    same = run_with(tmp_path, "same", [0.35, 0.25, 0.45, 0.95])
    assert ranking_agreement(same, full)["tau"] == pytest.approx(1.0)
    # one swapped pair (baseline/gradient vs sgt/gradient) of the 6: (5 - 1) / 6
    swapped = run_with(tmp_path, "swapped", [0.20, 0.30, 0.40, 0.90])
    res = ranking_agreement(swapped, full)
    assert res["tau"] == pytest.approx(4 / 6) and res["usable"] is False and res["n_cells"] == 4
    cell = next(c for c in res["cells"] if c["method"] == "sgt")
    assert cell["difference"] == pytest.approx(0.30 - 0.20) and cell["n_cheap"] == 2


def test_too_few_shared_cells_is_one_line(tmp_path):
    a = write_run(tmp_path / "a", [row("baseline", 0, "roar", 0.3, explainer="gradient", family="roar")])
    with pytest.raises(UsageError, match="needs at least 3"):
        ranking_agreement(a, a)


def curve_run(tmp_path, name, xs, ys_by_cell, seeds=(0, 1)):
    """Rows whose value is the curve's mean, with a curve at ``xs`` (one list of ys per cell)."""
    rows = [row(m, s, "roar", sum(ys) / len(ys), explainer=e, family="roar", higher=False,
                curve={"x": list(xs), "y": [y + s / 1000 for y in ys]})
            for (m, e), ys in zip(CELLS, ys_by_cell) for s in seeds]
    return write_run(tmp_path / name, rows)


def test_shared_fractions_compare_the_same_points_of_the_curves(tmp_path):
    # full: 5 fractions; cheap: 3 of them. On their own fractions the means rank differently (tau < 1);
    # at the shared fractions the two agree exactly.
    full = curve_run(tmp_path, "full", [0.1, 0.3, 0.5, 0.7, 0.9],
                     [[0.9, 0.0, 0.5, 0.0, 0.1], [0.8, 0.9, 0.4, 0.9, 0.0], [0.7, 0.0, 0.3, 0.0, 0.0],
                      [0.95, 0.0, 0.6, 0.0, 0.2]])
    cheap = curve_run(tmp_path, "cheap", [0.1, 0.5, 0.9], [[0.9, 0.5, 0.1], [0.8, 0.4, 0.0], [0.7, 0.3, 0.0],
                                                           [0.95, 0.6, 0.2]])
    assert ranking_agreement(cheap, full)["tau"] < 1
    res = ranking_agreement(cheap, full, fractions="shared")
    assert res["fractions"] == [0.1, 0.5, 0.9] and res["tau"] == pytest.approx(1.0)
    cell = next(c for c in res["cells"] if c["method"] == "sgt")  # (0.8 + 0.4 + 0.0) / 3 + seed offsets
    assert cell["full"] == pytest.approx(1.2 / 3 + 0.0005) and cell["difference"] == pytest.approx(0.0)
    with pytest.raises(UsageError, match=r"no point at fraction\(s\) \[0.3\]"):
        ranking_agreement(cheap, full, fractions=[0.3])


def test_split_half_is_the_hand_count_between_seed_halves(tmp_path):
    from sgq_bench.report.agreement import split_half

    # seed 0 orders the 4 cells one way and seed 1 exactly the other way: every split gives tau = -1
    rows = [row(m, s, "roar", v if s == 0 else 1 - v, explainer=e, family="roar", higher=False)
            for (m, e), v in zip(CELLS, [0.1, 0.2, 0.3, 0.4]) for s in (0, 1)]
    res = split_half(write_run(tmp_path / "flip", rows))
    assert res["splits"] == 2 and res["tau_mean"] == pytest.approx(-1.0) and res["tau_max"] == pytest.approx(-1.0)
    same = run_with(tmp_path, "same", [0.30, 0.20, 0.40, 0.90])  # seeds differ by 0.001: the same order
    assert split_half(same)["tau_min"] == pytest.approx(1.0)
    one = write_run(tmp_path / "one", [row(m, 0, "roar", v, explainer=e, family="roar")
                                       for (m, e), v in zip(CELLS, [0.1, 0.2, 0.3, 0.4])])
    with pytest.raises(UsageError, match="at least 2"):
        split_half(one)


def test_report_agree_with_writes_the_agreement(tmp_path):
    from _cli_helpers import invoke

    full = curve_run(tmp_path, "full", [0.1, 0.5, 0.9], [[0.9, 0.5, 0.1], [0.8, 0.4, 0.0], [0.7, 0.3, 0.0],
                                                         [0.95, 0.6, 0.2]])
    cheap = curve_run(tmp_path, "cheap", [0.1, 0.9], [[0.9, 0.1], [0.8, 0.0], [0.7, 0.0], [0.95, 0.2]])
    res = invoke("report", str(cheap), "--no-figures", "--agree-with", str(full))
    assert res.exit_code == 0, res.output
    text = (cheap / "agreement.md").read_text()
    assert "tau at the shared fractions [0.1, 0.9]: **1.000**" in text and "split-half" in text
    assert json.loads((cheap / "agreement.json").read_text())["metrics"]["roar"]["shared_fractions"]["tau"] == 1.0
