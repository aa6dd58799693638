"""Datasets (MNIST, CIFAR-10, synthetic), data-root resolution, file validation and batched iteration.

Root resolution: an explicit ``--data-root DIR`` is the only place looked (a DIR without the data is an
error naming DIR, never a silent fall-through); without one, ``$SGQ_BENCH_DATA``, then the user cache
dir, then torchvision's download into the cache dir. When all fail, one line says where we looked.

Every split is checked before use (``check_split``): the data files themselves (IDX header and length,
npz keys, dtype, shape, label range, images/labels agreement) by the loaders, naming the file, and the
``Dataset.load`` contract (uint8 N x C x H x W, int64 labels in range) for every dataset, plugins too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgq_bench import _registry
from sgq_bench._base import Dataset, Param, Split
from sgq_bench._io import stable_hash
from sgq_bench._params import seed_param
from sgq_bench.errors import DataError, DataNotFoundError, UsageError

ENV_VAR = "SGQ_BENCH_DATA"


def cache_dir() -> Path:
    """The user cache dir of sgq-bench ($SGQ_BENCH_CACHE, else $XDG_CACHE_HOME/sgq-bench)."""
    if os.environ.get("SGQ_BENCH_CACHE"):
        return Path(os.environ["SGQ_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sgq-bench"


def candidate_roots() -> list[tuple[str, Path | None]]:
    """(label, path) looked at, in order, when no ``--data-root`` is given; path None means 'not set'."""
    env = os.environ.get(ENV_VAR)
    return [
        (f"${ENV_VAR}", Path(env).expanduser() if env else None),
        ("user cache", cache_dir() / "data"),
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST's format) read with numpy and checked against its own header.

    Layout: magic ``00 00 08 <ndim>`` (08: unsigned bytes), ``ndim`` big-endian uint32 sizes, then exactly
    ``prod(sizes)`` bytes. Why not torchvision's reader: a truncated file there is a reshape traceback
    that does not name the file; here every problem is one line naming it.
    """
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or _first_line(exc)})") from None
    if raw.size < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].tobytes().hex() or 'missing'}; "
                        f"expected 000008{ndim:02x})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX data type 0x{int(raw[2]):02x}; expected 0x08 (unsigned bytes)")
    if raw[3] != ndim:
        raise DataError(f"{path}: IDX file has {int(raw[3])} dimensions; expected {ndim}")
    header = 4 + 4 * ndim
    if raw.size < header:
        raise DataError(f"{path}: truncated IDX file ({raw.size} bytes, shorter than its {header}-byte header)")
    dims = tuple(int(d) for d in raw[4:header].view(">u4"))
    need, have = math.prod(dims), raw.size - header
    if have != need:
        shape = " x ".join(map(str, dims))
        what = "truncated IDX file" if have < need else "IDX file too long"
        raise DataError(f"{path}: {what}: the header promises {shape} = {need} bytes of data, the file holds {have}")
    return raw[header:].reshape(dims)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz archive (pickles refused); a bad archive or missing key names the file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a damaged file fails in many ways (zip, zlib, pickle refusal, OS errors)
        raise DataError(f"{path}: not a readable .npz archive ({_first_line(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with keys {', '.join(keys)}")
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing key {missing[0]!r} (the archive holds: "
                            f"{', '.join(archive.files) or 'nothing'}); expected keys {', '.join(keys)}")
        try:
            return {k: archive[k] for k in keys}
        except Exception as exc:  # a damaged member (CRC, zlib, truncated data) or a refused pickle
            raise DataError(f"{path}: cannot read the arrays {', '.join(keys)} ({_first_line(exc)})") from None


def check_arrays(where: Any, images: np.ndarray, labels: np.ndarray, image_shape: tuple[int, ...],
                 num_classes: int, layout: str = "") -> None:
    """Images uint8 ``(N, *image_shape)``, labels integers 0..num_classes-1 of length N, N >= 1."""
    expected = f"({', '.join(['N', *map(str, image_shape)])}) uint8 {layout}".rstrip()
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images have dtype {images.dtype}; expected {expected} with values 0..255")
    if images.ndim != 1 + len(image_shape) or tuple(images.shape[1:]) != tuple(image_shape):
        raise DataError(f"{where}: images have shape {tuple(images.shape)}; expected {expected}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {labels.dtype}; expected integers 0..{num_classes - 1}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {tuple(labels.shape)}; expected (N,)")
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(labels)} labels for {len(images)} images; expected one label per image")
    if len(images) == 0:
        raise DataError(f"{where}: holds no images")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{where}: label {lo if lo < 0 else hi} is outside 0..{num_classes - 1}")


