"""`run --plan`: task counts from the graph, times from a calibration measured once on the device and cached."""

from __future__ import annotations

import json

from sgq_bench.data import cache_dir
from sgq_bench.orchestration.plan import format_plan, plan_suite


def test_plan_counts_the_graph_and_calibrates_once(tmp_path):
    plan = plan_suite("smoke", checkpoint_dir=tmp_path / "ckpt", workers=4)
    # 4 cells; gradient ranked per cell, random once (fixed learner); 2 fractions x roar/kar per ranking
    assert plan["tasks"] == {"train": 4, "rank": 5, "retrain": 20, "evaluate": 4}
    assert plan["cached"] == {"train": 0, "rank": 0, "retrain": 0, "evaluate": 0}
    assert all(plan["seconds"][k] > 0 for k in ("train", "retrain", "evaluate"))
    assert plan["total_s"] == sum(plan["seconds"].values())
    assert plan["critical_path_s"] <= plan["wall_s_workers"] <= plan["total_s"]
    stored = json.loads((cache_dir() / "calibration.json").read_text())
    from sgq_bench.orchestration.calibration import CONDITIONS

    timings = {k: v for k, v in stored.items() if k != CONDITIONS}  # beside them: when and under what load
    assert timings and all(v["step_s"] > 0 and v["fwd_img_s"] > 0 and v["grad_img_s"] > 0 for v in timings.values())
    assert set(stored[CONDITIONS]) == set(timings)
    before = (cache_dir() / "calibration.json").read_bytes()
    text = format_plan("smoke", checkpoint_dir=tmp_path / "ckpt", workers=4, log=lambda s: (_ for _ in ()).throw(
        AssertionError(f"recalibrated: {s}")))  # every timing comes from the cache now
    assert "train" in text and "on 4 workers" in text and (cache_dir() / "calibration.json").read_bytes() == before


def test_plan_leaves_out_what_is_cached(tmp_path):
    from sgq_bench.orchestration.runner import run

    run("smoke", out=tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", only="method=baseline", progress=False,
        report=False, log=lambda s: None)
    plan = plan_suite("smoke", checkpoint_dir=tmp_path / "ckpt", only="method=baseline", out=tmp_path / "elsewhere")
    assert plan["tasks"]["train"] == 0 and plan["tasks"]["retrain"] == 0 and plan["cached"]["train"] == 1
    assert plan["tasks"]["evaluate"] == 1 and plan["cells_done"] == 0  # another run directory has not scored it
    plan = plan_suite("smoke", checkpoint_dir=tmp_path / "ckpt", only="method=baseline", out=tmp_path / "run")
    assert plan["cells_done"] == 1 and plan["total_s"] == 0 and all(n == 0 for n in plan["tasks"].values())
    assert "1 already done in" in format_plan("smoke", checkpoint_dir=tmp_path / "ckpt", only="method=baseline",
                                              out=tmp_path / "run")


def test_plan_prices_only_what_a_saved_training_state_leaves(tmp_path, monkeypatch):
    """A training stopped half-way (its .partial.pt state) costs half; an unreadable state costs it all."""
    import torch

    import sgq_bench.orchestration.calibration as cal

    # every plan re-times the load probe and rescales by it; pinned here, so the plans compare exactly
    monkeypatch.setattr(cal, "reference_probe", lambda dev: 0.01)

    from sgq_bench import checkpoints
    from sgq_bench.config.suite import load_suite
    from sgq_bench.orchestration.cells import expand
    from sgq_bench.train import locate_checkpoint

    before = torch.get_num_threads()
    kw = dict(checkpoint_dir=tmp_path / "ckpt", only="method=baseline", out=tmp_path / "run",
              threads=before % 2 + 1)  # not the current count, so that putting it back is seen
    full = plan_suite("smoke", **kw)
    assert torch.get_num_threads() == before  # --threads is timed, then put back
    spec = expand(load_suite("smoke"), {"method": {"baseline"}})[0].spec
    partial = checkpoints.partial_path(locate_checkpoint(spec, checkpoint_dir=tmp_path / "ckpt").path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    from sgq_bench.orchestration.calibration import MeasuredCosts

    total = MeasuredCosts("cpu").training_steps(spec)
    checkpoints.save(partial, {"step": total // 2, "epoch": 0})
    half = plan_suite("smoke", **kw)
    left = 1 - (total // 2) / total
    assert abs(half["seconds"]["train"] - left * full["seconds"]["train"]) < 1e-9 * full["seconds"]["train"]
    assert any("resume from a saved state" in n and "baseline" in n and "50% done" in n for n in half["notes"])
    partial.write_bytes(b"damaged")
    assert plan_suite("smoke", **kw)["seconds"]["train"] == full["seconds"]["train"]


def test_plugins_are_priced_by_their_own_declarations():
    from sgq_bench import Explainer, Metric, Param
    from sgq_bench.orchestration.costs import explainer_passes, metric_passes

    class Declared(Metric):
        name, higher_is_better = "declared_passes", True
        params = {"repeats": Param(3, "forwards per image", low=1)}

        def forward_passes(self, n_images, n_pixels, n_test):
            return n_images * self.repeats + n_test

    class Undeclared(Metric):
        name, higher_is_better = "undeclared_passes", True

    assert metric_passes(Declared(repeats=4), 10, 784, 100) == (140.0, None)
    passes, note = metric_passes(Undeclared(), 10, 784, 100)
    assert passes == 10.0 and note == "metric 'undeclared_passes' declares no forward_passes; 1 per image assumed"

    class Legacy(Explainer):  # the older form: a plain number attribute
        name, gradient_passes = "legacy_passes", 7

    class Silent(Explainer):
        name = "silent_passes"

    assert explainer_passes(Legacy()) == (7.0, None)
    assert explainer_passes(Silent()) == (1.0, "explainer 'silent_passes' declares no gradient_passes; "
                                                "1 per image assumed")
