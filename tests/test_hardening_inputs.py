"""Inputs hardened at their root (issue 11, classes 2, 4, 5 and 6).

Class 2: data files are validated by the loaders (IDX header and length, npz keys, dtype, shape, label
range, images/labels agreement) and every split by the ``Dataset.load`` contract. Class 4: a subset
larger than its split and an explicit ``--data-root`` without the data are refused, never clamped or
replaced. Class 5: NaN, inf and out-of-range seeds are refused wherever a number enters. Class 6: one
name grammar for every plugin, method, dataset, metric, explainer and suite name.

Each case checks the one-line message and, where something could have been written, that the data and
checkpoint folders are byte-for-byte unchanged. The files are tiny and built here, so no real data is
needed (one parity test uses it when present).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgq_bench import _registry
from sgq_bench._base import Dataset, Metric, MetricResult, Param, Split
from sgq_bench._params import resolve_params, seed_param
from sgq_bench._registry import Registry, check_name, name_problem
from sgq_bench.config.methods import Method, builtin_methods
from sgq_bench.config.suite import load_suite
from sgq_bench.data import CIFAR10, MNIST, check_split, load_split, subset
from sgq_bench.errors import DataError, DataNotFoundError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SGQ = str(Path(sys.executable).with_name("sgq-bench"))


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: magic 00 00 08 ndim, big-endian uint32 sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def tiny_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    g = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def tiny_cifar(root: Path, n: int = 6, **train_arrays: np.ndarray) -> Path:
    """cifar10/{train,test}.npz; ``train_arrays`` replaces the training archive's arrays (bad files)."""
    g = np.random.default_rng(1)
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    good = {"images": g.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), "labels": np.arange(n) % 10}
    np.savez(folder / "train.npz", **(train_arrays or good))
    np.savez(folder / "test.npz", **good)
    return root


def digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: 'nothing already written changed'."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SGQ, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})


