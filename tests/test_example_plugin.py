"""The example plugin package, installed for real with pip, used by sgq-bench like any built-in.

Why ``pip install --target`` into a temporary folder rather than into the running environment: the
environment is shared (other test sessions, other developers), and an installed plugin would change
what their registry-parametrised tests see. A ``--target`` folder on ``sys.path`` / ``PYTHONPATH`` is
exactly what an installed package looks like to ``importlib.metadata`` (a ``*.dist-info`` with
``entry_points.txt``), and it vanishes with the test. ``--no-deps --no-build-isolation --no-index``
keeps it offline: the plugin has no dependency sgq-bench does not already have.

The plugin's retraining metric ``roar_blur`` (its own ``blur_rank``/``blur_retrain`` tasks) is run through
the whole machinery as a user would: ``run --plan``, ``run`` serial, ``--executor ray`` and a resume after
SIGKILL, each a ``python -m sgq_bench`` subprocess with its own run and checkpoint folders.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sgq_bench import _registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "sgq-bench-example-plugin"
BROKEN = REPO / "examples" / "broken-plugin"
PIECES = {"quantizers": "lsq", "objectives": "rrr", "explainers": "guided_backprop",
          "metrics": "monotonicity_correlation"}
DIST, VERSION = "sgq-bench-example-plugin", "0.1.0"


def pip_install(source: Path, target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(target), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install {source.name} failed:\n{done.stdout}\n{done.stderr}"


def cli_env(pythonpath: Path, cache: Path | None = None) -> dict[str, str]:
    """The environment of a ``python -m sgq_bench`` subprocess; ``cache``: its $SGQ_BENCH_CACHE (a module
    fixture runs before the autouse fixture that isolates the cache, so it names one itself)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if cache is not None:
        env["SGQ_BENCH_CACHE"] = str(cache)
    return env


def sgq_bench(*args: str, pythonpath: Path, cwd: Path, cache: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgq_bench", *args], capture_output=True, text=True,
                          env=cli_env(pythonpath, cache), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory):
    """The example plugin pip-installed into a fresh folder, visible to this process and subprocesses."""
    site = tmp_path_factory.mktemp("plugin-site")
    pip_install(EXAMPLE, site)
    sys.path.insert(0, str(site))
    _registry.refresh()
    yield site
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m.startswith("sgq_example_plugin")]:
        del sys.modules[name]
    _registry.refresh()


