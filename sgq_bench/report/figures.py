"""Report figures (matplotlib, Agg backend, PNG) in ``DIR/figures/``, drawn from the results DataFrame.

- ``saliency_<dataset>_<explainer>.png``: the same test images for every method (rows) and image (cols)
- ``curves_<dataset>_<explainer>.png``: deletion / insertion / MoRF / ROAD curves, one line per method
- ``roar_<dataset>.png``: ROAR and KAR accuracy vs fraction, real explainers solid, ``random`` dashed, 95%
  across-seed bands
- ``pareto_<dataset>.png``: accuracy vs packed model size with 95% across-seed intervals on both axes,
  colour = a faithfulness score
(each plot also as ``.svg``, vector, for papers; the saliency grids are pictures and stay PNG)
- ``training_<dataset>.png``: test accuracy after each epoch, mean over seeds with the seeds' range

A run directory holding more than one protocol (suite version, evaluation size, ...) gets one set of
curve, ROAR and Pareto figures per protocol, the protocol appended to the file name. File names are
built from dataset and explainer names; :func:`figure_path` keeps every one inside ``figures/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sgq_bench.errors import UsageError  # noqa: E402
from sgq_bench.report.summary import (  # noqa: E402
    NO_EXPLAINER,
    PROTOCOL_KEYS,
    REFERENCE,
    mean_curves,
    method_order,
    protocols,
)

CURVE_METRICS = ("deletion_auc", "insertion_auc", "morf_accuracy", "road_morf", "road_lerf")
CURVE_LABELS = {
    "deletion_auc": ("Deletion (RISE)", "fraction of pixels removed", "p(predicted class)"),
    "insertion_auc": ("Insertion (RISE)", "fraction of pixels inserted", "p(predicted class)"),
    "morf_accuracy": ("MoRF (no retraining)", "fraction of top pixels removed", "accuracy"),
    "road_morf": ("ROAD MoRF", "fraction imputed (most relevant first)", "accuracy"),
    "road_lerf": ("ROAD LeRF", "fraction imputed (least relevant first)", "accuracy"),
}
FAITHFULNESS_PREFERENCE = ("insertion_auc", "faithfulness_correlation", "road_morf", "deletion_auc")
DPI = 110


def figure_path(fig_dir: Path, *parts: Any) -> Path:
    """``fig_dir/<parts joined by _>.png``, refused (one line) unless it lies directly in ``fig_dir``.

    Why: parts are dataset and explainer names, which plugins choose; a name holding ``/`` or ``..``
    must not write a file anywhere else.
    """
    name = "_".join(str(p) for p in parts) + ".png"
    root = Path(fig_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root or "\x00" in name:
        raise UsageError(f"figure name {name!r} (built from dataset/explainer names) would leave {fig_dir}; "
                         "rename the plugin")
    return path


def _method_order(methods: list[str], reference: str = REFERENCE) -> list[str]:
    return method_order(methods, reference)


def _colors(methods: list[str], reference: str = REFERENCE) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(_method_order(methods, reference))}


def _save(fig: plt.Figure, path: Path, *, vector: bool = True) -> Path:
    """The PNG (what reports link) and, for plots, an SVG beside it (papers want vector figures; the
    saliency grids are pictures already and stay PNG only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    if vector:
        fig.savefig(path.with_suffix(".svg"), bbox_inches="tight")
    plt.close(fig)
    return path


def saliency_grids(out: Path, fig_dir: Path) -> list[Path]:
    """One grid per (dataset, explainer) from ``DIR/attributions/*.pt`` (lowest seed per method)."""
    import torch

    blobs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((out / "attributions").glob("*.pt")):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a half-written or foreign file must not break the report
            continue
        key = (blob["dataset"], blob["method"])
        if key not in blobs or blob["seed"] < blobs[key]["seed"]:
            blobs[key] = blob
    paths = []
    for dataset in sorted({d for d, _ in blobs}):
        methods = _method_order([m for d, m in blobs if d == dataset])
        explainers = sorted({e for m in methods for e in blobs[(dataset, m)]["attributions"]})
        first = blobs[(dataset, methods[0])]
        images = first["images"]
        n = images.shape[0]
        for ex in explainers:
            rows = [m for m in methods if ex in blobs[(dataset, m)]["attributions"]]
            fig, axes = plt.subplots(len(rows) + 1, n, figsize=(1.5 * n + 1.2, 1.5 * (len(rows) + 1) + 0.5),
                                     squeeze=False)
            for j in range(n):
                img = images[j].numpy().transpose(1, 2, 0)
                axes[0, j].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
                axes[0, j].set_title(f"label {int(first['labels'][j])}", fontsize=9)
            axes[0, 0].set_ylabel("input", fontsize=9, rotation=0, ha="right", va="center")
            for i, m in enumerate(rows, start=1):
                blob = blobs[(dataset, m)]
                maps = blob["attributions"][ex].abs().sum(1).numpy()  # |a| summed over channels
                for j in range(n):
                    a = maps[j]
                    hi = np.percentile(a, 99) or a.max() or 1.0
                    axes[i, j].imshow(np.clip(a / hi, 0, 1), cmap="inferno", vmin=0, vmax=1)
                    axes[i, j].set_title(f"pred {int(blob['pred'][j])}", fontsize=8)
                axes[i, 0].set_ylabel(blob["method_label"], fontsize=9, rotation=0, ha="right", va="center")
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
            fig.suptitle(f"{dataset}: {ex} saliency (|attribution| summed over channels, "
                         "scaled to each map's 99th percentile)", fontsize=10)
            fig.tight_layout()
            paths.append(_save(fig, figure_path(fig_dir, "saliency", dataset, ex), vector=False))
    return paths


def curve_figures(results: pd.DataFrame, fig_dir: Path, tag: str = "", reference: str = REFERENCE) -> list[Path]:
    """Per (dataset, model, explainer): one panel per curve metric present, one line per method."""
    paths = []
    curves = mean_curves(results, CURVE_METRICS)
    for (dataset, model, ex), sub in curves.groupby(["dataset", "model", "explainer"], sort=True):
        present = [m for m in CURVE_METRICS if m in set(sub["metric"])]
        methods = _method_order(list(sub["method"]), reference)
        colors = _colors(methods, reference)
        ncols = min(3, len(present))
        nrows = -(-len(present) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
        for ax in axes.flat[len(present):]:
            ax.set_visible(False)
        for ax, metric in zip(axes.flat, present):
            title, xl, yl = CURVE_LABELS[metric]
            for meth in methods:
                for c in sub[(sub["metric"] == metric) & (sub["method"] == meth)].itertuples(index=False):
                    ax.plot(c.x, c.y, color=colors[meth], label=c.method_label, lw=1.6)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xl, fontsize=9)
            ax.set_ylabel(yl, fontsize=9)
            ax.grid(alpha=0.3)
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.suptitle(f"{dataset} / {model}: {ex} attributions (mean over seeds)", fontsize=11)
        fig.tight_layout()
        fig.legend(handles, names, fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method")
        paths.append(_save(fig, figure_path(fig_dir, "curves", dataset, ex + tag)))
    return paths


def roar_figures(results: pd.DataFrame, fig_dir: Path, tag: str = "", reference: str = REFERENCE) -> list[Path]:
    """ROAR and KAR curves per dataset: colour = method, dashed = the ``random`` control ranking."""
    paths = []
    curves = mean_curves(results, ("roar", "kar"))
    for (dataset, model), sub in curves.groupby(["dataset", "model"], sort=True):
        colors = _colors(list(sub["method"]), reference)
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), squeeze=False)
        for ax, metric, xl in zip(axes[0], ("roar", "kar"),
                                  ("fraction of most relevant pixels removed", "fraction of most relevant pixels kept")):
            part = sub[sub["metric"] == metric].sort_values(["method", "explainer"])
            for c in part.itertuples(index=False):
                ax.plot(c.x, c.y, color=colors[c.method], ls="--" if c.explainer == "random" else "-",
                        marker="o", ms=3, lw=1.4, label=f"{c.method_label} / {c.explainer} (n={c.n})")
                if c.n >= 2:  # the 95% across-seed interval as a band
                    ax.fill_between(c.x, c.lo, c.hi, color=colors[c.method], alpha=0.12, lw=0)
            ax.set_title(f"{metric.upper()} (retrained)", fontsize=10)
            ax.set_xlabel(xl, fontsize=9)
            ax.set_ylabel("test accuracy after retraining", fontsize=9)
            ax.grid(alpha=0.3)
        handles, lab = axes[0, 0].get_legend_handles_labels()
        if not handles:
            handles, lab = axes[0, 1].get_legend_handles_labels()
        fig.legend(handles, lab, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(f"{dataset} / {model}: ROAR / KAR (dashed: random-ranking control; bands: 95% CI across "
                     "seeds)", fontsize=11)
        fig.tight_layout()
        paths.append(_save(fig, figure_path(fig_dir, "roar", dataset + tag)))
    return paths


def _means(summary: pd.DataFrame, metric: str, explainer: str = NO_EXPLAINER) -> dict[str, float]:
    """method -> mean of ``metric`` (no variant) for ``explainer``."""
    rows = summary[(summary["metric"] == metric) & (summary["explainer"] == explainer) & (summary["variant"] == "")]
    return dict(zip(rows["method"], rows["mean"].astype(float)))


def _halfwidths(summary: pd.DataFrame, metric: str) -> dict[str, tuple[float, float]]:
    """method -> (mean - ci_low, ci_high - mean) of a model-level ``metric`` across seeds (0 where n = 1)."""
    rows = summary[(summary["metric"] == metric) & (summary["explainer"] == NO_EXPLAINER) & (summary["variant"] == "")]
    out = {}
    for m, mean, lo, hi in zip(rows["method"], rows["mean"], rows["ci_low"], rows["ci_high"]):
        lo, hi = float(lo), float(hi)
        out[m] = ((mean - lo) if np.isfinite(lo) else 0.0, (hi - mean) if np.isfinite(hi) else 0.0)
    return out


def _intervals(ax: Any, rows: pd.DataFrame, methods: list[str], xs: np.ndarray, ys: np.ndarray) -> None:
    """95% across-seed intervals on both axes (size is the same for every seed: a zero-width bar)."""
    ya, xa = _halfwidths(rows, "accuracy"), _halfwidths(rows, "size_bytes")
    yerr = np.array([ya.get(m, (0.0, 0.0)) for m in methods]).T
    xerr = np.array([xa.get(m, (0.0, 0.0)) for m in methods]).T / 1024
    ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.35", elinewidth=1, capsize=3, zorder=2.5,
                label="95% CI across seeds")


