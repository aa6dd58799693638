"""Ranking scores against the same model's random-map control (sgq_bench.report.controls), by hand."""

from __future__ import annotations

import pandas as pd
import pytest
import scipy.stats as sp
from _results import row, write_run

from sgq_bench.report.claims import Claim, evaluate_claims
from sgq_bench.report.controls import CONTROL_FAMILY, with_control_gains
from sgq_bench.report.summary import summarize_results
from sgq_bench.report.tables import to_markdown
from sgq_bench.results import load_results

# deletion AUC per seed: (gradient map, random map). sgt's model loses accuracy faster under any pixel
# order (both of its numbers are 0.08 lower), so its raw gradient score looks better; against the
# control it is the same as baseline's.
DELETION = {
    "baseline": [(0.23, 0.59), (0.25, 0.62), (0.22, 0.57)],
    "sgt": [(0.15, 0.51), (0.17, 0.54), (0.14, 0.49)],
}


def _frame(tmp_path) -> pd.DataFrame:
    rows = []
    for method, pairs in DELETION.items():
        for seed, (grad, rand) in enumerate(pairs):
            rows.append(row(method, seed, "deletion_auc", grad, explainer="gradient", higher=False,
                            per_sample=[grad - 0.01, grad + 0.01]))
            rows.append(row(method, seed, "deletion_auc", rand, explainer="random", higher=False,
                            per_sample=[rand, rand]))
            rows.append(row(method, seed, "sparseness", 0.5, explainer="gradient", family="sparsity"))
            rows.append(row(method, seed, "sparseness", 0.2, explainer="random", family="sparsity"))
    rows.append(row("sgt", 3, "deletion_auc", 0.1, explainer="gradient", higher=False,  # no control: no gain
                    per_sample=[0.1, 0.1]))
    return load_results(write_run(tmp_path / "run", rows))


def test_gain_is_the_map_minus_the_same_models_random_map(tmp_path):
    out = with_control_gains(_frame(tmp_path))
    gains = out[out["metric"] == "deletion_auc_vs_random"].sort_values(["method", "seed"])
    assert list(gains["method"]) == ["baseline"] * 3 + ["sgt"] * 3  # sgt seed 3 has no random row
    expected = [g - r for m in ("baseline", "sgt") for g, r in DELETION[m]]
    assert list(gains["value"]) == pytest.approx(expected)
    assert set(gains["family"]) == {CONTROL_FAMILY} and set(gains["explainer"]) == {"gradient"}
    assert not gains["higher_is_better"].any()  # the direction of the metric it comes from
    first = gains.iloc[0]
    grad, rand = DELETION["baseline"][0]
    assert first["per_sample"] == pytest.approx([grad - 0.01 - rand, grad + 0.01 - rand])
    assert first["provenance"]["git_commit"] == "abc123"  # leaderboards need it on derived rows too
    assert not out["metric"].str.startswith("sparseness_").any()  # not a ranking metric


def test_gain_is_idempotent_and_leaves_the_rows_it_was_given(tmp_path):
    df = _frame(tmp_path)
    once = with_control_gains(df)
    twice = with_control_gains(once)
    assert len(once) == len(twice) == len(df) + 6
    assert once.iloc[: len(df)]["value"].tolist() == df["value"].tolist()


def test_a_model_wide_shift_disappears_against_the_control(tmp_path):
    """The point of the control: raw scores differ (p < 0.01), the gains do not (same per-seed numbers)."""
    summary = summarize_results(_frame(tmp_path), n_boot=0).set_index(["method", "explainer", "metric"])
    raw = summary.loc[("sgt", "gradient", "deletion_auc")]
    base_raw = [g for g, _ in DELETION["baseline"]]
    sgt_raw = [g for g, _ in DELETION["sgt"][:3]] + [0.1]
    assert raw["p_welch"] == pytest.approx(sp.ttest_ind(sgt_raw, base_raw, equal_var=False).pvalue)
    assert raw["p_welch"] < 0.01
    gain = summary.loc[("sgt", "gradient", "deletion_auc_vs_random")]
    assert gain["n_seeds"] == 3 and gain["diff"] == pytest.approx(0.0, abs=1e-12)
    assert gain["p_welch"] == pytest.approx(1.0) and gain["family"] == CONTROL_FAMILY


