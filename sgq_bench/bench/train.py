"""Training benchmark: per-step cost of every method relative to ``baseline`` on the same batches,
and the harness loop against a bare PyTorch loop. Printed as ratios (absolute times on a shared CPU
mean little); rounds are interleaved so drift in machine load hits every contender alike."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from sgq_bench._base import TrainContext
from sgq_bench.config.methods import builtin_methods
from sgq_bench.data import batches, load_dataset, load_split, subset
from sgq_bench.specs import TrainSpec
from sgq_bench.train import build_model, make_optimizer, train_model


def _time_steps(spec: TrainSpec, dataset, xs, device, steps: int) -> float:
    model, quantizer, objective = build_model(spec, dataset)
    model.to(device).train()
    opt = make_optimizer(spec.recipe, quantizer.param_groups(model, spec.recipe.weight_decay))
    ctx = TrainContext(generator=torch.Generator(device=device).manual_seed(0))
    for x, y in xs[:2]:  # warm-up
        out = objective.compute(model, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for x, y in xs[2 : 2 + steps]:
        out = objective.compute(model, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def _bare_loop(spec: TrainSpec, dataset, split, device) -> float:
    """What a user would write by hand: shuffle, normalise, forward, CE, backward, step."""
    model, quantizer, _ = build_model(spec, dataset)
    model.to(device).train()
    opt = make_optimizer(spec.recipe, quantizer.param_groups(model, spec.recipe.weight_decay))
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
    t0 = time.perf_counter()
    perm = torch.randperm(len(split), generator=g)
    bs = spec.recipe.batch_size
    for start in range(0, len(split) - bs + 1, bs):
        idx = perm[start : start + bs]
        x = (split.images[idx].to(device).float() / 255 - mean) / std
        loss = F.cross_entropy(model(x), split.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_train_bench(spec: TrainSpec, data_root=None, device=torch.device("cpu"), steps: int = 20,
                    rounds: int = 3) -> dict[str, float]:
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    train = load_split(dataset, True, data_root)
    bs = spec.recipe.batch_size
    g = torch.Generator().manual_seed(0)
    xs = list(batches(dataset, subset(train, min(len(train), bs * (steps + 2)), 0), bs, device, shuffle=True, generator=g))
    methods = {name: m.with_params({}) for name, m in builtin_methods().items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        for name, m in methods.items():
            times[name].append(_time_steps(replace(spec, method=m), dataset, xs, device, steps))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1] * 1e3:.1f} ms" for n, t in times.items()))
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\nper-step time, {spec.dataset}/{spec.model}, batch {bs}, {steps} steps x {rounds} rounds "
          f"(median), threads {torch.get_num_threads()}:")
    ratios = {}
    for n, t in med.items():
        ref = "pact" if n == "sgt_pact" else "baseline"
        ratios[f"{n}/{ref}"] = t / med[ref]
        print(f"  {n:<10} {t * 1e3:8.2f} ms/step   {n}/{ref} = {t / med[ref]:.2f}x")
    # Harness loop vs bare loop: the same baseline model, same number of images, alternated.
    base = replace(spec, method=methods["baseline"])
    loop_split = subset(train, min(len(train), bs * max(steps * 3, 60)), 1)
    harness, bare = [], []
    for _ in range(rounds):
        model, quantizer, objective = build_model(base, dataset)
        one_epoch = replace(base.recipe, epochs=1)
        t0 = time.perf_counter()
        train_model(model, quantizer, objective, dataset, loop_split, one_epoch, 0, device, progress=True,
                    desc="harness loop")
        harness.append(time.perf_counter() - t0)
        bare.append(_bare_loop(base, dataset, loop_split, device))
    ratios["harness/bare"] = statistics.median(harness) / statistics.median(bare)
    print(f"  harness loop {statistics.median(harness):.2f} s vs bare loop {statistics.median(bare):.2f} s "
          f"on {len(loop_split)} images: harness/bare = {ratios['harness/bare']:.3f}x")
    return ratios
