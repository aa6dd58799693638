"""Scoring a model trained elsewhere (``evaluate --weights``): the same weights score the same whether they
come from our checkpoint or from a plain state-dict file (.pt or .safetensors); a model trained in plain
PyTorch is scored and labelled external; a file that does not fit the declared model is one line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from sgq_bench.cli import main

PICK = ["--suite", "smoke", "--dataset", "synthetic", "--method", "baseline"]
SCORE = ["--explainers", "gradient", "--metrics", "accuracy,complexity,deletion_auc",
         "--metric-param", "deletion_auc.steps=8"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def values(out) -> dict:
    return {(r["explainer"], r["metric"]): r["value"] for r in rows(out)}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A model trained by sgq-bench, scored from its own checkpoint, and its weights as plain files."""
    from _metric_helpers import smoke_spec

    from sgq_bench.specs import ExecContext
    from sgq_bench.train import load_or_train

    root = tmp_path_factory.mktemp("ours")
    trained = load_or_train(smoke_spec("baseline"), ExecContext(checkpoint_dir=root / "ck"))
    res = invoke("evaluate", *PICK, "--checkpoint-dir", str(root / "ck"), "--out", str(root / "ours"), *SCORE)
    assert res.exit_code == 0, res.output
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    torch.save(state, root / "w.pt")
    from safetensors.torch import save_file

    save_file(state, str(root / "w.safetensors"))
    return root


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_the_same_weights_from_a_file_score_as_from_our_checkpoint(ours, tmp_path, name):
    res = invoke("evaluate", *PICK, "--weights", str(ours / name), "--out", str(tmp_path), *SCORE)
    assert res.exit_code == 0, res.output
    assert values(tmp_path) == values(ours / "ours")
    sha = hashlib.sha256((ours / name).read_bytes()).hexdigest()
    for r in rows(tmp_path):
        assert r["origin"] == "external" and r["weights_sha256"] == sha
        assert r["checkpoint_key"] == f"external-{sha[:20]}" and r["method"] == f"baseline@external-{sha[:12]}"
    assert all(r["origin"] == "trained" for r in rows(ours / "ours"))


def test_a_model_trained_in_plain_pytorch_is_scored_as_external(tmp_path):
    """No sgq-bench training: the registry's architecture, a plain torch loop, torch.save(state_dict())."""
    from sgq_bench import _registry
    from sgq_bench.data import batches, load_dataset, load_split

    ds = load_dataset("synthetic", {"train_n": 256, "test_n": 64})
    torch.manual_seed(3)
    model = _registry.models.get("test_cnn")(ds)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for x, y in batches(ds, load_split(ds, True, None), 32, torch.device("cpu"), shuffle=False):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    res = invoke("evaluate", *PICK, "--weights", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "run"), *SCORE)
    assert res.exit_code == 0, res.output
    got = rows(tmp_path / "run")
    assert {r["metric"] for r in got} == {"accuracy", "complexity", "deletion_auc"}
    assert all(r["origin"] == "external" and r["value"] is not None for r in got)


def test_a_file_that_does_not_fit_the_declared_model_is_one_line_naming_the_keys(ours, tmp_path):
    state = torch.load(ours / "w.pt", weights_only=True)
    first, second = sorted(state)[:2]
    state.pop(first)
    state[second] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    res = invoke("evaluate", *PICK, "--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "run"))
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert "does not fit the declared model" in line and f"missing key(s): {first}" in line
    assert "unexpected key(s): extra.weight" in line and f"{second} (3, 3) !=" in line
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    res = invoke("evaluate", *PICK, "--weights", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "run"))
    assert res.exit_code == 2 and "not a readable weights-only PyTorch file" in res.output


SUITE = '''version = "1"
name = "external"
seeds = [0]
methods = []

[datasets.synthetic]
model = "test_cnn"
eval_size = 64
params = {{ train_n = 1024, test_n = 256 }}

[datasets.synthetic.recipe]
optimizer = "adam"
lr = 0.003
epochs = 2
batch_size = 32

[evaluate]
explainers = ["gradient"]
metrics = [{metrics}]
params = {{ deletion_auc = {{ steps = 8 }} }}

[models.ours]
weights = "{weights}"
dataset = "synthetic"
method = "baseline"
'''


def test_a_suite_models_entry_scores_the_file_like_evaluate_weights(ours, tmp_path):
    """``[models.NAME] weights = ...`` (relative to the suite file) in a suite with no grid: `run` scores
    the file with the same numbers as our own checkpoint, rows labelled external with its sha256."""
    import shutil

    shutil.copy(ours / "w.safetensors", tmp_path / "w.safetensors")
    suite = tmp_path / "external.toml"
    suite.write_text(SUITE.format(metrics='"accuracy", "complexity", "deletion_auc"', weights="w.safetensors"))
    res = invoke("run", "--suite", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-report",
                 "--checkpoint-dir", str(tmp_path / "ck"))
    assert res.exit_code == 0, res.output
    assert values(tmp_path / "run") == values(ours / "ours")
    sha = hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert all(r["origin"] == "external" and r["weights_sha256"] == sha for r in rows(tmp_path / "run"))
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").glob("*.pt"))  # nothing was trained
    again = invoke("run", "--suite", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-report",
                   "--checkpoint-dir", str(tmp_path / "ck"))
    assert again.exit_code == 0 and "1 already done" in again.output, again.output


@pytest.mark.parametrize("change, needle", [
    ({"weights": "missing.pt"}, "models.ours.weights = 'missing.pt': no such file"),
    ({"metrics": '"accuracy", "deletion_auc", "roar"'}, "models.ours: metric(s) roar need a training spec"),
    ({"weights": "bad.pt"}, "models.ours: --weights"),
])
def test_a_bad_models_entry_is_refused_before_any_work(ours, tmp_path, change, needle):
    state = torch.load(ours / "w.pt", weights_only=True)
    state.pop(sorted(state)[0])
    torch.save(state, tmp_path / "bad.pt")
    import shutil

    shutil.copy(ours / "w.pt", tmp_path / "w.pt")
    fields = {"metrics": '"accuracy", "deletion_auc"', "weights": "w.pt", **change}
    (tmp_path / "s.toml").write_text(SUITE.format(**fields))
    res = invoke("run", "--suite", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run"), "--quiet")
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "run").exists()
