"""Claim verdicts across seeds (sgq_bench.report.claims) on hand-made per-seed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sp
from _cli_helpers import invoke, one_error_line
from _results import row, write_run

from sgq_bench.errors import UsageError
from sgq_bench.report.claims import Claim, Elsewhere, evaluate_claims, holm, load_claims, to_markdown
from sgq_bench.results import load_results


def _frame(tmp_path, values: dict[str, list[float]], metric: str = "deletion_auc", higher: bool = False,
           explainer: str = "gradient") -> pd.DataFrame:
    rows = [row(m, s, metric, v, explainer=explainer, higher=higher)
            for m, vals in values.items() for s, v in enumerate(vals)]
    return load_results(write_run(tmp_path / "run", rows))


def test_better_claim_by_hand_welch_paired_and_verdict(tmp_path):
    base, sgt = [0.30, 0.32, 0.31], [0.20, 0.21, 0.23]
    df = _frame(tmp_path, {"baseline": base, "sgt": sgt})
    t = evaluate_claims(df, [Claim("c", "SGT deletes faster", "sgt", "deletion_auc", explainer="gradient")])
    assert len(t) == 1
    r = t.iloc[0]
    assert r.n_method == r.n_reference == 3 and r.seeds == "0;1;2"
    assert r["diff"] == pytest.approx(np.mean(sgt) - np.mean(base))
    assert r.p_welch == pytest.approx(sp.ttest_ind(sgt, base, equal_var=False).pvalue)
    assert r.p_paired == pytest.approx(sp.ttest_rel(sgt, base).pvalue)
    assert r.p_holm == pytest.approx(r.p_welch)  # a family of one
    assert r.seed_diff_min == pytest.approx(-0.11) and r.seed_diff_max == pytest.approx(-0.08)
    assert r.verdict == "holds" and not r.unstable  # lower deletion AUC is better


def test_opposite_direction_is_contradicted_and_noise_is_not_significant(tmp_path):
    df = _frame(tmp_path, {"baseline": [0.20, 0.21, 0.22], "pact": [0.30, 0.31, 0.33], "sgt": [0.19, 0.23, 0.21]})
    t = evaluate_claims(df, [Claim("p", "p", "pact", "deletion_auc", explainer="gradient"),
                             Claim("s", "s", "sgt", "deletion_auc", explainer="gradient")]).set_index("claim")
    assert t.loc["p", "verdict"] == "contradicted"
    # sgt: per-seed differences -0.01, +0.02, -0.01: both sides of zero
    assert t.loc["s", "verdict"].startswith("not significant; unstable across seeds (per-seed differences -0.01 to +0.02)")


def test_not_worse_uses_a_one_sided_test_against_the_margin(tmp_path):
    base = [0.985, 0.984, 0.986, 0.985]
    close, far = [0.983, 0.984, 0.982, 0.983], [0.950, 0.955, 0.952, 0.951]
    df = _frame(tmp_path, {"baseline": base, "pact": close, "sgt": far}, metric="accuracy", higher=True,
                explainer="-")
    claims = [Claim("p", "p", "pact", "accuracy", kind="not_worse", margin=0.01),
              Claim("s", "s", "sgt", "accuracy", kind="not_worse", margin=0.01)]
    t = evaluate_claims(df, claims).set_index("claim")
    expect = sp.ttest_ind(np.array(close) + 0.01, base, equal_var=False, alternative="greater").pvalue
    assert t.loc["p", "p_test"] == pytest.approx(expect)
    assert t.loc["p", "verdict"] == "holds"  # 0.2 points worse, well inside a 1-point margin
    assert t.loc["s", "verdict"] == "contradicted"  # 3.3 points worse: the whole CI is beyond the margin
    assert list(t["p_holm"]) == pytest.approx(list(holm(t["p_test"])))


def test_holm_by_hand():
    adj = holm([0.01, 0.04, np.nan, 0.03])
    # sorted 0.01, 0.03, 0.04 with m = 3: 0.03, max(0.03, 0.06), max(0.06, 0.04)
    np.testing.assert_allclose(adj, [0.03, 0.06, np.nan, 0.06])


def test_one_seed_is_untested_and_elsewhere_numbers_mark_instability(tmp_path):
    df = _frame(tmp_path, {"baseline": [0.70, 0.72, 0.71], "pact": [0.75, 0.76, 0.77], "sgt": [0.9]},
                metric="sparseness", higher=True)
    claims = [Claim("p", "p", "pact", "sparseness", explainer="gradient",
                    elsewhere=(Elsewhere("machine B", -0.07), Elsewhere("other data", -1.0, dataset="mnist"))),
              Claim("s", "s", "sgt", "sparseness", explainer="gradient")]
    t = evaluate_claims(df, claims).set_index("claim")
    assert t.loc["p", "verdict"] == "holds; unstable across runs (here +0.05, machine B: -0.07)"
    assert t.loc["s", "verdict"].startswith("untested (n = 1/3 seeds")
    line = next(ln for ln in to_markdown(t.reset_index()).splitlines() if ln.startswith("| s |"))
    assert "| +0.19 |" in line and "nan" not in line  # one seed: a difference, no interval


def test_reference_variant_compares_int8_with_fp32_latency(tmp_path):
    rows = [row("baseline", s, "latency_ms", 50.0 + s, variant="fp32@bs128", higher=False, family="efficiency")
            for s in range(3)]
    rows += [row("pact", s, "latency_ms", 15.0 + s, variant="int8@bs128", higher=False, family="efficiency")
             for s in range(3)]
    df = load_results(write_run(tmp_path / "run", rows))
    t = evaluate_claims(df, [Claim("l", "int8 faster", "pact", "latency_ms", variant="int8@bs128",
                                   reference_variant="fp32@bs128")])
    assert t.iloc[0]["diff"] == pytest.approx(-35.0) and t.iloc[0].verdict == "holds"


def test_packaged_paper_claims_load_and_bad_files_are_one_line_usage_errors(tmp_path):
    claims = load_claims("paper")
    assert {c.method for c in claims} == {"pact", "sgt", "sgt_pact"} and len({c.id for c in claims}) == len(claims)
    bad = tmp_path / "c.toml"
    for text, needle in (('[[claim]]\nid="a"\ntext="t"\nmethod="pact"\nmetric="accuracy"\nkind="worse"\n', "kind 'worse'"),
                         ('[[claim]]\nid="a"\ntext="t"\nmethod="pact"\n', "needs a non-empty string metric"),
                         ('[[claim]]\nid="a"\ntext="t"\nmethod="pact"\nmetric="m"\nfoo=1\n', "unknown key(s) foo"),
                         ('[[claim]]\nid="a"\ntext="t"\nmethod="p"\nmetric="m"\nkind="not_worse"\nmargin=-1\n',
                          "margin -1.0"),
                         ('[[claim]]\nid="a"\ntext="t"\nmethod="p"\nmetric="m"\ndatasets="mnist"\n',
                          "must be a list of dataset names"),
                         ("x = [", "not valid TOML")):
        bad.write_text(text)
        with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_claims(bad)
    with pytest.raises(UsageError, match="not found"):
        load_claims(tmp_path / "missing.toml")


def test_report_cli_writes_claims_and_rejects_a_bad_claims_file(tmp_path):
    rows = [row(m, s, "deletion_auc", v + step * s, explainer="gradient", higher=False)
            for m, v, step in (("baseline", 0.3, 0.01), ("sgt_pact", 0.2, 0.013)) for s in range(3)]
    run = write_run(tmp_path / "run", rows)
    res = invoke("report", str(run), "--no-figures", "--claims", "paper")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(run / "claims.csv")
    assert list(table["claim"]) == ["sgt_pact_deletion"] and table["verdict"].iloc[0] == "holds"
    assert "SGT + PACT: gradient maps more faithful (deletion AUC)" in (run / "claims.md").read_text()
    res = invoke("report", str(run), "--claims", str(tmp_path / "nope.toml"))
    assert res.exit_code == 2 and "claims file" in one_error_line(res)
