"""Report: across-seed statistics on DataFrames (checked against scipy on hand-made rows), the tidy long
summary.csv, the wide Markdown with NaN reasons, protocols never mixed, and figures kept inside figures/."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _results import grid, row, write_run
from scipy import stats as sp

from sgq_bench import load_results
from sgq_bench.errors import UsageError
from sgq_bench.report.figures import figure_path
from sgq_bench.report.summary import SUMMARY_COLUMNS, summarize_results
from sgq_bench.report.tables import to_markdown, write_report

ACC = {"baseline": [0.90, 0.92, 0.91], "pact": [0.88, 0.93, 0.95], "sgt": [0.80, 0.81]}


def frame(tmp_path, rows) -> pd.DataFrame:
    return load_results(write_run(tmp_path / "run", rows))


def one(summary: pd.DataFrame, **where) -> pd.Series:
    sel = summary
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, sel
    return sel.iloc[0]


@pytest.fixture
def acc_rows():
    return [row(m, s, "accuracy", v, family="accuracy") for m, vals in ACC.items() for s, v in enumerate(vals)]


def test_across_seed_statistics_against_scipy(tmp_path, acc_rows):
    summary = summarize_results(frame(tmp_path, acc_rows), n_boot=0)
    pact, base = ACC["pact"], ACC["baseline"]
    r = one(summary, method="pact")
    assert r["n_seeds"] == 3 and r["seeds"] == "0;1;2" and r["reference"] == "baseline"
    assert r["mean"] == pytest.approx(np.mean(pact)) and r["std"] == pytest.approx(np.std(pact, ddof=1))
    lo, hi = sp.t.interval(0.95, 2, loc=np.mean(pact), scale=sp.sem(pact))
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    welch = sp.ttest_ind(pact, base, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert r["diff"] == pytest.approx(np.mean(pact) - np.mean(base))
    assert (r["diff_ci_low"], r["diff_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert r["p_welch"] == pytest.approx(welch.pvalue)
    assert r["p_paired"] == pytest.approx(sp.ttest_rel(pact, base).pvalue)
    assert math.isnan(r["p_within_model"])  # no per-image values
    sgt = one(summary, method="sgt")  # seeds 0, 1 against 0, 1, 2: Welch yes, pairing no
    assert sgt["p_welch"] == pytest.approx(sp.ttest_ind(ACC["sgt"], base, equal_var=False).pvalue)
    assert math.isnan(sgt["p_paired"]) and sgt["n_seeds"] == 2
    ref = one(summary, method="baseline")
    assert all(math.isnan(ref[c]) for c in ("diff", "diff_ci_low", "p_welch", "p_paired"))


def test_reference_is_a_parameter(tmp_path, acc_rows):
    summary = summarize_results(frame(tmp_path, acc_rows), reference="pact", n_boot=0)
    base = one(summary, method="baseline")
    assert base["reference"] == "pact" and base["diff"] == pytest.approx(np.mean(ACC["baseline"]) - np.mean(ACC["pact"]))
    assert math.isnan(one(summary, method="pact")["p_welch"])


def test_within_model_bootstrap_is_its_own_column(tmp_path):
    summary = summarize_results(frame(tmp_path, grid(seeds=(0,), shift=0.1)), n_boot=500)
    ins = one(summary, method="sgt", explainer="gradient", metric="insertion_auc")
    assert ins["p_within_model"] < 0.01  # the images say these two models differ ...
    assert ins["n_seeds"] == 1 and math.isnan(ins["p_welch"]) and math.isnan(ins["p_paired"])  # ... seeds cannot


def test_undefined_values_carry_their_reason_to_csv_and_markdown(tmp_path):
    rows = [row(m, s, "faithfulness_correlation", None if m == "pact" else 0.5 + 0.1 * s, explainer="gradient",
                family="faithfulness", reason="constant attributions" if m == "pact" else None)
            for m in ("baseline", "pact") for s in (0, 1)]
    rows.append(row("sgt", 0, "faithfulness_correlation", 0.4, explainer="gradient", family="faithfulness"))
    rows.append(row("sgt", 1, "faithfulness_correlation", None, explainer="gradient", family="faithfulness",
                    reason="too few pixels"))
    summary = summarize_results(frame(tmp_path, rows), n_boot=0)
    pact = one(summary, method="pact")
    assert pact["n_seeds"] == 0 and pact["n_undefined"] == 2 and pact["reason"] == "constant attributions"
    sgt = one(summary, method="sgt")
    assert sgt["n_seeds"] == 1 and sgt["n_undefined"] == 1 and sgt["mean"] == 0.4
    md = to_markdown(summary)
    assert "undefined: constant attributions" in md and "0.4 (n=1); 1 undefined: too few pixels" in md


def test_summary_csv_is_tidy_long_and_loads_with_read_csv(tmp_path):
    rows = grid(seeds=(0, 1, 2))
    rows += [row("baseline", s, "latency_ms", 2.0 + s, family="efficiency", higher=False, variant="int8@bs128",
                 eval_size=40) for s in (0, 1)]
    out = write_run(tmp_path / "run", rows)
    md = write_report(out, figures=False, n_boot=200)
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert all(c.isascii() and c.replace("_", "").isalnum() and c == c.lower() for c in table.columns)
    # one row per (method, explainer, metric, variant): 4 methods x (2 model-level + 2 x 2 explained
    # + gradient's 2 scores against the random control) + latency
    assert len(table) == 4 * (2 + 2 * 2 + 2) + 1
    acc = table[(table["method"] == "pact") & (table["metric"] == "accuracy")].iloc[0]
    vals = [0.91, 0.912, 0.914]
    assert acc["n_seeds"] == 3 and acc["mean"] == pytest.approx(np.mean(vals))
    assert acc["p_welch"] == pytest.approx(sp.ttest_ind(vals, [0.9, 0.902, 0.904], equal_var=False).pvalue)
    assert bool(acc["higher_is_better"]) is True and acc["explainer"] == "-"
    lat = table[table["metric"] == "latency_ms"].iloc[0]
    assert lat["variant"] == "int8@bs128" and bool(lat["higher_is_better"]) is False
    assert table.iloc[0]["method"] == "baseline" and table.iloc[0]["explainer"] == "-"
    assert "### Accuracy" in md and "### Efficiency" in md and "### Interpretability" in md
    assert "latency_ms[int8@bs128] ↓" in md and "insertion_auc ↑" in md
    assert f"{np.mean(vals):.4g} ± " in md and "(n=3) p=" in md


def test_protocols_are_never_mixed(tmp_path):
    rows = [row(m, s, "accuracy", 0.9 + 0.01 * s, family="accuracy", version="1") for m in ("baseline", "pact")
            for s in (0, 1)]
    rows += [row(m, s, "accuracy", 0.5 + 0.01 * s, family="accuracy", version="2") for m in ("baseline", "pact")
             for s in (0, 1)]
    rows += [row("pact", s, "accuracy", 0.1, family="accuracy", version="2", eval_size=16) for s in (0, 1)]
    summary = summarize_results(frame(tmp_path, rows), n_boot=0)
    assert len(summary) == 5
    v1 = one(summary, method="pact", suite_version="1")
    assert v1["mean"] == pytest.approx(0.905) and v1["diff"] == pytest.approx(0.0)
    small = one(summary, method="pact", suite_version="2", eval_size=16)
    assert small["mean"] == pytest.approx(0.1) and math.isnan(small["diff"])  # no baseline at that size
    md = to_markdown(summary)
    assert md.count("## synthetic / test_cnn") == 3 and "suite `t` v2, 16 test images" in md


def test_later_duplicate_rows_win(tmp_path):
    rows = grid(seeds=(0,))
    dup = dict(rows[0], value=0.123)
    out = write_run(tmp_path / "run", rows + [dup])
    md = write_report(out, figures=False, n_boot=100)
    assert "0.123 (n=1)" in md
    assert (out / "summary.md").read_text().startswith("# Summary")


def test_figures_are_written(tmp_path):
    rows = grid(seeds=(0, 1))
    rows += [row(m, s, "roar", 0.5, explainer=ex, family="roar", curve={"x": [0.1, 0.5], "y": [0.8, 0.4]},
                 eval_size=40) for m in ("baseline", "sgt") for s in (0, 1) for ex in ("gradient", "random")]
    out = write_run(tmp_path / "run", rows)
    write_report(out, figures=True, n_boot=100)
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert names == ["curves_synthetic_gradient.png", "curves_synthetic_random.png", "pareto_synthetic.png",
                     "roar_synthetic.png"]
    # every plot also as a vector figure; the Pareto one carries the across-seed intervals
    assert sorted(p.name for p in (out / "figures").glob("*.svg")) == [n.replace(".png", ".svg") for n in names]
    assert "95% CI across seeds" in (out / "figures" / "pareto_synthetic.svg").read_text()
    from sgq_bench.report.summary import mean_curves
    from sgq_bench.results import load_results

    curves = mean_curves(load_results(out), ("roar",))
    assert set(curves["n"]) == {2} and all(lo <= y <= hi for c in curves.itertuples()
                                            for lo, y, hi in zip(c.lo, c.y, c.hi))


@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/evil"])
def test_figure_names_cannot_leave_the_figures_folder(tmp_path, name):
    with pytest.raises(UsageError, match="would leave"):
        figure_path(tmp_path / "figures", "curves", "synthetic", name)
    assert figure_path(tmp_path / "figures", "curves", "synthetic", "gradient").parent == (tmp_path / "figures").resolve()


def test_epoch_accuracy_gets_an_epoch_by_method_table_and_a_figure(tmp_path):
    rows = [row("baseline", s, "accuracy", 0.9, family="accuracy", eval_size=40) for s in (0, 1)]
    rows += [row(m, s, "epoch_accuracy", 0.5 + 0.1 * e + 0.01 * s - (0.05 if m == "sgt" else 0), family="accuracy",
                 variant=f"epoch={e:03d}", eval_size=40) for m in ("baseline", "sgt") for s in (0, 1) for e in (1, 2, 3)]
    out = write_run(tmp_path / "run", rows)
    md = write_report(out, figures=True, n_boot=0)
    table = md.split("### Accuracy against training length")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| epoch | baseline | sgt |" and [ln.split(" | ")[0] for ln in lines[1:]] == ["| 1", "| 2", "| 3"]
    assert "0.805 ± 0.0071 (n=2)" in lines[3]  # baseline epoch 3: mean of 0.80 and 0.81
    assert "epoch_accuracy" not in md.split("### Accuracy against training length")[0]  # not a wide column
    assert (out / "figures" / "training_synthetic.png").stat().st_size > 0
