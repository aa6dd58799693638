"""CLI: ``list``, ``train`` and ``bench train``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sgq_bench import _registry
from sgq_bench._registry import describe
from sgq_bench.cli import parse_assignments, parse_bits
from sgq_bench.config.suite import load_suite, override_recipe
from sgq_bench.config.methods import builtin_methods
from sgq_bench.data import load_dataset, load_split
from sgq_bench.errors import UsageError, did_you_mean
from sgq_bench.train import TrainSpec, accuracy, load_or_train, resolve_device


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
        rows = _registry.registry(kind).items(warn=False)  # the BROKEN row is the report
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


def cmd_bench_train(args: argparse.Namespace) -> int:
    from sgq_bench.bench.train import run_train_bench

    spec = spec_from_args(args)
    run_train_bench(spec, data_root=args.data_root, device=resolve_device(args.device),
                    steps=args.steps, rounds=args.rounds)
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags that pick one trained model (shared by train, evaluate and the benches)."""
    p.add_argument("--dataset", default="mnist", help="registered dataset (see `sgq-bench list datasets`)")
    p.add_argument("--model", default=None, help="registered model; default: the suite's model for the dataset")
    p.add_argument("--method", default="baseline", help="baseline, pact, sgt, sgt_pact or a suite-defined one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suite", default="quick", help="suite whose recipe is used (name or path)")
    p.add_argument("--bits", default=None, help="quantizer bits W/A, e.g. 4/4 or 4/2")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (e.g. k=0.3)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--data-root", default=None, help="folder holding the data (else $SGQ_BENCH_DATA, cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--checkpoint-dir", default=None, help="default: the user cache dir")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="what is registered, with one-line descriptions")
    p.add_argument("kind", nargs="?", default=None,
                   help="quantizers, objectives, models, datasets, explainers, metrics or methods")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train (or load from cache) one model and print its test accuracy")
    add_train_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")
    p.set_defaults(func=cmd_train)

    p = bench.add_parser("train", help="per-step cost of each method vs baseline; harness vs bare loop")
    add_train_args(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=cmd_bench_train)