def check_split(dataset: Dataset, split: Any, train: bool) -> Split:
    """The ``Dataset.load`` contract, checked for every dataset (plugins too) before any model sees it."""
    where = f"dataset {dataset.name!r} ({'training' if train else 'test'} split)"
    images, labels = getattr(split, "images", None), getattr(split, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{where}: load() returned {type(split).__name__}; expected a Split of two tensors")
    shape = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise DataError(f"{where}: images are {images.dtype} {tuple(images.shape)}; expected torch.uint8 "
                        f"(N, {', '.join(map(str, shape))})")
    if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images) or len(labels) == 0:
        raise DataError(f"{where}: labels are {labels.dtype} {tuple(labels.shape)} for {len(images)} images; "
                        "expected torch.int64 (N,), one per image, N >= 1")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= dataset.num_classes:
        raise DataError(f"{where}: label {lo if lo < 0 else hi} is outside 0..{dataset.num_classes - 1}")
    return split


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
        if data_root:  # asked for explicitly: only there, so a wrong folder is never silently replaced
            path = Path(data_root).expanduser()
            handle = self.find(path) if path.is_dir() else None
            if handle is not None:
                return handle
            state = ("does not exist" if not path.exists() else "is not a folder" if not path.is_dir()
                     else f"holds no {self.name} data")
            raise DataNotFoundError(f"--data-root {path} {state}; expected {self.layout_hint()} there "
                                    f"(or leave --data-root out to use ${ENV_VAR} or the user cache)")
        looked = []
        for label, path in candidate_roots():
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
        """uint8 N x 1 x 28 x 28 images and int64 labels, read and checked by ``read_idx`` (the same tensors
        torchvision's MNIST gives, so the training-data fingerprint is unchanged)."""
        raw = Path(root) / "MNIST" / "raw"
        prefix = "train" if train else "t10k"
        image_file, label_file = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
        if tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{image_file}: images are {images.shape[1]}x{images.shape[2]}; expected 28x28")
        check_arrays(label_file, images, labels, (28, 28), self.num_classes)
        return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


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

            where = Path(path) / "cifar-10-batches-py"
            try:
                ds = torchvision.datasets.CIFAR10(str(path), train=train, download=False)
            except Exception as exc:  # damaged batches: torchvision's checksum or unpickling fails
                raise DataError(f"{where}: torchvision cannot read CIFAR-10 ({_first_line(exc)})") from None
            images, labels = np.asarray(ds.data), np.asarray(ds.targets)
        else:
            where = path / ("train.npz" if train else "test.npz")
            arrays = read_npz(where, ("images", "labels"))
            images, labels = arrays["images"], arrays["labels"]
        check_arrays(where, images, labels, (32, 32, 3), self.num_classes, "NHWC")
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
        "seed": seed_param(1234, "generator seed for the images (not the training seed)"),
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
    """Load and check a split once per process (keyed by dataset, params and resolved root)."""
    root = dataset.resolve_root(data_root)
    key = (dataset.name, stable_hash(dataset.config), str(root), train)
    if key not in _SPLITS:
        _SPLITS[key] = check_split(dataset, dataset.load(root, train), train)
    return _SPLITS[key]


def _origin(split: Split) -> tuple[str, bool] | None:
    """(dataset name, is training split) of a split that ``load_split`` returned, else None."""
    for (name, _, _, train), loaded in _SPLITS.items():
        if loaded is split:
            return name, train
    return None


def train_fingerprint(dataset: str, dataset_params: Any = None, data_root: Any = None) -> str:
    """The fingerprint of a dataset's training split (loaded and hashed once per process)."""
    return split_fingerprint(load_split(load_dataset(dataset, dict(dataset_params or {})), True, data_root))


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


def subset(split: Split, size: int | None, seed: int, *, what: str | None = None) -> Split:
    """A seeded random subset of ``size`` items (the whole split when size is None).

    A size above the split's length is refused, never clamped: a row would otherwise record a size that
    was not used. ``what`` names the size in the message (default: train_size for a training split,
    eval_size for a test split, as loaded by ``load_split``).
    """
    if size is None:
        return split
    origin = _origin(split)
    label = what or ("subset size" if origin is None else "train_size" if origin[1] else "eval_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UsageError(f"{label} {size!r} is invalid; expected an integer >= 1")
    if size > len(split):
        of = "split" if origin is None else f"{origin[0]} {'training' if origin[1] else 'test'} split"
        raise UsageError(f"{label} {size} exceeds the {len(split)} images of the {of}")
    if size == len(split):
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