def assert_cli_one_line(res: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- class 2: data files


def test_idx_reader_gives_torchvisions_tensors(tmp_path):
    import torchvision

    root = tiny_mnist(tmp_path)
    for train in (True, False):
        ours = MNIST().load(root, train)
        ref = torchvision.datasets.MNIST(str(root), train=train, download=False)
        assert ours.images.dtype == torch.uint8 and ours.images.shape[1:] == (1, 28, 28)
        assert torch.equal(ours.images, ref.data.unsqueeze(1)) and torch.equal(ours.labels, ref.targets.long())
        assert ours.labels.dtype == torch.int64


def test_real_mnist_loads_identically_to_torchvision(data_root):
    import torchvision

    from sgq_bench.data import split_fingerprint

    for train in (True, False):
        ours = MNIST().load(data_root, train)
        ref = torchvision.datasets.MNIST(str(data_root), train=train, download=False)
        theirs = Split(ref.data.unsqueeze(1).contiguous(), ref.targets.long())
        assert torch.equal(ours.images, theirs.images) and torch.equal(ours.labels, theirs.labels)
        assert split_fingerprint(ours) == split_fingerprint(theirs)  # checkpoint keys are unchanged


def _truncate(raw: Path) -> Path:
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    return f


def _bad_magic(raw: Path) -> Path:
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(b"\x1f\x8b" + f.read_bytes()[2:])  # a gzip header where the IDX magic belongs
    return f


def _float_idx(raw: Path) -> Path:
    f = raw / "train-images-idx3-ubyte"
    data = bytearray(f.read_bytes())
    data[2] = 0x0D  # IDX type code of float32
    f.write_bytes(bytes(data))
    return f


def _label_10(raw: Path) -> Path:
    f = raw / "train-labels-idx1-ubyte"
    write_idx(f, np.array([0, 1, 2, 10, 4, 5]))
    return f


def _fewer_labels(raw: Path) -> Path:
    f = raw / "train-labels-idx1-ubyte"
    write_idx(f, np.arange(5))
    return f


def _wrong_size(raw: Path) -> Path:
    f = raw / "train-images-idx3-ubyte"
    write_idx(f, np.zeros((6, 27, 28)))
    return f


def _empty(raw: Path) -> Path:
    f = raw / "train-labels-idx1-ubyte"
    f.write_bytes(b"")
    return f


@pytest.mark.parametrize("damage,needle", [
    (_truncate, "truncated IDX file: the header promises 6 x 28 x 28 = 4704 bytes of data, the file holds 4604"),
    (_bad_magic, "not an IDX file (magic number 1f8b0803; expected 00000803)"),
    (_float_idx, "IDX data type 0x0d; expected 0x08 (unsigned bytes)"),
    (_label_10, "label 10 is outside 0..9"),
    (_fewer_labels, "5 labels for 6 images"),
    (_wrong_size, "images are 27x28; expected 28x28"),
    (_empty, "not an IDX file (magic number missing"),
])
def test_a_damaged_idx_file_is_one_line_naming_it(tmp_path, damage, needle):
    root = tiny_mnist(tmp_path / "data")
    bad = damage(root / "MNIST" / "raw")
    before = digest(root)
    with pytest.raises(DataError) as err:
        load_split(MNIST(), True, root)
    msg = one_line_error(err)
    assert msg.startswith(f"{bad}: ") and needle in msg, msg
    assert err.value.exit_code == 2 and digest(root) == before
    assert len(MNIST().load(root, False)) == 4  # the other split's files are fine and still load


@pytest.mark.parametrize("arrays,needle", [
    ({"images": np.zeros((6, 32, 32, 3), np.float32), "labels": np.arange(6)},
     "images have dtype float32; expected (N, 32, 32, 3) uint8 NHWC with values 0..255"),
    ({"images": np.zeros((6, 3, 32, 32), np.uint8), "labels": np.arange(6)},
     "images have shape (6, 3, 32, 32); expected (N, 32, 32, 3) uint8 NHWC"),
    ({"images": np.zeros((6, 32, 32, 3), np.uint8)}, "missing key 'labels' (the archive holds: images)"),
    ({"pixels": np.zeros((6, 32, 32, 3), np.uint8), "labels": np.arange(6)}, "missing key 'images'"),
    ({"images": np.zeros((6, 32, 32, 3), np.uint8), "labels": np.arange(6) - 1.0},
     "labels have dtype float64; expected integers 0..9"),
    ({"images": np.zeros((6, 32, 32, 3), np.uint8), "labels": np.arange(6) - 1}, "label -1 is outside 0..9"),
    ({"images": np.zeros((6, 32, 32, 3), np.uint8), "labels": np.arange(7)}, "7 labels for 6 images"),
    ({"images": np.zeros((0, 32, 32, 3), np.uint8), "labels": np.arange(0)}, "holds no images"),
    ({"images": np.array([None] * 6, dtype=object), "labels": np.arange(6)},
     "cannot read the arrays images, labels (ValueError: Object arrays cannot be loaded when allow_pickle=False"),
])
def test_a_bad_cifar_npz_is_one_line_naming_it(tmp_path, arrays, needle):
    root = tiny_cifar(tmp_path / "data", **arrays)
    before = digest(root)
    with pytest.raises(DataError) as err:
        load_split(CIFAR10(), True, root)
    msg = one_line_error(err)
    assert msg.startswith(f"{root / 'cifar10' / 'train.npz'}: ") and needle in msg, msg
    assert digest(root) == before


def test_a_cifar_file_that_is_not_an_archive_is_one_line(tmp_path):
    root = tiny_cifar(tmp_path / "data")
    bad = root / "cifar10" / "train.npz"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated download
    with pytest.raises(DataError, match=r"train\.npz: not a readable \.npz archive \(BadZipFile"):
        CIFAR10().load(("npz", root / "cifar10"), True)
    np.save(bad.with_suffix(""), np.zeros(3))
    bad.with_suffix(".npy").rename(bad)
    with pytest.raises(DataError, match=r"train\.npz: holds a single array, not an \.npz archive"):
        CIFAR10().load(("npz", root / "cifar10"), True)


def test_every_dataset_is_held_to_the_load_contract():
    class Floaty(Dataset):
        name = "floaty"
        num_classes, in_channels, image_size = 3, 1, 4
        needs_root = False

        def resolve_root(self, data_root):
            return None

        def load(self, root, train):
            return Split(torch.rand(5, 1, 4, 4), torch.zeros(5, dtype=torch.int64))

    with pytest.raises(DataError) as err:
        load_split(Floaty(), True)
    msg = one_line_error(err)
    assert msg.startswith("dataset 'floaty' (training split): images are torch.float32 (5, 1, 4, 4)"), msg
    bad_labels = Split(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(DataError, match=r"^dataset 'floaty' \(test split\): label 3 is outside 0..2$"):
        check_split(Floaty(), bad_labels, False)


def test_cli_train_on_damaged_files_exits_2_one_line_and_writes_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cifar = tiny_cifar(tmp_path / "cifar", images=np.zeros((6, 32, 32, 3), np.float32), labels=np.arange(6))
    mnist = tiny_mnist(tmp_path / "mnist")
    truncated = _truncate(mnist / "MNIST" / "raw")
    before = digest(tmp_path)
    common = ["--suite", "quick", "--train-size", "4", "--epochs", "1", "--checkpoint-dir", str(ckpt)]
    res = cli("train", "--dataset", "cifar10", "--data-root", str(cifar), *common)
    assert_cli_one_line(res, 2, str(cifar / "cifar10" / "train.npz"), "images have dtype float32")
    res = cli("train", "--dataset", "mnist", "--data-root", str(mnist), *common)
    assert_cli_one_line(res, 2, str(truncated), "truncated IDX file")
    assert digest(tmp_path) == before and not any(ckpt.iterdir())


# ----------------------------------------------------------------------------- class 4: no silent clamping


def test_subset_larger_than_its_split_is_refused(tmp_path):
    root = tiny_mnist(tmp_path)
    train = load_split(MNIST(), True, root)
    with pytest.raises(UsageError) as err:
        subset(train, 70000, seed=0)
    assert one_line_error(err) == "train_size 70000 exceeds the 6 images of the mnist training split"
    with pytest.raises(UsageError, match="^eval_size 5 exceeds the 4 images of the mnist test split$"):
        subset(load_split(MNIST(), False, root), 5, seed=0)
    assert len(subset(train, 6, 0)) == 6 and len(subset(train, 3, 0)) == 3


def test_cli_train_size_above_the_split_and_empty_data_root_exit_2(tmp_path):
    ckpt, empty = tmp_path / "ckpt", tmp_path / "empty"
    ckpt.mkdir()
    empty.mkdir()
    mnist = tiny_mnist(tmp_path / "mnist")
    before = digest(tmp_path)
    res = cli("train", "--dataset", "mnist", "--suite", "quick", "--data-root", str(mnist), "--train-size", "7",
              "--checkpoint-dir", str(ckpt))
    line = assert_cli_one_line(res, 2)
    assert line.endswith("train_size 7 exceeds the 6 images of the mnist training split"), line
    # $SGQ_BENCH_DATA holds MNIST: an explicit, empty --data-root must not silently fall through to it
    res = cli("train", "--dataset", "mnist", "--suite", "quick", "--data-root", str(empty),
              "--checkpoint-dir", str(ckpt), env={"SGQ_BENCH_DATA": str(mnist)})
    assert_cli_one_line(res, 2, f"--data-root {empty} holds no mnist data", "MNIST/raw")
    assert digest(tmp_path) == before and not any(ckpt.iterdir())


def test_explicit_data_root_is_the_only_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SGQ_BENCH_DATA", str(tiny_mnist(tmp_path / "env")))
    with pytest.raises(DataNotFoundError) as err:
        MNIST().resolve_root(tmp_path / "nowhere")
    assert one_line_error(err).startswith(f"--data-root {tmp_path / 'nowhere'} does not exist; expected MNIST/raw")
    assert MNIST().resolve_root(None) == tmp_path / "env"  # without --data-root the variable is used


# ----------------------------------------------------------------------------- class 5: non-finite values

SUITE = """
version = "1"
methods = ["baseline", "mine"]
[define.mine]
quantizer = "none"
objective = "saliency_guided"
[datasets.synthetic]
model = "test_cnn"
eval_size = 32
params = { train_n = 64, test_n = 64 }
"""


@pytest.mark.parametrize("key,value,needle", [
    ("define.mine.objective_params.k", math.nan, "parameter k=nan is not a finite number"),
    ("define.mine.objective_params.lam", math.nan, "parameter lam=nan is not a finite number"),
    ("define.mine.objective_params.lam", math.inf, "parameter lam=inf is not a finite number"),
    ("datasets.synthetic.recipe.lr", math.inf, "recipe.lr = inf is invalid; expected a number > 0"),
    ("datasets.synthetic.recipe.lr", math.nan, "recipe.lr = nan is invalid"),
    ("datasets.synthetic.recipe.momentum", math.nan, "recipe.momentum = nan is invalid"),
    ("datasets.synthetic.recipe.grad_clip", math.inf, "recipe.grad_clip = inf is invalid"),
    ("datasets.synthetic.recipe.epochs", 10**20, "recipe.epochs = 100000000000000000000 is invalid"),
    ("seeds", [0, 10**20], "seeds = [0, 100000000000000000000] is invalid"),
    ("seeds", [2**31], "seeds = [2147483648] is invalid"),
    ("evaluate.eval_seed", 10**20, "evaluate.eval_seed = 100000000000000000000 is invalid; expected an integer "
                                   "in [0, 2147483647]"),
    ("datasets.synthetic.params.seed", 10**20, "seed=100000000000000000000 is outside the allowed range "
                                               "[0, 2147483647]"),
    ("datasets.synthetic.params.train_n", 1e300, "train_n=1e+300 is too large (beyond 64-bit integers; allowed: [16, inf))"),
])
def test_non_finite_and_oversized_numbers_are_refused_at_load(tmp_path, key, value, needle):
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    with pytest.raises(UsageError) as err:
        load_suite(str(path), {key: value})
    msg = one_line_error(err)
    assert msg.startswith(str(path)) and needle in msg, msg


def test_params_refuse_nan_inf_and_overflow_everywhere():
    spec = {"k": Param(0.5, low=0.0, high=1.0), "n": Param(3, low=1), "fr": Param((0.1, 0.5))}
    for given, needle in [({"k": "nan"}, "k='nan'"), ({"k": float("-inf")}, "k=-inf is not a finite number"),
                          ({"n": float("inf")}, "n=inf must be a int"), ({"n": 10**19}, "beyond 64-bit"),
                          ({"k": 10**400}, "k=1000"), ({"fr": (0.1, float("nan"))}, "not a finite number")]:
        with pytest.raises(UsageError) as err:
            resolve_params("owner", spec, given)
        assert needle in one_line_error(err)
    assert resolve_params("owner", spec, {"k": "0.25", "n": 2.0}) == {"k": 0.25, "n": 2, "fr": (0.1, 0.5)}
    seed = seed_param(0, "a seed")  # what --seed and every seeded plugin parameter declare
    assert resolve_params("owner", {"seed": seed}, {"seed": 2**31 - 1}) == {"seed": 2**31 - 1}
    with pytest.raises(UsageError, match="seed"):
        resolve_params("owner", {"seed": seed}, {"seed": 12345678901234567890})


# ----------------------------------------------------------------------------- class 6: names become paths


BAD_NAMES = ["../../x", "a/b", "..", ".", "a..b", "Upper", "two words", "-lead", "_lead", "", "x" * 65, "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_name_grammar_refuses_path_like_names(name):
    assert name_problem(name) is not None
    with pytest.raises(UsageError) as err:
        check_name("method", name)
    assert one_line_error(err).startswith(f"method name {name!r} ")
    with pytest.raises(UsageError, match="cannot register"):
        Registry("metrics").register(name, type("M", (Metric,), {}))
    with pytest.raises(UsageError):
        Method(name, "none", "cross_entropy")


def test_every_shipped_and_example_name_follows_the_grammar():
    names = {(kind, n) for kind in _registry.KINDS for n in _registry.registry(kind).names()}
    names |= {("method", n) for n in builtin_methods()}
    for suite in sorted((REPO / "configs").glob("*.toml")):
        raw = tomllib.loads(suite.read_text())
        names |= {("suite", raw.get("name", suite.stem))} | {("method", n) for n in raw.get("define", {})}
        names |= {("dataset", n) for n in raw.get("datasets", {})}
    for pyproject in sorted((REPO / "examples").glob("*/pyproject.toml")):
        for group in tomllib.loads(pyproject.read_text())["project"].get("entry-points", {}).values():
            names |= {("example plugin", n) for n in group}
    assert {"mnist", "cifar10", "mnist_cnn", "resnet20", "test_cnn", "baseline", "pact", "sgt", "sgt_pact",
            "integrated_gradients", "deletion_auc", "lsq", "rrr", "guided_backprop", "quick"} <= {n for _, n in names}
    assert [n for n in names if name_problem(n[1])] == []
    for ok in ("pact_w8a8", "a.b-c_1", "x" * 64, "0"):
        assert check_name("metric", ok) == ok


@pytest.mark.parametrize("text,needle", [
    ('[define."../../x"]\nquantizer = "none"\nobjective = "cross_entropy"\n', "define.'../../x': method name "
                                                                               "'../../x' is invalid"),
    ('name = "../evil"\n', "suite name '../evil' is invalid"),
    ('[datasets."../x"]\nmodel = "test_cnn"\n', "datasets.../x: dataset name '../x' is invalid"),
])
def test_a_suite_with_a_path_like_name_is_refused_at_load(tmp_path, text, needle):
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace('methods = ["baseline", "mine"]', 'methods = ["baseline"]') + text
                    if not text.startswith("name") else text + SUITE)
    with pytest.raises(UsageError) as err:
        load_suite(str(path))
    msg = one_line_error(err)
    assert msg.startswith(str(path)) and needle in msg and "lowercase letters" in msg, msg


def test_a_suite_named_by_an_unfit_file_name_says_how_to_fix_it(tmp_path):
    path = tmp_path / "My Suite.toml"
    path.write_text(SUITE)
    with pytest.raises(UsageError, match=r"suite name 'My Suite' is invalid.*set name = \"...\" in the file"):
        load_suite(str(path))
    path.write_text('name = "mine"\n' + SUITE)
    assert load_suite(str(path)).name == "mine"


def test_cli_run_with_a_path_like_method_exits_2_and_writes_nothing(tmp_path):
    suite = tmp_path / "evil.toml"
    suite.write_text(SUITE.replace('"mine"', '"../../x"').replace("[define.mine]", '[define."../../x"]'))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    before = digest(tmp_path)
    res = cli("run", "--suite", str(suite), "--out", str(tmp_path / "out"), "--checkpoint-dir", str(ckpt))
    assert_cli_one_line(res, 2, str(suite), "method name '../../x' is invalid")
    assert digest(tmp_path) == before and not (tmp_path / "out").exists() and not any(ckpt.iterdir())


BAD_PLUGIN = """
IMPORTED = True
from sgq_bench._base import Metric, MetricResult

class Evil(Metric):
    needs_attributions = False

    def compute(self, ctx, attributions):
        return MetricResult(1.0)
"""


def test_an_installed_plugin_with_a_bad_name_is_reported_broken_and_never_imported(tmp_path, monkeypatch):
    info = tmp_path / "sgq_test_badname-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sgq-test-badname\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sgq_bench.metrics]\n../evil = sgqtest_evil:Evil\n"
                                           "Evil = sgqtest_evil:Evil\nfine_one = sgqtest_evil:Evil\n")
    (tmp_path / "sgqtest_evil.py").write_text(BAD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sgqtest_evil", raising=False)
    reg = Registry("metrics")
    assert {"../evil", "Evil", "fine_one"} <= set(reg.names())
    for bad in ("../evil", "Evil"):
        with pytest.raises(UsageError) as err:
            reg.get(bad)
        msg = one_line_error(err)
        assert f"plugin {bad!r} from distribution 'sgq-test-badname' is unusable: metric name {bad!r}" in msg
    assert "sgqtest_evil" not in sys.modules  # refused before import
    usable = {name for name, obj, _ in reg.items(warn=False) if obj is not None}
    assert "fine_one" in usable and not {"../evil", "Evil"} & usable
    sys.modules.pop("sgqtest_evil", None)


def test_register_checks_the_name_through_the_public_api():
    import sgq_bench

    class Ok(Metric):
        needs_attributions = False

        def compute(self, ctx, attributions):
            return MetricResult(0.0)

    with pytest.raises(UsageError, match=r"^metrics: cannot register .* under 'a/b': the name is invalid; "):
        sgq_bench.register("metrics", "a/b", Ok)
    try:
        sgq_bench.register("metrics", "sgq_test.ok-1", Ok)
        assert _registry.metrics.get("sgq_test.ok-1") is Ok
    finally:
        _registry.metrics.unregister("sgq_test.ok-1")