def pareto_figures(summary: pd.DataFrame, fig_dir: Path, tag: str = "") -> list[Path]:
    """Accuracy vs packed size per dataset; colour = a faithfulness score of the first real explainer."""
    paths = []
    for (dataset, model), rows in summary.groupby(["dataset", "model"], sort=True):
        acc, size = _means(rows, "accuracy"), _means(rows, "size_bytes")
        labels = dict(zip(rows["method"], rows["method_label"]))
        pts = [(m, labels[m], size[m], acc[m]) for m in sorted(acc) if m in size
               and np.isfinite(acc[m]) and np.isfinite(size[m])]
        if not pts:
            continue
        real = rows[~rows["explainer"].isin([NO_EXPLAINER, "random"])]
        faith_metric, explainer = None, None
        for m in FAITHFULNESS_PREFERENCE:
            hits = real[real["metric"] == m]
            if len(hits):
                faith_metric, explainer = m, sorted(set(hits["explainer"]))[0]
                break
        faith = _means(rows, faith_metric, explainer) if faith_metric else {}
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        xs = np.array([p[2] for p in pts]) / 1024
        ys = np.array([p[3] for p in pts])
        cs = [faith.get(p[0], np.nan) for p in pts]
        _intervals(ax, rows, [p[0] for p in pts], xs, ys)
        if faith_metric and np.isfinite(cs).any():
            sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=90, edgecolor="k", zorder=3)
            cb = fig.colorbar(sc, ax=ax)
            cb.set_label(f"{faith_metric} ({explainer})", fontsize=9)
        else:
            ax.scatter(xs, ys, s=90, edgecolor="k", zorder=3)
        for (_, label, _, _), x, y in zip(pts, xs, ys):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        order = np.argsort(xs)
        front_x, front_y, best = [], [], -np.inf
        for i in order:
            if ys[i] > best:
                best = ys[i]
                front_x.append(xs[i])
                front_y.append(ys[i])
        ax.step(front_x, front_y, where="post", color="grey", ls=":", lw=1.2, zorder=2)
        ax.scatter(front_x, front_y, s=260, facecolors="none", edgecolors="tab:red", lw=1.5, zorder=4,
                   label="Pareto front (smaller and more accurate)")
        ax.set_xscale("log")
        lo, hi = xs.min() / 2, xs.max() * 2
        ticks = [c * 10.0**k for k in range(-2, 9) for c in (1, 2, 5) if lo <= c * 10.0**k <= hi]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(lo, hi)
        ax.set_xlabel("model size packed at declared bits (KiB, log scale)", fontsize=9)
        ax.set_ylabel("test accuracy", fontsize=9)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"{dataset} / {model}: accuracy vs size vs faithfulness", fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, figure_path(fig_dir, "pareto", dataset + tag)))
    return paths


