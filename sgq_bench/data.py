"""Datasets (MNIST, CIFAR-10, synthetic), data-root resolution and batched iteration.

Root resolution order: explicit ``--data-root``, then ``$SGQ_BENCH_DATA``, then the user cache dir,
then torchvision's download into the cache dir. When all fail, one line says where we looked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgq_bench import _registry
from sgq_bench._base import Dataset, Param, Split
from sgq_bench._io import stable_hash
from sgq_bench.errors import DataNotFoundError

ENV_VAR = "SGQ_BENCH_DATA"


def cache_dir() -> Path:
    """The user cache dir of sgq-bench ($SGQ_BENCH_CACHE, else $XDG_CACHE_HOME/sgq-bench)."""
    if os.environ.get("SGQ_BENCH_CACHE"):
        return Path(os.environ["SGQ_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sgq-bench"


def candidate_roots(data_root: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """(label, path) in lookup order; path None means 'not set'."""
    env = os.environ.get(ENV_VAR)
    return [
        ("--data-root", Path(data_root).expanduser() if data_root else None),
        (f"${ENV_VAR}", Path(env).expanduser() if env else None),
        ("user cache", cache_dir() / "data"),
    ]


class _FileDataset(Dataset):
    """A dataset found on disk under one of the candidate roots, or downloaded as a last resort."""

    def find(self, root: Path) -> Any:
        """Return a loader handle if the data is present under ``root``, else None."""
        raise NotImplementedError

    def download(self, root: Path) -> None:
        raise NotImplementedError

    def layout_hint(self) -> str:
        raise NotImplementedError

    def resolve_root(self, data_root: str | os.PathLike | None) -> Any:
        looked = []
        for label, path in candidate_roots(data_root):
            if path is None:
                looked.append(f"{label} (not set)")
                continue
            handle = self.find(path)
            if handle is not None:
                return handle
            looked.append(f"{label} {path} (not there)")
        target = cache_dir() / "data"
        try:
            target.mkdir(parents=True, exist_ok=True)
            self.download(target)
            handle = self.find(target)
            if handle is not None:
                return handle
            looked.append("torchvision download (gave no usable files)")
        except Exception as exc:  # network errors come in many types
            looked.append(f"torchvision download ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
        raise DataNotFoundError(
            f"{self.name} data not found; looked in: " + "; ".join(looked)
            + f". Provide it with --data-root DIR or {ENV_VAR}=DIR, where DIR holds {self.layout_hint()}"
        )


class MNIST(_FileDataset):
    """MNIST handwritten digits, 28x28 grey (torchvision raw IDX layout)."""

    name = "mnist"
    num_classes, in_channels, image_size = 10, 1, 28
    mean, std = (0.1307,), (0.3081,)

    def find(self, root: Path) -> Any:
        raw = root / "MNIST" / "raw"
        need = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        return root if all((raw / f).exists() for f in need) else None

    def download(self, root: Path) -> None:
        import torchvision

        torchvision.datasets.MNIST(str(root), train=True, download=True)
        torchvision.datasets.MNIST(str(root), train=False, download=True)

    def layout_hint(self) -> str:
        return "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def load(self, root: Any, train: bool) -> Split:
        import torchvision

        ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
        return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long())


class CIFAR10(_FileDataset):
    """CIFAR-10, 32x32 RGB; torchvision's cifar-10-batches-py or the portable cifar10/{train,test}.npz."""

    name = "cifar10"
    num_classes, in_channels, image_size = 10, 3, 32
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def find(self, root: Path) -> Any:
        if (root / "cifar-10-batches-py" / "test_batch").exists():
            return ("torchvision", root)
        if (root / "cifar10" / "train.npz").exists() and (root / "cifar10" / "test.npz").exists():
            return ("npz", root / "cifar10")
        return None

    def download(self, root: Path) -> None:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)

    def layout_hint(self) -> str:
        return "cifar-10-batches-py/ (torchvision) or cifar10/{train,test}.npz (images uint8 NHWC, labels int64)"

    def load(self, root: Any, train: bool) -> Split:
        kind, path = root
        if kind == "torchvision":
            import torchvision

            ds = torchvision.datasets.CIFAR10(str(path), train=train, download=False)
            images, labels = np.asarray(ds.data), np.asarray(ds.targets)
        else:
            with np.load(path / ("train.npz" if train else "test.npz")) as d:
                images, labels = d["images"], d["labels"]
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        return Split(x, torch.from_numpy(labels.astype(np.int64)))

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with 4-pixel zero padding (in normalised space: the mean) and horizontal flip."""
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=generator, device=generator.device).to(x.device)
        dx = torch.randint(0, 9, (n,), generator=generator, device=generator.device).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
        out = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        out = out.gather(3, cols)
        flip = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


class Synthetic(Dataset):
    """Generated 16x16 grey images: each class is a bright bar at its own place, plus noise (unit tests)."""

    name = "synthetic"
    num_classes, in_channels, image_size = 4, 1, 16
    mean, std = (0.25,), (0.3,)
    needs_root = False
    params = {
        "train_n": Param(2048, "training images", low=16),
        "test_n": Param(512, "test images", low=16),
        "seed": Param(1234, "generator seed for the images (not the training seed)"),
    }

    def resolve_root(self, data_root: Any) -> None:
        return None

    def load(self, root: Any, train: bool) -> Split:
        n = self.train_n if train else self.test_n
        g = torch.Generator().manual_seed(self.seed + (0 if train else 1))
        labels = torch.randint(0, self.num_classes, (n,), generator=g)
        noise = torch.rand(n, 1, 16, 16, generator=g) * 0.35
        img = noise.clone()
        # class c: a 3-pixel-wide bar; classes 0/1 horizontal at rows 3/10, 2/3 vertical at cols 3/10
        shift = torch.randint(-1, 2, (n,), generator=g)
        for c, (axis, pos) in enumerate([(2, 3), (2, 10), (3, 3), (3, 10)]):
            sel = labels == c
            for i in torch.nonzero(sel).flatten().tolist():
                p = pos + int(shift[i])
                if axis == 2:
                    img[i, 0, p : p + 3, 2:14] += 0.6
                else:
                    img[i, 0, 2:14, p : p + 3] += 0.6
        return Split((img.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def load_dataset(name: str, params: dict[str, Any] | None = None) -> Dataset:
    """An instance of the registered dataset ``name`` with its parameters."""
    return _registry.datasets.get(name)(**(params or {}))


_SPLITS: dict[tuple, Split] = {}
_FINGERPRINTS: dict[int, tuple[Split, str]] = {}


def load_split(dataset: Dataset, train: bool, data_root: Any = None) -> Split:
    """Load a split once per process (keyed by dataset, params and resolved root)."""
    root = dataset.resolve_root(data_root)
    key = (dataset.name, stable_hash(dataset.config), str(root), train)
    if key not in _SPLITS:
        _SPLITS[key] = dataset.load(root, train)
    return _SPLITS[key]


def split_fingerprint(split: Split) -> str:
    """sha256 (first 16 hex digits) of a split's image and label bytes, shapes and dtypes.

    Why: it goes into the checkpoint key, so a model trained on other (or damaged) data files is never
    loaded for these. Hashing ~150 MB of CIFAR-10 takes about 0.1 s and is done once per split.
    """
    hit = _FINGERPRINTS.get(id(split))
    if hit is not None and hit[0] is split:
        return hit[1]
    import hashlib

    h = hashlib.sha256()
    for t in (split.images, split.labels):
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        t = t.contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[id(split)] = (split, digest)
    return digest


def subset(split: Split, size: int | None, seed: int) -> Split:
    """A seeded random subset of ``size`` items (the whole split when size is None or too big)."""
    if size is None or size >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=g)[:size].sort().values
    return Split(split.images[idx], split.labels[idx])


def batches(
    dataset: Dataset,
    split: Split,
    batch_size: int,
    device: torch.device,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (x, y) batches on ``device``; shuffling and augmentation use ``generator``."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = dataset.normalize(split.images[idx].to(device, non_blocking=True))
        y = split.labels[idx].to(device, non_blocking=True)
        if augment:
            x = dataset.augment(x, generator)
        yield x, y
