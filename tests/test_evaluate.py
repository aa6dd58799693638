"""evaluate_cell: schema-valid rows, resume, the worker mode (results_path=None, done), eval_size and
run-directory protocol refusals, attribution checks, and the evaluate command's one-line errors."""

from __future__ import annotations

import json

import pytest
from _metric_helpers import evaluate_spec, smoke_spec, trained
from click.testing import CliRunner

import sgq_bench.evaluate
from sgq_bench.cli import main
from sgq_bench.errors import UsageError
from sgq_bench.results import FIELDS, read_rows, row_key
from sgq_bench.specs import ExecContext

REQUIRED = {k for k, f in FIELDS.items() if f.required} | {"precision", "train_data_sha256", "reason"}
KW = dict(explainers=["gradient", "random"], metrics=["accuracy", "deletion_auc", "sparseness"], eval_size=16,
          metric_params={"deletion_auc": {"steps": 8}}, progress=False, suite="smoke", suite_version="1")


def test_rows_schema_and_resume(tmp_path):
    trained()  # the smoke checkpoint (shared by the session)
    out = tmp_path / "results.jsonl"
    rows = evaluate_spec(smoke_spec(), results_path=out, **KW)
    assert len(rows) == 1 + 2 * 2
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["precision"] == "fp32" and len(r["train_data_sha256"]) >= 16 and r["reason"] is None
        assert r["eval_size"] == 16
        # the training's own provenance travels with every row (the row's provenance is its evaluation's)
        assert {"device", "git_commit", "torch_version"} <= set(r["training_provenance"])
        assert r["training_provenance"]["device"].startswith("cpu")
    acc = [r for r in rows if r["metric"] == "accuracy"]
    assert len(acc) == 1 and acc[0]["explainer"] == "-"
    dele = next(r for r in rows if r["metric"] == "deletion_auc" and r["explainer"] == "gradient")
    assert {"steps": 8, "baseline": "mean"}.items() <= dele["params"].items() and len(dele["curve"]["x"]) == 9
    assert len(dele["per_sample"]) == 16 and dele["higher_is_better"] is False
    assert read_rows(out) == json.loads(json.dumps(rows))
    assert evaluate_spec(smoke_spec(), results_path=out, **KW) == []  # everything present: skipped
    again = evaluate_spec(smoke_spec(), results_path=out, **{**KW, "metrics": ["accuracy", "deletion_auc", "complexity"]})
    assert {(r["explainer"], r["metric"]) for r in again} == {("gradient", "complexity"), ("random", "complexity")}
    assert len({row_key(r) for r in read_rows(out)}) == 7


def test_worker_mode_returns_rows_writes_nothing_and_skips_done(tmp_path):
    trained()
    rows = evaluate_spec(smoke_spec(), results_path=None, **KW)
    assert len(rows) == 5 and not list(tmp_path.iterdir())
    done = {row_key(r) for r in rows if r["metric"] != "sparseness"}
    rest = evaluate_spec(smoke_spec(), results_path=None, done=done, **KW)
    assert {(r["explainer"], r["metric"]) for r in rest} == {("gradient", "sparseness"), ("random", "sparseness")}
    assert evaluate_spec(smoke_spec(), results_path=None, done={row_key(r) for r in rows}, **KW) == []


def test_every_explainer_output_is_checked_before_metrics(tmp_path, monkeypatch):
    trained()
    seen = []

    def check(name, attr, x):
        seen.append((name, tuple(attr.shape), tuple(x.shape)))
        return attr

    monkeypatch.setattr(sgq_bench.evaluate, "check_attributions", check)
    evaluate_spec(smoke_spec(), results_path=None, **KW)
    assert [s[0] for s in seen] == ["gradient", "random"] and all(s[1] == s[2] for s in seen)


def test_a_bad_explainer_leaves_only_its_own_rows_undefined(tmp_path, monkeypatch):
    """An explainer returning NaN maps: its metric rows are null with the reason; the other explainer's
    rows and the model-level rows are computed as usual (the cell is not failed)."""
    from sgq_bench import _registry

    trained()
    gradient = _registry.explainers.get("gradient")
    real = gradient.attribute
    monkeypatch.setattr(gradient, "attribute", lambda self, m, x, t: real(self, m, x, t) * float("nan"))
    rows = evaluate_spec(smoke_spec(), results_path=None, **KW)
    bad = [r for r in rows if r["explainer"] == "gradient"]
    good = [r for r in rows if r["explainer"] == "random"]
    assert len(bad) == 2 and all(r["value"] is None and "non-finite attributions" in r["reason"] for r in bad)
    assert len(good) == 2 and all(r["value"] is not None for r in good)
    assert [r["value"] is not None for r in rows if r["explainer"] == "-"] == [True]


