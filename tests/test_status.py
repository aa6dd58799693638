"""`sgq-bench status`: each cell's state read from disk, through every state a run passes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from sgq_bench.specs import ExecContext
from tests._cli_helpers import invoke, one_error_line


def test_status_follows_cells_through_every_state(tmp_path):
    from sgq_bench.config.suite import load_suite
    from sgq_bench.orchestration.cells import expand
    from sgq_bench.orchestration.rundir import now as _now
    from sgq_bench.orchestration.runner import run
    from sgq_bench.orchestration.status import format_status, suite_status
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
        load_or_train(cells["pact"].spec, ExecContext(checkpoint_dir=ck, progress=False), on_step=stop_at_5)
    load_or_train(cells["sgt"].spec, ExecContext(checkpoint_dir=ck, progress=False))  # trained, not yet scored
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
    stale = time.time() - 3600  # a state an hour old: its training is not running
    partial = next(ck.glob("*.partial.pt"))
    os.utime(partial, (stale, stale))
    later = suite_status("smoke", out=out, checkpoint_dir=ck).set_index("cell")
    assert later.loc[cells["pact"].id, "state"] == "stopped" and later.loc[cells["pact"].id, "saved_ago_s"] > 3500
    assert "1 training(s) stopped (a rerun resumes them)" in format_status(later.reset_index())
    os.utime(partial)
    text = format_status(frame.reset_index())
    assert "1 done, 1 trained, 1 training, 1 failed" in text and "RuntimeError: out of memory" in text
    res = invoke("status", "--suite", "smoke", "--out", str(out), "--checkpoint-dir", str(ck), "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["done", "training", "trained", "failed"]
    assert rows[1]["step"] == 5 and isinstance(rows[1]["epochs"], int)
    assert all(r["precision"] == "fp32" and r["checkpoint"].startswith("synthetic-test_cnn-") for r in rows)

    # An error older than the model: the cell failed once, then trained in a later run. An error of the
    # same cell id under another key (another configuration of the cell) is not this cell's.
    old = {"cell": cells["sgt"].id, "key": cells["sgt"].key(), "error": "RuntimeError", "message": "old",
           "time": "2020-01-01T00:00:00+00:00"}
    other = {"cell": cells["sgt"].id, "key": "another-key", "error": "RuntimeError", "message": "other", "time": _now()}
    with open(out / "errors.jsonl", "a") as f:
        f.write(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    assert suite_status("smoke", out=out, checkpoint_dir=ck).set_index("cell").loc[cells["sgt"].id, "state"] == "trained"
    # A damaged saved state is one run discards (training starts over): waiting, not failed.
    from sgq_bench import checkpoints
    from sgq_bench.train import locate_checkpoint

    partial = checkpoints.partial_path(locate_checkpoint(cells["pact"].spec, checkpoint_dir=ck).path)
    partial.write_bytes(b"damaged")
    assert suite_status("smoke", out=out, checkpoint_dir=ck).set_index("cell").loc[cells["pact"].id, "state"] == "waiting"


def test_status_reads_the_runs_device_and_refuses_another_configuration(tmp_path):
    from sgq_bench.orchestration.runner import run
    from sgq_bench.orchestration.status import suite_status

    out = tmp_path / "run"
    run("smoke", out=out, checkpoint_dir=tmp_path / "ck", only="method=baseline", progress=False, report=False,
        log=lambda s: None, threads=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["device"] == "cpu"
    assert suite_status("smoke", out=out, checkpoint_dir=tmp_path / "ck").attrs["device"] == "cpu"
    res = invoke("status", "--suite", "smoke", "--out", str(out), "--set", "evaluate.eval_seed=5")
    assert res.exit_code == 2 and "different configuration" in one_error_line(res)
    res = invoke("run", "--suite", "smoke", "--out", str(out), "--set", "evaluate.eval_seed=5", "--plan")
    assert res.exit_code == 2 and "different configuration" in one_error_line(res)
    import torch

    if not torch.cuda.is_available():  # a run made on a GPU node, looked at from a CPU-only one
        manifest["runs"][-1]["device"] = "cuda"
        (out / "manifest.json").write_text(json.dumps(manifest))
        res = invoke("status", "--suite", "smoke", "--out", str(out))
        assert res.exit_code == 2 and "was run with --device cuda" in one_error_line(res)
        assert invoke("status", "--suite", "smoke", "--out", str(out), "--device", "cpu").exit_code == 0


def test_status_of_an_unknown_suite_is_a_usage_error(tmp_path):
    res = invoke("status", "--suite", "smok", "--out", str(tmp_path))
    assert res.exit_code == 2 and "smok" in one_error_line(res)
