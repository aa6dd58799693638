"""The same harness on a GPU: training (fp32 and bf16), mid-training resume, and a whole suite run.

Why a file of its own: CI has no GPU, so these tests skip there; on a machine with one, `tools/gpu_check.sh`
runs them. What they pin: a model trained on CUDA is the same kind of artefact as one trained on a CPU
(its checkpoint loads and scores alike on the CPU), and every row a CUDA run writes names its device.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sgq_bench.config.methods import get_method
from sgq_bench.config.suite import Recipe
from sgq_bench.data import load_dataset, load_split
from sgq_bench.specs import ExecContext, TrainSpec
from sgq_bench.train import accuracy, load_or_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh)")

RECIPE = Recipe(optimizer="adam", lr=3e-3, epochs=2, batch_size=32)


def _spec(method: str, **recipe: object) -> TrainSpec:
    return TrainSpec("synthetic", "test_cnn", get_method(method).resolved(), replace(RECIPE, **recipe),
                     dataset_params={"train_n": 1024, "test_n": 256})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["baseline", "sgt_pact"])
def test_a_model_trained_on_cuda_loads_and_scores_alike_on_the_cpu(method, precision, tmp_path):
    spec = _spec(method, precision=precision)
    trained = load_or_train(spec, ExecContext(device="cuda", checkpoint_dir=tmp_path, progress=False))
    assert not trained.loaded and trained.meta["precision"] == precision
    assert next(trained.model.parameters()).device.type == "cuda"
    on_cpu = load_or_train(spec, ExecContext(device="cpu", checkpoint_dir=tmp_path, progress=False))
    assert on_cpu.loaded and on_cpu.path == trained.path, "the device is not part of the checkpoint key"
    ds = load_dataset("synthetic", spec.dataset_params)
    test = load_split(ds, False)
    acc_gpu = accuracy(trained.model, ds, test, torch.device("cuda"))
    acc_cpu = accuracy(on_cpu.model, ds, test, torch.device("cpu"))
    assert acc_gpu > 0.9
    assert abs(acc_gpu - acc_cpu) <= 2 / len(test), (acc_gpu, acc_cpu)  # float order may flip an image or two


def test_training_on_cuda_stops_on_its_stop_file_and_resumes(tmp_path):
    spec = _spec("sgt_pact", epochs=1, train_size=512)
    stop = tmp_path / "stop-now"

    def request(step: int, total: int) -> None:
        if step == 3:
            stop.touch()

    with pytest.raises(KeyboardInterrupt, match="stopped at step 3/.*state saved"):
        load_or_train(spec, ExecContext(device="cuda", checkpoint_dir=tmp_path / "ckpt", progress=False, stop_file=stop), on_step=request)
    stop.unlink()
    resumed = load_or_train(spec, ExecContext(device="cuda", checkpoint_dir=tmp_path / "ckpt", progress=False, stop_file=stop))
    assert resumed.meta["resumed_at_step"] == 3 and not resumed.loaded


def test_smoke_suite_on_cuda_names_its_device_and_matches_the_cpu_scores(tmp_path):
    """One suite run on CUDA, then the same suite on the CPU over the same checkpoints: the CPU run trains
    nothing, and both score the same models alike."""
    from sgq_bench.cli import main

    ckpt = tmp_path / "ckpt"
    runs = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        assert main(["run", "--suite", "smoke", "--out", str(out), "--device", device, "--checkpoint-dir", str(ckpt),
                     "--quiet", "--no-figures"], standalone_mode=False) == 0
        runs[device] = [json.loads(line) for line in Path(out, "results.jsonl").read_text().splitlines()]
        if device == "cpu":
            trained = json.loads((out / "manifest.json").read_text())["runs"][-1]["tasks"]["train"]
            assert trained == 0, "the CPU run must reuse the models trained on CUDA"
    gpu, cpu = runs["cuda"], runs["cpu"]
    assert gpu and all(r["provenance"]["device"].startswith("cuda:") for r in gpu)
    assert all(r["provenance"]["device"].startswith("cpu") for r in cpu)

    def scores(rows: list[dict]) -> dict[tuple, float]:
        return {(r["method"], r["seed"], r["explainer"], r["metric"], r["variant"]): r["value"] for r in rows
                if r["metric"] == "accuracy" or r["explainer"] == "gradient"}

    a, b = scores(gpu), scores(cpu)
    assert a.keys() == b.keys() and a
    for key, value in a.items():
        if isinstance(value, float) and isinstance(b[key], float):
            assert abs(value - b[key]) <= 0.02 * max(1.0, abs(value)), (key, value, b[key])
