"""evaluate_cell rows, resume, results reading, and the evaluate CLI's errors."""

from __future__ import annotations

import json

import pytest
from _metric_helpers import smoke_spec, trained

from sgq_bench.cli import main
from sgq_bench.errors import UsageError
from sgq_bench.evaluate import evaluate_cell, read_results, row_key

SCHEMA = {"dataset", "model", "method", "method_label", "quantizer", "objective", "w_bits", "a_bits",
          "quantizer_params", "objective_params", "seed", "recipe", "checkpoint_key", "explainer",
          "explainer_params", "metric", "family", "variant", "value", "higher_is_better", "params", "curve",
          "per_sample", "eval_size", "eval_seed", "suite", "suite_version", "provenance", "time_s", "created"}


def test_rows_schema_and_resume(tmp_path):
    trained()  # the smoke checkpoint (shared by the session)
    out = tmp_path / "results.jsonl"
    kw = dict(explainers=["gradient", "random"], metrics=["accuracy", "deletion_auc", "sparseness"], eval_size=16,
              metric_params={"deletion_auc": {"steps": 8}}, results_path=out, progress=False, suite="smoke",
              suite_version="1")
    rows = evaluate_cell(smoke_spec(), **kw)
    assert len(rows) == 1 + 2 * 2
    for r in rows:
        assert SCHEMA <= set(r), SCHEMA - set(r)
    acc = [r for r in rows if r["metric"] == "accuracy"]
    assert len(acc) == 1 and acc[0]["explainer"] == "-"
    dele = next(r for r in rows if r["metric"] == "deletion_auc" and r["explainer"] == "gradient")
    assert dele["params"] == {"steps": 8, "baseline": "mean"} and len(dele["curve"]["x"]) == 9
    assert len(dele["per_sample"]) == 16 and dele["higher_is_better"] is False
    assert read_results(out) == json.loads(json.dumps(rows))
    assert evaluate_cell(smoke_spec(), **kw) == []  # everything present: skipped
    again = evaluate_cell(smoke_spec(), **{**kw, "metrics": ["accuracy", "deletion_auc", "complexity"]})
    assert {(r["explainer"], r["metric"]) for r in again} == {("gradient", "complexity"), ("random", "complexity")}
    assert len({row_key(r) for r in read_results(out)}) == 7


def test_read_results_names_the_corrupted_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(UsageError, match=r"results.jsonl:2: corrupted"):
        read_results(path)


@pytest.mark.parametrize("argv,needle", [
    (["--explainers", "gradiant"], "Did you mean 'gradient'"),
    (["--metrics", "deletion"], "deletion_auc"),
    (["--metrics", "deletion_auc", "--metric-param", "deletion_auc.steps=0"], "steps"),
    (["--metrics", "deletion_auc", "--metric-param", "deletion_auc=3"], "METRIC.KEY=VALUE"),
    (["--metrics", "road_morf", "--metric-param", "road_morf.fractions=0.5,1.5"], "fractions"),
])
def test_cli_usage_errors_exit_2(tmp_path, capsys, argv, needle):
    code = main(["evaluate", "--suite", "smoke", "--dataset", "synthetic", "--out", str(tmp_path), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cli_evaluate_prints_table(tmp_path, capsys):
    trained()
    code = main(["evaluate", "--suite", "smoke", "--dataset", "synthetic", "--out", str(tmp_path), "--eval-size", "8",
                 "--explainers", "gradient", "--metrics", "topk_mass,complexity", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "topk_mass ^" in out and "complexity v" in out and (tmp_path / "results.jsonl").exists()
