"""The example plugin package, installed for real with pip, used by sgq-bench like any built-in.

Why ``pip install --target`` into a temporary folder rather than into the running environment: the
environment is shared (other test sessions, other developers), and an installed plugin would change
what their registry-parametrised tests see. A ``--target`` folder on ``sys.path`` / ``PYTHONPATH`` is
exactly what an installed package looks like to ``importlib.metadata`` (a ``*.dist-info`` with
``entry_points.txt``), and it vanishes with the test. ``--no-deps --no-build-isolation --no-index``
keeps it offline: the plugin has no dependency sgq-bench does not already have.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
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


def sgq_bench(*args: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "sgq_bench", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


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