def test_an_eval_size_above_the_test_split_is_refused_before_training(tmp_path):
    with pytest.raises(UsageError) as err:
        evaluate_spec(smoke_spec(), results_path=tmp_path / "results.jsonl", **{**KW, "eval_size": 10_000})
    msg = str(err.value)
    assert "eval_size=10000 exceeds the 256 images of the synthetic test split" in msg and len(msg.splitlines()) == 1
    assert not (tmp_path / "results.jsonl").exists()


def test_another_protocol_in_the_run_directory_is_refused(tmp_path):
    trained()
    out = tmp_path / "results.jsonl"
    evaluate_spec(smoke_spec(), results_path=out, **{**KW, "metrics": ["accuracy"]})
    before = out.read_bytes()
    for change, needle in ((dict(eval_size=8), "eval_size=16"), (dict(suite_version="2"), "suite_version='1'"),
                           (dict(eval_seed=3), "eval_seed=0")):
        with pytest.raises(UsageError, match=needle) as err:
            evaluate_spec(smoke_spec(), results_path=out, **{**KW, **change})
        assert "use another --out" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert out.read_bytes() == before
    manifest = {"fingerprint": "f00", "suite": {"name": "smoke", "version": "1", "eval_seed": 0,
                                                "datasets": [{"name": "synthetic", "eval_size": 64}]}}
    fresh = tmp_path / "run"
    fresh.mkdir()
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="eval_size 64 for synthetic; refusing to add results at eval_size 16"):
        evaluate_spec(smoke_spec(), results_path=fresh / "results.jsonl", **KW)
    with pytest.raises(UsageError, match="fingerprint f00"):
        evaluate_spec(smoke_spec(), results_path=fresh / "results.jsonl", fingerprint="beef", **{**KW, "eval_size": 64})
    assert not (fresh / "results.jsonl").exists()


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("argv,needle", [
    (["--explainers", "gradiant"], "Did you mean 'gradient'"),
    (["--metrics", "deletion"], "deletion_auc"),
    (["--metrics", "deletion_auc", "--metric-param", "deletion_auc.steps=0"], "steps"),
    (["--metrics", "deletion_auc", "--metric-param", "deletion_auc=3"], "METRIC.KEY=VALUE"),
    (["--metrics", "road_morf", "--metric-param", "road_morf.fractions=0.5,1.5"], "fractions"),
    (["--eval-size", "100000"], "exceeds the 256 images"),
])
def test_cli_usage_errors_exit_2(tmp_path, argv, needle):
    res = invoke("evaluate", "--suite", "smoke", "--dataset", "synthetic", "--out", str(tmp_path), *argv)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


def test_cli_evaluate_prints_table(tmp_path):
    trained()
    res = invoke("evaluate", "--suite", "smoke", "--dataset", "synthetic", "--out", str(tmp_path), "--eval-size", "8",
                 "--explainers", "gradient", "--metrics", "topk_mass,complexity", "--quiet")
    assert res.exit_code == 0, res.output
    assert "topk_mass ^" in res.stdout and "complexity v" in res.stdout and (tmp_path / "results.jsonl").exists()


def test_epoch_accuracy_rows_are_the_training_logs_per_epoch_test_accuracy(tmp_path):
    from dataclasses import replace

    from sgq_bench.train import load_or_train

    spec = smoke_spec()  # 2 epochs
    history = load_or_train(spec, ExecContext(progress=False)).meta["history"]
    rows = evaluate_spec(spec, results_path=tmp_path / "r.jsonl", explainers=[], metrics=["epoch_accuracy"],
                         eval_size=16, progress=False)
    assert [(r["variant"], r["value"]) for r in rows] == [
        (f"epoch={h['epoch']:03d}", h["test_accuracy"]) for h in history] and len(rows) == 2
    assert all(r["family"] == "accuracy" and r["extra"]["train_loss"] is not None for r in rows)
    one = replace(spec, recipe=replace(spec.recipe, epochs=1, train_size=64))
    (row,) = evaluate_spec(one, results_path=None, explainers=[], metrics=["epoch_accuracy"], eval_size=16,
                           progress=False)
    assert row["value"] is None and "no per-epoch test accuracy" in row["reason"]
