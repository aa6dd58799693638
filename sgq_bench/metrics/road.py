"""ROAD (Rong et al. 2022): remove pixels by noisy linear imputation, measure the same model's accuracy.

Each removed pixel takes the weighted mean of its 8 neighbours (weights 1/6 edge, 1/12 diagonal;
neighbours outside the image drop out of the mean), with removed neighbours themselves unknown: one
sparse linear system per image. Quantus solves it per image with scipy (a Python loop, ~6x the forward
cost). Here every image, channel and fraction of a chunk is solved at once by Jacobi-preconditioned
conjugate gradients (float32, relative residual 1e-5) on the device: the system matrix ``D - W`` (restricted to the removed
pixels) is symmetric positive definite, and its product with a vector is one 3x3 depthwise convolution.
Then Gaussian noise (std ``noise``, from a seeded generator) is added to the imputed pixels.

``road_morf`` removes the most important pixels first (lower accuracy = more faithful), ``road_lerf``
the least important first (higher is better). Accuracy is against the true labels; the value is the
trapezoid AUC over the fractions divided by their span (a mean accuracy). Unlike Quantus, which
averages only the first batch it evaluates, all images are averaged.

Ties: where a fraction's cut falls inside a group of equal scores, the imputed set depends on which
tied pixels go first; ``tie_draws`` seeded random orders are then averaged, each with the same noise
as the first, so draws differ only by tie order (docs/ranking_ties.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sgq_bench._base import EvalContext, Metric, MetricResult, Param
from sgq_bench._batching import MAX_IMAGES
from sgq_bench.metrics.functional import (
    CurvePasses,
    FractionsMixin,
    ambiguous_cuts,
    attr_scores,
    draw_positions,
    forward,
    fractions_param,
    idle_threads,
    k_of,
    sorted_scores,
    tie_draws_param,
    tie_extra,
    to_list,
    trapezoid_auc,
)

_EDGE, _DIAG = 1.0 / 6.0, 1.0 / 12.0


class _Stencil:
    """The weighted 8-neighbour sum on a flat, zero-padded layout.

    Each image lives in a buffer of (H+2)*(W+1)+2 values: each row of W pixels is followed by one zero
    column, with a zero row above and below and one guard value at each end. The zero column after
    row y is both the right neighbour of its last pixel and the left neighbour of row y+1's first, so
    one column frames both sides. The H rows, *including* their zero columns, form a contiguous band
    of H*(W+1) values; a neighbour at (dy, dx) is the band shifted by dy*(W+1)+dx: contiguous slices of
    one buffer, combined in place. This is ~15x faster on CPU than a 3x3 convolution, and preallocated
    buffers avoid the page faults of fresh allocations every step. Frame columns inside the band carry
    garbage, which the unknown-pixel mask (zero there) removes. (A zero column on each side, the
    earlier layout, made every vector of the solver 3.4% longer at 28x28.)

    The weights factor: 1/6 edge, 1/12 diagonal, 0 centre is ``([1 2 1] x [1 2 1]) / 12`` minus the
    centre's 1/3, so the sum needs one separable pass per axis (four slice operations, not eight).
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w, self.row = h, w, w + 1
        self.size = (h + 2) * self.row + 2
        self.start = self.row + 1
        self.band = h * self.row

    def view(self, buf: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
        o = self.start + dy * self.row + dx
        return buf[:, o:o + self.band]

    def interior(self, buf: torch.Tensor) -> torch.Tensor:
        """(S, H, W) view of the image pixels of a zero-framed buffer."""
        return self.view(buf).view(buf.shape[0], self.h, self.row)[:, :, :-1]

    def to_band(self, img: torch.Tensor) -> torch.Tensor:
        """(S, H, W) -> (S, band) with zero frame columns."""
        return torch.nn.functional.pad(img, (0, 1)).reshape(img.shape[0], self.band)

    def from_band(self, band: torch.Tensor) -> torch.Tensor:
        return band.view(band.shape[0], self.h, self.row)[:, :, :-1]

    def separable(self, buf: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = ([1 2 1] x [1 2 1]) applied to ``buf`` (zero frame), through ``rows`` (a zero-framed
        buffer like ``buf``, holding the horizontal pass; only its band is written)."""
        return self.bound(buf, rows, out)()

    def bound(self, buf: torch.Tensor, rows: torch.Tensor, out: torch.Tensor,
              d12: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
        """``separable`` on fixed buffers, minus ``d12 * band(buf)`` when given (-12 A p in the solver),
        as a call without arguments with its six views sliced once: the conjugate-gradient loop calls it
        every step."""
        v = self.view
        left, right, centre = v(buf, 0, -1), v(buf, 0, 1), v(buf)
        h, up, down = v(rows), v(rows, -1, 0), v(rows, 1, 0)

        def apply() -> torch.Tensor:
            torch.add(left, right, out=h).add_(centre, alpha=2)
            torch.add(up, down, out=out).add_(h, alpha=2)
            return out if d12 is None else out.addcmul_(d12, centre, value=-1)
        return apply

    def apply(self, buf: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """out = sum of in-image neighbours (ROAD's weights) of the band of ``buf`` (frame and guards zero)."""
        return self.separable(buf, rows, out).mul_(1.0 / 12.0).add_(self.view(buf), alpha=-1.0 / 3.0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-system dot product, (S, 1)."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


SOLVE_SYSTEMS = 384  # systems (image x channel) per conjugate-gradient solve per CPU thread
SOLVE_GROUP = 4 * MAX_IMAGES  # images x fractions imputed in one call (memory: ~4 copies of that many images)


def linear_impute(x: torch.Tensor, unknown: torch.Tensor, tol: float = 1e-5, max_iter: int | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Solve ROAD's linear imputation (see ``_linear_impute``) on the idle CPUs' threads.

    On CPU the systems are solved ``SOLVE_SYSTEMS`` per thread at a time: the solver's ~10 working
    tensors then stay in cache (384 MNIST systems: ~14 MB, against ~75 MB for 2,048), and systems given
    in fraction-major order, as ROAD gives them, are of similar difficulty within a solve, so fewer of
    them wait on the slowest. Measured on the benchmark's 2,043 systems (idle 2-core EPYC), MoRF / LeRF:
    1 thread 0.119 / 0.233 s at 2,043 per solve, 0.103 / 0.172 s at 384 (64 was slower again: per-call
    overhead); 2 threads 58 / 102 ms at 2,048, 53 / 88 at 384, 48 / 76 at 768. Each system's result does
    not depend on its companions, so the split changes nothing but speed (tested).
    """
    with idle_threads(x.device) as threads:
        if x.device.type != "cpu" or x.shape[0] == 0:
            return _linear_impute(x, unknown, tol, max_iter, dtype)
        per = max(1, SOLVE_SYSTEMS * threads // max(1, x.shape[1]))
        per = -(-x.shape[0] // -(-x.shape[0] // per))  # equal solves: 800 as 2 x 400, not 768 + 32
        return torch.cat([_linear_impute(x[s:s + per], unknown[s:s + per], tol, max_iter, dtype)
                          for s in range(0, x.shape[0], per)])


def _constant_start(u: torch.Tensor, au: torch.Tensor, rhs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(S, 1) coefficient ``a`` of the start ``a * u`` with the least energy-norm error: ``u.rhs / u.Au``
    (``au`` holds ``A u / scale``, and may hold anything where ``u`` is 0).

    ``u`` is the indicator of the unknown pixels, so the start is the best single value for every hole
    of the image. Why: conjugate gradients from Jacobi's guess ``rhs / D`` spend most iterations on the
    smooth error inside large holes, where that guess is ~0. A second vector (Jacobi's guess, mixed in
    by a 2x2 Galerkin system) cost one more operator product and three dot products per system and no
    longer paid once convergence is tested on ``rz``: MNIST MoRF 47 -> 43 ms with the constant alone,
    LeRF 79 ms either way, CIFAR-10 the same (2 threads, docs/design.md). Uses only known pixels.
    """
    return (_dot(u, rhs).double() / (_dot(u, au).double() * scale).clamp_min(1e-300)).to(u.dtype)


def _linear_impute(x: torch.Tensor, unknown: torch.Tensor, tol: float, max_iter: int | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """Solve ROAD's linear imputation for a batch of images by preconditioned conjugate gradients.

    The system on the unknown pixels is ``A v = rhs`` with ``A = D - W`` (``D`` the in-image
    neighbour weight sum, ``W`` the neighbour weights) and ``rhs`` the weighted sum of known
    neighbours. The loop carries ``q = -12 A p`` (the separable stencil minus ``12 (D + 1/3) p``, no
    scaling pass) and leaves the residual unmasked off the unknown pixels: the preconditioner
    ``m / D`` zeroes them, so neither the search direction nor ``rz`` sees them. The stopping test is
    ``rz = sum r^2 / D <= tol^2 |rhs|^2``: ``rz`` is computed by the step anyway and bounds ``|r|^2``
    from above (``D <= 1``), so it certifies the residual test at no cost. Systems drop out of the
    iteration as they converge (tested every 4 steps, and on the start), so the cost follows the
    hardest images only where they are (dropping them only once a quarter had converged saved copies
    but cost more in wasted steps: 0.21 s against 0.17 s on the benchmark). A system still running at
    ``max_iter`` keeps its last iterate. One function over the 60-line rule on purpose: the
    conjugate-gradient loop shares its working tensors, which shrink together as systems converge;
    split into pieces they would all travel through every call.

    Args:
        x: (B, C, H, W) images; known pixels keep their values.
        unknown: (B, 1, H, W) bool, the pixels to impute (same in every channel).
        tol: stop a system once its residual norm is certainly below ``tol`` times its right-hand side's.
        max_iter: bound on iterations; default 10 * (H + W), several times what the hardest MNIST
            systems (90% removed, far corners) need to reach 1e-5. A system stopped there is off by
            ~1e-5 in pixel value, far below the imputation noise (0.01).
        dtype: working precision (float32 reaches ~1e-6 relative, ample for an image).

    Returns:
        (B, C, H, W) images (``dtype``) with the unknown pixels replaced by the solution.
    """
    b, c, h, w = x.shape
    dev = x.device
    max_iter = max_iter or 10 * (h + w)
    st = _Stencil(h, w)
    n_sys = b * c
    xs = x.to(dtype).reshape(n_sys, h, w)
    m_img = unknown.expand(b, c, h, w).reshape(n_sys, h, w).to(dtype)
    m = st.to_band(m_img)
    buf = torch.zeros(n_sys, st.size, dtype=dtype, device=dev)  # the search direction, zero-framed
    rows = torch.zeros(n_sys, st.size, dtype=dtype, device=dev)  # the stencil's horizontal pass
    one = torch.zeros(1, st.size, dtype=dtype, device=dev)
    st.view(one).copy_(st.to_band(torch.ones(1, h, w, dtype=dtype, device=dev)))
    diag = st.apply(one, torch.empty(1, st.band, dtype=dtype, device=dev), torch.zeros_like(one))
    d12 = (diag + 1.0 / 3.0).mul_(12.0)
    minv = m / diag  # the Jacobi preconditioner, zero off the unknown pixels
    q = torch.empty_like(m)

    torch.mul(xs, 1 - m_img, out=st.interior(buf))  # the known pixels
    rhs = st.apply(buf, torch.empty_like(m), rows).mul_(m)  # known neighbours -> right-hand side
    result = st.to_band(xs)
    st.view(buf).copy_(m)
    g = st.bound(buf, rows, torch.empty_like(m), d12)()  # -12 A m (garbage off the unknown pixels: u there is 0)
    a = _constant_start(m, g, rhs, -1.0 / 12.0)
    v = a * m
    r = torch.addcmul(rhs, a / 12.0, g)  # rhs - A v
    q_all, z_all = q, torch.empty_like(q)
    z = r * minv
    st.view(buf).copy_(z)  # the search direction p lives in the padded buffer
    rz = _dot(r, z)
    bb = _dot(rhs, rhs).mul_(tol * tol)
    tiny = torch.finfo(dtype).tiny
    active = torch.arange(n_sys, device=dev)
    p = st.view(buf)
    a_step = st.bound(buf, rows, q, d12)
    for it in range(max_iter + 1):
        # rz = sum r^2 / D >= |r|^2 on the unknown pixels (D <= 1), so rz <= bb certifies the residual
        # test at no cost. it == 0 tests the start: exact where a hole sees one value.
        if it % 4 == 0 or it == max_iter:
            done = torch.ones_like(active, dtype=torch.bool) if it == max_iter else (rz <= bb).view(-1)
            if bool(done.any()):
                gone = done.nonzero().squeeze(1)
                idx = active.index_select(0, gone)
                known = minv.index_select(0, gone) == 0
                result.index_copy_(0, idx, torch.where(known, result.index_select(0, idx), v.index_select(0, gone)))
                kept = (~done).nonzero().squeeze(1)
                if kept.numel() == 0:
                    break
                active, minv, v, r, rz, bb, buf = (
                    t.index_select(0, kept) for t in (active, minv, v, r, rz, bb, buf))
                n = kept.numel()
                rows, q, z = rows[:n], q_all[:n], z_all[:n]  # scratch: only the band is written
                p = st.view(buf)
                a_step = st.bound(buf, rows, q, d12)
        a_step()
        alpha = rz / _dot(p, q).mul_(-1.0 / 12.0).clamp_min(tiny)
        v.addcmul_(alpha, p)
        r.addcmul_(alpha, q, value=1.0 / 12.0)
        torch.mul(r, minv, out=z)
        rz_new = _dot(r, z)
        torch.addcmul(z, p, rz_new / rz.clamp_min(tiny), out=p)
        rz = rz_new
    return st.from_band(result).reshape(b, c, h, w)


class _Road(CurvePasses, FractionsMixin, Metric):
    family = "road"
    descending = True
    params = {
        "fractions": fractions_param(doc="fractions of pixels imputed"),
        "noise": Param(0.01, "std of the Gaussian noise added to imputed pixels", low=0.0),
        "tol": Param(1e-5, "relative residual at which conjugate gradients stop (float32)", low=0.0,
                 low_open=True),
        "tie_draws": tie_draws_param(),
    }

    def curve_points(self) -> int:
        return len(self.fractions) + 1  # the fractions and the clean input

    def _impute(self, x: torch.Tensor, unknown: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        imgs = linear_impute(x, unknown, tol=self.tol)  # a new tensor: the noise goes in in place
        if eps is not None:
            imgs.addcmul_(eps.to(imgs.device), unknown.to(imgs.dtype), value=self.noise)
        return imgs

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        b, _, h, w = ctx.x.shape
        n = h * w
        nf = len(self.fractions)
        kf = [k_of(f, n) for f in self.fractions]
        pos = draw_positions(ctx, attributions, self.descending, 0)
        ambiguous = ambiguous_cuts(attr_scores(ctx, attributions), kf, self.descending,
                                   ascending=sorted_scores(ctx, attributions))  # (F, B)
        extra_draws = self.tie_draws > 1 and bool(ambiguous.any())
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 7)
        # Chunks of images x fractions, fraction-major: the noise is drawn chunk by chunk (so ``per`` is part of
        # the values). Chunks are then imputed and classified in groups of up to SOLVE_GROUP systems, so that a
        # small last chunk shares its solves (linear_impute splits a group into cache-sized solves); a
        # system's solution does not depend on its companions, so grouping changes nothing but speed.
        per = max(1, MAX_IMAGES // max(1, nf))
        correct, kept_eps, group = [], [], []

        def flush() -> None:
            xs, unknown = torch.cat([g[1] for g in group]), torch.cat([g[2] for g in group])
            eps = torch.cat([g[3] for g in group]) if self.noise > 0 else None
            pred = forward(ctx.model, self._impute(xs, unknown, eps).to(ctx.x.dtype)).argmax(1)
            for (sl, *_), p in zip(group, pred.split([g[1].shape[0] for g in group])):
                correct.append((p.view(nf, -1) == ctx.y[sl].view(1, -1)).double())
            group.clear()

        ks = torch.tensor(kf, device=pos.device).view(-1, 1, 1)
        for s in range(0, b, per):
            sl = slice(s, s + per)
            xs = ctx.x[sl].repeat(nf, 1, 1, 1)  # all fractions of the chunk
            unknown = (pos[sl].unsqueeze(0) < ks).view(-1, 1, h, w)  # fraction-major, like xs
            eps = None
            if self.noise > 0:
                eps = torch.randn(xs.shape, generator=gen, dtype=torch.float32)
                if extra_draws:  # the same noise for the other tie orders of an ambiguous cut
                    kept_eps.append(eps[ambiguous[:, sl].reshape(-1).cpu()])
            group.append((sl, xs, unknown, eps))
            if sum(g[1].shape[0] for g in group) >= SOLVE_GROUP or s + per >= b:
                flush()
        acc = torch.cat(correct, dim=1).unsqueeze(0)  # (1, fractions, B)
        if extra_draws:
            acc = self._other_draws(ctx, attributions, acc, ambiguous, kf, kept_eps)
        fr = list(self.fractions)
        auc = trapezoid_auc(fr, acc.transpose(1, 2))  # (D, B)
        per_image = auc.mean(0)
        return MetricResult(value=float(per_image.mean()), curve={"x": fr, "y": to_list(acc.mean(0).mean(1))},
                            per_sample=to_list(per_image),
                            extra=tie_extra(attr_scores(ctx, attributions), ambiguous, auc,
                                           sorted_scores(ctx, attributions)))

    def _other_draws(self, ctx: EvalContext, attr: torch.Tensor, acc: torch.Tensor, ambiguous: torch.Tensor,
                     kf: list[int], kept_eps: list[torch.Tensor]) -> torch.Tensor:
        """(D, F, B) accuracies: draw 0's everywhere, tie orders 1.. recomputed on the ambiguous cuts only."""
        b, _, h, w = ctx.x.shape
        # the ambiguous (fraction, image) pairs in the order their noise was kept: chunk, then fraction, then image
        per = max(1, MAX_IMAGES // max(1, len(kf)))
        pairs = torch.cat([ambiguous[:, s:s + per].nonzero() + torch.tensor([0, s], device=ambiguous.device)
                           for s in range(0, b, per)]).cpu()
        eps_all = torch.cat(kept_eps) if kept_eps else None
        out = acc.repeat(self.tie_draws, 1, 1)
        kt = torch.tensor(kf)
        for d in range(1, self.tie_draws):
            pos = draw_positions(ctx, attr, self.descending, d)
            for s in range(0, pairs.shape[0], MAX_IMAGES):
                f, i = pairs[s:s + MAX_IMAGES].unbind(1)
                idev = i.to(ctx.x.device)
                unknown = (pos[idev] < kt[f].to(pos.device).view(-1, 1)).view(-1, 1, h, w)
                eps = eps_all[s:s + MAX_IMAGES] if eps_all is not None else None
                imgs = self._impute(ctx.x[idev], unknown, eps)
                pred = forward(ctx.model, imgs.to(ctx.x.dtype)).argmax(1)
                out[d, f.to(out.device), idev.to(out.device)] = (pred == ctx.y[idev]).double().to(out.device)
        return out


class RoadMorf(_Road):
    """ROAD, most relevant first: accuracy as top-ranked pixels are imputed (lower is better)."""

    name = "road_morf"
    higher_is_better = False
    descending = True


class RoadLerf(_Road):
    """ROAD, least relevant first: accuracy as bottom-ranked pixels are imputed (higher is better)."""

    name = "road_lerf"
    higher_is_better = True
    descending = False
