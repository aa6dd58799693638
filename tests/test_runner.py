"""The suite runner: smoke suite end to end, resume, failure isolation, one-line errors that lose nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sgq_bench.cli import main
from sgq_bench.config.suite import load_suite
from sgq_bench.errors import UsageError
from sgq_bench.orchestration.cells import expand, parse_only


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_cells_come_seed_by_seed():
    """dataset, then seed, then method: a run stopped part-way holds whole seeds (complete comparisons)."""
    cells = expand(load_suite("smoke", {"seeds": [0, 1]}))
    assert [(c.spec.seed, c.spec.method.name) for c in cells] == [
        (s, m) for s in (0, 1) for m in ("baseline", "pact", "sgt", "sgt_pact")]


def test_parse_only_and_expand():
    suite = load_suite("smoke")
    cells = expand(suite)
    assert len(cells) == len(suite.datasets) * len(suite.methods) * len(suite.seeds)
    assert len({c.key() for c in cells}) == len(cells)
    only = parse_only("method=sgt,method=pact,seed=0")
    assert only == {"method": {"sgt", "pact"}, "seed": {"0"}}
    assert sorted(c.spec.method.name for c in expand(suite, only)) == ["pact", "sgt"]
    with pytest.raises(UsageError, match="Did you mean 'sgt'"):
        expand(suite, parse_only("method=sgtt"))
    with pytest.raises(UsageError, match="not FIELD=VALUE"):
        parse_only("method")


def test_cell_key_is_content():
    a = expand(load_suite("smoke"))[0]
    b = expand(load_suite("smoke", {"datasets.synthetic.eval_size": 32}))[0]
    assert a.key() == expand(load_suite("smoke"))[0].key() and a.key() != b.key()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    # one thread: several times faster than the default on a shared 2-core CPU (restored afterwards)
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--threads", "1"], standalone_mode=False) == 0
    return out


def test_smoke_suite_end_to_end(smoke_run):
    suite = load_suite("smoke")
    rows = lines(smoke_run / "results.jsonl")
    families = {r["family"] for r in rows}
    assert {"accuracy", "deletion", "road", "roar", "sparsity", "faithfulness", "efficiency"} <= families
    assert {r["method"] for r in rows} == {m.name for m in suite.methods}
    assert {r["explainer"] for r in rows} == {*suite.explainers, "-"}
    done = lines(smoke_run / "cells.jsonl")
    assert len(done) == len(expand(suite)) and all(d["status"] == "done" for d in done)
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["suite"]["name"] == "smoke" and manifest["runs"][-1]["status"] == "done"
    prov = manifest["runs"][-1]["provenance"]
    assert {"git_commit", "torch_version", "cpu_model", "threads"} <= set(prov)
    md = (smoke_run / "summary.md").read_text()
    assert "↑" in md and "(n=1)" in md  # one seed: means with n, no across-seed p-value to show
    import pandas as pd

    summary = pd.read_csv(smoke_run / "summary.csv")
    assert {"n_seeds", "mean", "ci_low", "p_welch", "p_within_model"} <= set(summary.columns)
    figs = {p.name for p in (smoke_run / "figures").glob("*.png")}
    for ex in suite.explainers:
        assert f"saliency_synthetic_{ex}.png" in figs and f"curves_synthetic_{ex}.png" in figs
    assert {"roar_synthetic.png", "pareto_synthetic.png"} <= figs


def test_run_writes_claim_verdicts_and_refuses_a_bad_claims_file_first(smoke_run, tmp_path, capsys):
    assert main(["run", "--suite", "smoke", "--out", str(smoke_run), "--quiet", "--no-figures", "--claims", "paper"],
                standalone_mode=False) == 0
    md = (smoke_run / "claims.md").read_text()
    assert "untested (n = 1/1 seeds" in md  # smoke trains one seed: no claim is decided
    bad = tmp_path / "bad.toml"
    bad.write_text('[[claim]]\nid = "x"\n')
    before = (smoke_run / "results.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path / "fresh"), "--claims", str(bad)],
                standalone_mode=False) == 2
    assert "needs a non-empty string" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists() and (smoke_run / "results.jsonl").read_bytes() == before


def test_rerun_does_nothing(smoke_run, capsys):
    before = (smoke_run / "results.jsonl").read_bytes()
    assert main(["run", "--suite", "smoke", "--out", str(smoke_run), "--quiet", "--no-figures"], standalone_mode=False) == 0
    assert "0 cell(s) run" in capsys.readouterr().out
    assert (smoke_run / "results.jsonl").read_bytes() == before


def test_resume_runs_only_missing_cells_with_identical_numbers(smoke_run, tmp_path, capsys):
    """Two cells' stored rows are gone: the rerun scores those two only, with the same numbers."""
    from sgq_bench.results import row_key

    out = tmp_path / "resumed"
    shutil.copytree(smoke_run, out)
    full = lines(out / "results.jsonl")
    for method in ("pact", "sgt_pact"):
        (out / "cells" / f"synthetic-test_cnn-{method}-s0.jsonl").unlink()
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report", "--threads", "1"], standalone_mode=False) == 0
    assert "2 cell(s) run, 2 already done" in capsys.readouterr().out
    again = {(*row_key(r), r["variant"]): r["value"] for r in lines(out / "results.jsonl")}
    assert len(again) == len(full) == len(lines(out / "results.jsonl"))  # no duplicate, no hole
    for r in full:
        if r["family"] != "efficiency":  # timings are measurements, not functions of the spec
            assert again[(*row_key(r), r["variant"])] == pytest.approx(r["value"], rel=1e-6, nan_ok=True), r["metric"]


