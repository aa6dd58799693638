"""Peak inference memory of one model, measured in a fresh child process.

Why a child process: the parent has datasets, other models and the allocator's history in it, so its
RSS says nothing about one model. The child imports torch and the model's modules, allocates the
input, resets the kernel's RSS high-water mark (``/proc/self/clear_refs``, Linux >= 4.0) and records
its RSS as the baseline; it then loads the model and runs the forward pass twice. The result is the
high-water mark minus that baseline: weights, activations and kernel workspaces, not the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

_KB = 1024.0


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(model_path: str, shape: list[int], threads: int, modules: list[str]) -> dict[str, Any]:
    import importlib
    import resource

    torch.set_num_threads(threads)
    for name in modules:
        importlib.import_module(name)
    x = torch.randn(*shape)
    torch.relu(x)  # touch the input and the elementwise kernels before the baseline
    reset = _reset_high_water()
    base_kb = _status_kb("VmRSS")
    if base_kb is None or not reset:  # no /proc: ru_maxrss is a never-reset high-water mark
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = torch.load(model_path, weights_only=False)  # our own file, written by the parent just now
    with torch.inference_mode():
        model(x)
        model(x)
    peak_kb = _status_kb("VmHWM") if reset else None
    how = "VmHWM-VmRSS"
    if peak_kb is None:
        peak_kb, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    return {"baseline_mb": base_kb / _KB, "peak_mb": peak_kb / _KB, "delta_mb": (peak_kb - base_kb) / _KB,
            "method": how}


def peak_memory(model: nn.Module, shape: tuple[int, ...], threads: int, timeout: float = 300.0) -> dict[str, Any]:
    """Peak RSS growth (MB) of loading ``model`` and running it on a ``shape`` input, in a child process.

    Returns the child's report: ``delta_mb`` (the number), ``baseline_mb``, ``peak_mb`` and ``method``.
    """
    modules = sorted({type(m).__module__ for m in model.modules()} - {"__main__"})
    with tempfile.TemporaryDirectory(prefix="sgq-mem-") as tmp:
        path = os.path.join(tmp, "model.pt")
        torch.save(model, path)
        cmd = [sys.executable, "-m", "sgq_bench.metrics._memory_probe", path, json.dumps(list(shape)),
               str(threads), json.dumps(modules)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # pragma: no cover - run in the child
    import warnings

    warnings.filterwarnings("ignore")
    out = _child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
    print(json.dumps(out))
