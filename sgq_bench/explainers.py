"""Captum-backed explainers: one attribution per input, shaped like the input, batched on the model's device.

Every explainer attributes ``logits[target]``; the harness passes the model's predicted class as
``target`` (a saliency map explains what the model decided). Quantized models are explained through
their fake-quant form, whose straight-through estimators give the gradients.

Inputs are processed in chunks of at most ``max_batch(model, x)`` model inputs per pass (noise samples
and integration steps count as inputs), which bounds memory whatever the evaluation size and keeps CPU
passes in the size range where they are fastest (see ``sgq_bench._batching``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from torch import nn

from sgq_bench._base import Dataset, Explainer, Param
from sgq_bench._batching import max_batch
from sgq_bench.errors import AttributionError


def check_attributions(explainer_name: str, attr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``attr`` if every metric may score it: a tensor shaped like ``x`` with finite values.

    Why: a NaN or infinite map still ranks (NaN sorts somewhere), so deletion and friends would publish a
    plausible number for a broken explainer. Called on every explainer's output before any metric sees it.

    Raises:
        AttributionError: one line naming the explainer and what is wrong (shape, or NaN/inf counts).
    """
    if not isinstance(attr, torch.Tensor):
        raise AttributionError(f"explainer {explainer_name!r} returned {type(attr).__name__}, expected a tensor "
                               f"shaped like its input {tuple(x.shape)}")
    if attr.shape != x.shape:
        raise AttributionError(f"explainer {explainer_name!r} returned attributions of shape {tuple(attr.shape)}, "
                               f"expected the input's shape {tuple(x.shape)}")
    if not attr.is_floating_point():
        raise AttributionError(f"explainer {explainer_name!r} returned {attr.dtype} attributions, expected floats")
    finite = torch.isfinite(attr)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(attr).sum())
        n_inf = int(torch.isinf(attr).sum())
        images = int((~finite).flatten(1).any(1).sum())
        raise AttributionError(f"explainer {explainer_name!r} returned non-finite attributions: {n_nan} NaN and "
                               f"{n_inf} inf values in {images} of {attr.shape[0]} images")
    return attr


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + max(1, size)))


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
             inputs_per_image: int = 1, *, limit: int) -> torch.Tensor:
    """Run ``fn`` on chunks of (x, target) so that one pass sees at most ``limit`` model inputs."""
    size = max(1, limit // inputs_per_image)
    out = [fn(x[s].detach().requires_grad_(True), target[s]).detach() for s in _chunks(x.shape[0], size)]
    return torch.cat(out) if out else torch.empty_like(x)


def black_baseline(dataset: Dataset | None, x: torch.Tensor) -> torch.Tensor:
    """The normalised value of a black (0) pixel per channel, shaped (1, C, 1, 1) (or per image).

    Without a dataset (``setup`` not called) it falls back to each image's per-channel minimum, which
    equals the black pixel on MNIST (every digit has a 0 background pixel).
    """
    if dataset is not None:
        zero = torch.zeros(1, x.shape[1], 1, 1, dtype=torch.uint8, device=x.device)
        return dataset.normalize(zero).to(x.dtype)
    return x.amin(dim=(2, 3), keepdim=True)


def input_range(dataset: Dataset | None, x: torch.Tensor) -> float:
    """Range of the normalised input: mean over channels of 1/std (the dataset's), else of ``x``."""
    if dataset is not None:
        return float(sum(1.0 / s for s in dataset.std) / len(dataset.std))
    return float(x.max() - x.min())


class Gradient(Explainer):
    """Vanilla gradient d logit_target / d x (captum Saliency), signed unless abs=True."""

    name = "gradient"
    params = {"abs": Param(False, "absolute value of the gradient (captum's default is True)")}

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sal = Saliency(model)
        return _batched(lambda xb, tb: sal.attribute(xb, target=tb, abs=self.abs), x, target,
                        limit=max_batch(model, x))

    def gradient_passes(self) -> float:
        return 1.0


class InputXGradient(Explainer):
    """Input times gradient (captum InputXGradient, computed as x * Saliency)."""

    name = "input_x_gradient"
    params = {}

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ixg = CaptumInputXGradient(model)
        return _batched(lambda xb, tb: ixg.attribute(xb, target=tb), x, target, limit=max_batch(model, x))

    def gradient_passes(self) -> float:
        return 1.0


class IntegratedGradientsExplainer(Explainer):
    """Integrated gradients from a black image (captum, Gauss-Legendre, 32 steps)."""

    name = "integrated_gradients"
    params = {
        "n_steps": Param(32, "integration steps", low=1),
        "method": Param("gausslegendre", "captum integration rule",
                        choices=("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
                                 "riemann_middle")),
        "baseline": Param("black", "black: normalised pixel 0 per channel; zero: 0 after normalisation",
                          choices=("black", "zero")),
    }

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ig = IntegratedGradients(model)
        limit = max_batch(model, x)

        def run(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            base = black_baseline(self.dataset, xb) if self.baseline == "black" else torch.zeros_like(xb[:1])
            base = base.expand_as(xb).contiguous()
            return ig.attribute(xb, baselines=base, target=tb, n_steps=self.n_steps, method=self.method,
                                internal_batch_size=limit)

        return _batched(run, x, target, inputs_per_image=self.n_steps, limit=limit)

    def gradient_passes(self) -> float:
        return float(self.n_steps)


class SmoothGrad(Explainer):
    """SmoothGrad: captum NoiseTunnel over Saliency, noise sigma a fraction of the input range.

    captum draws the noise from the global RNG; we run it under ``torch.random.fork_rng`` seeded from
    ``seed`` (and the chunk index), so the maps are reproducible and the caller's RNG is untouched.
    """

    name = "smoothgrad"
    params = {
        "n_samples": Param(16, "noisy samples per image", low=1),
        "sigma": Param(0.15, "noise std as a fraction of the normalised input range", low=0.0),
        "abs": Param(False, "absolute gradients before averaging"),
        "seed": Param(0, "seed of the noise", low=0),
    }

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nt = NoiseTunnel(Saliency(model))
        stdev = self.sigma * input_range(self.dataset, x)
        counter = iter(range(1 << 30))
        devices = [x.device] if x.device.type == "cuda" else []

        def run(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 1_000_003 + next(counter))
                return nt.attribute(xb, nt_type="smoothgrad", nt_samples=self.n_samples, stdevs=stdev,
                                    target=tb, abs=self.abs, nt_samples_batch_size=self.n_samples)

        return _batched(run, x, target, inputs_per_image=self.n_samples, limit=max_batch(model, x))

    def gradient_passes(self) -> float:
        return float(self.n_samples)


class GradCAM(Explainer):
    """Grad-CAM at ``model.explain_layer`` (ReLU'd), bilinearly upsampled and broadcast over channels."""

    name = "gradcam"
    params = {"relu": Param(True, "ReLU on the class activation map, as in Selvaraju et al.")}

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        layer = model.get_submodule(model.explain_layer)
        cam = LayerGradCam(model, layer)

        def run(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            a = cam.attribute(xb, target=tb, relu_attributions=self.relu)
            a = LayerAttribution.interpolate(a, tuple(xb.shape[2:]), "bilinear")
            return a.expand(-1, xb.shape[1], -1, -1).contiguous()

        return _batched(run, x, target, limit=max_batch(model, x))

    def gradient_passes(self) -> float:
        return 1.0


class RandomExplainer(Explainer):
    """Control: i.i.d. uniform [0, 1) attributions from a seeded generator (every metric must rank it last)."""

    name = "random"
    model_independent = True  # the same maps whatever the model: ROAR shares its retrains across cells
    params = {"seed": Param(0, "generator seed", low=0)}

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)

    def gradient_passes(self) -> float:
        return 0.0  # no model involved


__all__ = ["GradCAM", "Gradient", "InputXGradient", "IntegratedGradientsExplainer", "RandomExplainer",
           "SmoothGrad", "black_baseline", "check_attributions", "input_range"]
