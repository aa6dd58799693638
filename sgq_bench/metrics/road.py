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
"""

from __future__ import annotations

import torch

from sgq_bench._base import EvalContext, Metric, MetricResult, Param
from sgq_bench._batching import MAX_IMAGES
from sgq_bench.metrics.functional import (
    FractionsMixin,
    forward,
    fractions_param,
    k_of,
    one_thread,
    pixel_scores,
    rank_positions,
    to_list,
    trapezoid_auc,
)

_EDGE, _DIAG = 1.0 / 6.0, 1.0 / 12.0


class _Stencil:
    """The weighted 8-neighbour sum on a flat, zero-padded layout.

    Each image lives in a buffer of (H+2)*(W+2)+2 values (a zero frame, plus one guard value at each
    end); the H interior rows, *including* their two frame columns, form a contiguous band of
    H*(W+2) values. A neighbour at (dy, dx) is then the band shifted by dy*(W+2)+dx: eight contiguous
    slices of one buffer, summed in place. This is ~15x faster on CPU than a 3x3 convolution, and
    preallocated buffers avoid the page faults of fresh allocations every step. Frame columns inside
    the band carry garbage, which the unknown-pixel mask (zero there) removes.
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w, self.row = h, w, w + 2
        self.size = (h + 2) * self.row + 2
        self.start = self.row + 1
        self.band = h * self.row

    def view(self, buf: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
        o = self.start + dy * self.row + dx
        return buf[:, o:o + self.band]

    def to_band(self, img: torch.Tensor) -> torch.Tensor:
        """(S, H, W) -> (S, band) with zero frame columns."""
        return torch.nn.functional.pad(img, (1, 1)).reshape(img.shape[0], self.band)

    def from_band(self, band: torch.Tensor) -> torch.Tensor:
        return band.view(band.shape[0], self.h, self.row)[:, :, 1:-1]

    def apply(self, buf: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        """out = sum of in-image neighbours of the band of ``buf`` (frame and guards are zero)."""
        v = self.view
        torch.add(v(buf, 0, -1), v(buf, 0, 1), out=out)
        out.add_(v(buf, -1, 0)).add_(v(buf, 1, 0))
        torch.add(v(buf, -1, -1), v(buf, -1, 1), out=tmp)
        tmp.add_(v(buf, 1, -1)).add_(v(buf, 1, 1))
        return out.mul_(_EDGE).add_(tmp, alpha=_DIAG)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-system dot product, (S, 1)."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def linear_impute(x: torch.Tensor, unknown: torch.Tensor, tol: float = 1e-5, max_iter: int | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Solve ROAD's linear imputation (see ``_linear_impute``), on one CPU thread."""
    with one_thread(x.device):
        return _linear_impute(x, unknown, tol, max_iter, dtype)


def _linear_impute(x: torch.Tensor, unknown: torch.Tensor, tol: float, max_iter: int | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """Solve ROAD's linear imputation for a batch of images by preconditioned conjugate gradients.

    Systems drop out of the iteration as they converge (small fractions need few steps), so the cost
    follows the hardest images only where they are.

    Args:
        x: (B, C, H, W) images; known pixels keep their values.
        unknown: (B, 1, H, W) bool, the pixels to impute (same in every channel).
        tol: stop a system when its residual norm is below ``tol`` times its right-hand side's.
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
    buf = torch.zeros(n_sys, st.size, dtype=dtype, device=dev)
    tmp = torch.empty(n_sys, st.band, dtype=dtype, device=dev)
    one = torch.zeros(1, st.size, dtype=dtype, device=dev)
    st.view(one).copy_(st.to_band(torch.ones(1, h, w, dtype=dtype, device=dev)))
    diag = st.apply(one, torch.empty(1, st.band, dtype=dtype, device=dev), torch.empty_like(one[:, :st.band]))
    inv_diag = 1.0 / diag
    st.view(buf).copy_(st.to_band(xs * (1 - m_img)))
    rhs = st.apply(buf, torch.empty_like(tmp), tmp).mul_(m)  # known neighbours -> right-hand side
    result = st.to_band(xs)
    active = torch.arange(n_sys, device=dev)
    v = rhs * inv_diag
    ap = torch.empty_like(v)
    st.view(buf).copy_(v)
    st.apply(buf, ap, tmp)
    ap.mul_(-1).addcmul_(diag, v).mul_(m)
    r = rhs - ap
    z = r * inv_diag
    st.view(buf).copy_(z)  # the search direction p lives in the padded buffer
    rz = _dot(r, z)
    bb = _dot(rhs, rhs).mul_(tol * tol)
    tiny = torch.finfo(dtype).tiny
    for it in range(max_iter):
        p = st.view(buf)
        st.apply(buf, ap, tmp)
        ap.mul_(-1).addcmul_(diag, p).mul_(m)  # ap = (D - W) p on the unknown pixels
        alpha = rz / _dot(p, ap).clamp_min(tiny)
        v.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        if it % 4 == 3 or it == max_iter - 1:
            done = (_dot(r, r) <= bb).view(-1)
            if bool(done.any()) or it == max_iter - 1:
                idx = active[done]
                result[idx] = torch.where(m[done].bool(), v[done], result[idx])
                keep = ~done
                if not bool(keep.any()):
                    break
                active, m, v, r, rz, bb, buf = (t[keep] for t in (active, m, v, r, rz, bb, buf))
                ap, z, tmp = torch.empty_like(v), torch.empty_like(v), torch.empty_like(v)
                p = st.view(buf)
        torch.mul(r, inv_diag, out=z)
        rz_new = _dot(r, z)
        p.mul_(rz_new / rz.clamp_min(tiny)).add_(z)
        rz = rz_new
    return st.from_band(result).reshape(b, c, h, w)


def road_images(x: torch.Tensor, pos: torch.Tensor, k: int, noise: float, generator: torch.Generator | None,
                tol: float = 1e-5) -> torch.Tensor:
    """Images with each one's ``k`` first-ranked pixels imputed, plus noise on those pixels."""
    b, c, h, w = x.shape
    unknown = (pos < k).view(b, 1, h, w)
    out = linear_impute(x, unknown, tol=tol)
    if noise > 0:
        eps = torch.randn(out.shape, generator=generator, dtype=out.dtype,
                          device=generator.device if generator is not None else x.device).to(x.device)
        out = out + noise * eps * unknown
    return out.to(x.dtype)


class _Road(FractionsMixin, Metric):
    family = "road"
    descending = True
    params = {
        "fractions": fractions_param(doc="fractions of pixels imputed"),
        "noise": Param(0.01, "std of the Gaussian noise added to imputed pixels", low=0.0),
        "tol": Param(1e-5, "relative residual at which conjugate gradients stop (float32)", low=0.0,
                 low_open=True),
    }

    def compute(self, ctx: EvalContext, attributions: torch.Tensor | None) -> MetricResult:
        b, _, h, w = ctx.x.shape
        n = h * w
        pos = rank_positions(pixel_scores(attributions), descending=self.descending)
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 7)
        # One chunk of images x fractions per CG solve; cost per CG iteration is cheap, so solve many at once.
        per = max(1, MAX_IMAGES // max(1, len(self.fractions)))
        correct = []
        for s in range(0, b, per):
            sl = slice(s, s + per)
            # all fractions of the chunk in one batched system:
            xs = ctx.x[sl].repeat(len(self.fractions), 1, 1, 1)
            ps = pos[sl].repeat(len(self.fractions), 1)
            ks = torch.tensor([k_of(f, n) for f in self.fractions], device=ps.device)
            ks = ks.repeat_interleave(ctx.x[sl].shape[0])
            unknown = (ps < ks.view(-1, 1)).view(-1, 1, h, w)
            imgs = linear_impute(xs, unknown, tol=self.tol)
            if self.noise > 0:
                eps = torch.randn(imgs.shape, generator=gen, dtype=imgs.dtype).to(imgs.device)
                imgs = imgs + self.noise * eps * unknown
            pred = forward(ctx.model, imgs.to(ctx.x.dtype)).argmax(1).view(len(self.fractions), -1)
            correct.append((pred == ctx.y[sl].view(1, -1)).double())
        acc = torch.cat(correct, dim=1)  # (fractions, B)
        fr = list(self.fractions)
        auc = trapezoid_auc(fr, acc.T)
        return MetricResult(value=float(auc.mean()), curve={"x": fr, "y": to_list(acc.mean(1))},
                            per_sample=to_list(auc))


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
