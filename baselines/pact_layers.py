"""PACT activations and rescaled-DoReFa weight layers (fake quantization with straight-through gradients)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from sgq_bench._base import Bits, layer_bits, mark_quantized


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: clip(x, 0, alpha) then uniform ``bits``-bit rounding; d/d alpha = 1 exactly where x >= alpha.

    Written with ``torch.where`` so autograd gives the PACT gradients: d y/d x = 1 on [0, alpha), and the
    rounding passes gradients straight through.
    """
    levels = 2**bits - 1
    scale = alpha / levels
    if not (torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad)):
        # Inference: the same grid values in four in-place passes instead of about ten (evaluation
        # and attribution-free metrics spend most of their time here on CPU).
        return torch.clamp(x, min=0.0).clamp_(max=alpha).div_(scale).round_().mul_(scale)
    y = torch.where(x >= alpha, alpha.expand_as(x), F.relu(x))
    return y + (torch.round(y / scale) * scale - y).detach()


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa ``bits``-bit weights rescaled by the layer's max|w| (docs/design.md, "PACT quantizer").

    Plain DoReFa maps onto [-1, 1], which blows up BatchNorm-free nets; multiplying back by max|w|
    keeps the layer's scale. Values are odd multiples of max|w| / (2^k - 1): 2^k distinct values.
    """
    levels = 2**bits - 1
    t = torch.tanh(w)
    u = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    q = round_ste(u * levels) / levels
    return (2 * q - 1) * w.detach().abs().max()


class PACTReLU(nn.Module):
    """ReLU replaced by PACT: learnable clipping level ``alpha`` (one per layer) and k-bit outputs."""

    def __init__(self, bits: int, alpha_init: float = 10.0) -> None:
        super().__init__()
        mark_quantized(self, act_bits=bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    @property
    def act_bits(self) -> int:
        """The declared output bits (``mark_quantized``): forward, deploy and the metrics read one value."""
        return _declared(self).act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pact_quantize(x, self.alpha, self.act_bits)

    def extra_repr(self) -> str:
        return f"bits={self.act_bits}"


def quantized_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's DoReFa weight; computed once and reused while the weight is frozen (requires_grad
    False, same storage and version), as in evaluation copies where every forward used to redo it (on
    mnist_cnn's 1.2 M-weight fc1 that was a third of an inference pass)."""
    w = layer.weight
    if w.requires_grad:
        return dorefa_weight(w, layer.weight_bits)
    key = (w.data_ptr(), w._version, w.dtype, w.device, layer.weight_bits)
    cached = layer.__dict__.get("_frozen_wq")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable by later autograd passes
            cached = (key, dorefa_weight(w.detach().clone(), layer.weight_bits))
        layer.__dict__["_frozen_wq"] = cached
    return cached[1]


def _declared(module: nn.Module) -> Bits:
    bits = layer_bits(module)
    if bits is None:  # not AttributeError: nn.Module.__getattr__ would replace this message
        raise RuntimeError(f"{type(module).__name__} was made without mark_quantized (use quantized_copy)")
    return bits


class _WeightBits:
    """What every fake-quantized weight layer adds to its torch base: ``weight_bits``, shown in its repr."""

    @property
    def weight_bits(self) -> int:
        """The declared weight bits (``mark_quantized``): forward, deploy and the metrics read one value."""
        return _declared(self).weight  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}"  # type: ignore[misc]


class QuantConv2d(_WeightBits, nn.Conv2d):
    """Conv2d whose weights are fake-quantized to ``weight_bits`` (rescaled DoReFa) on every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, quantized_weight(self), gridded_bias(self, self.bias))


class QuantLinear(_WeightBits, nn.Linear):
    """Linear whose weights are fake-quantized to ``weight_bits`` (rescaled DoReFa) on every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, quantized_weight(self), gridded_bias(self, self.bias))


# ---------------------------------------------------------------- the bias on the integer accumulator grid
# An integer-only deployment (ONNX Runtime's QLinearConv/QGemm) adds a layer's bias, BatchNorm folded in,
# as an int32 on the accumulator's grid s_x * s_w * g (input step, weight step, BN gain). A model whose
# eval-mode bias is a float lands between grid points, and the deployment's rounding of it flips outputs
# that sit near a rounding boundary: on resnet20 W4/A4 that compounds to 8% of predictions. With
# ``bias_grid`` (PACT's ``bias_grid = "int32"``) the eval-mode forward rounds the folded bias onto that
# grid itself, so the integer graph computes what the model computes. Training (batch statistics) is
# unchanged; the grid needs the layer's input PACT (its step s_x), set by ``PACTQuantizer.prepare``.

