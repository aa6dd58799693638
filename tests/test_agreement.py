"""Kendall's tau between two protocols' (method x explainer) rankings: checked against a hand count."""

from __future__ import annotations

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