def training_figures(summary: pd.DataFrame, fig_dir: Path, tag: str = "", reference: str = REFERENCE) -> list[Path]:
    """Accuracy against training length per (dataset, model), from ``epoch_accuracy`` summary rows."""
    paths = []
    rows = summary[(summary["metric"] == "epoch_accuracy") & summary["mean"].notna()]
    for (dataset, model), sub in rows.groupby(["dataset", "model"], sort=True):
        methods = _method_order(list(sub["method"]), reference)
        colors = _colors(methods, reference)
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        for meth in methods:
            m = sub[sub["method"] == meth].assign(epoch=lambda d: d["variant"].str.removeprefix("epoch=").astype(int))
            m = m.sort_values("epoch")
            n = int(m["n_seeds"].max())
            ax.plot(m["epoch"], m["mean"], color=colors[meth], lw=1.6, label=f"{m['method_label'].iloc[0]} (n={n})")
            if n >= 2:
                ax.fill_between(m["epoch"], m["ci_low"], m["ci_high"], color=colors[meth], alpha=0.15, lw=0)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("test accuracy (full test split)", fontsize=9)
        ax.set_title(f"{dataset} / {model}: accuracy against training length (mean, 95% CI over seeds)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        paths.append(_save(fig, figure_path(fig_dir, "training", dataset + tag)))
    return paths


def write_figures(out: Path, results: pd.DataFrame, summary: pd.DataFrame, *,
                  reference: str = REFERENCE) -> list[Path]:
    """Write every figure the results support into ``out/figures``; returns their paths."""
    fig_dir = Path(out) / "figures"
    paths = saliency_grids(Path(out), fig_dir)
    protos = protocols(results)
    for proto in protos:
        tag = "" if len(protos) == 1 else "_" + "-".join(str(v) for v in proto[:2] + proto[4:])
        mask = (results[list(PROTOCOL_KEYS)].astype(str) == [str(v) for v in proto]).all(axis=1)
        smask = (summary[list(PROTOCOL_KEYS)].astype(str) == [str(v) for v in proto]).all(axis=1)
        paths += curve_figures(results[mask], fig_dir, tag, reference)
        paths += roar_figures(results[mask], fig_dir, tag, reference)
        paths += pareto_figures(summary[smask], fig_dir, tag)
        paths += training_figures(summary[smask], fig_dir, tag, reference)
    return paths
