"""Real MNIST from the data directory (CI: ../shared/data/mnist), trained through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnx.cli.app import app

pytestmark = [pytest.mark.mnist]


def train(config: str, mnist_dir: Path, out: Path) -> dict:
    result = CliRunner().invoke(app, ["train", "--config", config, "--data-dir", str(mnist_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.mark.heavy(5)
def test_default_config_reaches_97_5(mnist_dir: Path, tmp_path: Path) -> None:
    summary = train("mnist_mlp", mnist_dir, tmp_path / "default")
    assert summary["test_accuracy"] >= 0.975, summary


@pytest.mark.heavy(33)
def test_seed_config_reaches_97_0(mnist_dir: Path, tmp_path: Path) -> None:
    summary = train("seed", mnist_dir, tmp_path / "seed")
    assert summary["test_accuracy"] >= 0.970, summary


@pytest.mark.heavy(16)
def test_cnn_learns_on_a_subset(mnist_dir: Path, tmp_path: Path) -> None:
    """configs/mnist_cnn.yaml, cut down to fit CI: 2 epochs on 10,000 images, no augmentation.
    (The full figure, >= 99.2%, comes from benchmarks/cnn.py.)"""
    out = tmp_path / "cnn"
    args = ["train", "-c", "mnist_cnn", "--epochs", "2", "--set", "data.limit=10000"]
    args += ["--set", "training.augment.enabled=false", "--data-dir", str(mnist_dir), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95, summary
    assert summary["model_description"] == "784-conv32-conv64-128-10"


@pytest.mark.heavy(42)
def test_the_fast_config_reaches_99_percent(mnist_dir: Path, tmp_path: Path) -> None:
    """configs/mnist_fast.yaml as shipped (three epochs on all 60,000 images, ~20 s here): seed 0
    measured 99.20% (seeds 0-4: 99.07-99.26%); 99.0% is the bar it was made for."""
    summary = train("mnist_fast", mnist_dir, tmp_path / "fast")
    assert summary["test_accuracy"] >= 0.990, summary
    assert summary["epochs"] == 3


@pytest.mark.heavy(70)
def test_the_fast_gpu_config_reaches_99_percent(mnist_dir: Path, tmp_path: Path) -> None:
    """configs/mnist_fast_gpu.yaml as shipped (four epochs of 512-image steps, ~50 s on a CPU here):
    seed 0 measured 99.23% (seeds 0-2: 99.23-99.33%)."""
    summary = train("mnist_fast_gpu", mnist_dir, tmp_path / "fast_gpu")
    assert summary["test_accuracy"] >= 0.990, summary
    assert summary["epochs"] == 4 and summary["model_description"] == "784-conv32-conv64-128-10"
