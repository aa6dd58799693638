"""How many images one forward pass should take, and keeping freed memory for reuse.

Why: on CPU, throughput collapses once a layer's output tensor passes glibc's mmap threshold (32 MB at
most): every such tensor is mapped fresh and its pages faulted in and zeroed, so the kernel's time
rivals the model's. Measured on this 2-core CPU with ``mnist_cnn`` (147 kB largest activation per
image): about 9,000 images/s at 64-192 images per pass, 3,600 at 2,048 (user and system time equal).
So CPU passes are sized to keep the largest activation under ``CPU_TENSOR_BYTES``, and
``keep_freed_memory`` stops glibc from handing freed heap back to the kernel between passes. On GPUs
large batches win; the cap there is ``MAX_IMAGES``.
"""

from __future__ import annotations

import ctypes
import sys
import weakref

import torch
from torch import nn

MAX_IMAGES = 2048  # upper bound on model inputs per pass anywhere (memory cap on accelerators)
CPU_TENSOR_BYTES = 24 << 20  # largest activation of one CPU pass: below glibc's 32 MB mmap ceiling

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False
_probe_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def keep_freed_memory() -> bool:
    """Let glibc keep freed heap memory (trim threshold 1 GiB, mmap threshold fixed at 32 MB) so that
    repeated passes reuse pages instead of faulting in new ones. Process-wide and idempotent; a no-op
    (returning False) where the C library is not glibc."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok


def largest_activation_bytes(model: nn.Module, like: torch.Tensor) -> int:
    """Bytes of the largest tensor any submodule outputs for ONE input shaped like ``like[0]`` (one
    probe forward with hooks; the input itself counts)."""
    sizes = [like[0].numel() * like.element_size()]

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(like[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return max(sizes)


def max_batch(model: nn.Module, like: torch.Tensor) -> int:
    """Images per forward pass for ``model`` on inputs shaped like ``like``: ``MAX_IMAGES`` on an
    accelerator, else as many as keep the largest activation under ``CPU_TENSOR_BYTES`` (probed once
    per model and input shape)."""
    if like.device.type != "cpu":
        return MAX_IMAGES
    key = (tuple(like.shape[1:]), like.dtype)
    try:
        per_model = _probe_cache.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        per_model = {}
    if key not in per_model:
        per_model[key] = max(1, min(MAX_IMAGES, CPU_TENSOR_BYTES // max(1, largest_activation_bytes(model, like))))
    return per_model[key]


@torch.inference_mode()
def forward(model: nn.Module, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Logits of ``x`` in passes of at most ``chunk`` (default ``max_batch``) images."""
    size = max_batch(model, x) if chunk is None else min(chunk, max_batch(model, x))
    if x.shape[0] <= size:
        return model(x)
    return torch.cat([model(x[s:s + size]) for s in range(0, x.shape[0], size)])


__all__ = ["CPU_TENSOR_BYTES", "MAX_IMAGES", "forward", "keep_freed_memory", "largest_activation_bytes",
           "max_batch"]
