"""Suite validation: every bad key or value names the file, the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sgq_bench.config.suite import load_suite, parse_bits
from sgq_bench.errors import UsageError

MINIMAL = """
version = "1"
methods = ["baseline", "pact"]
[datasets.synthetic]
model = "test_cnn"
eval_size = 32
params = { train_n = 64, test_n = 64 }
[datasets.synthetic.recipe]
optimizer = "adam"
lr = 0.003
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["smoke", "quick", "full", "full_bits"])
def test_shipped_suites_validate(name):
    suite = load_suite(name)
    assert suite.version and suite.seeds and suite.datasets and suite.methods
    assert len({m.name for m in suite.methods}) == len(suite.methods)


def _pact_bits(suite) -> set[int]:
    return {m.quantizer_params.get("w_bits", 32) * 100 + m.quantizer_params.get("a_bits", 32)
            for m in suite.methods if m.quantizer == "pact"}


def test_full_suite_matches_the_protocol():
    s = load_suite("full")
    assert s.seeds == (0, 1, 2)
    assert [m.name for m in s.methods] == ["baseline", "pact", "sgt", "sgt_pact"] and _pact_bits(s) == {404}
    assert {d.name for d in s.datasets} == {"mnist", "cifar10"}
    assert s.dataset("cifar10").recipe.epochs == 160 and s.dataset("mnist").recipe.optimizer == "adadelta"
    if s.metrics:
        assert {"roar", "kar"} <= set(s.metrics)
        assert list(s.metric_params["roar"]["fractions"]) == [0.1, 0.3, 0.5, 0.7, 0.9]
    sweep = load_suite("full_bits")  # the bit-width sweep: full-length recipes, four PACT bit widths
    assert sweep.seeds == (0, 1, 2) and _pact_bits(sweep) == {808, 404, 202, 402}
    assert sweep.dataset("cifar10").recipe.epochs == 160 and sweep.dataset("mnist").recipe.epochs == 14


def test_minimal_suite_by_path(tmp_path):
    s = load_suite(str(write(tmp_path, MINIMAL)))
    assert [m.name for m in s.methods] == ["baseline", "pact"] and s.dataset("synthetic").eval_size == 32
    assert s.fingerprint() == load_suite(str(write(tmp_path, MINIMAL))).fingerprint()


@pytest.mark.parametrize(
    "overrides,needles",
    [
        ({"bits": 0}, ["bits = 0", "w_bits=0", "[1, 16]"]),
        ({"bits": "4/x"}, ["bits = '4/x'", "'W/A'"]),
        ({"colour": 1}, ["unknown key 'colour'", "allowed: version"]),
        ({"datasets.synthetic.eval_sise": 3}, ["datasets.synthetic.eval_sise", "Did you mean 'eval_size'"]),
        ({"datasets.synthetic.eval_size": 0}, ["datasets.synthetic.eval_size = 0", "integer >= 1"]),
        ({"datasets.synthetic.recipe.lr": -1}, ["recipe.lr = -1", "a number > 0"]),
        ({"datasets.synthetic.recipe.optimiser": "sgd"}, ["recipe.optimiser", "Did you mean 'optimizer'"]),
        ({"datasets.synthetic.recipe.schedule": "linear"}, ["recipe.schedule = 'linear'", "none, step, cosine"]),
        ({"datasets.synthetic.params.train_n": 2}, ["train_n=2", "[16"]),
        ({"datasets.synthetic.model": "resnet2"}, ["datasets.synthetic.model", "Did you mean 'resnet20'"]),
        ({"datasets.imagenet.model": "test_cnn"}, ["datasets.imagenet", "unknown dataset 'imagenet'"]),
        ({"methods": ["baseline", "sgt_pac"]}, ["methods", "Did you mean 'sgt_pact'"]),
        ({"methods": ["baseline", "baseline"]}, ["methods lists 'baseline' twice"]),
        ({"seeds": [0, -1]}, ["seeds = [0, -1]", "integers >= 0"]),
        ({"seeds": 3}, ["seeds = 3"]),
        ({"evaluate.explainers": ["gradient_x"]}, ["evaluate.explainers[0]", "gradient_x"]),
        ({"evaluate.metrics": ["acuracy"]}, ["evaluate.metrics[0]", "acuracy"]),
        ({"evaluate.colour": 1}, ["unknown key 'evaluate.colour'", "allowed: explainers"]),
        ({"evaluate.eval_seed": -2}, ["evaluate.eval_seed = -2"]),
        ({"define.mine.quantizer": "pact"}, ["method 'mine'", "'objective'"]),
    ],
)
def test_bad_values_name_file_key_value_and_allowed(tmp_path, overrides, needles):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(UsageError) as info:
        load_suite(str(path), overrides)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_bits_overrides_every_quantized_method(tmp_path):
    s = load_suite(str(write(tmp_path, MINIMAL)), {"bits": "4/2"})
    pact = s.method("pact")
    assert (pact.quantizer_params["w_bits"], pact.quantizer_params["a_bits"]) == (4, 2)
    assert s.method("baseline").quantizer == "none" and s.bits == (4, 2)
    assert s.fingerprint() != load_suite(str(write(tmp_path, MINIMAL))).fingerprint()
    assert parse_bits("W8A8", "f") == (8, 8) and parse_bits([2, 4], "f") == (2, 4) and parse_bits(3, "f") == (3, 3)
    with pytest.raises(UsageError, match="no method of the suite has a quantizer"):
        load_suite(str(write(tmp_path, MINIMAL)), {"bits": 4, "methods": ["baseline"]})


