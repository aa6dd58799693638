"""Writing ONNX graphs by hand from a torch.fx graph: a small builder and the float operators.

Why by hand and not ``torch.onnx.export``: the exporter sees a fake-quant model as float arithmetic
(clip, divide, round, multiply) and writes it so; ONNX Runtime then keeps the convolutions in float.
An integer graph whose integers are exactly the trained ones has to be written op by op
(``baselines/pact_onnx.py``); the float parts of that graph, and the fp32 reference model for the same
runtime, go through the same few float operators here, so fp32 and int8 in ONNX Runtime are the same
graph apart from the quantized layers.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sgq_bench.builtin.pact_layers import ZERO_PAD_FUNCTIONS
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sgq_bench.deploy import DeployUnavailable, require_extra

OPSET = 17  # ai.onnx; ONNX Runtime >= 1.14 runs it; Clip takes uint8 from opset 12
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops (QLinearAdd, QGemm)
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique names derived from hints."""

    def __init__(self) -> None:
        self.onnx = require_extra("onnx")
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, i = hint.replace(".", "_"), 1
        while name in self._names:
            name, i = f"{hint}_{i}".replace(".", "_"), i + 1
        self._names.add(name)
        return name

    def const(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (scalar or array) as ``dtype``."""
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any) -> str:
        """Add one node with a single output; returns the output's name."""
        out = self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, domain=domain or None,
                                                     **attrs))
        return out

    def model(self, input_name: str, input_shape: tuple[int, ...], output: str, name: str) -> Any:
        """The ModelProto: float32 input with a free batch dimension, float32 output."""
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        x = helper.make_tensor_value_info(input_name, tp.FLOAT, ["batch", *input_shape])
        y = helper.make_tensor_value_info(output, tp.FLOAT, None)
        graph = helper.make_graph(self.nodes, name, [x], [y], self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="sgq-bench")
        model.ir_version = min(model.ir_version, 8)  # readable by ONNX Runtime releases back to 1.14
        return model


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def conv(g: GraphBuilder, x: str, layer: nn.Conv2d, hint: str) -> str:
    """A float Conv (weight and bias from ``layer``)."""
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise DeployUnavailable(f"onnx export: conv {hint} needs numeric zero padding")
    pads = _pair(layer.padding)
    inputs = [x, g.const(layer.weight.detach().numpy(), hint + "_w")]
    if layer.bias is not None:
        inputs.append(g.const(layer.bias.detach().numpy(), hint + "_b"))
    return g.op("Conv", inputs, hint, kernel_shape=_pair(layer.kernel_size), strides=_pair(layer.stride),
                pads=pads + pads, dilations=_pair(layer.dilation), group=layer.groups)