GRID_ATTR = "_bias_grid_input"  # the PACTReLU whose output a layer reads (a plain attribute, not a child)


def set_bias_grid(module: nn.Module, input_act: PACTReLU, conv: nn.Module | None = None) -> None:
    """Put ``module``'s eval-mode bias on the accumulator grid of its input ``input_act``: a quantized layer
    with no BatchNorm after it, or (with ``conv``) the GridBiasBatchNorm2d that folds into ``conv``."""
    module.__dict__[GRID_ATTR] = input_act
    if conv is not None:
        module.__dict__["_bias_grid_conv"] = conv


def weight_step(layer: nn.Module) -> torch.Tensor:
    """The DoReFa weight grid step max|w| / (2^k - 1) (float32, as ``dorefa_weight`` scales it)."""
    return layer.weight.detach().float().abs().max().clamp_min(1e-12) / (2**layer.weight_bits - 1)


def accumulator_unit(layer: nn.Module, act: PACTReLU, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
    """s_x * s_w * |gain| in float64 (per channel with a BN gain)."""
    s_x = (act.alpha.detach().float() / (2**act.act_bits - 1)).double()
    return s_x * weight_step(layer).double() * torch.as_tensor(gain, dtype=torch.float64).abs()


def on_grid(bias: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``bias`` (float64) rounded to the nearest multiple of ``unit``, as float32."""
    return (torch.round(bias / unit) * unit).float()


def gridded_bias(layer: nn.Module, bias: torch.Tensor | None) -> torch.Tensor | None:
    """A quantized layer's own bias, on its accumulator grid in eval mode when it has one."""
    if bias is None or layer.training or GRID_ATTR not in layer.__dict__:
        return bias
    return on_grid(bias.detach().double(), accumulator_unit(layer, layer.__dict__[GRID_ATTR])).to(bias.dtype)


class GridBiasBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm after a quantized conv; in eval mode with a grid (``set_bias_grid``), ``x * g + b`` with
    the folded bias ``b = (bias - mean) * g + beta`` on the conv's accumulator grid. Else a BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or "_bias_grid_conv" not in self.__dict__:
            return super().forward(x)
        g, b = self.folded()
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return x * g.to(x.dtype).view(shape) + b.to(x.dtype).view(shape)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, gridded bias) in float32 (needs a grid), computed in float64 once per state of the tensors
        they read (evaluation runs thousands of forwards with nothing changed); the exporters read it too."""
        conv, act = self.__dict__["_bias_grid_conv"], self.__dict__[GRID_ATTR]
        tensors = [t for t in (self.weight, self.bias, self.running_mean, self.running_var, conv.weight, conv.bias,
                               act.alpha) if t is not None]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            ones = torch.ones_like(self.running_var, dtype=torch.float64)
            gamma = self.weight.detach().double() if self.weight is not None else ones
            beta = self.bias.detach().double() if self.bias is not None else 0 * ones
            g = gamma / torch.sqrt(self.running_var.double() + self.eps)
            b = (0.0 if conv.bias is None else conv.bias.detach().double()) - self.running_mean.double()
            out = g.float(), on_grid(b * g + beta, accumulator_unit(conv, act, g))
        self.__dict__["_folded_cache"] = (key, out)
        return out


def _sharing_copy(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` instance sharing ``module``'s attributes, parameters, buffers and children (no copies)."""
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    new._parameters = module._parameters.copy()
    new._buffers = module._buffers.copy()
    new._modules = module._modules.copy()
    return new


def quantized_copy(layer: nn.Module, bits: int) -> nn.Module:
    """A QuantConv2d/QuantLinear sharing the float layer's parameters."""
    new = _sharing_copy(layer, QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear)
    return mark_quantized(new, weight_bits=bits)


def signed8_fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round to the signed 8-bit grid ``n * scale``, n in [-128, 127] (quint8 with zero point 128, what an
    int8 kernel requantizes to); straight-through inside the grid's range, zero gradient outside."""
    lo, hi = -128 * scale, 127 * scale
    y = torch.maximum(torch.minimum(x, hi), lo)
    return y + (torch.round(y / scale) * scale - y).detach()


class ResidualQuantBatchNorm2d(GridBiasBatchNorm2d):
    """A BatchNorm (after a quantized conv) whose output enters a residual add, fake-quantized to 8 bits.

    Why: a real int8 network must requantize that output before the add; if training leaves it float,
    the deployed model rounds where the trained one did not, and 4-bit PACT rounding downstream
    amplifies the difference (resnet20 W4/A4: 92% prediction agreement). Quantizing it here, on the grid
    the deployment uses, makes the deployment exact. The range is max|x| tracked by an exponential
    moving average during training (as torch.ao's observers), used as is in eval mode.
    """

    range_momentum = 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        with torch.no_grad():
            if not self._range_known:  # an untracked range (0) starts at the batch's max; a loaded one stays
                # a tensor select, not ``float(out_range) == 0``: no host sync, so torch.compile keeps one graph
                peak = y.detach().abs().amax().to(self.out_range.dtype)  # the cast copy_ did for a bf16 max
                self.out_range.copy_(torch.where(self.out_range == 0, peak, self.out_range))
                self._range_known = True
            elif self.training:
                # the range stays fp32 under bf16 autocast (lerp_ does not cast its end point)
                self.out_range.lerp_(y.detach().abs().amax().to(self.out_range.dtype), self.range_momentum)
        return signed8_fake_quant(y, self.out_scale())

    def out_scale(self) -> torch.Tensor:
        """Grid step: max|x| / 127, so the tracked range maps onto [-127, 127]."""
        return (self.out_range / 127.0).clamp_min(1e-12)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", out=int8 (residual)"


# ops that keep integer values integer (on the same grid): what lies between a PACT layer and the integer
# layer that reads it, for the quantizer's bias grids and the torch.ao exporter alike
_GRID_KEEPING_MODULES = (nn.MaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity, nn.ReLU)
_GRID_KEEPING_FUNCTIONS = {operator.getitem, torch.flatten, F.relu, torch.relu, F.max_pool2d, F.dropout}
_GRID_KEEPING_METHODS = {"flatten", "view", "reshape", "relu", "contiguous"}
ZERO_PAD_FUNCTIONS = {F.pad, getattr(torch._C._nn, "pad", F.pad)}  # grid-keeping with a zero fill only


def keeps_grid(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` maps integer values on a grid to values on the same grid (max-pool, views, slicing,
    dropout in eval, ReLU, constant zero padding; a zero fill is exact only where the zero point is 0)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], _GRID_KEEPING_MODULES)
    if node.op == "call_function":
        return node.target in _GRID_KEEPING_FUNCTIONS or (
            node.target in ZERO_PAD_FUNCTIONS and node.kwargs.get("value") in (None, 0, 0.0)
            and node.kwargs.get("mode", "constant") == "constant" and len(node.args) <= 2)
    return node.op == "call_method" and node.target in _GRID_KEEPING_METHODS


def sole_user(modules: dict[str, nn.Module], n: fx.Node, kind: type | tuple[type, ...]) -> fx.Node | None:
    """``n``'s only user when it is a call of a ``kind`` module, else None (what a layer may be fused with)."""
    users = list(n.users)
    if len(users) == 1 and users[0].op == "call_module" and isinstance(modules[users[0].target], kind):
        return users[0]
    return None


class QuantTracer(fx.Tracer):
    """torch.fx tracing with the fake-quant layers as leaves, so a graph walk sees each of them whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (QuantConv2d, QuantLinear, PACTReLU, GridBiasBatchNorm2d))
                or super().is_leaf_module(m, qualname))


def grid_bias_copy(bn: nn.BatchNorm2d) -> GridBiasBatchNorm2d:
    """A GridBiasBatchNorm2d sharing ``bn``'s parameters and statistics (a ResidualQuantBatchNorm2d is one)."""
    return bn if isinstance(bn, GridBiasBatchNorm2d) else _sharing_copy(bn, GridBiasBatchNorm2d)


def residual_quant_copy(bn: nn.BatchNorm2d) -> ResidualQuantBatchNorm2d:
    """A ResidualQuantBatchNorm2d sharing ``bn``'s parameters and statistics, range not yet tracked."""
    new = _sharing_copy(bn, ResidualQuantBatchNorm2d)
    new.register_buffer("out_range", torch.zeros((), device=bn.weight.device if bn.weight is not None else None))
    new._range_known = False
    return new
