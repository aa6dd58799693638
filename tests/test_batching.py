"""Pass sizing: the CPU cap follows the largest activation, and chunked passes give the same logits."""

from __future__ import annotations

import platform

import torch
from torch import nn

from sgq_bench import _batching as batching
from sgq_bench.data import MNIST
from sgq_bench.models import mnist_cnn


def test_largest_activation_is_probed_with_one_image():
    model = mnist_cnn(MNIST())
    x = torch.randn(7, 1, 28, 28)
    # conv2's output: 64 channels x 24 x 24 floats, the largest tensor of mnist_cnn
    assert batching.largest_activation_bytes(model, x) == 64 * 24 * 24 * 4
    assert batching.max_batch(model, x) == batching.CPU_TENSOR_BYTES // (64 * 24 * 24 * 4)  # 170 images
    assert model.training, "probing must leave the model's mode alone"


def test_max_batch_is_capped_and_at_least_one():
    tiny = nn.Linear(3, 2)
    assert batching.max_batch(tiny, torch.randn(5, 3)) == batching.MAX_IMAGES
    huge = nn.Conv2d(1, 4096, 1)  # 4096 x 64 x 64 floats = 64 MB per image
    assert batching.max_batch(huge, torch.randn(2, 1, 64, 64)) == 1


def test_chunked_forward_equals_one_pass():
    torch.manual_seed(0)
    model = mnist_cnn(MNIST()).eval()
    x = torch.randn(300, 1, 28, 28)
    with torch.inference_mode():
        whole = model(x)
    torch.testing.assert_close(batching.forward(model, x, chunk=64), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batching.forward(model, x), whole, rtol=1e-5, atol=1e-5)


def test_keep_freed_memory_is_idempotent():
    first = batching.keep_freed_memory()
    assert batching.keep_freed_memory() == first
    if platform.libc_ver()[0] == "glibc":
        assert first