def test_installed_plugin_is_listed_with_its_version(plugin_site: Path, tmp_path: Path) -> None:
    done = sgq_bench("list", pythonpath=plugin_site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for kind, name in PIECES.items():
        lines = [ln for ln in done.stdout.splitlines() if ln.strip().startswith(name + " ")]
        assert len(lines) == 1, f"{kind} {name!r} not listed once:\n{done.stdout}"
        assert f"[{DIST} {VERSION}]" in lines[0] and "BROKEN" not in lines[0]
    for kind, name in PIECES.items():
        assert _registry.registry(kind).entry(name).provenance() == {"name": name, "distribution": DIST,
                                                                      "version": VERSION}


def test_plugin_pieces_honour_the_contracts_and_cross_the_grid(plugin_site: Path) -> None:
    from test_plugin_grid import check_declared_bits, check_explainer, check_metric, check_trains_one_step

    check_declared_bits("lsq")
    for objective in _registry.objectives.usable():
        check_trains_one_step("lsq", objective)
    for quantizer in _registry.quantizers.usable():
        check_trains_one_step(quantizer, "rrr")
    for quantizer in ("none", "pact", "lsq"):
        check_explainer("guided_backprop", quantizer)
    check_metric("monotonicity_correlation")
    check_metric("roar_blur")  # outside a run: compute() ranks and retrains what its tasks would have


def test_lsq_values_lie_on_the_learned_grid(plugin_site: Path) -> None:
    from sgq_example_plugin.lsq import LSQConv2d, LSQReLU

    from sgq_bench import Bits, Method, layer_bits
    from sgq_bench.data import Synthetic
    from sgq_bench.metrics.efficiency import packed_size

    torch.manual_seed(0)
    float_model = _registry.models.get("test_cnn")(Synthetic())
    w = float_model.conv2.weight.detach().clone()
    q = _registry.quantizers.get("lsq")(w_bits=3, a_bits=2)
    model = q.prepare(float_model)
    conv = model.conv2
    assert isinstance(conv, LSQConv2d) and torch.equal(conv.weight.detach(), w)  # seeded init kept
    assert not isinstance(model.conv1, LSQConv2d)  # first and last layers stay float by default
    levels = conv.quantized_weight().detach() / conv.step.detach().abs()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= -4 and levels.max() <= 3
    act = next(m for m in model.modules() if isinstance(m, LSQReLU))
    y = act(torch.randn(4, 8, 5, 5))
    k = y / act.step.detach()
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= 0 and k.max() <= 3
    y.sum().backward()
    assert act.step.grad is not None and torch.isfinite(act.step.grad)
    # the declared bits (mark_quantized) are what the efficiency metrics read: conv2 and fc1 packed at 3 bits
    assert q.declared_bits() == Bits(3, 2) and layer_bits(conv) == Bits(3, 32) and layer_bits(act) == Bits(32, 2)
    assert packed_size(model)["quantized_weights"] == sum(
        -(-m.weight.numel() * 3 // 8) for m in (model.conv2, model.fc1))
    assert Method("lsq_sgt", "lsq", "saliency_guided", {"w_bits": 3, "a_bits": 2}).label() == "lsq_sgt W3A2"


def test_rrr_penalises_only_the_masked_input_gradients(plugin_site: Path) -> None:
    from sgq_bench._base import TrainContext
    from sgq_bench.data import Synthetic

    torch.manual_seed(0)
    model = _registry.models.get("test_cnn")(Synthetic()).train()
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    ctx = TrainContext(generator=torch.Generator().manual_seed(0))
    out = _registry.objectives.get("rrr")(lam=2.0, border=3).compute(model, x, y, ctx)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(model(xr), 1).sum(), xr)
    g[..., 3:13, 3:13] = 0
    expected = g.pow(2).sum() / 4
    assert torch.allclose(out.parts["rrr"], expected, rtol=1e-4)
    assert torch.allclose(out.loss, out.parts["ce"] + 2.0 * expected, rtol=1e-4)


def test_guided_backprop_matches_captum_on_a_float_model(plugin_site: Path) -> None:
    from captum.attr import GuidedBackprop

    from sgq_bench.data import Synthetic

    torch.manual_seed(0)
    model = _registry.models.get("test_cnn")(Synthetic()).eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2])
    ours = _registry.explainers.get("guided_backprop")().attribute(model, x, t)
    assert torch.allclose(ours, GuidedBackprop(model).attribute(x.clone(), target=t), atol=1e-6)


def test_monotonicity_matches_quantus(plugin_site: Path) -> None:
    """Same inputs, same per-pixel attributions (tie-free), deterministic baseline: same per-image scores."""
    import quantus
    from sgq_example_plugin.monotonicity import monotonicity_correlation

    from sgq_bench.data import Synthetic

    torch.manual_seed(0)
    dataset = Synthetic(test_n=16)
    model = _registry.models.get("test_cnn")(dataset).eval()
    split = dataset.load(None, False)
    x, y = dataset.normalize(split.images[:12]), split.labels[:12]
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).gather(1, y.view(-1, 1)).sum(), xr)
    scores = grad.abs().sum(1) + 1e-6 * torch.rand(12, 16, 16)  # break ties: both sides then sort alike
    ours, _ = monotonicity_correlation(model, x, y, scores.flatten(1), features_in_step=16, nr_samples=2,
                                       perturb_baseline="black", generator=torch.Generator().manual_seed(0))
    metric = quantus.MonotonicityCorrelation(nr_samples=2, features_in_step=16, perturb_baseline="black",
                                             abs=True, normalise=False, disable_warnings=True)
    ref = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=scores.unsqueeze(1).numpy(),
                 device="cpu", softmax=True)
    ref = np.nan_to_num(np.asarray(ref, dtype=float), nan=0.0)
    assert np.isfinite(ref).all() and np.ptp(ref) > 0.1, ref  # a real spread of scores, not all-degenerate
    assert np.allclose(ours.numpy(), ref, atol=1e-3), (ours.numpy(), ref)


