"""``train`` and ``list`` through click's CliRunner: one-line errors with exit code 2, no tracebacks;
a second train loads the checkpoint it wrote; ``list --params`` shows a plugin's declared parameters."""

from __future__ import annotations

import pytest
from _cli_helpers import invoke, one_error_line


@pytest.mark.parametrize(
    "args,expect",
    [
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--method", "sgt_pac"], "Did you mean 'sgt_pact'"),
        (["train", "--method", "pact", "--bits", "0/4"], "w_bits=0 is outside the allowed range [1, 16]"),
        (["train", "--method", "pact", "--bits", "33/4"], "w_bits=33 is outside the allowed range [1, 16]"),
        (["train", "--method", "pact", "--bits", "4/33"], "a_bits=33 is outside the allowed range [1, 16]"),
        (["train", "--method", "pact", "--bits", "four"], "--bits = 'four' is invalid"),
        (["train", "--method", "sgt", "--param", "k=1.5"], "k=1.5 is outside the allowed range (0.0, 1.0)"),
        (["train", "--method", "sgt", "--param", "k=0"], "k=0"),
        (["train", "--method", "sgt", "--param", "k"], "--param 'k' is not KEY=VALUE"),
        (["train", "--method", "baseline", "--bits", "4/4"], "declared by neither quantizer 'none'"),
        (["train", "--dataset", "mnsit"], "Did you mean 'mnist'"),
        (["train", "--device", "tpu"], "--device 'tpu'"),
        (["train", "--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=2147483647"),
        (["train", "--seed", "123456789012345678901"], "'--seed': 123456789012345678901 is not in the range"),
        (["train", "--train-size", "0"], "'--train-size': 0 is not in the range x>=1"),
        (["train", "--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
        (["train", "--bogus"], "No such option '--bogus'"),
        (["list", "quantisers"], "Did you mean 'quantizers'"),
        (["list", "--params", "pcat"], "no plugin or method named 'pcat'. Did you mean 'pact'?"),
        (["trian"], "No such command 'trian'. Did you mean 'train'?"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expect):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    line = one_error_line(res)
    assert line.startswith("sgq-bench: error: ") and expect in line, line


def test_checkpoint_dir_that_is_a_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target, why in ((blocker, "it is a file"), (blocker / "sub", f"{blocker} is a file")):
        res = invoke("train", "--suite", "smoke", "--dataset", "synthetic", "--checkpoint-dir", str(target))
        assert res.exit_code == 2
        assert f"'--checkpoint-dir': '{target}' is not writable: {why}; expected a writable" in one_error_line(res)
    assert blocker.read_text() == "x"


def test_list_shows_reference_plugins_with_descriptions():
    res = invoke("list")
    assert res.exit_code == 0, res.output
    for name in ("none", "pact", "cross_entropy", "saliency_guided", "mnist_cnn", "resnet20", "test_cnn",
                 "mnist", "cifar10", "synthetic", "baseline", "sgt_pact"):
        assert f"  {name} " in res.stdout, name


def test_list_params_prints_the_declared_param_table():
    res = invoke("list", "--params", "pact")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("quantizers/pact (sgq_bench.builtin.quantizers:PACTQuantizer")
    assert lines[1].split() == ["name", "default", "allowed", "doc"]
    w_bits = next(line.split(None, 4) for line in lines if line.strip().startswith("w_bits"))
    assert w_bits[1:4] == ["4", "[1,", "16]"] and "weight bits" in w_bits[4]
    assert any(line.split()[:4] == ["boundary_bits", "8", "one", "of"] for line in lines if line.strip())
    assert "methods/pact: quantizer pact + objective cross_entropy" in res.stdout  # the method of that name too
    only = invoke("list", "objectives", "--params", "saliency_guided")
    assert only.exit_code == 0 and "objectives/saliency_guided" in only.stdout and "methods/" not in only.stdout
    assert "(0.0, 1.0)" in only.stdout  # k's open range
    empty = invoke("list", "--params", "none")
    assert "(no declared parameters)" in empty.stdout


def test_second_train_loads_the_checkpoint_and_prints_the_same_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path))
    args = ("train", "--suite", "smoke", "--dataset", "synthetic", "--method", "sgt_pact", "--bits", "W4A4",
            "--epochs", "1")
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    acc1 = first.stdout.split("test accuracy ")[1].split()[0]
    acc2 = second.stdout.split("test accuracy ")[1].split()[0]
    assert acc1 == acc2 and "loaded checkpoint" in second.stdout and "trained in" in first.stdout
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]  # same checkpoint path
    assert first.stdout.splitlines()[-1].startswith(f"checkpoint: {tmp_path}")
