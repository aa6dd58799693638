"""Implementations of the CLI subcommands (kept apart from argument parsing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sgq_bench import _registry
from sgq_bench._registry import describe
from sgq_bench.cli import command, parse_assignments, parse_bits
from sgq_bench.config import load_suite, override_recipe
from sgq_bench.errors import UsageError, did_you_mean
from sgq_bench.methods import builtin_methods
from sgq_bench.train import TrainSpec, accuracy, load_dataset, load_or_train, load_split, resolve_device


@command("list")
def cmd_list(args: argparse.Namespace) -> int:
    kinds = [*_registry.KINDS, "methods"]
    if args.kind is not None and args.kind not in kinds:
        raise UsageError(f"unknown kind {args.kind!r}.{did_you_mean(args.kind, kinds)}")
    for kind in [args.kind] if args.kind else kinds:
        print(f"{kind}:")
        if kind == "methods":
            for name, m in builtin_methods().items():
                print(f"  {name:<24} {m.quantizer} + {m.objective}: {m.description}")
            continue
        rows = _registry.registry(kind).items()
        if not rows:
            print("  (none registered)")
        for name, obj, entry in rows:
            text = f"BROKEN: {entry.error}" if obj is None else describe(obj)
            print(f"  {name:<24} {text}  [{entry.distribution}{' ' + entry.version if entry.version else ''}]")
    return 0


def spec_from_args(args: argparse.Namespace) -> TrainSpec:
    """A TrainSpec from train-style CLI flags, validated (bad values are usage errors)."""
    suite = load_suite(args.suite)
    plan = suite.dataset(args.dataset) if args.dataset in [d.name for d in suite.datasets] else None
    if plan is None:
        _registry.datasets.get(args.dataset)  # unknown dataset -> suggestions
        raise UsageError(f"suite {suite.name!r} has no recipe for dataset {args.dataset!r}; pass --suite with one")
    model = args.model or plan.model
    _registry.models.get(model)
    overrides = {**parse_bits(args.bits), **parse_assignments(args.param, "--param")}
    method = suite.method(args.method).with_params(overrides).resolved()
    recipe = override_recipe(plan.recipe, f"{suite.path}: datasets.{args.dataset}", epochs=args.epochs,
                             train_size=args.train_size)
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed} must be >= 0")
    return TrainSpec(args.dataset, model, method, recipe, args.seed, plan.dataset_params)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    device = resolve_device(args.device)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    result = load_or_train(spec, data_root=args.data_root, device=device, checkpoint_dir=ckpt_dir, force=args.force)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    test = load_split(dataset, False, args.data_root)
    acc = accuracy(result.model, dataset, test, device)
    how = "loaded checkpoint" if result.loaded else f"trained in {result.meta['train_seconds']:.1f} s"
    print(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}: test accuracy {acc:.4f} "
          f"({len(test)} images; {how})")
    print(f"checkpoint: {result.path}")
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from sgq_bench.bench_train import run_train_bench

    spec = spec_from_args(args)
    run_train_bench(spec, data_root=args.data_root, device=resolve_device(args.device),
                    steps=args.steps, rounds=args.rounds)
    return 0
