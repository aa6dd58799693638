"""`bench metrics`: every row names its reference, matches it, and carries its floors (no timing bounds)."""

from __future__ import annotations

import pytest

from sgq_bench.cli import main


def test_cli_bench_metrics_rows_match_their_references(capsys: pytest.CaptureFixture, tmp_path) -> None:
    rc = main(["bench", "metrics", "--dataset", "synthetic", "--suite", "smoke", "--n", "16", "--train-size", "512",
               "--epochs", "1", "--metrics", "deletion_auc,road_lerf,sparseness", "--checkpoint-dir", str(tmp_path)],
              standalone_mode=False)
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()
            and line.split()[0] in ("deletion_auc", "road_lerf", "sparseness")}
    assert set(rows) == {"deletion_auc", "road_lerf", "sparseness"}
    assert "quantus.PixelFlipping" in " ".join(rows["deletion_auc"])
    assert "quantus.ROAD" in " ".join(rows["road_lerf"])
    for name in ("deletion_auc", "road_lerf"):
        ours, ref, _, diff, floor, ratio = rows[name][1:7]
        assert float(ours) > 0 and float(ref) > 0 and float(floor) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
    assert float(rows["deletion_auc"][4]) < 1e-5  # the same ranking, the same values as Quantus
    assert float(rows["sparseness"][4]) < 1e-5
    header = next(line for line in out.splitlines() if line.startswith("metric "))
    value_col = header.split().index("value") - 4  # "ours s", "ref s", "floor s", "+ties s": two words each
    assert 0 <= float(rows["road_lerf"][value_col]) <= 1  # our value is printed, to compare runs
