"""The reference implementations of our metrics (Quantus 0.6, Captum), one adapter per metric.

Shared by the parity tests (tests/test_metrics_parity.py) and ``sgq-bench bench metrics``, so both
compare against the same call. Each adapter takes torch tensors (model, inputs, labels, per-pixel
scores or attributions) and returns numpy arrays shaped like our per-image or curve values. They fix
the settings that make a reference comparable to ours: ``abs=False, normalise=False`` (Quantus would
rescale the scores), a batch size covering every input (Quantus's ROAD averages only the first batch),
copies of every array Quantus writes into (Sparseness and Complexity modify ``a_batch`` in place), and
our own random draws where the reference would draw its own (faithfulness correlation, infidelity).

Quantus breaks ties in a ranking with numpy's unstable argsort, we with seeded random orders
(docs/ranking_ties.md): compare rankings on tie-free scores (continuous maps, or ``ranking_scores``).
Warnings the references print are silenced around each call only (``quiet``), never for the process.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the references' warnings inside this block only: Python warnings, and the advice Quantus
    prints on stdout (e.g. to take ``abs``, which we pass already taken), which would mix with results."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _as_maps(scores: torch.Tensor, like: torch.Tensor) -> np.ndarray:
    """(B, H*W) or (B, 1, H, W) scores -> a fresh (B, 1, H, W) float array (Quantus may write into it)."""
    b, _, h, w = like.shape
    return np.array(_np(scores.reshape(b, 1, h, w)), dtype=np.float32, copy=True)


def _quantus(metric, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, a: np.ndarray,
             **kwargs) -> np.ndarray:
    with quiet():
        out = metric(model=model, x_batch=_np(x), y_batch=_np(y), a_batch=a, channel_first=True,
                     device=str(x.device), batch_size=x.shape[0], **kwargs)
    return out


def ranking_scores(pos: torch.Tensor) -> torch.Tensor:
    """Tie-free positive scores that rank pixels exactly as positions ``pos`` (0 = first) do, descending:
    how a ranking of ours is handed to a reference without its own tie-breaking."""
    return (pos.shape[1] - pos).float()


def pixel_flipping(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
                   features_in_step: int) -> np.ndarray:
    """Quantus PixelFlipping with softmax and perturb_baseline 0 (our deletion's fill): (B, steps) class
    probabilities after each step (our deletion curve's points 1..steps)."""
    import quantus

    with quiet():
        metric = quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=0.0, abs=False,
                                       normalise=False, disable_warnings=True)
    return np.asarray(_quantus(metric, model, x, target, _as_maps(scores, x), softmax=True))


def road(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scores: torch.Tensor,
         percentages: Sequence[int], noise: float, descending: bool = True) -> np.ndarray:
    """Quantus ROAD: accuracy per percentage (our curve), imputing the highest scores first (MoRF) or,
    with ``descending=False``, the lowest (LeRF; scores reversed, kept positive as Quantus asserts).
    Quantus draws its noise from numpy's global generator."""
    import quantus

    s = scores if descending else scores.max() + 1 - scores
    with quiet():
        metric = quantus.ROAD(percentages=list(percentages), noise=noise, abs=False, normalise=False,
                              disable_warnings=True)
    out = _quantus(metric, model, x, y, _as_maps(s, x))
    return np.asarray([out[p] for p in percentages])


def linear_imputation(image: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    """Quantus's ROAD imputation (noise 0) of one image (C, H, W) at the flat pixel ``indices``."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    with quiet():
        return noisy_linear_imputation(_np(image).astype(np.float64), _np(indices), noise=0.0)


def sparseness(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
    """Quantus Sparseness (Gini index) per image of the per-pixel scores."""
    import quantus

    with quiet():
        metric = quantus.Sparseness(abs=False, normalise=False, disable_warnings=True)
    return np.asarray(_quantus(metric, model, x, target, _as_maps(scores, x)))


def complexity(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
    """Quantus Complexity (entropy) per image of the per-pixel scores."""
    import quantus

    with quiet():
        metric = quantus.Complexity(abs=False, normalise=False, disable_warnings=True)
    return np.asarray(_quantus(metric, model, x, target, _as_maps(scores, x)))


def faithfulness_correlation(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, attr: torch.Tensor,
                             subsets: torch.Tensor, perturb_baseline: float) -> np.ndarray:
    """Quantus FaithfulnessCorrelation (logits) per image, on OUR random subsets ``subsets`` (B, runs, size):
    Quantus draws each subset with ``np.random.choice``, which is replaced by our rows for the call."""
    import quantus

    b, runs, size = subsets.shape
    rows = iter(_np(subsets).transpose(1, 0, 2).reshape(-1, size))  # Quantus loops runs, then images
    with quiet():
        metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=perturb_baseline,
                                                 abs=False, normalise=False, disable_warnings=True,
                                                 return_aggregate=False)
    saved = np.random.choice
    np.random.choice = lambda *a, **k: next(rows)
    try:
        signed = np.array(_np(attr.sum(1, keepdim=True)), copy=True)
        return np.asarray(_quantus(metric, model, x, target, signed, softmax=False))
    finally:
        np.random.choice = saved


def infidelity(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, attr: torch.Tensor,
               noise: torch.Tensor) -> np.ndarray:
    """Captum infidelity (normalize=True) per image, with OUR perturbations ``noise`` (B, n, C, H, W)."""
    from captum.metrics import infidelity as captum_infidelity

    n = noise.shape[1]
    flat = noise.flatten(0, 1)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flat, inputs - flat

    with quiet(), torch.no_grad():
        out = captum_infidelity(model, perturb, x, attr, target=target, n_perturb_samples=n,
                                max_examples_per_batch=x.shape[0] * n, normalize=True)
    return _np(out)


__all__ = ["complexity", "faithfulness_correlation", "infidelity", "linear_imputation", "pixel_flipping", "quiet",
           "ranking_scores", "road", "sparseness"]
