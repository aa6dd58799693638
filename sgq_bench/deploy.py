"""Real int8 CPU deployment: the backend registry, the torch.ao adapter and int8 building blocks.

Why a registry of backends: an int8 model can run in more than one runtime (torch.ao's quantized
kernels, ONNX Runtime, and through a plugin OpenVINO or TensorRT). A backend is a class registered in
the entry-point group ``sgq_bench.deploy_backends`` (contract: ``sgq_bench._base.DeployBackend``); the
built-in ``torch_ao`` and ``onnxruntime`` (``baselines/deploy_backends.py``) go through that door too, and
:func:`backend` picks one by name (``deploy = ...``).

Why an engine adapter for torch.ao: which quantized CPU kernels exist depends on the torch build
(``x86``/``fbgemm`` and ``onednn`` on x86 wheels, ``qnnpack`` on ARM, none on some custom builds).
Everything that builds or runs a torch.ao int8 model goes through :func:`select_engine`, so a missing
backend gives one clear line instead of a deep kernel error, and every timing row can say which
kernels it ran on.

The blocks here carry exact grids: a quantizer that knows its integers and scales (PACT does) builds
int8 layers whose integer weights are exactly its fake-quant grid; no observer guesses a range.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sgq_bench import _registry
from sgq_bench._base import DeployBackend, EvalContext
from sgq_bench.errors import UsageError

# torch >= 2.10 warns that quantized tensor creation is deprecated (pytorch#184982) on every call; the
# torch.ao int8 kernels are still the only CPU int8 conv path in this torch, so we say it once, in
# backend_info(), instead of on every forward pass.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                        category=UserWarning)

# Preference order on x86: ``x86`` dispatches per op between fbgemm and onednn; qnnpack is an ARM
# library whose x86 build is a slow fallback, so it is last.
ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")


class DeployUnavailable(UsageError):
    """No usable int8 backend in this torch build (or the model cannot be converted)."""


DEPLOY_EXTRA = "pip install 'sgq-bench[deploy]'"


def require_extra(module: str) -> Any:
    """Import ``module`` of the ``[deploy]`` extra (onnx, onnxruntime), or one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeployUnavailable(f"the ONNX deployment needs the {module!r} package, which is not installed: "
                                f"{DEPLOY_EXTRA}") from None


# ----------------------------------------------------------------------------- backends

DEFAULT_BACKEND = "torch_ao"  # needs nothing beyond torch; "onnxruntime" needs the [deploy] extra


def backend_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"onnxruntime:bias=float"`` -> ("onnxruntime", {"bias": "float"}): a backend name and its parameters.

    Raises:
        UsageError: a parameter not written as key=value.
    """
    name, *pairs = str(spec).split(":")
    params: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"deploy backend {spec!r}: parameter {pair!r} is not key=value "
                             "(expected e.g. onnxruntime:bias=float)")
        params[key] = value
    return name, params


def backend(spec: str, threads: int = 1) -> DeployBackend:
    """The deployment backend registered as ``spec``'s name (entry-point group ``sgq_bench.deploy_backends``),
    built with its parameters (``name:key=value:...``, see :func:`backend_spec`).

    Raises:
        UsageError: unknown name (with suggestions), a bad parameter, or a plugin of the wrong kind.
    """
    name, params = backend_spec(spec)
    return _registry.deploy_backends.get(name)(threads=threads, **params)


def available_engines() -> list[str]:
    """Quantized CPU engines this torch build offers (``torch.backends.quantized.supported_engines``)."""
    try:
        engines = list(torch.backends.quantized.supported_engines)
    except (AttributeError, RuntimeError):
        return []
    return [e for e in engines if e != "none"]


def select_engine(preferred: str | None = None) -> str:
    """The quantized engine to use: ``preferred`` if offered, else the best available one.

    Raises:
        DeployUnavailable: the torch build offers no quantized CPU engine, or ``preferred`` is not one.
    """
    engines = available_engines()
    if not engines or not hasattr(torch.ao.nn, "quantized"):
        raise DeployUnavailable(
            f"int8 deployment needs a torch build with quantized CPU kernels (torch.ao x86/fbgemm/onednn); "
            f"torch {torch.__version__} offers none (supported_engines={engines})"
        )
    if preferred is not None:
        if preferred not in engines:
            raise DeployUnavailable(f"quantized engine {preferred!r} is not offered by torch "
                                    f"{torch.__version__}; available: {', '.join(engines)}")
        return preferred
    return next(e for e in ENGINE_PREFERENCE if e in engines) if any(
        e in engines for e in ENGINE_PREFERENCE) else engines[0]


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Temporarily switch ``torch.backends.quantized.engine`` (packing and running must agree)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def backend_info(engine: str | None) -> dict[str, Any]:
    """What a result row records about the int8 kernels it ran on."""
    return {
        "quantized_backend": f"torch.ao/{engine}" if engine else "none",
        "quantized_engines_available": ",".join(available_engines()),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "quantized_backend_note": "torch.ao quantized tensors are deprecated upstream (pytorch#184982)",
    }


# ----------------------------------------------------------------------------- quantized building blocks


def per_channel_int8(weight_int: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A qint8 per-output-channel weight from exact integers and their per-channel scales.

    Why per channel: a folded BatchNorm multiplies each output channel by its own factor, which moves
    the channel's grid but keeps its integers; a per-channel scale represents that exactly.
    """
    if weight_int.abs().max() > 127:
        raise ValueError("int8 weight integers must lie in [-127, 127]")
    scales = scales.double().clamp_min(1e-30)
    w = weight_int.double() * scales.view(-1, *([1] * (weight_int.dim() - 1)))
    zero = torch.zeros(scales.numel(), dtype=torch.long)
    with warnings.catch_warnings():  # the deprecation notice, see the filter at the top
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(w.float(), scales, zero, 0, torch.qint8)
    if not torch.equal(q.int_repr().long(), weight_int.long()):  # float rounding must not move an integer
        raise AssertionError("per-channel int8 weight does not reproduce its integers")
    return q