def test_claims_and_the_report_read_the_gains(tmp_path):
    df = _frame(tmp_path)
    claim = Claim("c", "SGT: more faithful beyond the control", "sgt", "deletion_auc_vs_random",
                  explainer="gradient")
    verdict = evaluate_claims(df, [claim]).iloc[0]
    assert verdict["diff"] == pytest.approx(0.0, abs=1e-12) and verdict["verdict"] == "not significant"
    md = to_markdown(summarize_results(df, n_boot=0))
    section = md[md.index("### Interpretability against the random control"):]
    assert "deletion_auc_vs_random ↓" in section
    assert "deletion_auc_vs_random" not in md[: md.index("### Interpretability against the random control")]


def test_a_run_without_a_random_control_is_unchanged(tmp_path):
    rows = [row("baseline", s, "deletion_auc", 0.2, explainer="gradient", higher=False) for s in range(2)]
    df = load_results(write_run(tmp_path / "run", rows))
    assert len(with_control_gains(df)) == len(df)


def test_each_model_is_matched_with_its_own_control_and_an_undefined_control_says_so(tmp_path):
    """Two checkpoints of one method and seed in one run directory (e.g. retrained with another recipe)."""
    rows = []
    for key, grad, rand in (("A", 0.2, 0.8), ("B", 0.3, 0.5)):
        for ex, v in (("gradient", grad), ("random", rand)):
            r = row("baseline", 0, "deletion_auc", v, explainer=ex, higher=False, per_sample=[v, None])
            r["checkpoint_key"] = key
            rows.append(r)
    rows.append(row("sgt", 0, "deletion_auc", 0.1, explainer="gradient", higher=False, per_sample=[0.1, 0.1]))
    rows.append(row("sgt", 0, "deletion_auc", None, explainer="random", higher=False, per_sample=[0.1, 0.1],
                    reason="constant attributions"))
    out = with_control_gains(load_results(write_run(tmp_path / "run", rows)))
    gains = out[out["metric"] == "deletion_auc_vs_random"].set_index(["method", "checkpoint_key"])
    assert gains.loc[("baseline", "A"), "value"] == pytest.approx(-0.6)
    assert gains.loc[("baseline", "B"), "value"] == pytest.approx(-0.2)
    first, second = gains.loc[("baseline", "A"), "per_sample"]
    assert first == pytest.approx(-0.6) and second is None  # an undefined image stays undefined
    undefined = gains.loc[("sgt", "sgt-0")]
    assert pd.isna(undefined["value"]) and "random control is undefined" in undefined["reason"]


def test_nothing_to_derive_returns_the_rows_unchanged(tmp_path):
    df = with_control_gains(_frame(tmp_path))
    without_control = df[df["explainer"] != "random"]
    assert with_control_gains(without_control).equals(without_control)  # derived rows are not dropped


def test_roar_and_kar_are_measured_against_the_shared_random_retrain(tmp_path):
    """ROAR/KAR: the control is the fixed learner retrained on random removals, the same for every method
    of a seed; roar_vs_random = map - control per seed (no per-image values: a retrain scores the test set)."""
    roar = {"baseline": [0.95, 0.97], "sgt_pact": [0.90, 0.91]}
    control = [0.94, 0.95]  # per seed, shared by both methods
    rows = []
    for method, values in roar.items():
        for seed, v in enumerate(values):
            rows.append(row(method, seed, "roar", v, explainer="gradient", family="roar", higher=False))
            rows.append(row(method, seed, "roar", control[seed], explainer="random", family="roar", higher=False))
            rows.append(row(method, seed, "kar", 0.98, explainer="gradient", family="roar"))
            rows.append(row(method, seed, "kar", 0.90, explainer="random", family="roar"))
    out = with_control_gains(load_results(write_run(tmp_path / "run", rows)))
    gains = out[out["metric"] == "roar_vs_random"].sort_values(["method", "seed"])
    assert list(gains["value"]) == pytest.approx([0.01, 0.02, -0.04, -0.04])
    assert not gains["higher_is_better"].any() and set(gains["family"]) == {CONTROL_FAMILY}
    kar = out[out["metric"] == "kar_vs_random"]
    assert list(kar["value"]) == pytest.approx([0.08] * 4) and kar["higher_is_better"].all()
    claim = Claim(id="c", text="t", method="sgt_pact", metric="roar_vs_random", explainer="gradient")
    verdict = evaluate_claims(out, [claim]).iloc[0]
    assert verdict["mean_method"] == pytest.approx(-0.04) and verdict["mean_reference"] == pytest.approx(0.015)
    assert verdict["diff"] == pytest.approx(-0.055)
