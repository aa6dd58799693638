"""Metrics benchmark: each metric against its Quantus/Captum reference and against its forward floor.

Same process, same inputs (``n`` test images), same model object, same attributions (``gradient``).
The *floor* of a metric is the model forward passes it cannot avoid (the perturbed inputs it must
classify), timed alone on random inputs of the same count and chunking. Each metric is timed with a
cold cache except for the clean logits, which belong to the cell, not to a metric. Where the reference
draws randomness we feed it our draws (faithfulness correlation, infidelity) so values are comparable;
ROAD's noise is drawn by each side (the max difference then reflects a few noise-induced flips).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sgq_bench._base import EvalContext
from sgq_bench._batching import max_batch
from sgq_bench.data import load_dataset
from sgq_bench.evaluate import eval_split
from sgq_bench.explainers import Gradient
from sgq_bench.metrics import functional as _common
from sgq_bench.metrics.deletion import DeletionAUC, InsertionAUC, MorfAccuracy
from sgq_bench.metrics.faithfulness import FaithfulnessCorrelation, Infidelity
from sgq_bench.metrics.road import RoadLerf, RoadMorf
from sgq_bench.metrics.sparsity import Complexity, Sparseness, TopKMass
from sgq_bench.train import TrainSpec, inference_copy, load_or_train, resolve_device


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def forward_floor(model: torch.nn.Module, like: torch.Tensor, n_images: int, chunk: int | None = None) -> float:
    """Seconds to classify ``n_images`` random inputs shaped like ``like`` in chunks of ``chunk`` (default: the
    model's ``max_batch``, the size every metric's passes use)."""
    chunk = chunk or max_batch(model, like)
    if n_images <= 0:
        return 0.0
    g = torch.Generator().manual_seed(0)
    batch = torch.randn((min(chunk, n_images), *like.shape[1:]), generator=g).to(like)
    t0 = time.perf_counter()
    with torch.inference_mode():
        left = n_images
        while left > 0:
            model(batch[: min(left, chunk)])
            left -= chunk
    return time.perf_counter() - t0


def _fresh(ctx: EvalContext) -> EvalContext:
    """The context with only the cell's clean logits cached."""
    ctx.cache = {"clean_logits": ctx.cache["clean_logits"]}
    return ctx