def int8_layer(float_layer: nn.Module, qweight: torch.Tensor, bias: torch.Tensor | None, out_scale: float,
               out_zero_point: int, relu: bool) -> nn.Module:
    """A torch.ao quantized Conv2d/Linear (optionally with fused ReLU) with the given int8 weight.

    The caller must have selected the engine (packing is engine specific).
    """
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if isinstance(float_layer, nn.Conv2d):
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        if float_layer.padding_mode != "zeros":
            raise DeployUnavailable(f"int8 conv supports padding_mode='zeros' only, not {float_layer.padding_mode!r}")
        layer = cls(float_layer.in_channels, float_layer.out_channels, float_layer.kernel_size,
                    stride=float_layer.stride, padding=float_layer.padding, dilation=float_layer.dilation,
                    groups=float_layer.groups, bias=bias is not None)
    elif isinstance(float_layer, nn.Linear):
        # positional: the bias flag is ``bias_`` in nnq.Linear but ``bias`` in nniq.LinearReLU
        cls = nniq.LinearReLU if relu else nnq.Linear
        layer = cls(float_layer.in_features, float_layer.out_features, bias is not None)
    else:
        raise DeployUnavailable(f"no int8 kernel for {type(float_layer).__name__}")
    layer.set_weight_bias(qweight, None if bias is None else bias.detach().float())
    layer.scale = float(out_scale)
    layer.zero_point = int(out_zero_point)
    return layer


def affine_qparams(lo: float, hi: float) -> tuple[float, int]:
    """quint8 (scale, zero point) covering [lo, hi] (and 0, so zero is exact, as padding needs)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return scale, zero_point


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float -> quint8; 4-D tensors go channels-last, the layout the x86/fbgemm conv kernels run in."""
    q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    return q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q


def dequantize(x: torch.Tensor) -> torch.Tensor:
    """quint8 -> float (a no-op on float tensors)."""
    return x.dequantize() if x.is_quantized else x


def clamp_quantized(x: torch.Tensor, hi: float) -> torch.Tensor:
    """Clamp a quint8 tensor to [0, hi]: int8 kernels clamp to the dtype (255 levels), PACT to alpha."""
    return torch.clamp(x, 0.0, hi)


def add_quantized(a: torch.Tensor, b: torch.Tensor, scale: float, zero_point: int, relu: bool) -> torch.Tensor:
    """Quantized elementwise add (with fused ReLU) requantized to (scale, zero_point)."""
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    return op(a, b, scale, zero_point)


