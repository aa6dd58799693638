"""Eager vs torch.compile training steps, cifar10_long recipe (resnet20), each method; 1 thread."""
import dataclasses
import json
import statistics
import sys
import time

import torch

from sgq_bench.cli.train import spec_from_argv
from sgq_bench.data import load_dataset, load_split, subset
from sgq_bench.train import build_model, resolve_precision, train_model

torch.set_num_threads(1)
STEPS = 14
out = {}
for m in sys.argv[1:]:
    spec = spec_from_argv(["--dataset", "cifar10", "--suite", "cifar10_long", "--method", m])
    ds = load_dataset(spec.dataset, spec.dataset_params)
    train = subset(load_split(ds, True), 128 * STEPS, seed=0)
    for comp in (False, True):
        recipe = dataclasses.replace(resolve_precision(spec.recipe, torch.device("cpu")), epochs=1, compile=comp,
                                     train_size=None, warmup_epochs=0.0)
        model, q, obj = build_model(spec, ds)
        stamps = [time.perf_counter()]

        def stamp(step, total, stamps=stamps):
            stamps.append(time.perf_counter())

        train_model(model, q, obj, ds, train, recipe, 0, torch.device("cpu"), progress=False, on_step=stamp)
        d = [b - a for a, b in zip(stamps, stamps[1:])]
        out[f"{m}:{'compiled' if comp else 'eager'}"] = {"first_s": d[0], "step_s": statistics.median(d[4:]),
                                                          "precision": recipe.precision, "steps": len(d)}
        print(m, comp, out[f"{m}:{'compiled' if comp else 'eager'}"], flush=True)
    e, c = out[f"{m}:eager"], out[f"{m}:compiled"]
    steps = 30 * (50000 // 128)
    out[m] = {"step_ratio_eager_over_compiled": e["step_s"] / c["step_s"], "compile_s": c["first_s"] - e["first_s"],
              "projected_30_epochs_h": {"eager": steps * e["step_s"] / 3600,
                                        "compiled": (steps * c["step_s"] + c["first_s"] - e["first_s"]) / 3600}}
    print(m, out[m], flush=True)
    json.dump(out, open("/work/scratch/compile_bench.json", "w"), indent=1)
