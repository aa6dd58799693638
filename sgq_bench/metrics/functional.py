"""Shared machinery of the attribution metrics: pixel ranking, batched masked forwards, caches.

Why shared: every perturbation metric is bounded by the model's forward passes, so the wins are in
never doing one twice. Clean logits, the fill images and every (ranking, k) masked forward are cached
in ``ctx.cache`` for the whole cell, so e.g. ``morf_accuracy`` reuses ``deletion_auc``'s steps and all
explainers share the forwards of the attribution-independent random perturbations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from sgq_bench._base import EvalContext, Param
from sgq_bench._batching import MAX_IMAGES, forward
from sgq_bench.errors import UsageError

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run many small memory-bound ops (CG steps, sorts of a few maps) on one intra-op CPU thread: OpenMP
    barriers on a shared or oversubscribed CPU cost far more than they gain (ROAD's solver measured
    5-15x faster under load). Model forwards keep all threads."""
    if device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def fractions_param(default: Sequence[float] = FRACTIONS, doc: str = "fractions of pixels") -> Param:
    """A tuple-of-fractions parameter (the CLI passes ``a,b,c``; see ``FractionsMixin``)."""
    return Param(tuple(default), doc)


class FractionsMixin:
    """Accept ``fractions`` as a string ``"0.1,0.5"`` or a sequence, then validate it (before Plugin)."""

    def __init__(self, **params: Any) -> None:
        if "fractions" in params:
            params["fractions"] = check_fractions(f"metric {self.name!r}", "fractions", params["fractions"])
        super().__init__(**params)
        self.fractions = self.config["fractions"] = check_fractions(f"metric {self.name!r}", "fractions",
                                                                    self.config["fractions"])


def check_fractions(owner: str, name: str, values: Any) -> tuple[float, ...]:
    """Validate a fractions parameter: a non-empty increasing sequence in (0, 1)."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    elif isinstance(values, (int, float)):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"{owner}: parameter {name}={values!r} must be fractions like 0.1,0.5,0.9") from None
    if not out or any(not 0.0 < v < 1.0 for v in out) or list(out) != sorted(set(out)):
        raise UsageError(f"{owner}: parameter {name}={values!r} must be increasing fractions in (0, 1)")
    return out


def k_of(fraction: float, n: int) -> int:
    """Number of pixels for a fraction, in exact integer arithmetic (``floor(n * percent / 100)``, as
    Quantus computes it with integer percentages; float ``n * 0.29`` would give 28 for n = 100)."""
    return (round(fraction * 1_000_000) * n) // 1_000_000


def pixel_scores(attr: torch.Tensor) -> torch.Tensor:
    """One ranking score per pixel: sum of |attribution| over channels, flattened to (B, H*W)."""
    a = attr.detach()
    return a.abs().flatten(1) if a.shape[1] == 1 else a.abs().sum(1).flatten(1)


def rank_positions(scores: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Position of every pixel in its image's ranking (0 = first removed); ties keep index order."""
    order = torch.argsort(scores, dim=1, descending=descending, stable=True)
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return pos


def clean_logits(ctx: EvalContext) -> torch.Tensor:
    """Logits of the unperturbed evaluation inputs (one forward per cell)."""
    if "clean_logits" not in ctx.cache:
        ctx.cache["clean_logits"] = forward(ctx.model, ctx.x).float()
    return ctx.cache["clean_logits"]


def predicted(ctx: EvalContext) -> torch.Tensor:
    """The model's predicted class on the clean inputs (the class every explainer attributes)."""
    return clean_logits(ctx).argmax(1)


def attr_store(ctx: EvalContext, attr: torch.Tensor) -> dict[str, Any]:
    """A cache private to one attribution tensor (keyed by identity, which the entry keeps alive)."""
    stores = ctx.cache.setdefault("per_attribution", {})
    entry = stores.get(id(attr))
    if entry is None or entry[0] is not attr:
        entry = (attr, {})
        stores[id(attr)] = entry
    return entry[1]


