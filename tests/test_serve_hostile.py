"""nnx serve against hostile requests: a pixel bomb is refused before it is decoded, pathological
JSON and unknown routes get the API's 4xx JSON error, a model that would answer NaN is refused,
and a port in use is one line and exit 2."""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnx.backend import get_backend
from nnx.cli.app import app
from nnx.errors import NnxError
from nnx.io import save_model
from nnx.nn import build_model, mlp_spec
from nnx.preprocess import Preprocess

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from nnx.web.server import create_app  # noqa: E402


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model = build_model(mlp_spec([784, 16, 10]), get_backend("cpu"), np.random.default_rng(0))
    path = tmp_path / "m.npz"
    save_model(path, model, Preprocess.named("standard"))
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that claims width x height, with almost no data behind it (a 'pixel bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_a_pixel_bomb_is_refused_before_decoding(model_file: Path) -> None:
    client = TestClient(create_app(model_file))
    response = client.post("/api/predict", content=png_declaring(13000, 13000), headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert "13000x13000 = 169,000,000 pixels, over the limit of 4,000,000" in response.json()["error"]
    huge = png_declaring(100_000, 100_000)  # past PIL's own limit too: still a 413, not a 500
    response = client.post("/api/predict", content=huge, headers={"content-type": "image/png"})
    assert response.status_code == 413
    small = TestClient(create_app(model_file, max_pixels=100))  # the limit is a setting
    drawn = png_declaring(20, 20)
    assert small.post("/api/predict", content=drawn, headers={"content-type": "image/png"}).status_code == 413


@pytest.mark.parametrize(
    "body,status",
    [
        (b"[" * 100_000 + b"]" * 100_000, 400),  # nesting too deep for the parser
        (b'{"pixels": 1' + b"0" * 5000 + b"}", 400),  # an integer of 5,000 digits
        (b'{"pixels": 5}', 422),  # a number where an array belongs
        (b'{"pixels": [' + b"1e400," * 783 + b"1e400]}", 422),  # infinities
        (b'{"pixels": [[[[[[[[1]]]]]]]]}', 422),
        (b'{"pixels": {"a": 1}}', 422),
    ],
)
def test_pathological_json_is_a_4xx_with_an_error(model_file: Path, body: bytes, status: int) -> None:
    client = TestClient(create_app(model_file), raise_server_exceptions=False)
    response = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and set(response.json()) == {"error"}


def test_unknown_routes_and_methods_answer_in_the_same_shape(model_file: Path) -> None:
    client = TestClient(create_app(model_file))
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "GET /nope: Not Found"}
    wrong = client.get("/api/predict")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("GET /api/predict: Method Not Allowed")


def test_a_model_that_would_answer_nan_is_refused(tmp_path: Path) -> None:
    model = build_model(mlp_spec([784, 16, 10]), get_backend("cpu"), np.random.default_rng(0))
    model.layers[0].params["b"][3] = np.nan
    path = tmp_path / "nan.npz"
    save_model(path, model, Preprocess())
    with pytest.raises(NnxError, match="hold NaN or infinity; refusing to serve it"):
        create_app(path)


def test_a_port_in_use_is_one_line_and_exit_2(model_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(model_file), "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in result.output
    assert "serving" not in result.output


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nnx.web.server import BadRequestError, _pixels  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=3000), kind=st.sampled_from(["application/json", "image/png", "image/jpeg", "text/x"]))
def test_any_body_is_pixels_or_a_4xx(body: bytes, kind: str) -> None:
    try:
        pixels = _pixels(kind, body)
    except BadRequestError as exc:
        assert 400 <= exc.status < 500
    else:
        assert pixels.dtype == np.uint8 and pixels.shape == (784,)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=900,
)


@settings(max_examples=200, deadline=None)
@given(pixels=json_trees, preprocess=st.none() | st.booleans() | st.integers())
def test_any_json_structure_is_pixels_or_a_4xx(pixels, preprocess) -> None:
    import json

    body = {"pixels": pixels} if preprocess is None else {"pixels": pixels, "preprocess": preprocess}
    try:
        result = _pixels("application/json", json.dumps(body).encode())
    except BadRequestError as exc:
        assert 400 <= exc.status < 500
    else:
        assert result.shape == (784,)


@pytest.fixture
def live_server(model_file: Path, monkeypatch):
    """nnx serve's own serve() in a thread on a free loopback port (the body timeout shortened)."""
    import threading
    import time

    import nnx.web.server as server

    monkeypatch.setattr(server, "BODY_TIMEOUT_SECONDS", 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=(model_file, "127.0.0.1", port, "cpu"),
                              kwargs={"ready": ready.set}, daemon=True)  # fmt: skip
    thread.start()
    assert ready.wait(20)
    time.sleep(0.3)
    return port


def raw_request(port: int, head: bytes, body: bytes, wait: float) -> bytes:
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        time.sleep(wait)
        return conn.recv(65536)


def test_a_slow_body_gets_408_and_a_disconnect_one_log_line(live_server: int, caplog) -> None:
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    answer = raw_request(live_server, head, b'{"pixels": [', wait=1.5)
    assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer
    with caplog.at_level("WARNING"):
        with socket.create_connection(("127.0.0.1", live_server), timeout=10) as conn:
            conn.sendall(head + b'{"pix')  # then gone
        import time

        time.sleep(0.5)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "Traceback" not in caplog.text
