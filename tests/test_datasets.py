"""Training on Fashion-MNIST (same IDX format; a synthetic stand-in here): the class names travel
in the model file to nnx.load, evaluate, predict, the plots and nnx serve."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import nnx
from nnx.cli.app import app
from nnx.data.mnist import resolve_data_dir

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture
def fashion_run(tiny_mnist: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    args = ["train", "-q", "-c", "fashion_mlp", "--data-dir", str(tiny_mnist), "--epochs", "2",
            "--set", "training.validation=100", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_class_names_travel_with_the_model(fashion_run: Path, tiny_mnist: Path) -> None:
    model = nnx.load(fashion_run / "model.npz")
    assert model.classes == NAMES and model.header["dataset"] == "fashion-mnist"
    evaluated = CliRunner().invoke(app, ["evaluate", str(fashion_run / "model.npz"), "--data-dir", str(tiny_mnist)])
    assert evaluated.exit_code == 0 and "7 Sneaker" in evaluated.output and "9 Ankle boot" in evaluated.output
    predicted = CliRunner().invoke(
        app, ["predict", str(fashion_run / "model.npz"), "--test-index", "3", "--data-dir", str(tiny_mnist)]
    )
    assert predicted.exit_code == 0 and "Fashion-MNIST test image 3" in predicted.output
    assert any(f"{k} {name}" in predicted.output for k, name in enumerate(NAMES))


def test_the_server_names_the_classes(fashion_run: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from nnx.web.server import create_app

    client = TestClient(create_app(fashion_run / "model.npz"))
    assert client.get("/api/model").json()["classes"] == NAMES
    response = client.post("/api/predict", json={"pixels": [[0] * 28] * 28})
    assert response.status_code == 200 and response.json()["label"] == NAMES[response.json()["class"]]


def test_each_dataset_has_its_own_default_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNX_DATA_DIR", "/somewhere/mnist")
    assert resolve_data_dir(None, None, "mnist") == Path("/somewhere/mnist")  # $NNX_DATA_DIR is MNIST's
    assert resolve_data_dir(None, None, "fashion-mnist") == Path("data/fashion-mnist")
    assert resolve_data_dir("x", None, "kmnist") == Path("x")


def test_configs_for_fashion_mnist_are_valid() -> None:
    from nnx.config import load_config

    for name in ("fashion_mlp", "fashion_cnn"):
        config, _ = load_config(name)
        assert config.data.dataset == "fashion-mnist"
