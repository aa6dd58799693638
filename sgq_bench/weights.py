"""Models trained elsewhere: a state dict from a file, checked against the declared architecture.

Why: a researcher who trained SGT with the official code, or PACT in another framework, should be able to
score that model with the same protocol. The file is a plain PyTorch ``state_dict`` (``torch.save`` of
``model.state_dict()``, read with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper is accepted) or
a ``.safetensors`` file, with the keys and shapes the declared model has after its method's quantizer has
prepared it (docs/plugins.md, "Scoring a model trained elsewhere", lists them per built-in model). Such a
model has no training spec: its rows say ``origin = "external"`` and carry the file's sha256, and its cell
is named after the file's hash, so it is never mistaken for a model sgq-bench trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgq_bench._io import file_sha256
from sgq_bench.data import load_dataset
from sgq_bench.errors import UsageError
from sgq_bench.specs import TrainSpec
from sgq_bench.train import TrainResult, build_model, resolve_device

SHOWN_KEYS = 4  # keys named in a mismatch message before "and N more"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt``/``.pth`` (weights only) or ``.safetensors`` file; one line on failure."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError("--weights *.safetensors needs safetensors: pip install 'sgq-bench[weights]'") from None
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # a truncated or foreign file
            raise UsageError(f"--weights {str(path)!r}: not a readable safetensors file ({type(exc).__name__})") from None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"--weights {str(path)!r}: not a readable weights-only PyTorch file "
                         f"({type(exc).__name__}); save it with torch.save(model.state_dict(), path)") from None
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UsageError(f"--weights {str(path)!r}: expected a state dict (names -> tensors), got "
                         f"{type(blob).__name__}")
    return blob


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Same keys and shapes as the declared model, or one line naming the keys that differ."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} key(s): {_some(keys)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): " + ", ".join(
            f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}" for k in shapes[:SHOWN_KEYS])
            + (f" and {len(shapes) - SHOWN_KEYS} more" if len(shapes) > SHOWN_KEYS else ""))
    if parts:
        raise UsageError(f"{where} does not fit the declared model: " + "; ".join(parts))


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def external_key(sha256: str) -> str:
    """The ``checkpoint_key`` of an external model's rows: never a training spec's hash."""
    return f"external-{sha256[:20]}"


def load_external(spec: TrainSpec, path: Path, device: Any = "cpu") -> TrainResult:
    """The declared model (``spec``'s dataset, model and method) with the weights of ``path``."""
    path = Path(path)
    state = read_state_dict(path)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    model, _, _ = build_model(spec, dataset)
    check_state_dict(model.state_dict(), state, f"--weights {str(path)!r} ({spec.model}, method {spec.method.name})")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    sha = file_sha256(path)
    meta = {"origin": "external", "weights_sha256": sha, "weights_file": path.name, "precision": "fp32",
            "train_data_sha256": None, "provenance": None, "history": []}
    return TrainResult(model.to(resolve_device(device)).eval(), path, True, meta)