def test_plugin_smoke_suite_reaches_the_leaderboard_with_its_name_and_version(plugin_site: Path,
                                                                              tmp_path: Path) -> None:
    """The plugin's four pieces, crossed with built-ins, run as a suite and publish to a leaderboard CSV."""
    import sgq_bench
    from sgq_bench.leaderboard import publish

    out = tmp_path / "run"
    result = sgq_bench.run(str(EXAMPLE / "plugin_smoke.toml"), out=out, progress=False, figures=False,
                           log=lambda line: None)
    assert result.ok, (out / "errors.jsonl").read_text()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    mono = [r for r in rows if r["metric"] == "monotonicity_correlation"]
    assert {r["explainer"] for r in mono} == {"guided_backprop", "gradient"}
    assert all(math.isfinite(r["value"]) for r in mono)
    assert {r["method"] for r in rows} == {"baseline", "lsq_sgt", "pact_rrr", "lsq_rrr"}

    publish(out, tmp_path / "leaderboards")
    with (tmp_path / "leaderboards" / "synthetic.csv").open() as fh:
        board = list(csv.DictReader(fh))  # long format: one row per (method, explainer, metric, variant)
    tag = f"{DIST}=={VERSION}"
    for r in board:
        uses_plugin = (r["quantizer"] == "lsq" or r["objective"] == "rrr" or r["explainer"] == "guided_backprop"
                       or r["metric"] == "monotonicity_correlation")
        assert (tag in r["plugins"]) == uses_plugin, r
    explained = {(r["method"], r["explainer"]) for r in board if r["explainer"] != "-"}
    mono = {(r["method"], r["explainer"]) for r in board
            if r["metric"] == "monotonicity_correlation" and math.isfinite(float(r["mean"]))}
    assert explained and mono == explained  # the plugin metric scored every (method, explainer)
    assert ("lsq_rrr", "guided_backprop") in explained


