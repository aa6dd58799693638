"""Leaderboards: long CSVs loadable with pd.read_csv, the direction recorded per row and used by show,
publish merges (same key replaced, never duplicated), non-finite values refused, --top >= 1, and the
earlier wide files still read and migrated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _results import grid, row, write_run

from sgq_bench.errors import UsageError
from sgq_bench.leaderboard import (
    COLUMNS,
    KEY_COLUMNS,
    board_path,
    check_top,
    migrate_leaderboard,
    publish,
    read_leaderboard,
    show,
)

REPO_BOARDS = Path(__file__).resolve().parent.parent / "leaderboards"
# The wide-format files published before the long format (kept to test reading and migrating them).
LEGACY_BOARDS = Path(__file__).resolve().parent / "fixtures" / "legacy_leaderboards"
# metrics per (method, seed) in grid(): 2 model-level + 2 explainers x 2 metrics
PER_METHOD = 2 + 2 * 2 + 2  # model-level, two explainers x two scores, gradient against the random control


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run", grid(seeds=(0, 1)) + grid(seeds=(0,), dataset="other"))


def ranked(text: str) -> list[str]:
    """Method column of a show() table (line 0: file, line 1: header)."""
    return [line.split()[1] for line in text.splitlines()[2:]]


def test_publish_writes_long_csvs_that_plain_read_csv_loads(run_dir, tmp_path):
    lb = tmp_path / "lb"
    assert publish(run_dir, lb) == {"synthetic": (4 * PER_METHOD, 0), "other": (4 * PER_METHOD, 0)}
    df = pd.read_csv(lb / "synthetic.csv")
    assert list(df.columns) == list(COLUMNS) and all(c.isascii() for c in df.columns)
    assert df["higher_is_better"].dtype == bool and df["mean"].dtype == float
    r = df[(df["method"] == "pact") & (df["metric"] == "accuracy")].iloc[0]
    assert r["explainer"] == "-" and r["bits"] == "W4A4" and r["n_seeds"] == 2 and r["seeds"] == "0;1"
    assert r["mean"] == pytest.approx(0.911) and r["git_commit"] == "abc123" and r["date"] == "2026-01-02"
    assert r["suite"] == "t" and r["eval_size"] == 40 and r["precision"] == "fp32" and r["recipe"] == "{}"
    dele = df[(df["metric"] == "deletion_auc")]
    assert not dele["higher_is_better"].any() and df[df["metric"] == "insertion_auc"]["higher_is_better"].all()


def test_republish_replaces_never_duplicates(run_dir, tmp_path):
    lb = tmp_path / "lb"
    publish(run_dir, lb)
    before = (lb / "synthetic.csv").read_text()
    assert publish(run_dir, lb)["synthetic"] == (0, 4 * PER_METHOD)
    assert (lb / "synthetic.csv").read_text() == before
    other = write_run(tmp_path / "run2", [dict(r, suite_version="2") for r in grid(seeds=(0,))])
    assert publish(other, lb)["synthetic"] == (4 * PER_METHOD, 0)
    assert len(read_leaderboard(lb / "synthetic.csv")) == 8 * PER_METHOD


@pytest.mark.parametrize("corrupt,needle", [
    (lambda lines: lines[:3] + [lines[3] + ",extra"] + lines[4:], "line 4: expected 32 fields, got 33"),
    (lambda lines: lines[:2] + [lines[1]] + lines[2:], "line 3: duplicates the key of line 2"),
    (lambda lines: [lines[0].replace("n_seeds", "seeds_n")] + lines[1:], "line 1: header lacks column(s) n_seeds"),
    (lambda lines: lines[:1] + [lines[1].replace(",True,", ",maybe,", 1)] + lines[2:],
     "line 2: higher_is_better = 'maybe'"),
])
def test_malformed_csv_is_refused_with_its_line_and_left_alone(run_dir, tmp_path, corrupt, needle):
    lb = tmp_path / "lb"
    publish(run_dir, lb)
    path = lb / "synthetic.csv"
    bad = "\n".join(corrupt(path.read_text().splitlines())) + "\n"
    path.write_text(bad)
    with pytest.raises(UsageError) as err:
        publish(run_dir, lb)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1
    assert path.read_text() == bad  # nothing was written


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_values_in_a_file_are_refused(run_dir, tmp_path, value):
    lb = tmp_path / "lb"
    publish(run_dir, lb)
    path = lb / "synthetic.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[3, "mean"] = value
    table.to_csv(path, index=False)
    with pytest.raises(UsageError, match=rf"line 5: mean = '{value}' is not finite"):
        show("synthetic", leaderboards=lb)


def test_publishing_an_undefined_result_is_refused_or_skipped(tmp_path, capsys):
    rows = grid(seeds=(0,)) + [row("pact", 0, "faithfulness_correlation", None, explainer="gradient",
                                   reason="constant attributions", eval_size=40)]
    run = write_run(tmp_path / "run", rows)
    lb = tmp_path / "lb"
    with pytest.raises(UsageError) as err:
        publish(run, lb)
    msg = str(err.value)
    assert "pact/gradient/faithfulness_correlation (constant attributions); nothing was written" in msg
    assert len(msg.splitlines()) == 1 and not lb.exists()
    assert publish(run, lb, skip_undefined=True)["synthetic"] == (4 * PER_METHOD, 0)
    assert "left out 1 result(s)" in capsys.readouterr().err


def test_show_ranks_by_the_direction_recorded_in_the_file(run_dir, tmp_path):
    lb = tmp_path / "lb"
    publish(run_dir, lb)
    assert ranked(show("synthetic", sort="insertion_auc", leaderboards=lb, explainer="gradient"))[0] == "sgt_pact"
    assert ranked(show("synthetic", sort="deletion_auc", leaderboards=lb, explainer="gradient"))[0] == "sgt_pact"
    assert ranked(show("synthetic", sort="size_bytes", leaderboards=lb, explainer="gradient"))[:2] == ["pact", "sgt_pact"]
    # flip the recorded direction of insertion_auc: the ranking follows the file, not the registry
    path = lb / "synthetic.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[table["metric"] == "insertion_auc", "higher_is_better"] = "False"
    table.to_csv(path, index=False)
    text = show("synthetic", sort="insertion_auc", leaderboards=lb, explainer="gradient")
    assert ranked(text)[0] == "baseline" and "insertion_auc ↓" in text
    with pytest.raises(UsageError, match="Did you mean 'insertion_auc'"):
        show("synthetic", sort="insertion", leaderboards=lb)
    with pytest.raises(UsageError, match="no leaderboard for dataset 'synthetc'"):
        show("synthetc", leaderboards=lb)


def test_an_uninstalled_metric_keeps_its_published_direction(tmp_path):
    rows = [row(m, 0, "plugin_error", v, explainer="gradient", higher=False, eval_size=8)
            for m, v in (("baseline", 0.3), ("pact", 0.1), ("sgt", 0.2))]
    lb = tmp_path / "lb"
    publish(write_run(tmp_path / "run", rows), lb)  # no metric called plugin_error is registered
    assert ranked(show("synthetic", sort="plugin_error", leaderboards=lb)) == ["pact", "sgt", "baseline"]


def test_top_must_be_at_least_one(run_dir, tmp_path):
    lb = tmp_path / "lb"
    publish(run_dir, lb)
    everything = ranked(show("synthetic", sort="accuracy", leaderboards=lb))
    assert len(everything) == 4
    assert ranked(show("synthetic", sort="accuracy", leaderboards=lb, top=1)) == everything[:1]
    assert ranked(show("synthetic", sort="accuracy", leaderboards=lb, top=10)) == everything
    assert len(show(None, leaderboards=lb, top=2).split("\n\n")) == 2
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(UsageError, match=r"--top .* must be an integer >= 1"):
            show("synthetic", leaderboards=lb, top=bad)
    assert check_top(None) is None and check_top(3) == 3


def test_dataset_names_cannot_leave_the_leaderboards_folder(tmp_path):
    with pytest.raises(UsageError, match="outside"):
        board_path(tmp_path, "../escape")
    assert board_path(tmp_path, "mnist") == tmp_path / "mnist.csv"


def test_the_earlier_wide_files_still_read_and_migrate(tmp_path):
    for name in ("mnist", "cifar10"):
        long = read_leaderboard(LEGACY_BOARDS / f"{name}.csv")
        assert set(long.columns) == set(COLUMNS) and len(long) > 0
        acc = long[long["metric"] == "accuracy"]
        assert set(acc["explainer"]) == {"-"} and len(acc) == len(set(acc["method"]))  # no per-explainer copies
        assert set(long.loc[long["metric"] == "deletion_auc", "higher_is_better"]) == {"False"}
    text = show("mnist", sort="accuracy", leaderboards=LEGACY_BOARDS)
    assert ranked(text)[0] == "baseline"
    copy = tmp_path / "mnist.csv"
    shutil.copy(LEGACY_BOARDS / "mnist.csv", copy)
    n = migrate_leaderboard(copy)
    df = pd.read_csv(copy)
    assert list(df.columns) == list(COLUMNS) and len(df) == n and df["higher_is_better"].dtype == bool
    assert not df.duplicated(list(KEY_COLUMNS)).any()


def test_a_wide_file_with_an_uninstalled_metric_cannot_be_ranked_by_it(tmp_path):
    path = tmp_path / "mnist.csv"
    lines = (LEGACY_BOARDS / "mnist.csv").read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("topk_mass_mean", "gone_metric_mean", 1), *lines[1:]]) + "\n")
    with pytest.raises(UsageError, match="direction of gone_metric is not recorded"):
        show("mnist", sort="gone_metric", leaderboards=tmp_path)
    assert ranked(show("mnist", sort="accuracy", leaderboards=tmp_path))[0] == "baseline"
    before = path.read_text()
    with pytest.raises(UsageError, match="higher_is_better = ''"):
        migrate_leaderboard(path)
    assert path.read_text() == before


def test_the_repository_leaderboards_are_long_and_load_with_plain_read_csv():
    for name in ("mnist", "cifar10"):
        df = pd.read_csv(REPO_BOARDS / f"{name}.csv")
        assert list(df.columns) == list(COLUMNS) and len(df) > 0 and df["higher_is_better"].dtype == bool
        assert not df.duplicated(list(KEY_COLUMNS)).any() and df["mean"].notna().all()


def test_show_keeps_one_suite_and_rounds_mean_and_std(tmp_path):
    rows = [row(m, s, "accuracy", 0.98 + 0.001 * s + 0.0001 * i, family="accuracy", suite="seeds")
            for i, m in enumerate(("baseline", "sgt")) for s in range(3)]
    rows += [row(m, 0, "accuracy", 0.99, family="accuracy", suite="quick") for m in ("baseline", "sgt")]
    lb = tmp_path / "lb"
    publish(write_run(tmp_path / "run", rows), lb)
    assert len(ranked(show("synthetic", leaderboards=lb))) == 4
    text = show("synthetic", leaderboards=lb, suite="seeds")
    assert ranked(text) == ["sgt", "baseline"] and "quick" not in text
    assert "0.9811 ± 0.001 " in text  # 4 and 2 significant digits; the CSV keeps full precision
    with pytest.raises(UsageError, match="no rows of suite 'seed'"):
        show("synthetic", leaderboards=lb, suite="seed")


def test_a_stored_control_score_without_its_source_row_keeps_its_own_provenance(tmp_path):
    """Control scores are derived, never stored; a run that stored one anyway (no random rows to derive
    from, no source row) is published under its own row's provenance instead of failing."""
    from sgq_bench.leaderboard import rows_from_run

    rows = [r for r in grid(seeds=(0, 1)) if r["explainer"] == "-"]
    rows += [row("baseline", s, "deletion_auc_vs_random", 0.1 + 0.01 * s, explainer="gradient", family="vs_random",
                 higher=False) for s in (0, 1)]
    out = rows_from_run(write_run(tmp_path / "run", rows))
    stored = out[out["metric"] == "deletion_auc_vs_random"]
    assert len(stored) == 1 and stored["n_seeds"].iloc[0] == "2" and stored["git_commit"].iloc[0] != ""