@torch.inference_mode()
def masked_logits(model: nn.Module, pos: torch.Tensor, ks: Sequence[int], inside: torch.Tensor,
                  outside: torch.Tensor, chunk: int = MAX_IMAGES) -> torch.Tensor:
    """Logits (len(ks), B, K) of images showing ``inside`` on pixels ranked < k and ``outside`` elsewhere.

    ``pos`` is (B, H*W) from ``rank_positions``; ``inside``/``outside`` broadcast to (B, C, H, W).
    Steps and images are stacked into batches of at most ``chunk`` inputs, which ``forward`` splits into
    passes of the model's ``max_batch``.
    """
    b, n = pos.shape
    shape = torch.broadcast_shapes(inside.shape, outside.shape)
    h, w = shape[-2:]
    kt = torch.as_tensor(list(ks), device=pos.device)
    out = []
    bi = min(b, chunk)
    for s0 in range(0, b, bi):
        sl = slice(s0, s0 + bi)
        p = pos[sl].view(1, -1, 1, h, w)
        ins = inside if inside.shape[0] == 1 else inside[sl]
        outs = outside if outside.shape[0] == 1 else outside[sl]
        nb = p.shape[1]
        sc = max(1, chunk // nb)
        rows = []
        for k0 in range(0, len(kt), sc):
            kk = kt[k0:k0 + sc].view(-1, 1, 1, 1, 1)
            with one_thread(pos.device):  # data preparation: small memory-bound ops
                xs = torch.where(p < kk, ins.unsqueeze(0), outs.unsqueeze(0)).reshape(-1, *shape[1:])
            rows.append(forward(model, xs).view(kk.shape[0], nb, -1).float())
        out.append(torch.cat(rows))
    return torch.cat(out, dim=1)


def fill_value(ctx: EvalContext, kind: str) -> torch.Tensor:
    """The replacement value, (1, C, 1, 1): ``mean`` = per-channel mean (0 after normalisation),
    ``black`` = the normalised value of a 0 pixel."""
    c = ctx.x.shape[1]
    if kind == "mean":
        return torch.zeros(1, c, 1, 1, device=ctx.x.device, dtype=ctx.x.dtype)
    zero = torch.zeros(1, c, 1, 1, dtype=torch.uint8, device=ctx.x.device)
    return ctx.dataset.normalize(zero).to(ctx.x.dtype)


def removal_logits(ctx: EvalContext, attr: torch.Tensor, ks: Sequence[int], fill: str = "mean") -> torch.Tensor:
    """Logits (len(ks), B, K) after replacing each image's top-k pixels by ``fill``; cached per k, so
    deletion and MoRF accuracy share their forwards; k = 0 is the clean forward."""
    store = attr_store(ctx, attr).setdefault(("removal", fill), {})
    n = ctx.x.shape[2] * ctx.x.shape[3]
    if 0 in ks and 0 not in store:
        store[0] = clean_logits(ctx)
    missing = [k for k in dict.fromkeys(ks) if k not in store]
    if missing:
        pos = attr_store(ctx, attr).get("pos_desc")
        if pos is None:
            pos = attr_store(ctx, attr)["pos_desc"] = rank_positions(pixel_scores(attr))
        full = [k for k in missing if k >= n]
        part = [k for k in missing if k < n]
        if part:
            for k, lg in zip(part, masked_logits(ctx.model, pos, part, fill_value(ctx, fill), ctx.x)):
                store[k] = lg
        for k in full:  # every pixel replaced: the same image for every input, one forward
            img = fill_value(ctx, fill).expand(1, *ctx.x.shape[1:])
            store[k] = forward(ctx.model, img).float().expand(ctx.x.shape[0], -1)
    return torch.stack([store[k] for k in ks])


def trapezoid_auc(x: Sequence[float], y: torch.Tensor) -> torch.Tensor:
    """Trapezoid area over ``x`` divided by its span (so an AUC is a mean value), along the last dim."""
    xt = torch.as_tensor(list(x), dtype=torch.float64, device=y.device)
    area = torch.trapezoid(y.double(), xt, dim=-1)
    return area / (xt[-1] - xt[0]) if len(x) > 1 else y.double()[..., 0]


def to_list(t: torch.Tensor, digits: int = 6) -> list[float]:
    """A compact JSON list (``digits`` significant digits) of a 1-D tensor; NaN and inf kept.

    Vectorised (5x faster than formatting each value, which dominated the millisecond metrics): each
    value is rounded to an integer count of its decimal unit and divided (or multiplied) by an exact
    power of ten, so IEEE rounding gives the same double as parsing ``f"{v:.6g}"`` (checked in tests).
    """
    x = t.detach().cpu().double().numpy().copy().reshape(-1)
    ok = np.isfinite(x) & (x != 0)
    v = x[ok]
    decimals = (digits - 1 - np.floor(np.log10(np.abs(v)))).astype(np.int64)
    out = np.empty_like(v)
    frac = decimals >= 0
    scale = 10.0 ** decimals[frac]
    out[frac] = np.round(v[frac] * scale) / scale
    unit = 10.0 ** (-decimals[~frac])
    out[~frac] = np.round(v[~frac] / unit) * unit
    x[ok] = out
    return x.tolist()
