"""The result-row schema: validated on write and on read (one-line errors naming file:line and the field),
torn lines skipped, and load_results as a long-format DataFrame."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from _results import row, write_run

from sgq_bench import load_results
from sgq_bench.errors import UsageError
from sgq_bench.results import (
    COLUMNS,
    FIELDS,
    NESTED_FIELDS,
    read_rows,
    result_key,
    row_key,
    store_cell,
    validate_row,
)


def test_append_then_read_round_trips_and_fills_fields_added_later(tmp_path):
    path = tmp_path / "results.jsonl"
    first = row("baseline", 0, "accuracy", 0.9, family="accuracy")
    old = {k: v for k, v in row("pact", 1, "accuracy", 0.8, family="accuracy").items()
           if k not in ("precision", "reason", "train_data_sha256", "training_provenance")}  # written before those
    old["recipe"] = {"epochs": 1}
    store_cell(tmp_path, "a", "a", "k1", [first])
    store_cell(tmp_path, "b", "b", "k2", [old])
    back = read_rows(path)
    assert back[0] == {**first, "origin": None, "weights_sha256": None}  # filled: written before they existed
    assert back[1]["precision"] == "fp32" and back[1]["reason"] is None and back[1]["train_data_sha256"] is None
    assert back[1]["training_provenance"] is None
    assert validate_row({**old, "recipe": {"precision": "auto"}}, "x")["precision"] == "unknown"
    assert read_rows(tmp_path / "missing.jsonl") == []


def _line_error(tmp_path, bad: object) -> str:
    path = tmp_path / "results.jsonl"
    good = json.dumps(row("baseline", 0, "accuracy", 0.9))
    path.write_text(good + "\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
    with pytest.raises(UsageError) as err:
        read_rows(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{path}:2: ")
    return msg


@pytest.mark.parametrize("change,needle", [
    ({"seed": "0"}, "field 'seed' = '0' is str; expected an integer"),
    ({"seed": True}, "field 'seed' = True is bool; expected an integer"),
    ({"value": "0.9"}, "field 'value' = '0.9' is str; expected a number"),
    ({"higher_is_better": "yes"}, "field 'higher_is_better' = 'yes' is str; expected true or false"),
    ({"per_sample": {"a": 1}}, "field 'per_sample'"),
    ({"dataset": None}, "field 'dataset' is null; expected a string"),
    ({"metric": ""}, "field 'metric' is empty"),
    ({"eval_size": 0}, "field 'eval_size' = 0 must be >= 1"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_ill_typed_rows_are_refused_naming_file_line_and_field(tmp_path, change, needle):
    assert needle in _line_error(tmp_path, {**row("baseline", 0, "accuracy", 0.9), **change})


def test_foreign_rows_are_refused(tmp_path):
    assert "not a sgq-bench result row: missing field(s) dataset" in _line_error(tmp_path, {"loss": 0.1})
    assert "expected an object" in _line_error(tmp_path, "[1, 2]")
    assert "'value' = nan is not finite" in _line_error(tmp_path, json.dumps(row("pact", 0, "accuracy", math.nan)))


def test_a_truncated_line_is_refused_by_its_line_number(tmp_path):
    path = tmp_path / "results.jsonl"
    a, b = row("baseline", 0, "accuracy", 0.9), row("pact", 0, "accuracy", 0.8)
    path.write_text(json.dumps(a) + "\n" + json.dumps(b)[:30] + "\n" + json.dumps(b) + "\n")
    with pytest.raises(UsageError) as err:
        read_rows(path)
    assert str(err.value).startswith(f"{path}:2: corrupted results line") and "rerun `sgq-bench run`" in str(err.value)


def test_store_cell_writes_nothing_when_any_row_is_invalid(tmp_path):
    path = tmp_path / "results.jsonl"
    store_cell(tmp_path, "a", "a", "k1", [row("baseline", 0, "accuracy", 0.9)])
    before = path.read_bytes()
    with pytest.raises(UsageError, match=r"b row 2: field 'seed'"):
        store_cell(tmp_path, "b", "b", "k2", [row("pact", 0, "accuracy", 0.8),
                                               {**row("sgt", 0, "accuracy", 0.7), "seed": "x"}])
    assert path.read_bytes() == before and not (tmp_path / "cells" / "b.jsonl").exists()


def test_keys():
    r = row("pact", 2, "latency_ms", 3.0, variant="int8@bs1")
    assert row_key(r) == ("t", "1", "synthetic", "test_cnn", "pact", 2, "pact-2", "-", "latency_ms", 8, 0)
    assert result_key(r) == (*row_key(r), "int8@bs1")


def test_load_results_is_long_typed_and_deduplicated(tmp_path):
    rows = [
        row("baseline", 0, "accuracy", 0.5, family="accuracy"),
        row("baseline", 0, "accuracy", 0.9, family="accuracy"),  # a rerun: the later row wins
        row("pact", 0, "latency_ms", 3.0, variant="int8@bs1", family="efficiency", higher=False),
        row("pact", 0, "deletion_auc", 0.2, explainer="gradient", higher=False,
            extra={"tie_fraction": 0.25, "tie_draws": 5, "tie_spread": 0.01}),
        row("pact", 0, "faithfulness_correlation", None, explainer="gradient", family="faithfulness",
            reason="constant attributions"),
    ]
    df = load_results(write_run(tmp_path / "run", rows))
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert list(df.columns) == [*COLUMNS, *NESTED_FIELDS]
    assert all(c.isascii() and c == c.lower() for c in df.columns)
    assert df["value"].dtype == "float64" and df["seed"].dtype == "int64" and df["higher_is_better"].dtype == bool
    acc = df[df["metric"] == "accuracy"]
    assert acc["value"].tolist() == [0.9] and acc["variant"].tolist() == [""] and acc["bits"].tolist() == ["fp32"]
    dele = df[df["metric"] == "deletion_auc"].iloc[0]
    assert (dele["tie_fraction"], dele["tie_draws"], dele["tie_spread"]) == (0.25, 5.0, 0.01)
    assert dele["bits"] == "W4A4" and dele["device"] == "cpu:test" and dele["curve"] is None
    undefined = df[df["metric"] == "faithfulness_correlation"].iloc[0]
    assert math.isnan(undefined["value"]) and undefined["reason"] == "constant attributions"
    flat = load_results(tmp_path / "run" / "results.jsonl", nested=False)
    assert list(flat.columns) == list(COLUMNS)
    assert len(load_results(tmp_path / "run", dedupe=False)) == 5


def test_load_results_of_a_folder_without_results_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no results.jsonl here"):
        load_results(tmp_path)


def test_schema_documents_every_field():
    assert {"reason", "precision", "train_data_sha256", "value", "seed", "suite_version"} <= set(FIELDS)
    assert set(NESTED_FIELDS) == {"quantizer_params", "objective_params", "recipe", "explainer_params", "params",
                                  "curve", "per_sample", "extra", "plugins", "provenance", "training_provenance"}


def test_method_labels_load_in_one_format_whatever_the_row_says(tmp_path):
    old = row("pact", 0, "accuracy", 0.5, family="accuracy")
    old["method_label"] = "pact[W4A4]"  # the format rows were written in before the declared bits
    rows = [old, row("sgt_pact", 0, "accuracy", 0.6, family="accuracy"), row("baseline", 0, "accuracy", 0.7,
                                                                            family="accuracy")]
    df = load_results(write_run(tmp_path / "run", rows))
    assert dict(zip(df["method"], df["method_label"])) == {"pact": "pact W4A4", "sgt_pact": "sgt_pact W4A4",
                                                           "baseline": "baseline"}
    assert set(df["bits"]) == {"W4A4", "fp32"}