def test_a_row_names_every_commit_and_device_behind_it(tmp_path):
    """Seeds scored (or trained) by different commits, one of them a dirty tree: the published row lists
    them all as `mixed: ...` instead of the last row's commit."""
    from _results import row, write_run

    from sgq_bench.leaderboard import rows_from_run

    rows = []
    for seed, commit in ((0, "aaa"), (1, "bbb-dirty")):
        r = row("baseline", seed, "accuracy", 0.9 + seed / 100, family="accuracy")
        r["provenance"] = {**r.get("provenance", {}), "git_commit": commit, "device": "cpu:X"}
        r["training_provenance"] = {"git_commit": "ccc", "device": "cpu:Y"}
        rows.append(r)
    board = rows_from_run(write_run(tmp_path / "run", rows))
    (only,) = board.to_dict("records")
    assert only["git_commit"] == "mixed: aaa;bbb-dirty;ccc" and only["device"] == "mixed: cpu:X;cpu:Y"


def test_a_row_of_built_in_pieces_says_so_in_the_plugins_column(tmp_path):
    """The plugins column is never silently empty: built-in-only rows say `built-in`, and a plugin row
    names its distribution (tests/test_example_plugin.py)."""
    from _results import row, write_run

    from sgq_bench.leaderboard import rows_from_run

    r = row("baseline", 0, "accuracy", 0.9, family="accuracy")
    r["plugins"] = {"dataset": {"name": "mnist", "distribution": "sgq-bench", "version": "0.1.0"}}
    (only,) = rows_from_run(write_run(tmp_path / "run", [r])).to_dict("records")
    assert only["plugins"] == "built-in"


