"""The shared training loop and the content-keyed checkpoint cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sgq_bench.config.methods import get_method
from sgq_bench.config.suite import Recipe
from sgq_bench.data import load_dataset, load_split
from sgq_bench.errors import TrainingDiverged
from sgq_bench.specs import ExecContext, TrainSpec
from sgq_bench.train import accuracy, checkpoint_path, load_or_train

RECIPE = Recipe(optimizer="adam", lr=3e-3, epochs=2, batch_size=32)


def _spec(method="baseline", **kw):
    return TrainSpec("synthetic", "test_cnn", get_method(method).resolved(), kw.pop("recipe", RECIPE),
                     dataset_params={"train_n": 1024, "test_n": 256}, **kw)


@pytest.mark.parametrize("method", ["baseline", "pact", "sgt", "sgt_pact"])
def test_every_reference_method_learns_synthetic_above_90_percent(method, tmp_path):
    spec = _spec(method)
    result = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    ds = load_dataset("synthetic", spec.dataset_params)
    assert accuracy(result.model, ds, load_split(ds, False), torch.device("cpu")) > 0.9


def test_training_is_reproducible_and_checkpoint_is_reloaded(tmp_path):
    spec = replace(_spec("sgt_pact"), recipe=replace(RECIPE, epochs=1, train_size=256))
    a = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "a", progress=False))
    b = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "b", progress=False))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    again = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "a", progress=False))
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
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    assert not list(tmp_path.glob("*.pt"))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method,stop_at", [("sgt_pact", 5), ("baseline", 32), ("pact", 40)])
def test_training_stopped_by_sigterm_resumes_bit_identical(method, stop_at, tmp_path):
    """SIGTERM mid-epoch (step 5), at an epoch boundary (32 steps per epoch) and in epoch 2: the state is
    saved, a second call resumes from it, and the weights equal an uninterrupted run's exactly."""
    import os
    import signal

    spec = _spec(method, recipe=replace(RECIPE, epochs=2, train_size=1024))
    whole = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "whole", progress=False))

    def kill(step, total):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="state saved"):
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "cut", progress=False), on_step=kill)
    partial = list((tmp_path / "cut").glob("*.partial.pt"))
    assert len(partial) == 1 and not [p for p in (tmp_path / "cut").glob("*.pt") if p not in partial]
    resumed = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "cut", progress=False))
    assert resumed.meta["resumed_at_step"] == stop_at
    for (k, a), b in zip(_state(whole.model).items(), _state(resumed.model).values()):
        assert torch.equal(a, b), k
    assert not list((tmp_path / "cut").glob("*.partial.pt")), "partial state is removed once the final file exists"
    assert [h["epoch"] for h in resumed.meta["history"]] == [1, 2]
    assert all(0 <= h["test_accuracy"] <= 1 for h in resumed.meta["history"])


def test_training_stops_when_its_stop_file_appears_and_resumes_from_there(tmp_path):
    """How a Ray run stops its workers' trainings (RayExecutor.cancel): no signal, a file."""
    spec = _spec("baseline", recipe=replace(RECIPE, epochs=1, train_size=512))
    stop = tmp_path / "stop-now"

    def request(step, total):
        if step == 3:
            stop.touch()

    with pytest.raises(KeyboardInterrupt, match="stopped at step 3/.*state saved"):
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "ckpt", progress=False, stop_file=stop), on_step=request)
    stop.unlink()
    resumed = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "ckpt", progress=False, stop_file=stop))
    assert resumed.meta["resumed_at_step"] == 3 and not resumed.loaded


def test_damaged_checkpoint_is_refused_with_one_line_naming_it(tmp_path):
    from sgq_bench.errors import CheckpointError

    spec = replace(_spec("baseline"), recipe=replace(RECIPE, epochs=1, train_size=256))
    res = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    data = bytearray(res.path.read_bytes())
    blob = torch.load(res.path, weights_only=True)
    w = blob["payload"]["state_dict"]["conv1.weight"] if "conv1.weight" in blob["payload"]["state_dict"] else \
        next(iter(blob["payload"]["state_dict"].values()))
    needle = w.flatten()[:4].numpy().tobytes()
    at = bytes(data).index(needle)
    data[at:at + 8] = b"\x00\x00\x80\x7f" * 2  # two weights become inf
    res.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{res.path.name}.*failed its checksum"):
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    res.path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match=f"{res.path.name} is unreadable") as info:
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_bf16_channels_last_recipe_trains_and_is_keyed_apart(tmp_path):
    from sgq_bench.train import bf16_supported, resolve_precision

    spec = replace(_spec("sgt_pact"), recipe=replace(RECIPE, epochs=1, train_size=256, precision="bf16",
                                                     channels_last=True))
    res = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    assert res.meta["precision"] == "bf16" and res.meta["channels_last"] is True
    assert spec.key() != replace(spec, recipe=replace(spec.recipe, precision="fp32")).key()
    auto = resolve_precision(replace(RECIPE, precision="auto"), torch.device("cpu"))
    assert auto.precision == ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")