def maxpool_attrs(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> dict[str, Any]:
    stride = kernel if stride is None or stride == [] else stride
    pads = _pair(padding)
    return {"kernel_shape": _pair(kernel), "strides": _pair(stride), "pads": pads + pads,
            "dilations": _pair(dilation), "ceil_mode": int(ceil_mode)}


def slice_args(g: GraphBuilder, index: Any, hint: str) -> list[str] | None:
    """ONNX Slice inputs (starts, ends, axes, steps) for ``x[index]`` made of slices only, else None."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(s, slice) for s in index):
        return None
    big = np.iinfo(np.int64).max
    parts = [(i, s) for i, s in enumerate(index) if s != slice(None)]
    if any(not all(isinstance(v, (int, type(None))) for v in (s.start, s.stop, s.step)) for _, s in parts):
        return None
    starts = [s.start or 0 for _, s in parts]
    ends = [big if s.stop is None else s.stop for _, s in parts]
    steps = [s.step or 1 for _, s in parts]
    axes = [i for i, _ in parts]
    return [g.const(v, f"{hint}_{k}", np.int64) for k, v in
            (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]


def pad_args(g: GraphBuilder, pad: Any, hint: str, rank: int = 4) -> str:
    """ONNX Pad's ``pads`` from torch's (last dim first, begin/end pairs) tuple, for a rank-4 tensor."""
    pad = list(pad)
    begin, end = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        begin[rank - 1 - k], end[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    return g.const(begin + end, hint + "_pads", np.int64)


def flatten_axis(node: fx.Node, module: nn.Module | None) -> int:
    """The ONNX Flatten axis of a flatten that keeps dim 0 and merges the rest, else an error."""
    start, end = (module.start_dim, module.end_dim) if module is not None else (
        node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0),
        node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1))
    if start != 1 or end != -1:
        raise DeployUnavailable(f"onnx export: flatten({start}, {end}) at {node.name}; only flatten(1, -1)")
    return 1


def shape_op(g: GraphBuilder, node: fx.Node, x: str, modules: dict[str, nn.Module]) -> str | None:
    """Ops that only move values (exact on any dtype): identity-in-eval, flatten, slicing, max-pool, zero pad.

    Returns the output name, or None when ``node`` is not one of them.
    """
    module = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(module, _IDENTITY_MODULES) or (node.op == "call_function" and node.target is F.dropout) or (
            node.op == "call_method" and node.target == "contiguous"):
        return x
    if isinstance(module, nn.Flatten) or (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        return g.op("Flatten", [x], node.name, axis=flatten_axis(node, module))
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            return None
        attrs = maxpool_attrs(module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        return g.op("MaxPool", [x], node.name, **attrs)
    if node.op == "call_function" and node.target is F.max_pool2d:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
        vals = dict(zip(names, node.args[1:]))
        vals.update({k: v for k, v in node.kwargs.items() if k in names})
        vals = {k: vals.get(k, defaults.get(k)) for k in names}
        return g.op("MaxPool", [x], node.name, **maxpool_attrs(*vals.values()))
    if node.op == "call_function" and node.target is operator.getitem:
        args = slice_args(g, node.args[1], node.name)
        return None if args is None else g.op("Slice", [x, *args], node.name)
    if node.op == "call_function" and node.target in ZERO_PAD_FUNCTIONS:
        if node.kwargs.get("value") not in (None, 0, 0.0) or node.kwargs.get("mode", "constant") != "constant" \
                or len(node.args) > 2:
            return None
        return g.op("Pad", [x, pad_args(g, node.args[1], node.name)], node.name)
    return None


def float_op(g: GraphBuilder, node: fx.Node, modules: dict[str, nn.Module], args: list[Any],
             bn: nn.BatchNorm2d | None = None) -> str:
    """One float node of the graph as ONNX (``bn``: a BatchNorm to fold into this conv).

    Raises:
        DeployUnavailable: an operator this exporter does not write (named in the message).
    """
    x = args[0] if args else None
    moved = shape_op(g, node, x, modules) if isinstance(x, str) else None
    if moved is not None:
        return moved
    module = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(module, nn.Conv2d):
        layer = fuse_conv_bn_eval(module, bn) if bn is not None else module
        return conv(g, x, layer, node.name)
    if isinstance(module, nn.Linear):
        inputs = [x, g.const(module.weight.detach().numpy(), node.name + "_w")]
        if module.bias is not None:
            inputs.append(g.const(module.bias.detach().numpy(), node.name + "_b"))
        return g.op("Gemm", inputs, node.name, transB=1)
    if isinstance(module, nn.BatchNorm2d):
        p = [module.weight, module.bias, module.running_mean, module.running_var]
        names = [g.const(t.detach().numpy(), f"{node.name}_{i}") for i, t in enumerate(p)]
        return g.op("BatchNormalization", [x, *names], node.name, epsilon=float(module.eps))
    if isinstance(module, nn.ReLU) or (node.op == "call_function" and node.target in (F.relu, torch.relu)) or (
            node.op == "call_method" and node.target == "relu"):
        return g.op("Relu", [x], node.name)
    if isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) == [1, 1]:
        return g.op("GlobalAveragePool", [x], node.name)
    if node.op == "call_function" and node.target in (operator.add, torch.add) and len(args) == 2 \
            and all(isinstance(a, str) for a in args) and not node.kwargs:
        return g.op("Add", list(args), node.name)
    what = type(module).__name__ if module is not None else str(node.target)
    raise DeployUnavailable(f"onnx export: no ONNX operator written for {what} (node {node.name})")


def run_float_graph(g: GraphBuilder, gm: fx.GraphModule) -> str:
    """Write a whole float fx graph (BatchNorm after a conv folded); returns the output's name."""
    modules = dict(gm.named_modules())
    env: dict[str, str] = {}
    folded: set[str] = set()
    out = None
    for node in gm.graph.nodes:
        if node.name in folded:
            continue
        if node.op == "placeholder":
            env[node.name] = "input"
        elif node.op == "output":
            out = env[node.args[0].name]
        elif node.op == "get_attr":
            raise DeployUnavailable(f"onnx export: graph attribute {node.target!r} is not supported")
        else:
            bn_node = _sole_bn_user(node, modules)
            args = [env[a.name] if isinstance(a, fx.Node) else a for a in node.args]
            env[node.name] = float_op(g, node, modules, args, modules[bn_node.target] if bn_node else None)
            if bn_node is not None:
                env[bn_node.name] = env[node.name]
                folded.add(bn_node.name)
    return out


def _sole_bn_user(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    if node.op != "call_module" or type(modules[node.target]) is not nn.Conv2d:
        return None
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module" and type(modules[users[0].target]) is nn.BatchNorm2d:
        return users[0]
    return None


def float_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The float ``model`` (eval mode, traced with torch.fx) as an ONNX ModelProto.

    ``input_shape``: one input's (C, H, W); the batch dimension stays free.
    """
    import copy

    src = copy.deepcopy(model).cpu().eval()
    try:
        gm = fx.symbolic_trace(src)
    except Exception as exc:
        raise DeployUnavailable(f"onnx export: cannot trace {type(model).__name__} with torch.fx "
                                f"({type(exc).__name__})") from None
    g = GraphBuilder()
    with torch.no_grad():
        out = run_float_graph(g, gm)
    return g.model("input", tuple(input_shape), out, type(model).__name__ + "_fp32")
