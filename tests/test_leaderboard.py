"""Leaderboards: publish merges (same key replaced, never duplicated), malformed CSVs refused by line."""

from __future__ import annotations

import pytest
from _results import grid, write_run

from sgq_bench.cli import main
from sgq_bench.errors import UsageError
from sgq_bench.leaderboard import KEY_COLUMNS, PROVENANCE_COLUMNS, publish, read_leaderboard, show


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run", grid(seeds=(0, 1)) + grid(seeds=(0,), dataset="other"))


def test_publish_writes_one_file_per_dataset_with_the_schema(run_dir, tmp_path):
    to = tmp_path / "lb"
    assert publish(run_dir, to) == {"synthetic": (8, 0), "other": (8, 0)}
    header, rows = read_leaderboard(to / "synthetic.csv")
    assert header[: len(KEY_COLUMNS)] == list(KEY_COLUMNS) and header[-len(PROVENANCE_COLUMNS):] == list(PROVENANCE_COLUMNS)
    assert {"accuracy_mean", "accuracy_std", "insertion_auc_mean", "n_seeds"} <= set(header)
    r = next(r for r in rows if r["method"] == "pact" and r["explainer"] == "gradient")
    assert r["bits"] == "W4A4" and r["n_seeds"] == "2" and r["git_commit"] == "abc123" and r["date"] == "2026-01-02"
    assert float(r["accuracy_mean"]) == pytest.approx(0.911)  # model-level metrics repeated per explainer row


def test_republish_replaces_never_duplicates(run_dir, tmp_path):
    to = tmp_path / "lb"
    publish(run_dir, to)
    before = (to / "synthetic.csv").read_text()
    assert publish(run_dir, to)["synthetic"] == (0, 8)
    assert (to / "synthetic.csv").read_text() == before
    other = write_run(tmp_path / "run2", [dict(r, suite_version="2") for r in grid(seeds=(0,))])
    assert publish(other, to)["synthetic"] == (8, 0)
    assert len(read_leaderboard(to / "synthetic.csv")[1]) == 16


@pytest.mark.parametrize("corrupt,needle", [
    (lambda lines: lines[:3] + [lines[3] + ",extra"] + lines[4:], "line 4: expected"),
    (lambda lines: lines[:2] + [lines[1]] + lines[2:], "line 3: duplicates the key of line 2"),
    (lambda lines: [lines[0].replace("n_seeds", "seeds")] + lines[1:], "line 1: header lacks column(s) n_seeds"),
])
def test_malformed_csv_is_refused_with_its_line_and_left_alone(run_dir, tmp_path, corrupt, needle, capsys):
    to = tmp_path / "lb"
    publish(run_dir, to)
    path = to / "synthetic.csv"
    bad = "\n".join(corrupt(path.read_text().splitlines())) + "\n"
    path.write_text(bad)
    assert main(["leaderboard", "publish", str(run_dir), "--to", str(to)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert path.read_text() == bad  # nothing was written


def test_show_ranks_by_the_metric_direction(run_dir, tmp_path):
    to = tmp_path / "lb"
    publish(run_dir, to)
    up = show("synthetic", sort="insertion_auc", to=to, explainer="gradient").splitlines()
    assert up[2].split()[1] == "sgt_pact"  # highest insertion first (synthetic shift grows with method index)
    down = show("synthetic", sort="deletion_auc", to=to, explainer="gradient").splitlines()
    assert down[2].split()[1] == "sgt_pact"  # lowest deletion first
    assert len(show(None, to=to, top=2).split("\n\n")) == 2
    with pytest.raises(UsageError, match="Did you mean 'insertion_auc'"):
        show("synthetic", sort="insertion", to=to)
    with pytest.raises(UsageError, match="no leaderboard for dataset 'mnsit'"):
        show("mnsit", to=to)
