"""The built-in deployment backends: ``torch_ao`` (torch's quantized kernels) and ``onnxruntime``.

Both are registered in pyproject.toml's ``sgq_bench.deploy_backends`` entry-point group, the door a
plugin backend (OpenVINO, TensorRT) uses too. ``onnxruntime`` runs what a quantizer's
``export_onnx(model, calibration)`` writes (PACT: ``baselines/pact_onnx.py``), and the fp32 reference
in the same runtime is the float model written by ``baselines/onnx_graph.py``.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import torch
from sgq_bench.builtin.onnx_graph import float_onnx
from torch import nn

from sgq_bench import deploy as dp
from sgq_bench._params import Param

# op types that are float matrix kernels (what must not be left where a layer was quantized)
FLOAT_KERNELS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NhwcFusedConv")
INTEGER_KERNELS = ("QLinearConv", "NhwcQLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                   "DynamicQuantizeMatMul")


class TorchAO(dp.DeployBackend):
    """torch.ao quantized CPU kernels (x86/fbgemm/onednn), through the quantizer's own ``deploy()``."""

    name = "torch_ao"
    runtime = "torch.ao"

    def int8(self, quantizer: Any, model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
        deployed = dp.deploy_with(quantizer, model, calibration)
        info = getattr(deployed, "info", None)
        if isinstance(info, dict):
            info.update(self.describe(getattr(deployed, "engine", None)), layout="NHWC (channels-last quint8)")
        return deployed

    def describe(self, engine: str | None = None) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, **dp.backend_info(engine)}


class OnnxRuntime(dp.DeployBackend):
    """ONNX Runtime on the CPU execution provider, all graph optimisations, ``threads`` intra-op threads.

    ``bias``: see ``baselines/pact_onnx.py``. "int32" is what the runtime's fast kernels take; "float"
    is exact where the int32 rounding flips outputs (resnet20). Spelled ``onnxruntime:bias=float``.
    """

    name = "onnxruntime"
    runtime = "onnxruntime"
    params = {**dp.DeployBackend.params,
              "bias": Param("int32", "int8 layers' bias: 'int32' inside QLinearConv (fast; rounds the bias onto "
                            "the accumulator grid) or 'float' after ConvInteger (exact, slower)",
                            choices=("int32", "float"))}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.ort = dp.require_extra("onnxruntime")
        dp.require_extra("onnx")

    def int8(self, quantizer: Any, model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
        export = getattr(quantizer, "export_onnx", None)
        if export is None:
            raise dp.DeployUnavailable(f"quantizer {getattr(quantizer, 'name', None)!r} has no export_onnx(); "
                                       "the onnxruntime backend runs the integer graph a quantizer writes")
        if calibration is None:
            raise dp.DeployUnavailable("the onnxruntime backend needs calibration images (normalised training inputs)")
        proto, info = export(model, calibration, bias=self.bias)
        return OrtModel(proto.SerializeToString(), self.threads, {**info, "precision": "int8"})

    def fp32(self, model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
        proto = float_onnx(model, input_shape)
        return OrtModel(proto.SerializeToString(), self.threads, {"precision": "fp32"})

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, **session_settings(self.ort, self.threads)}


def session_settings(ort: Any, threads: int) -> dict[str, Any]:
    """What every row records about the ONNX Runtime session (the options :func:`session_options` sets)."""
    return {"ort_version": ort.__version__, "ort_execution_provider": "CPUExecutionProvider",
            "ort_graph_optimization_level": "ORT_ENABLE_ALL", "ort_execution_mode": "ORT_SEQUENTIAL",
            "ort_intra_op_threads": int(threads), "ort_inter_op_threads": 1}


def session_options(ort: Any, threads: int, optimized_path: str | None = None) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initializers would print on every build
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    return opts


def optimized_ops(ort: Any, model_bytes: bytes, threads: int) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (after its optimisations), with counts.

    Why: an ONNX file can hold integer operators that the runtime rewrites or falls back from; the
    optimised model it writes (``optimized_model_filepath``) is what its kernels execute.
    """
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model_bytes, session_options(ort, threads, path), providers=["CPUExecutionProvider"])
        graph = onnx.load(path).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


class OrtModel(nn.Module):
    """An ONNX Runtime session as a module: float NCHW tensor in, float logits out.

    ``info`` records the session's settings, the op types it runs after optimisation, and how many of
    them are integer and float matrix kernels.
    """

    def __init__(self, model_bytes: bytes, threads: int, info: dict[str, Any]) -> None:
        super().__init__()
        ort = dp.require_extra("onnxruntime")
        self.model_bytes, self.threads = model_bytes, int(threads)
        self.session = ort.InferenceSession(model_bytes, session_options(ort, threads),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        ops = optimized_ops(ort, model_bytes, threads)
        nhwc = any(op.startswith("Nhwc") for op in ops) or "Transpose" in ops
        self.info = {**info, **session_settings(ort, threads), "runtime": "onnxruntime",
                     "ort_providers": ",".join(self.session.get_providers()), "optimized_ops": ops,
                     "integer_kernels": sum(ops.get(k, 0) for k in INTEGER_KERNELS),
                     "float_kernels": sum(ops.get(k, 0) for k in FLOAT_KERNELS),
                     "layout": "NCHW input; NHWC inside the runtime" if nhwc else "NCHW",
                     "model_bytes": len(model_bytes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # a session is not picklable; its model is
        return _rebuild, (self.model_bytes, self.threads, self.info)


def _rebuild(model_bytes: bytes, threads: int, info: dict[str, Any]) -> OrtModel:
    return OrtModel(model_bytes, threads, info)
