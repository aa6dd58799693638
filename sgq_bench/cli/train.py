"""``sgq-bench train``: train (or load from the cache) one model and print its test accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sgq_bench.cli._options import model_options, progress_option, threads_option
from sgq_bench.cli._spec import train_spec

if TYPE_CHECKING:
    from sgq_bench.specs import TrainSpec


@click.command(short_help="train (or load) one model, print its test accuracy")
@model_options()
@click.option("--force", is_flag=True, help="retrain even if a checkpoint exists")
@threads_option()
@progress_option
def train(force: bool, progress: bool, data_root: str | None, device: str, checkpoint_dir: Path | None,
          threads: int | None, **picked: object) -> None:
    """Train (or load from cache) one model and print its test accuracy."""
    import torch

    from sgq_bench._batching import keep_freed_memory
    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.specs import ExecContext
    from sgq_bench.train import accuracy, load_or_train, resolve_device

    spec = train_spec(**picked)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    keep_freed_memory()  # CPU passes reuse freed pages instead of faulting in new ones (2x faster)
    result = load_or_train(spec, ExecContext(device=dev, data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress), force=force)
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    test = load_split(dataset, False, data_root)
    acc = accuracy(result.model, dataset, test, dev)
    how = "loaded checkpoint" if result.loaded else f"trained in {result.meta['train_seconds']:.1f} s"
    click.echo(f"{spec.dataset}/{spec.model}/{spec.method.label()} seed {spec.seed}: test accuracy {acc:.4f} "
               f"({len(test)} images; {how})")
    click.echo(f"checkpoint: {result.path}")
    history = [h for h in result.meta.get("history", []) if "test_accuracy" in h]
    if history:  # accuracy against training length, from the same run (recorded after every epoch)
        click.echo("epoch  test accuracy  train loss  minutes  (precision " + str(result.meta.get("precision")) + ")")
        for h in history:
            click.echo(f"{h['epoch']:>5}  {h['test_accuracy']:>13.4f}  {h['train_loss']:>10.4f}  {h['seconds'] / 60:>7.1f}")


def spec_from_argv(argv: list[str]) -> TrainSpec:
    """The TrainSpec of ``sgq-bench train ARGV`` (for scripts and tests that pick a model by its flags)."""
    with train.make_context("train", list(argv)) as ctx:
        return train_spec(**ctx.params)