def test_malformed_toml_is_one_line(tmp_path):
    path = write(tmp_path, "version = \n[datasets")
    with pytest.raises(UsageError, match="not valid TOML") as info:
        load_suite(str(path))
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="missing key 'version'"):
        load_suite(str(write(tmp_path, MINIMAL.replace('version = "1"', ""))))
    with pytest.raises(UsageError, match="does not exist"):
        load_suite(str(tmp_path / "nope.toml"))
    with pytest.raises(UsageError, match="Did you mean 'quick'"):
        load_suite("quik")


@pytest.mark.parametrize("args,needle", [
    (["--set", "bits=0"], "w_bits=0 is outside the allowed range"),
    (["--set", "colour=red"], "unknown key 'colour'"),
    (["--set", "datasets.mnist.recipe.epochs=0"], "recipe.epochs = 0"),
    (["--only", "method=sgtt"], "Did you mean 'sgt'"),
    (["--only", "colour=red"], "--only: unknown field 'colour'"),
])
def test_cli_bad_suite_values_exit_2_one_line(tmp_path, args, needle):
    res = subprocess.run([sys.executable, "-m", "sgq_bench", "run", "--suite", "quick", "--out",
                          str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "out").exists()  # nothing was created for a run that cannot start


def test_every_published_run_directory_still_matches_its_shipped_suite():
    # a field added to the recipe (compile, 2026-12-05) once changed every fingerprint, and the evidence
    # run refused its own directory: each committed run directory must stay resumable by its suite
    import json
    from pathlib import Path

    from sgq_bench.orchestration.rundir import same_configuration

    root = Path(__file__).resolve().parent.parent / "docs" / "results"
    manifests = sorted(root.glob("*/manifest.json"))
    assert manifests, root
    for path in manifests:
        manifest = json.loads(path.read_text())
        suite = load_suite(manifest["suite"]["name"])
        assert same_configuration(manifest, suite), (path, manifest["fingerprint"], suite.fingerprint())


def test_a_compiled_recipe_changes_the_fingerprint_and_an_eager_one_does_not():
    import dataclasses

    suite = load_suite("smoke")
    eager = dataclasses.replace(suite, datasets=tuple(
        dataclasses.replace(d, recipe=dataclasses.replace(d.recipe, compile=False)) for d in suite.datasets))
    compiled = dataclasses.replace(suite, datasets=tuple(
        dataclasses.replace(d, recipe=dataclasses.replace(d.recipe, compile=True)) for d in suite.datasets))
    assert eager.fingerprint() == suite.fingerprint() != compiled.fingerprint()
    assert "compile" not in suite.datasets[0].recipe.key_dict()
    assert compiled.datasets[0].recipe.key_dict()["compile"] is True