def test_a_deleted_or_torn_row_is_healed_by_the_next_run(smoke_run, tmp_path, capsys):
    """results.jsonl is an export of the store: rows deleted from it, or a torn last line, come back on the
    next run with nothing recomputed. A row deleted from a cell's own file breaks its checksum: that cell
    alone is recomputed. Either way: no duplicate key, no missing row, nobody edits a file."""
    from sgq_bench.results import result_key

    out = tmp_path / "healed"
    shutil.copytree(smoke_run, out)
    full = lines(out / "results.jsonl")
    text = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(text[:3] + text[5:]) + text[5][:40])  # two rows gone, a torn tail
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report"], standalone_mode=False) == 0
    assert "0 cell(s) run, 4 already done" in capsys.readouterr().out
    assert lines(out / "results.jsonl") == full
    cell = out / "cells" / "synthetic-test_cnn-sgt-s0.jsonl"
    body = cell.read_text().splitlines(keepends=True)
    cell.write_text("".join(body[:2] + body[3:]))  # one stored row deleted
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report"], standalone_mode=False) == 0
    captured = capsys.readouterr()
    assert "1 cell(s) run, 3 already done" in captured.out and "torn or edited" in captured.err
    again = lines(out / "results.jsonl")
    assert len(again) == len(full) and {result_key(r) for r in again} == {result_key(r) for r in full}