def run_metrics_bench(spec: TrainSpec, n: int = 256, data_root: Any = None, device: str = "cpu",
                      checkpoint_dir: Any = None, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    import quantus
    from captum.metrics import infidelity as captum_infidelity

    warnings.filterwarnings("ignore")
    dev = resolve_device(device)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    split = eval_split(dataset, n, 0, data_root)
    model = inference_copy(load_or_train(spec, data_root=data_root, device=dev, checkpoint_dir=checkpoint_dir,
                                     progress=False).model.eval(), dev)
    x = dataset.normalize(split.images.to(dev))
    y = split.labels.to(dev)
    ctx = EvalContext(model=model, dataset=dataset, x=x, y=y, device=dev, spec=spec, seed=0)
    pred = _common.predicted(ctx)
    expl = Gradient()
    expl.setup(dataset)
    attr = expl.attribute(model, x, pred)
    b, c, h, w = x.shape
    npx = h * w
    score = _common.pixel_scores(attr).view(b, 1, h, w)
    x_np, p_np, s_np = x.cpu().numpy(), pred.cpu().numpy(), score.cpu().numpy()
    # Gradient maps have many exact ties (dead ReLUs). We break ties by pixel index (stable sort), Quantus by
    # numpy's unstable quicksort; to compare values we hand Quantus our ranking as tie-free scores.
    rank_desc = (-_common.rank_positions(score.flatten(1)).float()).view(b, 1, h, w).cpu().numpy()
    rank_asc = (-_common.rank_positions(score.flatten(1), descending=False).float()).view(b, 1, h, w).cpu().numpy()
    y_np = y.cpu().numpy()
    qkw = dict(channel_first=True, device=str(dev), batch_size=b)
    black = float(_common.fill_value(ctx, "black").flatten()[0])
    steps = 49 if npx % 49 == 0 else 50  # Quantus needs features_in_step to divide the pixel count
    rows: list[dict[str, Any]] = []

    def bench(name: str, ours: Callable[[], Any], floor_images: int, ref: Callable[[], Any] | None = None,
              diff: Callable[[Any, Any], float] | None = None, ref_name: str = "") -> None:
        if metrics and name not in metrics:
            return
        _fresh(ctx)
        res, t_ours = _timed(ours)
        repeat = 7 if t_ours < 0.5 else 1  # millisecond metrics: best of 7 for both sides (timer noise)
        for _ in range(repeat - 1):
            _fresh(ctx)
            t_ours = min(t_ours, _timed(ours)[1])
        t_floor = forward_floor(model, x, floor_images)
        row = {"metric": name, "ours_s": t_ours, "floor_s": t_floor, "ref": ref_name}
        if ref is not None:
            ref_out, t_ref = _timed(ref)
            for _ in range(repeat - 1):
                t_ref = min(t_ref, _timed(ref)[1])
            row.update(ref_s=t_ref, max_diff=diff(res, ref_out) if diff else float("nan"))
        rows.append(row)
        _print_row(row)

    print(f"metrics benchmark: {spec.dataset}/{spec.model}/{spec.method.label()}, {b} test images, "
          f"gradient attributions, {torch.get_num_threads()} threads, device {dev}")
    print(f"{'metric':<26}{'ours s':>9}{'ref s':>9}{'ref/ours':>10}{'max|diff|':>11}{'floor s':>9}"
          f"{'ours/floor':>11}  reference")

    # deletion vs Quantus PixelFlipping (softmax, baseline 0 = the mean after normalisation)
    def q_pf() -> np.ndarray:
        m = quantus.PixelFlipping(features_in_step=npx // steps, perturb_baseline=0.0, abs=False,
                                  normalise=False, disable_warnings=True)
        return np.asarray(m(model=model, x_batch=x_np, y_batch=p_np, a_batch=rank_desc.copy(), softmax=True, **qkw))

    del_metric = DeletionAUC(steps=steps)
    bench("deletion_auc", lambda: del_metric.compute(ctx, attr), (steps - 1) * b, q_pf,
          lambda r, q: float(np.abs(np.asarray(r.curve["y"][1:]) - q.mean(0)).max()),
          f"quantus.PixelFlipping ({steps} steps)")
    ins = InsertionAUC()
    bench("insertion_auc", lambda: ins.compute(ctx, attr), 50 * b, ref_name="(none)")
    morf = MorfAccuracy()
    bench("morf_accuracy", lambda: morf.compute(ctx, attr), len(morf.fractions) * b, ref_name="(none)")

    pct = [int(round(f * 100)) for f in _common.FRACTIONS]

    def q_road(descending: bool) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            m = quantus.ROAD(percentages=pct, noise=0.01, abs=False, normalise=False, disable_warnings=True)
            a = rank_desc if descending else rank_asc
            out = m(model=model, x_batch=x_np, y_batch=y_np, a_batch=a.copy(), **qkw)
            return np.asarray([out[p] for p in pct])
        return run

    for cls, desc in ((RoadMorf, True), (RoadLerf, False)):
        met = cls()
        bench(met.name, lambda met=met: met.compute(ctx, attr), len(met.fractions) * b, q_road(desc),
              lambda r, q: float(np.abs(np.asarray(r.curve["y"]) - q).max()), "quantus.ROAD (own noise draws)")

    for cls, qcls in ((Sparseness, quantus.Sparseness), (Complexity, quantus.Complexity)):
        met = cls()

        def q_run(qcls=qcls) -> np.ndarray:
            m = qcls(abs=False, normalise=False, disable_warnings=True)
            return np.asarray(m(model=model, x_batch=x_np, y_batch=p_np, a_batch=s_np.copy(), **qkw))

        bench(met.name, lambda met=met: met.compute(ctx, attr), 0, q_run,
              lambda r, q: float(np.abs(np.asarray(r.per_sample) - q).max()), f"quantus.{qcls.__name__}")
    topk = TopKMass()
    bench("topk_mass", lambda: topk.compute(ctx, attr), 0, ref_name="(none)")

    fc = FaithfulnessCorrelation()
    size = _common.k_of(0.1, npx)

    def q_fc() -> np.ndarray:
        idx, _ = fc._draws(ctx, size)  # our subsets, fed to Quantus through np.random.choice
        rows_iter = iter(idx.cpu().numpy().transpose(1, 0, 2).reshape(-1, size))
        m = quantus.FaithfulnessCorrelation(nr_runs=fc.nr_runs, subset_size=size, perturb_baseline=black,
                                            abs=False, normalise=False, disable_warnings=True,
                                            return_aggregate=False)
        saved = np.random.choice
        np.random.choice = lambda *a, **k: next(rows_iter)
        try:
            a_signed = attr.sum(1, keepdim=True).cpu().numpy()
            return np.asarray(m(model=model, x_batch=x_np, y_batch=p_np, a_batch=a_signed, softmax=False, **qkw))
        finally:
            np.random.choice = saved

    def ours_fc() -> Any:
        return fc.compute(ctx, attr)

    bench("faithfulness_correlation", ours_fc, fc.nr_runs * b, q_fc,
          lambda r, q: float(np.nanmax(np.abs(np.asarray(r.per_sample) - q))), "quantus.FaithfulnessCorrelation")

    inf = Infidelity()

    def c_inf() -> np.ndarray:
        noise, _ = inf._draws(ctx)
        flat = noise.flatten(0, 1)

        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return flat, inputs - flat

        with torch.no_grad():
            out = captum_infidelity(model, perturb, x, attr, target=pred, n_perturb_samples=inf.n_perturb_samples,
                                    max_examples_per_batch=b * inf.n_perturb_samples, normalize=True)
        return out.cpu().numpy()

    bench("infidelity", lambda: inf.compute(ctx, attr), inf.n_perturb_samples * b, c_inf,
          lambda r, q: float(np.abs(np.asarray(r.per_sample) - q).max() / max(1e-12, np.abs(q).max())),
          "captum.metrics.infidelity (rel. diff)")
    return rows


def _print_row(r: dict[str, Any]) -> None:
    ref = r.get("ref_s")
    line = f"{r['metric']:<26}{r['ours_s']:>9.3f}"
    line += f"{ref:>9.3f}{ref / r['ours_s']:>9.1f}x{r['max_diff']:>11.2e}" if ref is not None else f"{'-':>9}{'-':>10}{'-':>11}"
    line += f"{r['floor_s']:>9.3f}{r['ours_s'] / r['floor_s']:>10.2f}x" if r["floor_s"] > 0 else f"{'-':>9}{'-':>11}"
    print(line + f"  {r['ref']}", flush=True)
