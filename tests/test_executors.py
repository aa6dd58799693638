"""The task graph and its executors: serial and Ray give the same rows, a worker that dies is retried, two
runs on one directory neither lose nor duplicate rows, and a killed run resumes to the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sgq_bench.config.suite import load_suite
from sgq_bench.errors import UsageError
from sgq_bench.orchestration.cells import expand
from sgq_bench.orchestration.graph import build_graph
from sgq_bench.orchestration.runner import run
from sgq_bench.specs import ExecContext

# Timing and memory numbers differ between any two runs; everything else must agree.
TIMED = {"latency_ms", "throughput", "peak_memory_mb"}


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def values(out: Path) -> dict[tuple, float | None]:
    got: dict[tuple, float | None] = {}
    for r in rows(out):
        if r["metric"] in TIMED:
            continue
        key = (r["method"], r["seed"], r["explainer"], r["metric"], r.get("variant"))
        assert key not in got, f"duplicated row {key}"
        got[key] = r["value"]
    return got


def assert_same(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_graph_dedupes_and_shares_the_random_control_retrains():
    """With the fixed learner, a model-independent ranking (random) is retrained once per dataset and seed."""
    suite = load_suite("smoke")
    graph = build_graph(expand(suite), ExecContext(), skip_cached=False)
    kinds = [t.kind for t in graph.values()]
    cells = len(expand(suite))
    fractions = 2  # smoke: roar/kar at 0.3 and 0.7
    assert kinds.count("train") == cells and kinds.count("evaluate") == cells
    # gradient: one ranking per cell; random: one ranking shared by all cells
    assert kinds.count("rank") == cells + 1
    assert kinds.count("retrain") == (cells + 1) * fractions * 2
    shared = [t for t in graph.values() if t.kind == "retrain" and "random" in t.label]
    assert all(len(t.cells) == cells for t in shared)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    result = run("smoke", out=out, progress=False, report=False, log=lambda s: None)
    assert result.ok
    return out


def test_ray_local_cluster_gives_the_serial_rows(serial_run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        result = run("smoke", out=out, progress=False, report=False, executor="ray", threads=1,
                     log=lambda s: None)
    finally:
        ray.shutdown()
    assert result.ok and result.done == 4
    assert_same(values(serial_run), values(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["executor"] == "ray" and manifest["runs"][-1]["status"] == "done"


def test_several_workers_score_trained_models_before_training_more(monkeypatch, tmp_path):
    """With N workers, at most N tasks are out at once, and a training is handed out only when no work on
    models already trained (ranking, retraining, scoring) is ready: each cell's rows arrive as soon as its
    model exists. (Handing every ready task out at once queued all trainings ahead of every score.)"""
    import sgq_bench.orchestration.executors
    from sgq_bench.orchestration.executors import SerialExecutor

    only = {"method": {"baseline", "pact"}}
    graph = build_graph(expand(load_suite("smoke"), only), ExecContext(checkpoint_dir=tmp_path / "ck"))
    log: dict[str, list] = {"submitted": [], "done": [], "most_out": [0]}

    class TwoWorkers(SerialExecutor):
        workers = 2

        def submit(self, task):
            if task.kind == "train":
                sent, done = set(log["submitted"]), set(log["done"])
                waiting = [k for k, t in graph.items() if t.kind != "train" and k not in sent
                           and all(d not in graph or d in done for d in t.deps)]
                assert not waiting, f"{task.key} handed out while {waiting} were ready"
            log["submitted"].append(task.key)
            super().submit(task)
            log["most_out"][0] = max(log["most_out"][0], self.pending())

        def wait(self):
            out = super().wait()
            log["done"].extend(k for k, ok, _ in out if ok)
            return out

    monkeypatch.setattr(sgq_bench.orchestration.executors, "make_executor", lambda name, ctx, **kw: TwoWorkers(ctx))
    result = run("smoke", out=tmp_path / "run", checkpoint_dir=tmp_path / "ck", only=only, progress=False,
                 report=False, log=lambda s: None)
    assert result.ok and result.done == 2
    assert sorted(log["submitted"]) == sorted(graph) and log["most_out"][0] == 2


def test_two_runs_on_one_directory_lose_and_duplicate_nothing(serial_run, tmp_path):
    """The second run waits for the first's lock, then finds every cell done: each row exactly once."""
    out = tmp_path / "shared"
    code = textwrap.dedent(f"""
        from sgq_bench.orchestration.runner import run
        run("smoke", out={str(out)!r}, progress=False, report=False, log=lambda s: None)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert_same(values(serial_run), values(out))  # values() fails on a duplicated row
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert len(cells) == 4 and len({c["key"] for c in cells}) == 4


def test_sigkill_during_training_resumes_to_the_same_numbers(serial_run, tmp_path):
    """SIGKILL after the first epoch of a training: the rerun continues from the saved epoch (never from
    epoch 0 for a training that finished one) and ends with the uninterrupted run's rows."""
    out = tmp_path / "killed"
    ckpt = tmp_path / "ckpt"
    code = textwrap.dedent(f"""
        from sgq_bench.orchestration.runner import run
        run("smoke", out={str(out)!r}, checkpoint_dir={str(ckpt)!r}, progress=False, report=False,
            log=lambda s: None)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not list(ckpt.glob("*.partial.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before any epoch checkpoint appeared"
    partial = list(ckpt.glob("*.partial.pt"))[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists()
    result = run("smoke", out=out, checkpoint_dir=ckpt, progress=False, report=False, log=lambda s: None)
    assert result.ok
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["killed", "done"]
    assert_same(values(serial_run), values(out))
    assert not list(ckpt.glob("*.partial.pt"))


@pytest.mark.slow
def test_ray_worker_killed_mid_task_is_retried(tmp_path):
    """A simulated two-node cluster; one worker process is killed while it trains. The run still ends with
    complete, non-duplicated results (Ray retries system failures; the driver writes every row once)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    out = tmp_path / "faults"
    killed = []

    raylets = {n.all_processes["raylet"][0].process.pid for n in cluster.list_all_nodes()}
    finished = []

    def our_workers() -> list[int]:
        """Workers of THIS cluster running a task: children of its raylets titled 'ray::_ray_execute'
        (never another Ray's worker on a shared host)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes()
                ppid = int(next(x for x in (proc / "status").read_text().splitlines()
                                if x.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            if ppid in raylets and title.startswith(b"ray::_ray_execute"):
                found.append(int(proc.name))
        return found

    def killer():
        """Wait for one of our workers to start a task (as long as the run lasts), then SIGKILL it by PID."""
        while not killed and not finished:
            for pid in our_workers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                killed.append(pid)
                return
            time.sleep(0.02)

    import threading

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        result = run("smoke", out=out, progress=False, report=False, executor="ray", threads=1,
                     address=cluster.address, log=lambda s: None)
    finally:
        finished.append(True)
        ray.shutdown()
        cluster.shutdown()
    t.join(timeout=1)
    assert killed, "no worker was killed"
    assert result.ok and result.done == 4
    got = values(out)
    assert len(got) == len({k for k in got})
    assert {k[0] for k in got} == {"baseline", "pact", "sgt", "sgt_pact"}


def test_interrupted_ray_run_lets_a_training_save_its_state(tmp_path):
    """SIGTERM (a scheduler's preemption, a session's end; Ctrl-C takes the same path) to a Ray run's driver
    mid-epoch: the training task is cancelled gently, reaches its next step and saves its state there
    (batch > 0: only a stop saves mid-epoch within 10 minutes), and the driver exits as interrupted. A
    forced cancel kills the worker and loses every step since the epoch began. (Not SIGINT here: a
    process started in the background without job control, as CI may start pytest, ignores SIGINT.)"""
    pytest.importorskip("ray")
    suite = tmp_path / "long.toml"
    suite.write_text(textwrap.dedent("""
        version = "1"
        name = "long"
        seeds = [0]
        methods = ["baseline"]
        [datasets.synthetic]
        model = "test_cnn"
        eval_size = 16
        params = { train_n = 16384, test_n = 64 }
        [datasets.synthetic.recipe]
        optimizer = "adam"
        epochs = 50
        batch_size = 32
        [evaluate]
        explainers = ["gradient"]
        metrics = ["accuracy"]
    """))
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sgq_bench", "run", "--suite", str(suite), "--out", str(out),
                             "--checkpoint-dir", str(ckpt), "--executor", "ray", "--workers", "1", "--threads", "1",
                             "--quiet", "--no-report"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(ckpt.glob("*.partial.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the first epoch's save: the worker is training, at the start of epoch 2
    assert proc.poll() is None, proc.communicate()
    partials = list(ckpt.glob("*.partial.pt"))
    assert partials, "no epoch finished in 5 minutes"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert "get up to 60 s to save their state" in out_text + err
    from sgq_bench import checkpoints

    partial = partials[0]

    state = checkpoints.load(partial)
    assert state["epoch"] >= 1 and state["batch"] > 0, (state["epoch"], state["batch"])
    assert not list(ckpt.glob(".stop/*")), "the stop request is removed when the run ends"


def test_ray_executor_without_ray_names_the_extra(monkeypatch):
    from sgq_bench.errors import UsageError
    from sgq_bench.orchestration.executors import make_executor
    from sgq_bench.specs import ExecContext

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(UsageError, match=r"pip install 'sgq-bench\[ray\]'"):
        make_executor("ray", ExecContext())


def test_in_process_plugins_are_refused_before_a_ray_run(tmp_path):
    """A metric registered in this process cannot be imported by a Ray worker: refused up front, and the run
    directory is not even created."""
    from sgq_bench import Metric, MetricResult, register
    from sgq_bench._registry import metrics as metric_registry
    from sgq_bench.errors import UsageError

    class Local(Metric):
        name = "local_only_metric"
        needs_attributions = False

        def compute(self, ctx, attributions):
            return MetricResult(value=1.0)

    register("metrics", obj=Local, replace=True)
    try:
        metrics = [*load_suite("smoke").metrics, "local_only_metric"]
        suite = load_suite("smoke", {"evaluate.metrics": metrics})
        with pytest.raises(UsageError, match="in-process plugins.*metric 'local_only_metric'"):
            run(suite, out=tmp_path / "never", executor="ray", progress=False, log=lambda s: None)
        assert not (tmp_path / "never").exists()
    finally:
        metric_registry.unregister("local_only_metric")


def test_an_unreachable_ray_address_fails_fast_in_one_line(tmp_path):
    pytest.importorskip("ray")
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"--address '127.0.0.1:1': no Ray cluster answers there"):
        run("smoke", out=tmp_path / "run", executor="ray", address="127.0.0.1:1", progress=False, report=False,
            log=lambda s: None)
    assert time.monotonic() - t0 < 30
