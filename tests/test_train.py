"""The shared training loop and the content-keyed checkpoint cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sgq_bench.config import Recipe
from sgq_bench.errors import TrainingDiverged
from sgq_bench.methods import get_method
from sgq_bench.train import TrainSpec, accuracy, checkpoint_path, load_dataset, load_or_train, load_split

RECIPE = Recipe(optimizer="adam", lr=3e-3, epochs=2, batch_size=32)


def _spec(method="baseline", **kw):
    return TrainSpec("synthetic", "test_cnn", get_method(method).resolved(), kw.pop("recipe", RECIPE),
                     dataset_params={"train_n": 1024, "test_n": 256}, **kw)


@pytest.mark.parametrize("method", ["baseline", "pact", "sgt", "sgt_pact"])
def test_every_reference_method_learns_synthetic_above_90_percent(method, tmp_path):
    spec = _spec(method)
    result = load_or_train(spec, checkpoint_dir=tmp_path, progress=False)
    ds = load_dataset("synthetic", spec.dataset_params)
    assert accuracy(result.model, ds, load_split(ds, False), torch.device("cpu")) > 0.9


def test_training_is_reproducible_and_checkpoint_is_reloaded(tmp_path):
    spec = replace(_spec("sgt_pact"), recipe=replace(RECIPE, epochs=1, train_size=256))
    a = load_or_train(spec, checkpoint_dir=tmp_path / "a", progress=False)
    b = load_or_train(spec, checkpoint_dir=tmp_path / "b", progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    again = load_or_train(spec, checkpoint_dir=tmp_path / "a", progress=False)
    assert again.loaded and not a.loaded and again.path == a.path
    for va, vc in zip(a.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(va, vc)
    # the checkpoint loads with weights_only=True (no pickled code)
    torch.load(a.path, weights_only=True)
    assert not list(a.path.parent.glob("*.tmp"))


def test_checkpoint_key_changes_with_everything_that_determines_weights(tmp_path):
    base = _spec("pact")
    variants = [
        replace(base, seed=1),
        replace(base, recipe=replace(RECIPE, lr=1e-3)),
        replace(base, recipe=replace(RECIPE, train_size=500)),
        replace(base, method=base.method.with_params({"w_bits": 2})),
        replace(base, method=get_method("sgt_pact").resolved()),
        replace(base, dataset_params={"train_n": 512, "test_n": 256}),
        replace(base, model="mnist_cnn"),
    ]
    keys = {base.key()} | {v.key() for v in variants}
    assert len(keys) == len(variants) + 1
    # the same content under another method name is the same model
    renamed = replace(base, method=replace(base.method, name="my_pact"))
    assert renamed.key() == base.key()
    assert checkpoint_path(base, tmp_path).name.endswith(base.key() + ".pt")


def test_non_finite_loss_is_a_clear_error(tmp_path):
    spec = _spec(recipe=Recipe(optimizer="sgd", lr=1e12, momentum=0.0, epochs=1, batch_size=32))
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf).*epoch 1, step \d+/\d+"):
        load_or_train(spec, checkpoint_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.pt"))