def test_quantizer_leaving_no_trainable_parameters_is_named(tmp_path):
    from sgq_bench import Quantizer, register
    from sgq_bench.config.methods import Method
    from sgq_bench.errors import PluginError

    class Frozen(Quantizer):
        name = "frozen_test"

        def prepare(self, model):
            return model.requires_grad_(False)

    from sgq_bench import _registry

    register("quantizers", obj=Frozen, replace=True)
    try:
        spec = replace(_spec("baseline"), method=Method("frozen_m", "frozen_test", "cross_entropy"))
        with pytest.raises(PluginError, match="quantizer 'frozen_test' left the model with no trainable parameters"):
            load_or_train(spec, ExecContext(checkpoint_dir=tmp_path, progress=False))
    finally:
        _registry.quantizers.unregister("frozen_test")


def _has_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("cc", "gcc", "g++", "clang"))


@pytest.mark.skipif(not _has_compiler(), reason="torch.compile (inductor) on CPU needs a C++ compiler")
def test_a_compiled_training_is_keyed_apart_and_resumes_bit_identical(tmp_path):
    """recipe.compile = true: another checkpoint key (eager keys unchanged), a row field saying so, and a
    SIGTERM mid-epoch then a resume ends with exactly the weights of an uninterrupted compiled run."""
    import os
    import signal

    eager = _spec("pact", recipe=replace(RECIPE, epochs=1, train_size=512))
    spec = replace(eager, recipe=replace(eager.recipe, compile=True))
    assert spec.key() != eager.key() and "compile" not in eager.key_material()["recipe"]
    whole = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "whole", progress=False))
    assert whole.meta["compiled"] is True

    def kill(step, total):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="state saved"):
        load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "cut", progress=False), on_step=kill)
    resumed = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "cut", progress=False))
    assert resumed.meta["resumed_at_step"] == 6 and resumed.meta["compiled"] is True
    for (k, a), b in zip(_state(whole.model).items(), _state(resumed.model).values()):
        assert torch.equal(a, b), k


def test_recipe_compile_must_be_a_bool():
    from sgq_bench.errors import UsageError

    with pytest.raises(UsageError, match=r"recipe.compile = 'yes' is invalid; expected true or false"):
        Recipe(compile="yes").validate("suite.toml")


def test_a_second_process_asking_for_a_model_in_training_waits_then_loads_it(tmp_path):
    """Two trainers of one spec into one checkpoint dir (a run and a standalone train) would overwrite
    each other's partial state: the second waits on ``<checkpoint>.lock``, then loads the finished model."""
    import shutil
    import threading
    import time

    from sgq_bench._lock import training_lock
    from sgq_bench.train import locate_checkpoint

    spec = replace(_spec(), recipe=replace(RECIPE, epochs=1, train_size=256))
    ctx = ExecContext(checkpoint_dir=tmp_path / "shared", progress=False)
    path = locate_checkpoint(spec, checkpoint_dir=ctx.checkpoint_dir).path
    out = {}
    with training_lock(path, spec.label):  # "the other process", mid-training
        waiter = threading.Thread(target=lambda: out.update(res=load_or_train(spec, ctx)))
        waiter.start()
        time.sleep(1.5)
        assert waiter.is_alive(), "the second trainer did not wait for the lock"
        assert not path.exists() and not list(path.parent.glob("*.partial.pt"))
        done = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path / "other", progress=False))
        shutil.copy(done.path, path)  # the other process finishes and saves
    waiter.join(60)
    assert out["res"].loaded, "the waiter trained again instead of loading the finished model"
    assert not list(path.parent.glob("*.lock")), "a released training lock leaves no file behind"
    for va, vb in zip(done.model.state_dict().values(), out["res"].model.state_dict().values()):
        assert torch.equal(va, vb)


def test_a_training_lock_held_past_the_timeout_is_one_line_naming_the_holder(tmp_path):
    from sgq_bench._lock import training_lock
    from sgq_bench.errors import UsageError

    ckpt = tmp_path / "m.pt"
    with training_lock(ckpt, "synthetic/test_cnn/baseline/s0"):
        with pytest.raises(UsageError, match=r"synthetic/test_cnn/baseline/s0 is being trained by another process \(pid \d+"):
            with training_lock(ckpt, "synthetic/test_cnn/baseline/s0", timeout_s=0.2):
                pass
