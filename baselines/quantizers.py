"""Reference quantizers: ``none`` (float) and ``pact`` (PACT activations + rescaled DoReFa weights)."""

from __future__ import annotations

import operator
from typing import Any

import torch
from sgq_bench.builtin.pact_layers import (
    PACTReLU,
    QuantConv2d,
    QuantLinear,
    QuantTracer,
    grid_bias_copy,
    keeps_grid,
    quantized_copy,
    residual_quant_copy,
    set_bias_grid,
    sole_user,
)
from torch import fx, nn

from sgq_bench._base import Bits, Param, Quantizer


class NoQuantizer(Quantizer):
    """Full precision (FP32): the model is trained as built."""

    name = "none"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model


def residual_batchnorms(model: nn.Module) -> dict[str, str]:
    """{BatchNorm name: its conv's name} for each BatchNorm2d that directly follows a Conv2d and whose output
    enters an add (a residual join), from the model's torch.fx graph; {} if the model cannot be traced."""
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # data-dependent control flow etc.: no residual boundaries
        return {}
    modules = dict(model.named_modules())
    adds = {operator.add, torch.add}
    out = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)):
            continue
        if any((u.op == "call_function" and u.target in adds) or (u.op == "call_method" and u.target == "add")
               for u in node.users):
            out[node.target] = src.target
    return out


def _input_act(node: fx.Node, modules: dict[str, nn.Module]) -> PACTReLU | None:
    """The PACT layer whose grid ``node``'s input is on (through pooling, views, padding), or None."""
    src = node.args[0] if node.args else None
    while isinstance(src, fx.Node):
        module = modules.get(src.target) if src.op == "call_module" else None
        if isinstance(module, PACTReLU):
            return module
        if not keeps_grid(src, modules):
            return None
        src = src.args[0] if src.args else None
    return None


def grid_biases(model: nn.Module) -> None:
    """PACT's ``bias_grid = "int32"``: each quantized layer that reads a PACT output gets its eval-mode
    bias on its accumulator grid (its BatchNorm, if one follows, becomes a GridBiasBatchNorm2d that folds
    and grids). Layers reading float values (the calibrated boundaries of ``boundary_bits = 0``) stay."""
    try:
        graph = QuantTracer().trace(model)
    except Exception as exc:
        raise ValueError(f"pact bias_grid='int32' needs a torch.fx-traceable model ({type(exc).__name__})") from None
    modules = dict(model.named_modules())
    for node in graph.nodes:
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, (QuantConv2d, QuantLinear)):
            continue
        act = _input_act(node, modules)
        if act is None:
            continue
        bn_node = sole_user(modules, node, nn.BatchNorm2d) if isinstance(layer, QuantConv2d) else None
        if bn_node is not None:  # the same pairing the exporters fold (``pact_deploy.folded_layer``)
            bn = modules[bn_node.target]
            new = grid_bias_copy(bn)
            set_bias_grid(new, act, conv=layer)
            if new is not bn:
                _set_submodule(model, bn_node.target, new)
        else:
            set_bias_grid(layer, act)


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