def test_failing_cell_is_recorded_and_others_finish(smoke_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "failing"
    shutil.copytree(smoke_run, out)
    shutil.rmtree(out / "cells")  # the store forgets every cell: all four run again
    (out / "cells.jsonl").unlink()

    from sgq_bench.orchestration.graph import EvaluateTask

    def fake_evaluate(self, ctx, *values):
        if self.cell.spec.method.name == "pact":
            raise RuntimeError("boom in pact")
        return {"rows": [], "samples": None}

    monkeypatch.setattr(EvaluateTask, "run", fake_evaluate)
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report"], standalone_mode=False) == 1
    errors = lines(out / "errors.jsonl")
    assert [e["cell"].split("/")[2] for e in errors] == ["pact"] and errors[0]["message"] == "boom in pact"
    assert sorted(d["cell"].split("/")[2] for d in lines(out / "cells.jsonl")) == ["baseline", "sgt", "sgt_pact"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "failed"
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report", "--threads", "1"], standalone_mode=False) == 0
    assert "1 cell(s) run, 3 already done" in capsys.readouterr().out


def test_corrupted_results_line_is_one_line_for_readers_and_healed_by_run(smoke_run, tmp_path, capsys):
    """A corrupted line in results.jsonl: a reader (report) refuses it in one line (exit 2) naming the line
    and the cure; the next run rebuilds the file from the store, nothing recomputed, nothing lost."""
    out = tmp_path / "corrupt"
    shutil.copytree(smoke_run, out)
    original = (out / "results.jsonl").read_text()
    text = original.splitlines()
    text[2] = text[2][: len(text[2]) // 2]
    (out / "results.jsonl").write_text("\n".join(text) + "\n")
    assert main(["report", str(out)], standalone_mode=False) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.jsonl:3" in err and "rerun `sgq-bench run`" in err
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report"], standalone_mode=False) == 0
    assert "0 cell(s) run, 4 already done" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text() == original


def test_unwritable_out_and_other_configuration(smoke_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--suite", "smoke", "--out", str(blocker / "run"), "--quiet"], standalone_mode=False) == 2
    assert "is not writable" in capsys.readouterr().err
    manifest = (smoke_run / "manifest.json").read_bytes()
    assert main(["run", "--suite", "smoke", "--out", str(smoke_run), "--set", "evaluate.eval_seed=5"], standalone_mode=False) == 2
    assert "different configuration" in capsys.readouterr().err
    assert (smoke_run / "manifest.json").read_bytes() == manifest


def test_a_new_seed_grows_the_run_directory_and_old_manifests_are_recognised(smoke_run, tmp_path):
    """Seeds only add cells (each keyed by its own spec): a directory run with seeds [0] takes seed 1 later,
    scoring only the new cells. A manifest written when the fingerprint still held the seeds is accepted
    (and brought up to date); a redefined method is still refused."""
    from sgq_bench.orchestration.rundir import read_manifest
    from sgq_bench.orchestration.runner import run

    out = tmp_path / "grow"
    shutil.copytree(smoke_run, out)
    suite = load_suite("smoke")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["fingerprint"] = suite.seeded_fingerprint(manifest["suite"]["seeds"])  # as written before
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(out, suite) is not None
    other = load_suite("smoke", {"seeds": [0, 1], "evaluate.eval_seed": 5})
    assert other.fingerprint() != suite.fingerprint()  # another evaluation subset: another configuration
    one_more = load_suite("smoke", {"seeds": [0, 1]})
    assert one_more.fingerprint() == suite.fingerprint()
    result = run(one_more, out=out, only="method=baseline", progress=False, report=False, log=lambda s: None)
    assert result.ok and result.done == 1 and result.skipped == 1
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == suite.fingerprint()
    with pytest.raises(UsageError, match="different configuration"):
        run(load_suite("smoke", {"bits": "2/2"}), out=out, progress=False,
            report=False, log=lambda s: None)


def test_python_api(smoke_run):
    import sgq_bench

    res = sgq_bench.run("smoke", out=smoke_run, progress=False, report=False, log=lambda s: None)
    assert res.ok and res.done == 0 and res.skipped == res.cells


def test_killed_run_resumes_with_only_the_missing_cells(smoke_run, tmp_path, capsys):
    """SIGTERM mid-run (like Ctrl-C or a scheduler's kill): exit 130, manifest says interrupted, rerun resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    # its own checkpoint folder: the second cell trains, so SIGTERM lands inside the run, not after it
    cmd = [sys.executable, "-m", "sgq_bench", "run", "--suite", "smoke", "--out", str(out), "--quiet",
           "--no-report", "--threads", "1", "--only", "method=baseline,method=sgt",
           "--checkpoint-dir", str(tmp_path / "ckpt")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 600
    while time.time() < deadline and not (out / "cells.jsonl").exists() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    status = json.loads((out / "manifest.json").read_text())["runs"][-1]["status"]
    if proc.returncode == 0 or status == "done":
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130 and "rerun to resume" in err, (proc.returncode, err)
    assert status == "interrupted"
    done = [d["cell"] for d in lines(out / "cells.jsonl")]
    # the manifest counts what finished, not what was planned
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["cells_run"] == len(done)
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report", "--threads", "1",
                 "--only", "method=baseline,method=sgt", "--checkpoint-dir", str(tmp_path / "ckpt")],
                standalone_mode=False) == 0
    assert f"{2 - len(done)} cell(s) run, {len(done)} already done" in capsys.readouterr().out


def test_full_disk_while_recording_a_failure_does_not_stop_the_run(smoke_run, tmp_path, monkeypatch, capsys):
    """A cell fails and the disk is full when its error record is written: one line says so, the later
    cells still run and the manifest is closed (not left 'running')."""
    import errno

    from sgq_bench.orchestration import rundir
    from sgq_bench.orchestration.graph import EvaluateTask

    out = tmp_path / "full_disk"
    shutil.copytree(smoke_run, out)
    shutil.rmtree(out / "cells")  # the store forgets every cell: all four run again
    (out / "cells.jsonl").unlink()
    real_append = rundir.append_jsonl

    def append(path, rows):
        if Path(path).name == "errors.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(path, rows)

    def fake_evaluate(self, ctx, *values):
        if self.cell.spec.method.name == "baseline":
            raise RuntimeError("boom in baseline")
        return {"rows": [], "samples": None}

    monkeypatch.setattr(rundir, "append_jsonl", append)
    monkeypatch.setattr(EvaluateTask, "run", fake_evaluate)
    assert main(["run", "--suite", "smoke", "--out", str(out), "--quiet", "--no-report"], standalone_mode=False) == 1
    captured = capsys.readouterr()
    assert "could not write" in captured.out + captured.err and "No space left on device" in captured.out + captured.err
    assert sorted(d["cell"].split("/")[2] for d in lines(out / "cells.jsonl")) == ["pact", "sgt", "sgt_pact"]
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["status"] == "failed"


@pytest.mark.parametrize("setting, where", [
    ("datasets.synthetic.recipe.train_size=100000", "datasets.synthetic.recipe.train_size = 100000"),
    ("datasets.synthetic.eval_size=10001", "datasets.synthetic.eval_size = 10001"),
    ("evaluate.params.roar.train_size=100000", "evaluate.params.roar.train_size = 100000"),
])
def test_sizes_beyond_the_splits_are_refused_before_any_work(tmp_path, capsys, setting, where):
    out = tmp_path / "run"
    code = main(["run", "--suite", "smoke", "--out", str(out), "--set", setting, "--quiet",
                 "--checkpoint-dir", str(tmp_path / "ck")], standalone_mode=False)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and where in err and "exceeds the" in err
    assert not (tmp_path / "ck").exists() and not (out / "results.jsonl").exists()


def test_without_a_terminal_every_task_and_epoch_leaves_a_line(tmp_path, caplog):
    """A run in the background (no progress bar) logs each finished task with its time and what is left,
    and each training epoch, through stdlib logging (``sgq_bench.*`` loggers, INFO)."""
    import logging

    from sgq_bench.orchestration.runner import run

    caplog.set_level(logging.INFO, logger="sgq_bench")
    result = run("smoke", out=tmp_path / "run", checkpoint_dir=tmp_path / "ck", only="method=baseline",
                 progress=False, report=False, log=lambda s: None, threads=1)
    assert result.ok
    done = [r.getMessage() for r in caplog.records if r.name == "sgq_bench.run"]
    assert any(x.startswith("done train synthetic/test_cnn/baseline/s0 in ") for x in done)
    assert "start train synthetic/test_cnn/baseline/s0" in done
    assert done[-1].endswith("0 task(s) left")
    epochs = [r.getMessage() for r in caplog.records if r.name == "sgq_bench.train"]
    assert any("synthetic/test_cnn/baseline/s0: epoch 2/2 done, train loss" in x for x in epochs)


def test_the_log_quotes_the_plan_once_this_device_is_calibrated(tmp_path, caplog):
    """After `run --plan` has timed this device, each task's log line gives the plan's seconds for it and
    the plan's time left, also scaled to this run's measured pace; nothing is timed by the run itself."""
    import logging

    from sgq_bench.orchestration.calibration import MeasuredCosts
    from sgq_bench.orchestration.plan import plan_suite
    from sgq_bench.orchestration.runner import run

    plan_suite("smoke", only="method=baseline", checkpoint_dir=tmp_path / "ck", out=tmp_path / "run", threads=1)
    caplog.set_level(logging.INFO, logger="sgq_bench")
    result = run("smoke", out=tmp_path / "run", checkpoint_dir=tmp_path / "ck", only="method=baseline",
                 progress=False, report=False, log=lambda s: None, threads=1,
                 estimates=MeasuredCosts("cpu", measure=False))
    assert result.ok
    done = [r.getMessage() for r in caplog.records if r.name == "sgq_bench.run" and r.getMessage().startswith("done")]
    assert all(re.search(r" in \d+ s \(plan [\d.]+ (s|min|h)\); \d+ task\(s\) left", x) for x in done), done
    assert any(re.search(r"plan: [\d.]+ (s|min|h) left \([\d.]+ (s|min|h) at this run's pace\)", x) for x in done), done
