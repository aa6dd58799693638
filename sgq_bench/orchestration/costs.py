"""How the evaluation of a cell is priced: the passes each explainer and metric declares, on top of the
planner's measured costs (``sgq_bench.specs.CostModel``).

Every plugin declares its own cost, built-in and third-party alike: ``Explainer.gradient_passes()``
(input-gradient passes per image), ``Metric.forward_passes(n_images, n_pixels, n_test)`` (image forward
passes on the evaluation images) and ``Metric.overhead_s(costs)`` (anything else, such as probe
processes). Where a plugin declares none, one pass per image is assumed and the plan says so.
"""

from __future__ import annotations

import inspect
from typing import Any

from sgq_bench import _registry
from sgq_bench.specs import Cell, CostModel

N_SAMPLE_IMAGES = 6  # the saliency-grid images each cell also explains (graph.N_SALIENCY_IMAGES)


def explainer_passes(explainer: Any) -> tuple[float, str | None]:
    """Input-gradient passes per image of an explainer (and a note when it is a guess).

    A plain number attribute (the older form of the declaration) is accepted too. Undeclared: 0 for a
    model-independent explainer, else 1 and a note.
    """
    declared = getattr(explainer, "gradient_passes", None)
    if callable(declared):
        declared = declared()
    if declared is not None:
        return float(declared), None
    if getattr(explainer, "model_independent", False):
        return 0.0, None
    return 1.0, f"explainer {explainer.name!r} declares no gradient_passes; 1 per image assumed"


def metric_passes(metric: Any, n_images: int, n_pixels: int, n_test: int) -> tuple[float, str | None]:
    """Image forward passes of a metric on ``n_images`` evaluation images (and a note for a guess).

    The older two-argument ``forward_passes(n_images, n_pixels)`` is accepted too; None: 1 per image.
    """
    declared = getattr(metric, "forward_passes", None)
    if callable(declared):
        declared = declared(*_passes_args(declared, n_images, n_pixels, n_test))
    else:
        declared = None
    if declared is not None:
        return float(declared), None
    return float(n_images), f"metric {metric.name!r} declares no forward_passes; 1 per image assumed"


def _passes_args(fn: Any, n_images: int, n_pixels: int, n_test: int) -> tuple[int, ...]:
    """The arguments ``fn`` takes: all three, or (n_images, n_pixels) for a two-argument declaration."""
    try:
        inspect.signature(fn).bind(n_images, n_pixels, n_test)
    except TypeError:
        return n_images, n_pixels
    except ValueError:  # no signature to inspect (a builtin): pass all three
        pass
    return n_images, n_pixels, n_test


def evaluation_seconds(cell: Cell, costs: CostModel) -> tuple[float, list[str]]:
    """Estimated seconds to score ``cell`` (attributions, then every metric's passes), and the caveats."""
    from sgq_bench.data import load_dataset

    ds = load_dataset(cell.spec.dataset, cell.spec.dataset_params)
    n_pixels = ds.image_size * ds.image_size
    _, n_test = costs.images(cell.spec)
    n_eval = min(cell.eval_size, n_test)
    notes: list[str] = []
    seconds = 0.0
    for ename in cell.explainers:
        passes, note = explainer_passes(_registry.explainers.get(ename)())
        seconds += costs.gradient_s(cell.spec, (n_eval + N_SAMPLE_IMAGES) * passes)
        notes += [note] if note else []
    for mname in cell.metrics:
        metric = _registry.metrics.get(mname)(**dict(cell.metric_params.get(mname, {})))
        n_maps = len(cell.explainers) if metric.needs_attributions else 1
        passes, note = metric_passes(metric, n_eval, n_pixels, n_test)
        seconds += costs.forward_s(cell.spec, n_maps * passes) + metric.overhead_s(costs)
        notes += [note] if note else []
    for note in notes:
        costs.note(note)
    return seconds, notes
