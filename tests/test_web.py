"""`nnx serve`: the JSON API through FastAPI's test client, and MNIST-style preprocessing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnx.backend import get_backend
from nnx.data.mnist import load_test
from nnx.images import image_to_digit, mnist_style
from nnx.io import load_model, save_model
from nnx.metrics import predict_probabilities
from nnx.nn import build_model, mlp_spec
from nnx.preprocess import Preprocess

# The web extra through importorskip, so that a machine without it (the GPU image) still collects
# the rest of the suite; in CI such a skip is a failure (tests/conftest.py).
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from nnx.web.server import MAX_BODY, create_app  # noqa: E402


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    backend = get_backend("cpu")
    model = build_model(mlp_spec([784, 16, 10]), backend, np.random.default_rng(0))
    path = tmp_path / "m.npz"
    save_model(path, model, Preprocess.named("standard"), metrics={"test_accuracy": 0.5})
    return TestClient(create_app(path))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def drawing() -> np.ndarray:
    """Dark ink on white paper, off-centre and larger than MNIST's 20x20."""
    paper = np.full((200, 150), 255, dtype=np.uint8)
    paper[30:150, 90:105] = 0
    return paper


def assert_prediction(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 <= body["class"] <= 9 and len(body["probabilities"]) == 10
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    assert len(body["input"]) == 784 and body["latency_ms"] >= 0
    return body


def test_health_and_model(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    model = client.get("/api/model").json()
    assert model["description"] == "784-16-10" and model["metrics"]["test_accuracy"] == 0.5 and model["nnx_version"]


def test_page(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/api/predict" in page.text


def test_predict_png_json_and_upload(client: TestClient) -> None:
    body = assert_prediction(
        client.post("/api/predict", content=png_bytes(drawing()), headers={"content-type": "image/png"})
    )
    seen = np.array(body["input"]).reshape(28, 28)
    ys, xs = np.nonzero(seen)
    assert ys.max() - ys.min() + 1 == 20  # the stroke was scaled into MNIST's 20-pixel box
    assert abs(np.average(np.indices(seen.shape)[0], weights=seen) - 13.5) <= 1  # centred by mass
    digit = np.zeros((28, 28))
    digit[4:24, 12:16] = 255
    assert_prediction(client.post("/api/predict", json={"pixels": digit.tolist()}))
    assert_prediction(client.post("/api/predict", json={"pixels": digit.reshape(784).tolist(), "preprocess": False}))
    files = {"file": ("digit.png", png_bytes(drawing()), "image/png")}
    assert_prediction(client.post("/api/predict", files=files))


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 422, "not a readable image"),
        ({"json": {"pixels": [[0.0] * 27] * 28}}, 422, "has shape [28, 27]"),
        ({"json": {"pixels": [1, 2, 3]}}, 422, "has shape [3]"),
        (
            {"content": b'{"pixels": [' + b"NaN," * 783 + b"0]}", "headers": {"content-type": "application/json"}},
            422,
            "NaN",
        ),
        ({"json": {"pixels": [300] * 784}}, 422, "0-255"),
        ({"json": {"pixels": "abc"}}, 422, "must be an array of numbers"),
        ({"json": {"image": []}}, 422, '"pixels"'),
        ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "image/png"}}, 413, "over"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"files": {"notes": (None, "just text")}}, 422, "no file"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(client: TestClient, kwargs, status: int, message: str) -> None:
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert " object at 0x" not in response.json()["error"]  # no Python repr of an internal object
    # ... and the server keeps serving.
    assert_prediction(client.post("/api/predict", json={"pixels": [0] * 783 + [255]}))


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "application/octet-stream"])
def test_a_body_sent_without_a_telling_content_type_is_read_by_its_first_bytes(client, content_type) -> None:
    """`curl --data-binary @digit.png URL` sends the form type: the PNG is still read, as is JSON."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(buffer, format="PNG")
    headers = {"content-type": content_type} if content_type else {}
    assert_prediction(client.post("/api/predict", content=buffer.getvalue(), headers=headers))
    assert_prediction(client.post("/api/predict", content=b'{"pixels": [' + b"0," * 783 + b"255]}", headers=headers))
    response = client.post("/api/predict", content=b"hello", headers=headers)
    assert response.status_code == 415 and "not supported" in response.json()["error"]


def test_chunked_body_over_the_limit_is_refused(client: TestClient) -> None:
    def chunks():
        for _ in range(20):
            yield b"x" * (MAX_BODY // 10)

    response = client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413


def test_mnist_style_centres_and_scales() -> None:
    ink = np.zeros((90, 60))
    ink[5:25, 40:58] = 200  # small, in a corner
    digit = mnist_style(ink).reshape(28, 28)
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20
    assert digit.max() == 255
    assert not mnist_style(np.zeros((10, 10))).any()


@pytest.mark.mnist
def test_preprocessing_recovers_displaced_test_digits(trained_mlp: Path, mnist_dir: Path) -> None:
    """Test digits shifted, scaled and padded into a larger canvas are recognised after
    preprocessing at >= 97% of the accuracy on the originals."""
    backend = get_backend("cpu")
    loaded = load_model(trained_mlp, backend)
    test = load_test(mnist_dir)
    n = 2000
    rng = np.random.default_rng(0)
    moved = []
    for image in test.images[:n]:
        scale = rng.uniform(1.5, 4.0)
        big = Image.fromarray(image.reshape(28, 28)).resize((round(28 * scale),) * 2, Image.Resampling.BILINEAR)
        canvas = np.full((160, 200), 255, dtype=np.uint8)  # paper, with dark ink as a person draws
        top, left = rng.integers(0, 160 - big.size[1]), rng.integers(0, 200 - big.size[0])
        canvas[top : top + big.size[1], left : left + big.size[0]] = 255 - np.asarray(big)
        moved.append(image_to_digit(png_bytes(canvas)))
    labels = test.labels[:n]

    def accuracy(images: np.ndarray) -> float:
        probabilities = predict_probabilities(loaded.model, backend.asarray(images), loaded.preprocess, backend)
        return float((probabilities.argmax(axis=1) == labels).mean())

    original, recovered = accuracy(test.images[:n]), accuracy(np.stack(moved))
    assert recovered >= 0.97 * original, (recovered, original)
