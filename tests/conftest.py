"""Shared fixtures: backends, the real MNIST, and a tiny MNIST-shaped dataset written per test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nnx.backend import get_backend, gpu_unavailable_reason
from nnx.data.idx import write_idx
from nnx.data.mnist import missing_files, resolve_data_dir

_gpu_reason: list[str | None] = []


def gpu_skip_reason() -> str | None:
    if not _gpu_reason:
        _gpu_reason.append(gpu_unavailable_reason())
    return _gpu_reason[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords:
            reason = gpu_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"no usable GPU: {reason}"))


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request: pytest.FixtureRequest):
    """Each test taking `backend` runs on the CPU and, where a GPU is usable, on the GPU."""
    return get_backend(request.param, "float64")


@pytest.fixture
def cpu64():
    return get_backend("cpu", "float64")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST (CI: NNX_DATA_DIR=../shared/data/mnist). Missing data fails in CI, where
    it must be present, and skips elsewhere with the reason."""
    folder = resolve_data_dir()
    missing = missing_files(folder)
    if missing:
        message = f"MNIST not found in {folder} (missing {', '.join(missing)}); set NNX_DATA_DIR"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def make_tiny_mnist(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Learnable MNIST-shaped IDX files: each class is a fixed random stroke pattern plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((10, 784)) < 0.15) * 255.0

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.normal(0, 40, (n, 784))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        return images.reshape(n, 28, 28), labels.astype(np.uint8)

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = sample(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return make_tiny_mnist(tmp_path / "mnist")


@pytest.fixture(scope="session")
def trained_mlp(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default config trained on the real MNIST once per session (a few seconds)."""
    from typer.testing import CliRunner

    from nnx.cli.app import app

    out = tmp_path_factory.mktemp("mlp") / "run"
    result = CliRunner().invoke(app, ["train", "-q", "--data-dir", str(mnist_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / "model.npz"
