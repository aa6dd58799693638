"""Export a trained PACT (fake-quant) model as an integer ONNX graph on exactly the trained grids.

The graph is written in ONNX Runtime's operator form (QLinearConv, QGemm, QLinearAdd), so the
runtime cannot keep a layer in float: each quantized conv/linear is an integer kernel by construction.
The grids are the ones ``baselines/pact_deploy.py`` derives for torch.ao, read from the same torch.fx
graph (PACT layers as leaves, BatchNorm folded into the conv before it):

* activations after a PACT layer are uint8 with zero point 0 and scale ``alpha / (2^k - 1)`` (computed
  in float32, as the fake-quant forward does). ReLU's lower clamp is the zero point's saturation; the
  upper clamp at ``alpha`` for ``k < 8`` is a uint8 ``Clip(0, 2^k - 1)`` after the integer layer, which
  is exact because ``round(min(x, alpha) / s) = min(round(x / s), 2^k - 1)``;
* weights are the DoReFa integers (odd, in ``±(2^k - 1)``) with per-channel scales (BatchNorm gains),
  multiplied by a per-channel integer ``m`` with the scale divided by ``m`` (the same real weights).
  Why: the conv bias must be an int32 on the accumulator's grid ``s_x * s_w``; a finer grid (``m`` up to
  127 / max|integer|) rounds the bias ``m`` times more finely, where the fake-quant model adds it in
  float. ``m`` also keeps every pair of uint8 x int8 products within int16, so AVX2's saturating
  ``vpmaddubsw`` (ONNX Runtime's U8S8 kernel on CPUs without VNNI) never clips;
* a quantized conv's BatchNorm that feeds a residual add (``ResidualQuantBatchNorm2d``) outputs uint8
  with zero point 128 on its trained signed 8-bit grid, and the add (QLinearAdd) requantizes onto the
  next PACT grid;
* what stays float: layers the quantizer left float (first conv, last linear), average pooling, and, for
  models trained with ``boundary_bits = 0`` only, the ranges where a float value enters an integer layer
  (calibrated on training images, listed in ``info["calibrated"]``).

* ``bias = "int32"`` (fast): the bias is QLinearConv's/QGemm's int32 on the accumulator grid
  ``s_x * s_w``, off by up to half of it (``info["int32_bias_error"]``: that half as a fraction of the
  output step, per layer; resnet20's residual convs: 1-2%). An output near a rounding boundary then
  flips by one step, and in a residual network the flips compound: on CIFAR-10, top-1 agreement with
  fake-quant was 0.906 (quick model) and 0.985 (cifar10_long model). ``bias = "float"`` (exact): each
  layer is ConvInteger/MatMulInteger (uint8 weights with zero point 128: ONNX Runtime's int8-weight
  ConvInteger is ~4x slower), a float scale and bias, and one QuantizeLinear: agreement 0.9993 and
  0.9976 there, at ~2-4x the int32 mode's latency.

Differences from the fake-quant model are float rounding of the requantization (which ONNX Runtime does
in float32) and of the int32 bias; both only move an activation that sits on a rounding boundary.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from sgq_bench.builtin import onnx_graph as og
from sgq_bench.builtin.pact_deploy import _copy_eval, calibrate, folded_layer, pact_grid, sole_user, trace
from sgq_bench.builtin.pact_layers import (
    ZERO_PAD_FUNCTIONS,
    PACTReLU,
    QuantConv2d,
    QuantLinear,
    ResidualQuantBatchNorm2d,
)
from torch import fx, nn

from sgq_bench import deploy as dp

INT16_MAX = 32767  # vpmaddubsw adds two uint8 x int8 products into a saturating int16
BIAS_MODES = ("int32", "float")


def pact_scale(module: PACTReLU) -> tuple[float, int]:
    """(scale, levels) of a PACT layer's uint8 grid (``pact_grid`` checks it fits); the scale divided in
    float32, as the fake-quant forward divides it, so the integer grid is the trained one to the bit."""
    _, levels = pact_grid(module)
    return float(module.alpha.detach().float().cpu() / levels), levels


def weight_multiplier(ints: torch.Tensor, x_max: int) -> np.ndarray:
    """Per output channel, the largest integer m with m * max|w| <= 127 and 2 * x_max * m * max|w| <= 32767."""
    peak = ints.flatten(1).abs().amax(1).long().clamp_min(1)
    m = torch.minimum(127 // peak, INT16_MAX // (2 * max(int(x_max), 1) * peak)).clamp_min(1)
    return m.numpy()


class _Converter:
    """Walks the fake-quant FX graph and writes the integer ONNX graph; tracks which values are uint8."""

    def __init__(self, gm: fx.GraphModule, stats: dict[str, tuple[float, float]], bias: str = "int32") -> None:
        if bias not in BIAS_MODES:
            raise dp.DeployUnavailable(f"onnx export: bias={bias!r}; expected one of {', '.join(BIAS_MODES)}")
        self.bias = bias
        self.g = og.GraphBuilder()
        self.modules = dict(gm.named_modules())
        self.gm, self.stats = gm, stats
        self.env: dict[str, str] = {}
        self.qparams: dict[str, tuple[float, int, int]] = {}  # node -> (scale, zero point, largest integer)
        self.cache_f: dict[str, str] = {}
        self.cache_q: dict[str, tuple[str, tuple[float, int, int]]] = {}
        self.done: set[str] = set()
        self.unclipped: dict[str, tuple[int, str]] = {}  # value -> (levels, hint) of its deferred Clip
        self.clipped: dict[str, str] = {}  # value -> its Clip's output, once written
        self.info: dict[str, Any] = {"int8_layers": [], "calibrated": [], "float_ops": [], "requantized_channels": 0,
                                     "int32_bias_error": {}}

    # values -----------------------------------------------------------------
    def scale_zp(self, qp: tuple[float, int, int], hint: str) -> list[str]:
        return [self.g.const(qp[0], hint + "_scale"), self.g.const(qp[1], hint + "_zp", np.uint8)]

    def as_float(self, n: Any) -> Any:
        if not isinstance(n, fx.Node):
            return n
        if n.name not in self.qparams:
            return self.env[n.name]
        if n.name not in self.cache_f:
            qp = self.qparams[n.name]
            self.cache_f[n.name] = self.g.op("DequantizeLinear", [self.value(n), *self.scale_zp(qp, n.name)],
                                             "dequant_" + n.name)
        return self.cache_f[n.name]

    def as_quant(self, n: fx.Node) -> tuple[str, tuple[float, int, int]]:
        if n.name in self.qparams:
            return self.value(n), self.qparams[n.name]
        if n.name not in self.cache_q:
            lo, hi = self.stats[n.name]
            qp = (*dp.affine_qparams(lo, hi), 255)
            self.info["calibrated"].append(f"{n.name}: [{lo:.4g}, {hi:.4g}] -> scale {qp[0]:.4g}, zp {qp[1]}")
            out = self.g.op("QuantizeLinear", [self.env[n.name], *self.scale_zp(qp, n.name)], "quant_" + n.name)
            self.cache_q[n.name] = (out, qp)
        return self.cache_q[n.name]

    def clip(self, x: str, levels: int, hint: str) -> str:
        """uint8 Clip(0, levels), PACT's clamp at alpha on its integer grid (exact), deferred: it is written
        where a consumer reads ``x`` (``value``), past the ops that commute with it (``transparent``: max-pool,
        views, zero padding). Why: ONNX Runtime keeps a uint8 MaxPool that follows a Clip in NCHW, its slow
        generic kernel (mnist_cnn at batch 1: 51 of 177 us); straight after QLinearConv it becomes NhwcMaxPool,
        and the Clip then runs on the pooled tensor (kernels 130 us in all)."""
        self.unclipped[x] = (levels, hint)
        return x

    def value(self, n: fx.Node) -> str:
        """``n``'s integer value with its deferred Clip written (once per value)."""
        x = self.env[n.name]
        if x not in self.unclipped:
            return x
        if x not in self.clipped:
            levels, hint = self.unclipped[x]
            lo, hi = self.g.const(0, hint + "_lo", np.uint8), self.g.const(levels, hint + "_hi", np.uint8)
            self.clipped[x] = self.g.op("Clip", [x, lo, hi], "clip_" + hint)
        return self.clipped[x]

    def pact_output(self, last: fx.Node) -> tuple[fx.Node | None, tuple[float, int, int] | None]:
        """If ``last``'s only user is a PACT layer: (that node, its (scale, 0, levels))."""
        act = sole_user(self.modules, last, PACTReLU)
        if act is None:
            return None, None
        scale, levels = pact_scale(self.modules[act.target])
        return act, (scale, 0, levels)

    def calibrated(self, n: fx.Node) -> tuple[float, int, int]:
        lo, hi = self.stats[n.name]
        qp = (*dp.affine_qparams(lo, hi), 255)
        self.info["calibrated"].append(f"{n.name}: [{lo:.4g}, {hi:.4g}] -> scale {qp[0]:.4g}, zp {qp[1]}")
        return qp

    # nodes ------------------------------------------------------------------
    def quant_layer(self, node: fx.Node) -> None:
        layer, bn_node, bn, ints, scales, bias = folded_layer(self.modules, node, self.info)
        last = bn_node or node
        act, qp = self.pact_output(last)
        x, xqp = self.as_quant(node.args[0])
        if act is None:
            qp = (float(bn.out_scale()), 128, 255) if isinstance(bn, ResidualQuantBatchNorm2d) else self.calibrated(last)
        m = weight_multiplier(ints, xqp[2] if xqp[1] == 0 else 255)
        w_int = ints.numpy().astype(np.int32) * m.reshape(-1, *([1] * (ints.dim() - 1)))
        w_scale = (scales.numpy() / m).astype(np.float32)  # the real weights are unchanged
        acc_unit = np.float64(np.float32(xqp[0])) * w_scale.astype(np.float64)
        b = np.zeros(len(m)) if bias is None else bias.double().numpy()
        b_int = np.round(b / acc_unit)
        if np.abs(b_int).max(initial=0) >= 2**31:
            raise dp.DeployUnavailable(f"onnx export: bias of {node.target} overflows int32 at scale s_x * s_w")
        name = node.target
        g = self.g
        weights = [g.const(w_int, name + "_w", np.int8), g.const(w_scale, name + "_w_scale"),
                   g.const(np.zeros(len(m)), name + "_w_zp", np.int8)]
        inputs = [x, *self.scale_zp(xqp, name + "_x"), *weights, *self.scale_zp(qp, name + "_y"),
                  g.const(b_int, name + "_bias", np.int32)]
        float_bias = self.bias == "float"
        # the int32 bias's largest rounding, as a fraction of the output step: up to half a grid step for a
        # float bias, ~0 for a model trained with ``bias_grid = "int32"`` (its bias already on the grid)
        self.info["int32_bias_error"][name] = round(float(np.max(np.abs(b_int - b / acc_unit) * acc_unit, initial=0))
                                                    / qp[0], 6)
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise dp.DeployUnavailable(f"onnx export: conv {name} needs numeric zero padding")
            if xqp[1] != 0 and any(p != 0 for p in og._pair(layer.padding)):
                raise dp.DeployUnavailable(f"onnx export: padded conv {name} on a zero point != 0")
            pads = og._pair(layer.padding)
            attrs = dict(kernel_shape=og._pair(layer.kernel_size), strides=og._pair(layer.stride), pads=pads + pads,
                         dilations=og._pair(layer.dilation), group=layer.groups)
            if float_bias:
                # uint8 weights with zero point 128: ONNX Runtime's ConvInteger runs int8 weights ~4x slower
                w_u8 = g.const(w_int + 128, name + "_wu8", np.uint8)
                acc = g.op("ConvInteger", [x, w_u8, inputs[2], g.const(128, name + "_wu8_zp", np.uint8)],
                           name + "_acc", **attrs)
                shape = (1, -1, 1, 1)
            else:
                out = g.op("QLinearConv", inputs, name + "_int8", **attrs)
        elif float_bias:
            w_t = g.const(w_int.T.copy(), name + "_wt", np.int8)
            acc, shape = g.op("MatMulInteger", [x, w_t, inputs[2], weights[2]], name + "_acc"), (1, -1)
        else:
            out = g.op("QGemm", inputs[:6] + [inputs[8], *inputs[6:8]], name + "_int8", domain=og.MS_DOMAIN,
                       transB=1)
        if float_bias:  # integer accumulator, then float scale and bias, then one rounding onto the output grid
            unit = g.const(acc_unit.astype(np.float32).reshape(shape), name + "_unit")
            fb = g.const(b.astype(np.float32).reshape(shape), name + "_fbias")
            real = g.op("Add", [g.op("Mul", [g.op("Cast", [acc], name + "_f", to=1), unit], name + "_mul"), fb],
                        name + "_real")
            out = g.op("QuantizeLinear", [real, *self.scale_zp(qp, name + "_y")], name + "_int8")
        if act is not None and qp[2] < 255:
            out = self.clip(out, qp[2], act.name)
        self.info["int8_layers"].append(
            f"{name} (W{layer.weight_bits}" + (", BN folded" if bn is not None else "")
            + (f", PACT A{self.modules[act.target].act_bits} fused" if act is not None else "")
            + f", weight x{int(m.min())}..{int(m.max())})")
        self.done.update(n.name for n in (node, bn_node, act) if n is not None)
        end = act or last
        self.env[end.name], self.qparams[end.name] = out, qp

    def add(self, node: fx.Node) -> bool:
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or node.kwargs:
            return False
        act, qp = self.pact_output(node)
        if a.name not in self.qparams or b.name not in self.qparams:
            out = self.g.op("Add", [self.as_float(a), self.as_float(b)], node.name)
            if act is None:
                self.env[node.name] = out
                return True
            out = self.g.op("QuantizeLinear", [out, *self.scale_zp(qp, act.name)], "pact_" + act.name)
            out = self.clip(out, qp[2], act.name) if qp[2] < 255 else out
        else:
            (qa, pa), (qb, pb) = self.as_quant(a), self.as_quant(b)
            qp = qp or self.calibrated(node)
            inputs = [qa, *self.scale_zp(pa, a.name), qb, *self.scale_zp(pb, b.name), *self.scale_zp(qp, node.name)]
            out = self.g.op("QLinearAdd", inputs, "add_" + node.name, domain=og.MS_DOMAIN)
            out = self.clip(out, qp[2], act.name) if act is not None and qp[2] < 255 else out
        self.done.update(n.name for n in (node, act) if n is not None)
        end = act or node
        self.env[end.name], self.qparams[end.name] = out, qp
        return True

    def transparent(self, node: fx.Node) -> bool:
        """Ops that are exact on uint8 values: views, slicing, max-pool, dropout in eval, zero padding, and
        ReLU on a zero point of 0 (the values are >= 0 already)."""
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.name not in self.qparams:
            return False
        qp = self.qparams[src.name]
        relu = (node.op == "call_module" and isinstance(self.modules[node.target], nn.ReLU)) or (
            node.op == "call_function" and node.target in (torch.relu, nn.functional.relu)) or (
            node.op == "call_method" and node.target == "relu")
        if relu:
            out = self.env[src.name] if qp[1] == 0 else None
        elif node.op == "call_function" and node.target in ZERO_PAD_FUNCTIONS and qp[1] != 0:
            out = None  # zero padding is exact only where float 0 is integer 0
        else:
            out = og.shape_op(self.g, node, self.env[src.name], self.modules)
        if out is None:
            return False
        if self.env[src.name] in self.unclipped:  # each of these ops commutes with Clip(0, levels)
            self.unclipped[out] = self.unclipped[self.env[src.name]]
        self.env[node.name], self.qparams[node.name] = out, qp
        return True

    def float_op(self, node: fx.Node) -> None:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        args = [self.as_float(a) for a in node.args]
        if isinstance(module, PACTReLU):  # a float value entering the integer part (boundary PACT)
            scale, levels = pact_scale(module)
            qp = (scale, 0, levels)
            out = self.g.op("QuantizeLinear", [args[0], *self.scale_zp(qp, node.name)], "pact_" + node.name)
            self.env[node.name] = self.clip(out, levels, node.name) if levels < 255 else out
            self.qparams[node.name] = qp
            return
        bn_node = sole_user(self.modules, node, nn.BatchNorm2d) if type(module) is nn.Conv2d else None
        bn = self.modules[bn_node.target] if bn_node is not None else None
        self.env[node.name] = og.float_op(self.g, node, self.modules, args, bn)
        if bn_node is not None:
            self.env[bn_node.name] = self.env[node.name]
            self.done.add(bn_node.name)
        if any(a.name in self.qparams for a in node.all_input_nodes):
            self.info["float_ops"].append(node.name)

    def run(self) -> str:
        out = None
        for node in self.gm.graph.nodes:
            if node.name in self.done:
                continue
            if node.op == "placeholder":
                self.env[node.name] = "input"
            elif node.op == "output":
                out = self.as_float(node.args[0])
            elif node.op == "get_attr":
                raise dp.DeployUnavailable(f"onnx export: graph attribute {node.target!r} is not supported")
            elif node.op == "call_module" and isinstance(self.modules[node.target], (QuantConv2d, QuantLinear)):
                self.quant_layer(node)
            elif node.op == "call_function" and node.target in (operator.add, torch.add) and self.add(node):
                pass
            elif not self.transparent(node):
                self.float_op(node)
        return out


def pact_onnx(model: nn.Module, calibration: torch.Tensor, bias: str = "int32") -> tuple[Any, dict[str, Any]]:
    """The trained PACT ``model`` (left unchanged) as an integer ONNX ModelProto, and what is exact.

    ``calibration``: normalised training images; they fix only the ranges of float-to-int8 boundaries
    of models trained with ``boundary_bits = 0`` (none otherwise), and the input shape.
    """
    src = _copy_eval(model)
    gm = trace(src)
    calibration = calibration.detach().float().cpu()
    stats = calibrate(gm, calibration)
    converter = _Converter(gm, stats, bias)
    with torch.no_grad():
        out = converter.run()
    proto = converter.g.model("input", tuple(calibration.shape[1:]), out, type(model).__name__ + "_pact_int8")
    info = {**converter.info, "calibration_images": int(len(calibration)),
            "exact_weights": converter.info["requantized_channels"] == 0, "format": "ONNX QOperator", "int8_bias": bias}
    return proto, info