class PACTQuantizer(Quantizer):
    """PACT k-bit activations (learnable clip) + DoReFa k-bit weights rescaled by max|w| (Choi et al. 2018)."""

    name = "pact"
    params = {
        "w_bits": Param(4, "weight bits of quantized conv/linear layers", low=1, high=16),
        "a_bits": Param(4, "activation bits of PACT ReLUs", low=1, high=16),
        "alpha_init": Param(10.0, "initial PACT clipping level", low=0.0, low_open=True),
        "alpha_decay": Param(1e-4, "minimum L2 weight decay on alpha", low=0.0),
        "quantize_first_last": Param(False, "also quantize the first conv and the last linear layer"),
        "boundary_bits": Param(8, "bits where a float value enters the quantized part: the ReLU after a float "
                               "layer that feeds a quantized one becomes an 8-bit PACT, and a quantized conv's "
                               "BatchNorm output that enters a residual add is fake-quantized to 8 bits, as a "
                               "real int8 deployment must; 0 leaves both float (the deployment then "
                               "calibrates them and no longer matches exactly)", choices=(0, 8)),
        "bias_grid": Param("float", "where the eval-mode bias (BatchNorm folded) of a quantized layer lies: "
                           "'float', or 'int32', on the layer's integer accumulator grid (input step x weight "
                           "step x BN gain), so an integer-only runtime (ONNX Runtime's QLinearConv) computes "
                           "exactly what the model does; training is unchanged", choices=("float", "int32"),
                           added_late=True),
    }

    def declared_bits(self) -> Bits:
        """``W{w_bits}A{a_bits}``: the 8-bit boundaries ``prepare`` adds (``boundary_bits``) are per layer."""
        return Bits(self.w_bits, self.a_bits)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap conv/linear layers for fake-quant ones and each ReLU that follows one for PACT.

        "Follows" is read from module registration order, which the reference models keep equal to
        forward order; first and last weight layers stay float unless ``quantize_first_last``. With
        ``boundary_bits`` (default 8), a ReLU after a float layer that a quantized layer follows becomes an
        8-bit PACT, and BatchNorms after quantized convs whose output enters a residual add (read from the
        torch.fx graph; skipped if the model cannot be traced) are fake-quantized to 8 bits. Each swapped
        weight layer and PACT declares its bits (``mark_quantized``); the efficiency metrics read those.
        """
        named = list(model.named_modules())
        layers = [n for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise ValueError("pact: the model has no Conv2d/Linear layer to quantize")
        keep_float = set() if self.quantize_first_last else {layers[0], layers[-1]}
        quantized_after = {n: any(q not in keep_float for q in layers[i + 1:]) for i, n in enumerate(layers)}
        residual_bns = residual_batchnorms(model) if self.boundary_bits else {}
        last_layer, last_layer_quantized = None, False
        for name, module in named:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                last_layer, last_layer_quantized = name, name not in keep_float
                if last_layer_quantized:
                    _set_submodule(model, name, quantized_copy(module, self.w_bits))
            elif isinstance(module, nn.ReLU) and last_layer_quantized:
                _set_submodule(model, name, PACTReLU(self.a_bits, self.alpha_init))
            elif (isinstance(module, nn.ReLU) and self.boundary_bits and last_layer is not None
                  and quantized_after[last_layer]):
                _set_submodule(model, name, PACTReLU(self.boundary_bits, self.alpha_init))
            elif isinstance(module, nn.BatchNorm2d) and residual_bns.get(name) not in (None, *keep_float):
                _set_submodule(model, name, residual_quant_copy(module))
        if self.bias_grid == "int32":
            grid_biases(model)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """alpha gets L2 decay of at least ``alpha_decay`` even when the recipe uses none (PACT paper)."""
        alphas = [m.alpha for m in model.modules() if isinstance(m, PACTReLU)]
        ids = {id(a) for a in alphas}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "weight_decay": weight_decay}]
        if alphas:
            groups.append({"params": alphas, "weight_decay": max(weight_decay, self.alpha_decay)})
        return groups

    def deploy(self, model: nn.Module, calibration: torch.Tensor | None = None, engine: str | None = None,
               float_residual: bool = False) -> nn.Module:
        """A real int8 CPU copy of the trained ``model`` (see ``baselines/pact_deploy.py``).

        ``calibration`` (normalised training images) sets the ranges where a float value enters an int8
        layer (the first quantized layer's input, residual branches); without it those are unknown.
        """
        from sgq_bench.builtin.pact_deploy import deploy_pact

        from sgq_bench.errors import UsageError

        if calibration is None:
            raise UsageError("pact deploy needs calibration images (normalised training inputs) for the ranges "
                             "of float-to-int8 boundaries; use sgq_bench.deploy.calibration_inputs(dataset)")
        return deploy_pact(model, calibration, engine, float_residual)

    def export_onnx(self, model: nn.Module, calibration: torch.Tensor, bias: str = "int32") -> tuple[Any, dict[str, Any]]:
        """The trained ``model`` as an integer ONNX graph on its exact PACT grids, and notes on what is exact
        (``baselines/pact_onnx.py``; ``bias``: "int32", fast, or "float", exact); the ``onnxruntime``
        deploy backend runs it."""
        from sgq_bench.builtin.pact_onnx import pact_onnx

        return pact_onnx(model, calibration, bias)