class Quantize(nn.Module):
    """float -> quint8 at a fixed (scale, zero point); a module so a pickled graph keeps it a leaf."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.5g}, zero_point={self.zero_point}"


class DeQuantize(nn.Module):
    """quint8 -> float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dequantize(x)


class QuantClamp(nn.Module):
    """Clamp quint8 values to [0, hi] (PACT's alpha)."""

    def __init__(self, hi: float) -> None:
        super().__init__()
        self.hi = float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_quantized(x, self.hi)

    def extra_repr(self) -> str:
        return f"hi={self.hi:.5g}"


class QuantAdd(nn.Module):
    """Quantized add (optionally + ReLU) requantized to a fixed (scale, zero point)."""

    def __init__(self, scale: float, zero_point: int, relu: bool) -> None:
        super().__init__()
        self.scale, self.zero_point, self.relu = float(scale), int(zero_point), bool(relu)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return add_quantized(a, b, self.scale, self.zero_point, self.relu)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.5g}, zero_point={self.zero_point}, relu={self.relu}"


def onednn_float_output_available() -> bool:
    """Whether oneDNN's int8 conv with a float output (the x86 PT2E lowering kernel) is in this torch."""
    return hasattr(torch.ops.onednn, "qconv2d_pointwise") and torch.backends.mkldnn.is_available()


