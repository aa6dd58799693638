"""Data-root resolution, real-data loaders, seeded subsets, augmentation."""

from __future__ import annotations

import pytest
import torch

from sgq_bench.data import CIFAR10, MNIST, Synthetic, batches, load_split, subset
from sgq_bench.errors import DataNotFoundError, UsageError


def _no_download(self, root):
    raise OSError("network is unreachable")


def test_missing_data_is_one_line_naming_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "download", _no_download)
    monkeypatch.setenv("SGQ_BENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as err:
        MNIST().resolve_root(None)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("$SGQ_BENCH_DATA", str(tmp_path / "env"), "user cache", "torchvision download",
                 "network is unreachable", "--data-root DIR"):
        assert part in msg


def test_explicit_root_without_data_is_an_error_naming_it_not_a_fall_through(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SGQ_BENCH_DATA", str(data_root))  # would succeed if the lookup fell through
    monkeypatch.setattr(MNIST, "download", _no_download)
    for explicit, state in ((tmp_path / "missing", "does not exist"), (tmp_path, "holds no mnist data")):
        with pytest.raises(DataNotFoundError) as err:
            MNIST().resolve_root(explicit)
        msg = str(err.value)
        assert "\n" not in msg and f"--data-root {explicit} {state}" in msg and "MNIST/raw" in msg, msg
        assert err.value.exit_code == 2


def test_explicit_root_wins_over_env(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SGQ_BENCH_DATA", str(tmp_path))  # empty: would fail
    assert MNIST().resolve_root(data_root) == data_root
    monkeypatch.setenv("SGQ_BENCH_DATA", str(data_root))
    assert MNIST().resolve_root(None) == data_root


def test_real_mnist_and_cifar10_load_with_known_sizes_and_labels(data_root):
    mnist = MNIST().load(MNIST().resolve_root(data_root), train=False)
    assert mnist.images.shape == (10000, 1, 28, 28) and mnist.images.dtype == torch.uint8
    assert mnist.labels[:5].tolist() == [7, 2, 1, 0, 4]
    cifar = CIFAR10()
    test = cifar.load(cifar.resolve_root(data_root), train=False)
    assert test.images.shape == (10000, 3, 32, 32)
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]
    assert test.images[0, :, 0, 0].tolist() == [158, 112, 49]


def test_subsets_are_seeded_and_sized():
    split = Synthetic(train_n=100).load(None, True)
    a, b, c = subset(split, 30, 1), subset(split, 30, 1), subset(split, 30, 2)
    assert len(a) == 30 and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert subset(split, None, 0) is split
    assert subset(split, 100, 0) is split  # exactly the whole split


def test_a_subset_larger_than_the_split_is_refused_not_clamped():
    ds = Synthetic(train_n=100)
    split = load_split(ds, True)
    with pytest.raises(UsageError) as err:
        subset(split, 101, 0)
    assert str(err.value) == "train_size 101 exceeds the 100 images of the synthetic training split"
    with pytest.raises(UsageError, match="^eval_size 513 exceeds the 512 images of the synthetic test split$"):
        subset(load_split(ds, False), 513, 0)
    with pytest.raises(UsageError, match="^calibration size 0 is invalid; expected an integer >= 1$"):
        subset(split, 0, 0, what="calibration size")


def test_cifar_augmentation_is_a_seeded_crop_and_flip():
    ds = CIFAR10()
    x = torch.randn(16, 3, 32, 32)
    a = ds.augment(x, torch.Generator().manual_seed(0))
    b = ds.augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # an unshifted, unflipped crop reproduces the image: with many samples some are identical
    same = [(a[i] == x[i]).all() or (a[i] == x[i].flip(2)).all() for i in range(16)]
    assert not all(same)


def test_batches_normalise_and_cover_the_split():
    ds = Synthetic(test_n=50)
    split = ds.load(None, False)
    seen = list(batches(ds, split, 16, torch.device("cpu")))
    assert sum(len(y) for _, y in seen) == 50
    x0 = seen[0][0]
    torch.testing.assert_close(x0, (split.images[:16].float() / 255 - 0.25) / 0.3)


def test_normalize_never_modifies_its_input():
    """ROAR's masked splits are float: normalising a view of one (the batch-size probe in ``accuracy``) once
    rewrote image 0 in place, so it was normalised twice when scored."""
    import torch

    from sgq_bench.data import load_dataset

    ds = load_dataset("synthetic", {})
    for images in (torch.rand(4, ds.in_channels, ds.image_size, ds.image_size) * 255,
                   torch.randint(0, 256, (4, ds.in_channels, ds.image_size, ds.image_size), dtype=torch.uint8)):
        before = images.clone()
        out = ds.normalize(images[:1])
        assert torch.equal(images, before) and out.dtype == torch.float32