def test_a_roar_row_carries_its_learner_and_an_older_board_still_reads(tmp_path):
    """metric_params: a cheap learner's ROAR row is told from a full one's on the board itself; a value that
    differs by seed (the learner's checkpoint key) is not shown as everyone's; a board published before the
    column existed reads with it empty."""
    learner = {"epochs": 1, "train_size": 6000, "fractions": [0.1, 0.9]}
    rows = [row(m, s, "roar", 0.5 + 0.01 * s, explainer="gradient", family="roar", higher=False)
            for m in ("baseline", "sgt") for s in (0, 1)]
    for i, r in enumerate(rows):
        r["params"] = {**learner, "learner_key": f"k{i % 2}"}
    lb = tmp_path / "lb"
    publish(write_run(tmp_path / "run", rows), lb)
    df = read_leaderboard(lb / "synthetic.csv")
    got = json.loads(df["metric_params"].iloc[0])
    assert got == {**learner, "learner_key": "per seed"}
    old = pd.read_csv(lb / "synthetic.csv", dtype=str).drop(columns=["metric_params"])
    old.to_csv(lb / "synthetic.csv", index=False)
    again = read_leaderboard(lb / "synthetic.csv")
    assert list(again.columns) == list(COLUMNS) and (again["metric_params"] == "").all() and len(again) == 2
