"""Shared machinery of the attribution metrics: pixel ranking, batched masked forwards, caches.

Why shared: every perturbation metric is bounded by the model's forward passes, so the wins are in
never doing one twice. Clean logits, the fill images and every (ranking, k) masked forward are cached
in ``ctx.cache`` for the whole cell, so e.g. ``morf_accuracy`` reuses ``deletion_auc``'s steps and all
explainers share the forwards of the attribution-independent random perturbations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from sgq_bench._base import EvalContext, Param
from sgq_bench._batching import MAX_IMAGES, forward
from sgq_bench.errors import UsageError
from sgq_bench.specs import CostModel, TrainSpec

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


def others_running(loadavg: str = "/proc/loadavg", own_tasks: str = "/proc/self/task", samples: int = 3,
                   gap_s: float = 0.001) -> int | None:
    """Runnable tasks of other processes right now (median of a few reads of the kernel's instantaneous
    count, less this process's own runnable threads, e.g. OpenMP workers still spinning after a forward),
    or None where the counts cannot be read (not Linux). System-wide: in a container on a busy host it
    counts the host's tasks too, which only makes ``idle_threads`` choose fewer threads."""
    counts = []
    try:
        for _ in range(samples):
            time.sleep(gap_s)
            with open(loadavg) as fh:
                running = int(fh.read().split()[3].split("/")[0])
            counts.append(max(0, running - _own_running(own_tasks)))
    except (OSError, ValueError, IndexError):
        return None
    return sorted(counts)[len(counts) // 2]


def _own_running(tasks: str) -> int:
    """This process's threads in state R (the reading thread among them), at least 1."""
    n = 0
    for tid in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, tid, "stat")) as fh:
                n += fh.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, n)


# A metric solves several chunks within ~1 s (ROAD's MNIST benchmark: 3 solves in 1.1 s): one count serves
# them. Each count sleeps samples x gap_s (3 ms; 5 x 2 ms was 1% of the ROAD benchmark).
_COUNT_TTL_S = 2.0
_last_count: tuple[float, Callable[[], int | None], int | None] | None = None


def _recent_count(others: Callable[[], int | None]) -> int | None:
    global _last_count
    now = time.monotonic()
    if _last_count is None or _last_count[1] is not others or now - _last_count[0] > _COUNT_TTL_S:
        _last_count = (now, others, others())
    return _last_count[2]


@contextmanager
def idle_threads(device: torch.device, others: Callable[[], int | None] = others_running) -> Iterator[int]:
    """Run memory-bound solver steps on as many of torch's threads as there are idle CPUs, at least one.

    Why: ROAD's conjugate-gradient steps ran 1.5-1.7x faster on two threads than on one on an idle
    2-core CPU, but 2x slower on two while another process kept one core busy (OpenMP barriers wait
    for a descheduled thread). The choice changes only speed: each system's dot product is summed by
    one thread, so the result is bitwise the same (tested). Yields the thread count chosen."""
    if device.type != "cpu":
        yield torch.get_num_threads()
        return
    saved = torch.get_num_threads()
    busy = _recent_count(others)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    n = 1 if busy is None else max(1, min(saved, cpus - busy))
    torch.set_num_threads(n)
    try:
        yield n
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