def test_broken_plugin_is_reported_once_and_the_builtins_still_work(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip_install(BROKEN, site)
    listed = sgq_bench("list", pythonpath=site, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    output = listed.stdout + listed.stderr
    assert output.count("broken_metric") == 1, output
    assert "BROKEN" in output and "sgq-bench-broken-plugin" in output and "on purpose" in output
    suite = tmp_path / "builtins.toml"
    suite.write_text(BUILTIN_SUITE)
    ran = sgq_bench("run", "--suite", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-figures",
                    pythonpath=site, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    output = ran.stdout + ran.stderr
    assert output.count("broken_metric") == 1 and "sgq-bench-broken-plugin" in output, output
    assert (tmp_path / "run" / "results.jsonl").stat().st_size > 0


# Built-in pieces only, smoke-sized (the full built-in smoke suite runs in examples/plugin_acceptance.sh).
BUILTIN_SUITE = """
version = "1"
name = "builtins_tiny"
methods = ["baseline", "sgt_pact"]
[datasets.synthetic]
model = "test_cnn"
eval_size = 16
params = { train_n = 64, test_n = 32 }
[datasets.synthetic.recipe]
optimizer = "adam"
lr = 0.003
epochs = 1
batch_size = 32
[evaluate]
explainers = ["gradient"]
metrics = ["accuracy", "deletion_auc", "sparseness"]
"""


# --- roar_blur: a plugin's retraining metric through the plan, the serial and Ray executors, and resume ---

BLUR_SUITE = EXAMPLE / "roar_blur_smoke.toml"
BLUR_TASKS = {"blur_rank": 3, "blur_retrain": 6}  # see the suite's header: the random ranking is shared
BLUR_CELLS = {(m, e) for m in ("baseline", "pact") for e in ("gradient", "random")}


def blur_results(ckpt: Path) -> list[Path]:
    """The retrains roar_blur stored: JSON files in its plugin-named folder under the checkpoint dir."""
    return sorted((ckpt / DIST / "roar_blur").glob("*.json"))


def blur_run_args(out: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["run", "--suite", str(BLUR_SUITE), "--out", str(out), "--checkpoint-dir", str(ckpt), "--threads", "1",
            "--no-figures", *extra]


def scored_rows(out: Path) -> dict[tuple, float]:
    """(method, explainer, metric, variant) -> value of a run's accuracy and roar_blur rows."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {(r["method"], r["explainer"], r["metric"], r["variant"]): r["value"] for r in rows
            if r["metric"] in ("accuracy", "roar_blur")}


def assert_same_rows(got: dict[tuple, float], expected: dict[tuple, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def last_run(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["runs"][-1]


@pytest.fixture(scope="module")
def blur_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache (calibration timings) of every roar_blur subprocess: conftest's temporary one."""
    return tmp_path_factory.getbasetemp() / "sgq-cache"


@pytest.fixture(scope="module")
def blur_serial(plugin_site: Path, blur_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``run --plan`` and then ``run`` (serial) of the roar_blur suite in fresh run and checkpoint folders."""
    root = tmp_path_factory.mktemp("roar-blur-serial")
    out, ckpt = root / "run", root / "ckpt"
    plan = sgq_bench(*blur_run_args(out, ckpt, "--plan"), pythonpath=plugin_site, cwd=root, cache=blur_cache)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    started = time.perf_counter()
    ran = sgq_bench(*blur_run_args(out, ckpt, "--quiet"), pythonpath=plugin_site, cwd=root, cache=blur_cache)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return {"out": out, "ckpt": ckpt, "plan": plan.stdout, "log": ran.stdout + ran.stderr,
            "rows": scored_rows(out), "wall_s": time.perf_counter() - started}


def test_roar_blur_plan_counts_and_prices_the_plugins_tasks(blur_serial: dict, tmp_path: Path) -> None:
    from sgq_bench.orchestration.plan import plan_suite

    counted = {}  # the CLI's table: "kind  to-run  cached  estimate"
    for line in blur_serial["plan"].splitlines():
        parts = line.split()
        if parts and parts[0] in BLUR_TASKS:
            counted[parts[0]] = (int(parts[1]), int(parts[2]))
    assert counted == {k: (n, 0) for k, n in BLUR_TASKS.items()}, blur_serial["plan"]
    assert "declare no cost" not in blur_serial["plan"]

    # Each task prices itself (Task.cost): a fresh checkpoint dir, everything to run, every kind > 0 s.
    fresh = plan_suite(str(BLUR_SUITE), out=tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert {k: fresh["tasks"][k] for k in BLUR_TASKS} == BLUR_TASKS
    assert all(fresh["seconds"][k] > 0 for k in BLUR_TASKS), fresh["seconds"]
    assert not [n for n in fresh["notes"] if "declare no cost" in n], fresh["notes"]
    # done(): against the serial run's checkpoint dir every blur task is cached (a new --out still has cells
    # to score, but nothing of roar_blur is left to run), and in its own --out nothing at all is.
    cached = plan_suite(str(BLUR_SUITE), out=tmp_path / "other", checkpoint_dir=blur_serial["ckpt"], threads=1)
    # (a kind with nothing left to run is absent from the plan's counts: only the harness's own are always shown)
    assert {k: cached["tasks"].get(k, 0) for k in BLUR_TASKS} == dict.fromkeys(BLUR_TASKS, 0)
    assert cached["tasks"]["evaluate"] == 2 and cached["tasks"]["train"] == 0
    done = plan_suite(str(BLUR_SUITE), out=blur_serial["out"], checkpoint_dir=blur_serial["ckpt"], threads=1)
    assert done["cells_done"] == 2 and sum(done["tasks"].values()) == 0


def test_roar_blur_runs_serially_through_the_task_graph(blur_serial: dict) -> None:
    out, ckpt = blur_serial["out"], blur_serial["ckpt"]
    assert "3 blur_rank, 6 blur_retrain" in blur_serial["log"], blur_serial["log"]
    run = last_run(out)
    assert run["status"] == "done" and run["executor"] == "serial"
    assert {k: run["tasks"][k] for k in BLUR_TASKS} == BLUR_TASKS
    assert run["tasks"]["rank"] == run["tasks"]["retrain"] == 0  # the built-in ROAR's kinds: not used
    assert len(blur_results(ckpt)) == BLUR_TASKS["blur_retrain"]

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    blur = [r for r in rows if r["metric"] == "roar_blur"]
    assert {(r["method"], r["explainer"]) for r in blur} == BLUR_CELLS and len(blur) == len(BLUR_CELLS)
    for r in blur:
        assert 0.0 <= r["value"] <= 1.0 and r["curve"]["x"] == [0.5, 0.9], r
        assert r["family"] == "roar" and r["higher_is_better"] is False
        assert r["plugins"]["metric"] == {"name": "roar_blur", "distribution": DIST, "version": VERSION}
        assert r["params"]["fractions"] == [0.5, 0.9] and r["params"]["blur_kernel"] == 11
        stored = {p.stem for p in blur_results(ckpt)}
        assert set(r["extra"]["retrain_keys"]) <= stored
    keys = {(r["method"], r["explainer"]): r["extra"]["retrain_keys"] for r in blur}
    # the random control ignores the model and the learner is fixed: both cells read one set of retrains
    assert keys["baseline", "random"] == keys["pact", "random"]
    assert keys["baseline", "gradient"] != keys["pact", "gradient"]


def test_roar_blur_on_a_local_ray_cluster_gives_the_serial_rows(blur_serial: dict, plugin_site: Path,
                                                                blur_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out, ckpt = tmp_path / "ray", tmp_path / "ckpt"
    # The driver starts its own local cluster (2 slots), whose workers import the plugin from PYTHONPATH.
    ran = sgq_bench(*blur_run_args(out, ckpt, "--quiet", "--executor", "ray", "--workers", "2"),
                    pythonpath=plugin_site, cwd=tmp_path, cache=blur_cache)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run = last_run(out)
    assert run["status"] == "done" and run["executor"] == "ray"
    assert {k: run["tasks"][k] for k in BLUR_TASKS} == BLUR_TASKS
    assert len(blur_results(ckpt)) == BLUR_TASKS["blur_retrain"]
    assert_same_rows(scored_rows(out), blur_serial["rows"])


def test_roar_blur_resumes_after_sigkill_without_redoing_stored_retrains(blur_serial: dict, plugin_site: Path,
                                                                         blur_cache: Path, tmp_path: Path) -> None:
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "sgq_bench", *blur_run_args(out, ckpt, "--quiet")]
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=cli_env(plugin_site, blur_cache), cwd=tmp_path, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 240
            # the random control's ranking needs no model, so its 2 retrains come first; the third is a
            # gradient one, after a training: kill mid-run with work of every kind already stored
            while len(blur_results(ckpt)) < 3 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # only the process this test started, by its PID
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed (rc {proc.returncode}):\n{output}"
    stored = {p: p.stat().st_mtime_ns for p in blur_results(ckpt)}  # listed once the process is gone
    assert 3 <= len(stored) < BLUR_TASKS["blur_retrain"], sorted(p.name for p in stored)

    ran = sgq_bench(*blur_run_args(out, ckpt, "--quiet"), pythonpath=plugin_site, cwd=tmp_path, cache=blur_cache)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run = last_run(out)
    assert run["status"] == "done"
    # the stored retrains were reused (left out of the graph), not computed again
    assert run["tasks"]["blur_retrain"] == BLUR_TASKS["blur_retrain"] - len(stored), run["tasks"]
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert len(blur_results(ckpt)) == BLUR_TASKS["blur_retrain"]
    assert_same_rows(scored_rows(out), blur_serial["rows"])