class Int8ConvFloatOut(nn.Module):
    """int8 x int8 conv (oneDNN) whose int32 accumulator comes back as float, not requantized to 8 bits.

    Why: where the fake-quant model adds a float conv output to a residual *before* PACT rounds the
    sum, an 8-bit requantized conv output moves sums across rounding boundaries, and on a residual
    network those one-level errors compound block after block. The accumulator times the scales is
    what the fake-quant conv computes, so the sum and its PACT rounding match.
    """

    def __init__(self, conv: nn.Conv2d, weight_int: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None, x_scale: float, x_zero_point: int) -> None:
        super().__init__()
        self.weight_int, self.scales = weight_int.to(torch.int8), scales.float()
        self.bias = None if bias is None else bias.detach().float()
        self.x_scale, self.x_zero_point = float(x_scale), int(x_zero_point)
        self.conv_args = ([*conv.stride], [*conv.padding], [*conv.dilation], conv.groups)
        self.w_zero_point = torch.zeros(weight_int.shape[0], dtype=torch.long)
        self.packed = torch.ops.onednn.qconv_prepack(self.weight_int, self.scales, self.x_scale, self.x_zero_point,
                                                     *self.conv_args, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xu8 = x.int_repr() if x.is_quantized else x
        stride, padding, dilation, groups = self.conv_args
        return torch.ops.onednn.qconv2d_pointwise(
            xu8, self.x_scale, self.x_zero_point, self.packed, self.scales, self.w_zero_point, self.bias,
            stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # the packed weight is an opaque oneDNN blob
        conv = nn.Conv2d(1, 1, 1)
        conv.stride, conv.padding, conv.dilation, conv.groups = (*self.conv_args[:3], self.conv_args[3])
        return Int8ConvFloatOut, (conv, self.weight_int, self.scales, self.bias, self.x_scale, self.x_zero_point)


class PactQuantize(nn.Module):
    """float -> PACT grid: clip to [0, alpha], round to ``levels`` steps (quint8, zero point 0)."""

    def __init__(self, alpha: float, levels: int) -> None:
        super().__init__()
        self.alpha, self.levels = float(alpha), int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(torch.clamp(x, 0.0, self.alpha), self.alpha / self.levels, 0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.5g}, levels={self.levels}"


class DeployedModel(nn.Module):
    """A real int8 model plus how it was made; runs under the engine its weights were packed for.

    Why a wrapper: packed int8 weights belong to one engine; switching the global engine between
    packing and running gives wrong results or errors, so forward pins it. ``info`` says what was
    exact and what was approximated (shown by ``bench deploy`` and recorded in metric rows).
    """

    def __init__(self, body: nn.Module, engine: str, info: dict[str, Any]) -> None:
        super().__init__()
        self.body = body
        self.engine = engine
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.backends.quantized.engine == self.engine:
            return self.body(x)
        with quantized_engine(self.engine):
            return self.body(x)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (``torch.save``) support: torch.ao quantized layers cannot be pickled as modules.

        Each quantized layer is stored as its constructor arguments, int8 weight, bias and output
        qparams, and rebuilt (re-packed for the same engine) on load; the memory probe relies on this.
        """
        children = dict(self.body.named_children())
        packed = {n: _layer_spec(m) for n, m in children.items() if _layer_spec(m) is not None}
        for name in packed:
            children[name] = nn.Identity()
        skeleton = torch.fx.GraphModule(children, self.body.graph)
        return _rebuild_deployed, (skeleton, packed, self.engine, self.info)


def _layer_spec(m: nn.Module) -> dict[str, Any] | None:
    import torch.ao.nn.quantized as nnq

    if isinstance(m, nnq.Conv2d):
        args = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
    elif isinstance(m, nnq.Linear):
        args = (m.in_features, m.out_features)
    else:
        return None
    return {"cls": type(m), "args": args, "weight": m.weight(), "bias": m.bias(), "scale": float(m.scale),
            "zero_point": int(m.zero_point)}


def _rebuild_deployed(skeleton: torch.fx.GraphModule, packed: dict[str, dict[str, Any]], engine: str,
                      info: dict[str, Any]) -> DeployedModel:
    engine = select_engine(engine)
    with quantized_engine(engine):
        for name, spec in packed.items():
            layer = spec["cls"](*spec["args"], spec["bias"] is not None) if len(spec["args"]) == 2 else \
                spec["cls"](*spec["args"], bias=spec["bias"] is not None)
            layer.set_weight_bias(spec["weight"], spec["bias"])
            layer.scale, layer.zero_point = spec["scale"], spec["zero_point"]
            setattr(skeleton, name, layer)
    return DeployedModel(skeleton, engine, info).eval()


# ----------------------------------------------------------------------------- calling a quantizer's deploy


def calibration_inputs(dataset: Any, data_root: Any = None, n: int = 512, seed: int = 0,
                       fallback: torch.Tensor | None = None) -> torch.Tensor:
    """A seeded batch of normalised *training* images for range calibration (never the test set).

    Falls back to ``fallback`` (e.g. the evaluation inputs) only when the training split cannot be
    loaded, with a warning, so a metric still runs on a data-less machine.
    """
    from sgq_bench.data import load_split, subset

    try:
        full = load_split(dataset, True, data_root)
        split = subset(full, min(n, len(full)), seed=seed + 7)
        return dataset.normalize(split.images)
    except Exception as exc:  # data missing: calibrate on what we have, and say so
        if fallback is None:
            raise
        warnings.warn(f"int8 calibration on evaluation inputs: training split unavailable ({exc})",
                      RuntimeWarning, stacklevel=2)
        return fallback[:n].cpu()


def deploy_with(quantizer: Any, model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
    """``quantizer.deploy(model)``, passing ``calibration`` when its deploy accepts it.

    Raises:
        DeployUnavailable: the quantizer has no deploy (the float ``none`` quantizer, most plugins).
    """
    if quantizer is None or type(quantizer).deploy is getattr(_base_quantizer(), "deploy", None):
        raise DeployUnavailable(f"quantizer {getattr(quantizer, 'name', None)!r} has no deploy()")
    params = inspect.signature(quantizer.deploy).parameters
    if "calibration" in params:
        return quantizer.deploy(model, calibration=calibration)
    return quantizer.deploy(model)


def _base_quantizer() -> type:
    from sgq_bench._base import Quantizer

    return Quantizer


def deployed_for(ctx: EvalContext, deploy: str = DEFAULT_BACKEND, threads: int = 1) -> nn.Module:
    """The int8 model of an ``EvalContext`` in backend ``deploy`` (once per cell, cached in ``ctx.cache``).

    Calibrates on training images of the cell's dataset (falling back to ``ctx.x``). Raises
    ``DeployUnavailable`` (cached too) when the quantizer has no deploy or the backend cannot run it.
    """
    key = f"deploy:int8:{deploy}:{threads}"
    if key not in ctx.cache:
        try:
            calib = calibration_inputs(ctx.dataset, ctx.data_root, seed=ctx.seed, fallback=ctx.x)
            ctx.cache[key] = backend(deploy, threads=threads).int8(ctx.quantizer, ctx.model, calib)
        except DeployUnavailable as exc:
            ctx.cache[key] = exc
    if isinstance(ctx.cache[key], Exception):
        raise ctx.cache[key]
    return ctx.cache[key]
