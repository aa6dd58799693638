"""Where a number came from: package versions, git commit, device, CPU model, threads."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the sgq-bench checkout (with ``-dirty`` when it has local changes), or 'unknown'."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the vector extensions that pick a CPU's int8 and bf16 kernels (oneDNN, ONNX Runtime's MLAS): two CPUs of one
# model name can differ here (an AVX2-only and an AVX-512 AMD EPYC gave ORT int8 speed-ups up to 2.3x apart)
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp", "sve")


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The kernel-selecting extensions this CPU reports, space-separated ("" where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return " ".join(f for f in _ISA_FLAGS if f in have)
    return ""


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()}"


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything a published number must carry about its environment."""
    return {
        "sgq_bench_version": _version("sgq-bench"),
        "git_commit": git_commit(),
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion does not load with weights_only
        "torchvision_version": _version("torchvision"),
        "captum_version": _version("captum"),
        "quantus_version": _version("quantus"),
        "python_version": platform.python_version(),
        "device": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "threads": torch.get_num_threads(),
    }
