"""The train/list CLI: one-line errors with exit code 2, no tracebacks; a second train loads."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, env_cache=None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_cache is not None:
        env["SGQ_BENCH_CACHE"] = str(env_cache)
    return subprocess.run([sys.executable, "-m", "sgq_bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--method", "sgt_pac"], "Did you mean 'sgt_pact'"),
        (["train", "--method", "pact", "--bits", "0/4"], "w_bits=0 is outside the allowed range [1, 16]"),
        (["train", "--method", "pact", "--bits", "33/4"], "w_bits=33 is outside the allowed range [1, 16]"),
        (["train", "--method", "pact", "--bits", "4/33"], "a_bits=33 is outside the allowed range [1, 16]"),
        (["train", "--method", "sgt", "--param", "k=1.5"], "k=1.5 is outside the allowed range (0.0, 1.0)"),
        (["train", "--method", "sgt", "--param", "k=0"], "k=0"),
        (["train", "--method", "baseline", "--bits", "4/4"], "declared by neither quantizer 'none'"),
        (["train", "--dataset", "mnsit"], "Did you mean 'mnist'"),
        (["train", "--device", "cuda:7" if False else "tpu"], "--device 'tpu'"),
        (["list", "quantisers"], "Did you mean 'quantizers'"),
        (["trian"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expect):
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert expect in lines[0]


def test_list_shows_reference_plugins_with_descriptions():
    res = run_cli("list")
    assert res.returncode == 0, res.stderr
    for name in ("none", "pact", "cross_entropy", "saliency_guided", "mnist_cnn", "resnet20", "test_cnn",
                 "mnist", "cifar10", "synthetic", "baseline", "sgt_pact"):
        assert name in res.stdout


def test_second_train_loads_the_checkpoint_and_prints_the_same_accuracy(tmp_path):
    args = ("train", "--suite", "smoke", "--dataset", "synthetic", "--method", "sgt_pact", "--epochs", "1")
    first = run_cli(*args, env_cache=tmp_path)
    second = run_cli(*args, env_cache=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    acc1 = first.stdout.split("test accuracy ")[1].split()[0]
    acc2 = second.stdout.split("test accuracy ")[1].split()[0]
    assert acc1 == acc2 and "loaded checkpoint" in second.stdout and "trained in" in first.stdout
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]  # same checkpoint path