def rank_positions(scores: torch.Tensor, descending: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Position of every pixel in its image's ranking (0 = first removed), shape (B, N) like ``scores``.

    Args:
        scores: (B, N) one score per pixel (e.g. ``pixel_scores``).
        descending: rank the highest score first (MoRF, deletion) or the lowest (LeRF).
        generator: ``None`` breaks ties by pixel index (raster order; deterministic but arbitrary). A
            CPU generator breaks them in a uniformly random order: a random permutation of the pixels,
            then a stable sort of the scores, i.e. a random secondary key. Pixels with distinct scores
            are ranked identically either way, so without ties the result equals the index order.

    Why random ties: attribution maps hold large groups of exact zeros, and which tied pixels a metric
    removes first must not decide its value (see docs/ranking_ties.md and ``tie_generator``).
    """
    if generator is None:
        order = torch.argsort(scores, dim=1, descending=descending, stable=True)
    else:
        perm = torch.rand(scores.shape, generator=generator).argsort(dim=1).to(scores.device)
        order = perm.gather(1, torch.argsort(scores.gather(1, perm), dim=1, descending=descending, stable=True))
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return pos


TIE_DRAWS = 2  # at most 2x the forwards of one ranking; 4 draws measured 3.4x on IG maps (docs/ranking_ties.md)


def tie_draws_param(default: int = TIE_DRAWS) -> Param:
    """The ``tie_draws`` parameter of every ranking metric: tie orders averaged at ambiguous cuts."""
    return Param(default, "random tie orders averaged where a cut falls inside a group of equal scores "
                 "(docs/ranking_ties.md)", low=1)


def tie_draw_count(tie_draws: Any) -> int:
    """Tie orders a ranking metric may evaluate (at least 1): what ``run --plan`` multiplies its forwards by."""
    return max(1, int(tie_draws or 1))


class CurvePasses:
    """``forward_passes`` of a ranking metric: images x points on its curve x tie orders evaluated.

    A subclass says how many points its curve has (``curve_points``) and has a ``tie_draws`` parameter.
    """

    tie_draws: Any

    def curve_points(self) -> int:
        raise NotImplementedError

    def forward_passes(self, n_images: int, n_pixels: int, n_test: int) -> float:
        return float(n_images * self.curve_points() * tie_draw_count(self.tie_draws))


def tie_generator(seed: int, draw: int) -> torch.Generator:
    """The generator of tie order number ``draw`` of a cell seeded ``seed``.

    One generator per draw (not one stream), so draw d is the same whatever the number of draws, and
    shared by every ranking metric of the cell (deletion and MoRF accuracy reuse each other's forwards).
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 + draw)


def tie_share(scores: torch.Tensor, ascending: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) share of each image's pixels whose score equals the score of another pixel of that image
    (``ascending``: ``scores`` already sorted along dim 1, e.g. ``sorted_scores``)."""
    s = torch.sort(scores, dim=1).values if ascending is None else ascending
    eq = s[:, 1:] == s[:, :-1]
    tied = torch.zeros_like(s, dtype=torch.bool)
    tied[:, 1:] |= eq
    tied[:, :-1] |= eq
    return tied.double().mean(1)


def ambiguous_cuts(scores: torch.Tensor, ks: Sequence[int], descending: bool = True,
                   inert: torch.Tensor | None = None, ascending: torch.Tensor | None = None) -> torch.Tensor:
    """(len(ks), B) bool: True where the set of an image's first ``k`` ranked pixels depends on the tie order.

    That is where the cut falls inside a group of equal scores (the k-th and (k+1)-th ranked pixels tie).
    ``inert`` (B, N) bool marks pixels whose replacement leaves the image unchanged (e.g. a black pixel
    filled with black): a tie group made only of them changes nothing whichever of its pixels go first,
    so that cut is exact too. Everywhere else one ranking gives the exact value. ``ascending``, when
    given, is ``scores`` sorted ascending along dim 1 (``sorted_scores``), which saves the sort.
    """
    b, n = scores.shape
    if ascending is None:
        s = torch.sort(scores, dim=1, descending=descending).values
    else:
        s = ascending.flip(1) if descending else ascending
    out = torch.zeros(len(ks), b, dtype=torch.bool, device=scores.device)
    for i, k in enumerate(ks):
        if 0 < k < n:
            out[i] = s[:, k - 1] == s[:, k]
            if inert is not None and bool(out[i].any()):
                rows = out[i].nonzero().squeeze(1)
                group = scores[rows] == s[rows, k].unsqueeze(1)
                out[i, rows] = (group & ~inert[rows]).any(1)
    return out


def draw_positions(ctx: EvalContext, attr: torch.Tensor, descending: bool, draw: int) -> torch.Tensor:
    """Ranking positions of ``attr`` under tie order ``draw`` (cached per attribution tensor)."""
    store = attr_store(ctx, attr)
    key = ("positions", descending, draw)
    if key not in store:
        store[key] = rank_positions(attr_scores(ctx, attr), descending, tie_generator(ctx.seed, draw))
    return store[key]


def sorted_scores(ctx: EvalContext, attr: torch.Tensor) -> torch.Tensor:
    """``attr_scores`` sorted ascending per image, cached: the tie tests of every ranking metric of a
    cell (``ambiguous_cuts``, ``tie_share``) share one sort."""
    store = attr_store(ctx, attr)
    if "ascending" not in store:
        store["ascending"] = torch.sort(attr_scores(ctx, attr), dim=1).values
    return store["ascending"]


def attr_scores(ctx: EvalContext, attr: torch.Tensor) -> torch.Tensor:
    """``pixel_scores(attr)``, cached per attribution tensor."""
    store = attr_store(ctx, attr)
    if "scores" not in store:
        store["scores"] = pixel_scores(attr)
    return store["scores"]


def tie_extra(scores: torch.Tensor, ambiguous: torch.Tensor, per_draw: torch.Tensor,
              ascending: torch.Tensor | None = None) -> dict[str, Any]:
    """The tie record of a ranking metric's result (docs/ranking_ties.md).

    ``per_draw`` is (D, B): each image's value under each tie order (D = 1 when no cut is ambiguous).
    ``tie_fraction`` is the mean share of tied pixels per image, ``tied_cuts`` the share of (step, image)
    cuts that fell inside a tie group, ``tie_draws`` the number of tie orders averaged (0 when one
    ranking is exact), ``tie_spread`` the std (ddof 1) across draws of the metric value.
    """
    d = per_draw.shape[0]
    return {"tie_fraction": float(tie_share(scores, ascending).mean()), "tied_cuts": float(ambiguous.double().mean()),
            "tie_draws": d if bool(ambiguous.any()) else 0,
            "tie_spread": float(per_draw.double().mean(1).std()) if d > 1 else 0.0}


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


def _broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    """The broadcast shape of two tensors of equal rank (``torch.broadcast_shapes`` imports sympy on first
    use: half a second per process)."""
    return tuple(max(x, y) for x, y in zip(a.shape, b.shape))


@torch.inference_mode()
def masked_logits(model: nn.Module, pos: torch.Tensor, ks: Sequence[int], inside: torch.Tensor,
                  outside: torch.Tensor, chunk: int = MAX_IMAGES) -> torch.Tensor:
    """Logits (len(ks), B, K) of images showing ``inside`` on pixels ranked < k and ``outside`` elsewhere.

    ``pos`` is (B, H*W) from ``rank_positions``; ``inside``/``outside`` broadcast to (B, C, H, W).
    Steps and images are stacked into batches of at most ``chunk`` inputs, which ``forward`` splits into
    passes of the model's ``max_batch``.
    """
    b, n = pos.shape
    shape = _broadcast(inside, outside)
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


def removal_logits(ctx: EvalContext, attr: torch.Tensor, ks: Sequence[int], fill: str = "mean",
                   draws: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (D, len(ks), B, K) after replacing each image's top-k pixels by ``fill``, and the (len(ks), B)
    ambiguous-cut mask; see ``ranked_logits``. Cached per k, so deletion and MoRF accuracy share their
    forwards; k = 0 is the clean forward, k = H*W the fill image."""
    n = ctx.x.shape[2] * ctx.x.shape[3]
    inside = fill_value(ctx, fill)
    fixed = {0: lambda: clean_logits(ctx)}
    if any(k >= n for k in ks):  # every pixel replaced: the same image for every input, one forward
        def full() -> torch.Tensor:
            img = inside.expand(1, *ctx.x.shape[1:])
            return forward(ctx.model, img).float().expand(ctx.x.shape[0], -1)
        fixed.update({k: full for k in ks if k >= n})
    return ranked_logits(ctx, attr, ks, inside, ctx.x, key=("removal", fill), draws=draws, fixed=fixed)


def ranked_logits(ctx: EvalContext, attr: torch.Tensor, ks: Sequence[int], inside: torch.Tensor,
                  outside: torch.Tensor, *, key: Any, draws: int, fixed: dict[int, Any],
                  descending: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of images showing ``inside`` on their first-k ranked pixels, under ``draws`` random tie orders.

    Draw 0 is computed for every (k, image); draws 1.. only where the cut is ambiguous (``ambiguous_cuts``),
    since elsewhere every tie order gives the same image. So an image without ties at its cuts costs one
    forward per k, and its value equals the index-order one exactly.

    Args:
        inside, outside: broadcast to (B, C, H, W), as in ``masked_logits``.
        key: cache key of this (inside, outside) pair within the attribution's store.
        draws: tie orders wanted (>= 1).
        fixed: {k: callable returning (B, K) logits} for ks whose image does not depend on the ranking.

    Returns:
        ``(logits, ambiguous)``: (D, len(ks), B, K) with D = ``draws`` if any requested cut is ambiguous,
        else 1; and the (len(ks), B) ambiguous-cut mask.
    """
    store = attr_store(ctx, attr).setdefault(key, {"base": {}, "draw": {}, "ambiguous": {}})
    base, by_draw, amb_of = store["base"], store["draw"], store["ambiguous"]
    for k in dict.fromkeys(ks):
        if k in fixed and k not in base:
            base[k] = fixed[k]()
    inner = [k for k in dict.fromkeys(ks) if k not in base]
    if inner:
        pos0 = draw_positions(ctx, attr, descending, 0)
        for k, lg in zip(inner, masked_logits(ctx.model, pos0, inner, inside, outside)):
            base[k] = lg
    scores = attr_scores(ctx, attr)
    new = [k for k in dict.fromkeys(ks) if k not in amb_of]
    if new:
        shape = _broadcast(inside, outside)
        inert = (inside == outside).expand(ctx.x.shape[0], *shape[1:]).all(1).flatten(1)
        cut = ambiguous_cuts(scores, new, descending, inert, sorted_scores(ctx, attr))
        for i, k in enumerate(new):
            amb_of[k] = cut[i] if k not in fixed else torch.zeros_like(cut[i])
    ambiguous = torch.stack([amb_of[k] for k in ks])
    logits = torch.stack([base[k] for k in ks])
    if draws <= 1 or not bool(ambiguous.any()):
        return logits.unsqueeze(0), ambiguous
    todo = [(k, d) for k in dict.fromkeys(ks) for d in range(1, draws) if (k, d) not in by_draw and bool(amb_of[k].any())]
    if todo:
        _draw_logits(ctx, attr, todo, amb_of, inside, outside, descending, by_draw)
    out = logits.unsqueeze(0).repeat(draws, 1, 1, 1)
    for i, k in enumerate(ks):
        rows = amb_of[k].nonzero().squeeze(1)
        if rows.numel():
            for d in range(1, draws):
                out[d, i, rows] = by_draw[(k, d)]
    return out, ambiguous


@torch.inference_mode()
def _draw_logits(ctx: EvalContext, attr: torch.Tensor, todo: list[tuple[int, int]], amb_of: dict[int, torch.Tensor],
                 inside: torch.Tensor, outside: torch.Tensor, descending: bool, by_draw: dict,
                 chunk: int = MAX_IMAGES) -> None:
    """Forward the ambiguous (k, draw, image) triples of ``todo`` in batches; store (k, d) -> (rows, K) logits."""
    shape = _broadcast(inside, outside)
    h, w = shape[-2:]
    draws = sorted({d for _, d in todo})
    pos = {d: draw_positions(ctx, attr, descending, d) for d in draws}
    rows = [amb_of[k].nonzero().squeeze(1) for k, _ in todo]
    sizes = [int(r.numel()) for r in rows]
    img = torch.cat(rows)
    kk = torch.cat([torch.full((s,), k, device=img.device) for (k, _), s in zip(todo, sizes)])
    dd = torch.cat([torch.full((s,), d, device=img.device) for (_, d), s in zip(todo, sizes)])
    got = []
    for s0 in range(0, img.numel(), chunk):
        sl = slice(s0, s0 + chunk)
        i, k, d = img[sl], kk[sl], dd[sl]
        with one_thread(img.device):
            p = torch.empty(i.numel(), h * w, dtype=torch.long, device=img.device)
            for dv in draws:
                sel = d == dv
                if bool(sel.any()):
                    p[sel] = pos[dv][i[sel]]
            ins = inside if inside.shape[0] == 1 else inside[i]
            outs = outside if outside.shape[0] == 1 else outside[i]
            xs = torch.where(p.view(-1, 1, h, w) < k.view(-1, 1, 1, 1), ins, outs)
        got.append(forward(ctx.model, xs).float())
    for (k, d), part in zip(todo, torch.cat(got).split(sizes)):
        by_draw[(k, d)] = part


def mean_where_defined(per: torch.Tensor, reason: str) -> tuple[float, dict[str, Any]]:
    """The mean of per-image values over the images where the metric is defined (non-NaN), and the record
    of the others: ``n_undefined`` and ``undefined_reason`` (``reason``), so a NaN is never a silent blank.

    The value is NaN (with the reason) when no image is defined, e.g. a constant explainer's maps.
    """
    bad = int(torch.isnan(per).sum())
    if not bad:
        return float(per.mean()), {}
    value = float("nan") if bad == per.numel() else float(per.nanmean())
    return value, {"n_undefined": bad, "undefined_reason": reason}


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


def ranking_seconds(costs: CostModel, explainer: str, explainer_params: Any, model_spec: TrainSpec | None,
                    train_size: int | None) -> float | None:
    """Estimated seconds to rank every training and test pixel with an explainer (a retraining metric's
    ranking task prices itself with this, from the planner's ``CostModel``).

    The explainer's ``gradient_passes()`` prices it (undeclared: 0 for a model-independent explainer, else 1
    per image, noted in the plan). None when the passes need a model and there is none to time.
    """
    import dataclasses

    from sgq_bench import _registry

    expl = _registry.explainers.get(explainer)(**dict(explainer_params))
    passes = expl.gradient_passes()
    if passes is None:
        passes = 0.0 if expl.model_independent else 1.0
        if passes:
            costs.note(f"explainer {explainer!r} declares no gradient_passes; 1 per image assumed")
    if not passes:
        return 0.0
    if model_spec is None:
        return None
    sized = dataclasses.replace(model_spec, recipe=dataclasses.replace(model_spec.recipe, train_size=train_size))
    n_train, n_test = costs.images(sized)
    return costs.gradient_s(model_spec, (n_train + n_test) * passes)

