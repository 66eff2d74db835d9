"""Real MNIST from the data directory (CI: ../shared/data/mnist), trained through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnx.cli.app import app

pytestmark = pytest.mark.mnist


def train(config: str, mnist_dir: Path, out: Path) -> dict:
    result = CliRunner().invoke(app, ["train", "--config", config, "--data-dir", str(mnist_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def test_default_config_reaches_97_5(mnist_dir: Path, tmp_path: Path) -> None:
    summary = train("mnist_mlp", mnist_dir, tmp_path / "default")
    assert summary["test_accuracy"] >= 0.975, summary


def test_seed_config_reaches_97_0(mnist_dir: Path, tmp_path: Path) -> None:
    summary = train("seed", mnist_dir, tmp_path / "seed")
    assert summary["test_accuracy"] >= 0.970, summary
