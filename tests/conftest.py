"""Shared fixtures: every test writes checkpoints to a temp cache, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests compare numbers across processes (a resumed run, Ray workers, two writers, a killed subprocess)
# with the uninterrupted in-process run. On some CPUs a float result depends on the intra-op thread count
# (an AMD EPYC without AVX-512: sgt deletion_auc 0.3903185 in a 1-thread subprocess vs 0.3903146 in the
# 2-thread test process), so the test process and every process it starts run one thread.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "sgq-cache"))


def real_data_root() -> Path | None:
    """The real MNIST/CIFAR-10 folder ($SGQ_BENCH_DATA, else ../shared/data), or None."""
    root = Path(os.environ.get("SGQ_BENCH_DATA", DEFAULT_DATA))
    return root if (root / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def data_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real data not available (set SGQ_BENCH_DATA)")
    return root
