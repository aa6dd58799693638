"""`sgq-bench status`: each cell's state read from disk, through every state a run passes."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests._cli_helpers import invoke, one_error_line


def test_status_follows_cells_through_every_state(tmp_path):
    from sgq_bench.config.suite import load_suite
    from sgq_bench.runner import _now, expand, run
    from sgq_bench.status import format_status, suite_status
    from sgq_bench.train import load_or_train

    ck, out = tmp_path / "ckpt", tmp_path / "run"
    frame = suite_status("smoke", out=out, checkpoint_dir=ck)
    assert len(frame) == 4 and set(frame["state"]) == {"waiting"}
    run("smoke", out=out, checkpoint_dir=ck, only="method=baseline", progress=False, report=False,
        log=lambda s: None, threads=1)
    cells = {c.spec.method.name: c for c in expand(load_suite("smoke"))}

    def stop_at_5(step, total):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="state saved"):  # a training stopped mid-way
        load_or_train(cells["pact"].spec, checkpoint_dir=ck, progress=False, on_step=stop_at_5)
    load_or_train(cells["sgt"].spec, checkpoint_dir=ck, progress=False)  # trained, not yet scored
    (out / "errors.jsonl").write_text(json.dumps({"cell": cells["sgt_pact"].id, "error": "RuntimeError",
                                                  "message": "out of memory", "time": _now()}) + "\n")
    frame = suite_status("smoke", out=out, checkpoint_dir=ck).set_index("cell")
    assert frame["state"].to_dict() == {cells["baseline"].id: "done", cells["pact"].id: "training",
                                        cells["sgt"].id: "trained", cells["sgt_pact"].id: "failed"}
    stopped = frame.loc[cells["pact"].id]
    assert stopped["step"] == 5 and stopped["epoch"] == 0 and stopped["steps"] > 5
    assert stopped["left_s"] == pytest.approx(stopped["train_s"] / 5 * (stopped["steps"] - 5))
    assert 0 <= stopped["saved_ago_s"] < 600
    assert frame.loc[cells["sgt"].id, "left_s"] == 0 and frame.loc[cells["sgt"].id, "epoch"] == frame.loc[
        cells["sgt"].id, "epochs"]
    text = format_status(frame.reset_index())
    assert "1 done, 1 trained, 1 training, 1 failed" in text and "RuntimeError: out of memory" in text
    res = invoke("status", "--suite", "smoke", "--out", str(out), "--checkpoint-dir", str(ck), "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["done", "training", "trained", "failed"]


def test_status_of_an_unknown_suite_is_a_usage_error(tmp_path):
    res = invoke("status", "--suite", "smok", "--out", str(tmp_path))
    assert res.exit_code == 2 and "smok" in one_error_line(res)
