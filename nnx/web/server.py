"""The web app: GET / (the drawing page), POST /api/predict, GET /api/model, GET /healthz.

The model is loaded once; requests share it behind a lock (layers keep per-call caches, so two
forwards at once must not interleave). Every bad request gets a 4xx JSON error naming the
problem, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nnx import __version__
from nnx.data.datasets import class_names
from nnx.errors import DataError, NnxError
from nnx.images import MAX_PIXELS, ImageTooLargeError, image_to_digit, mnist_style
from nnx.io import model_file, open_model
from nnx.metrics import softmax

MAX_BODY = 1 << 20  # 1 MB
logger = logging.getLogger("nnx.serve")
STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
# Content types that say nothing of the body: `curl --data-binary @digit.png` sends the form type,
# some clients none or octet-stream. The body's first bytes then tell an image or JSON.
UNSAID_TYPES = ("", "application/x-www-form-urlencoded", "application/octet-stream")
MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"BM": "image/bmp"}


class BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Classifier:
    """One model on one backend: uint8 (784,) pixels -> probabilities."""

    def __init__(self, model_path: Path, device: str = "cpu", max_pixels: int = MAX_PIXELS) -> None:
        self.loaded = open_model(model_path, device)
        self.backend = self.loaded.model.backend
        self.max_pixels = max_pixels
        bad = [name for name, array in self.loaded.model.state().items() if not np.isfinite(array).all()]
        if bad:  # its answers would be NaN, which is not JSON
            raise NnxError(f"{model_path}: parameters {', '.join(bad)} hold NaN or infinity; refusing to serve it")
        self.header = self.loaded.header
        self.classes = class_names(self.header)
        self.lock = threading.Lock()

    def classify(self, content_type: str, body: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(the 784 pixels the network saw, its probabilities) for a request body: one hop to a
        worker thread for the decoding and the inference together."""
        pixels = _pixels(content_type, body, self.max_pixels)
        return pixels, self.probabilities(pixels)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        backend = self.backend
        x = self.loaded.preprocess(backend.asarray(pixels.reshape(1, 784)), backend)
        with self.lock:
            logits = backend.to_numpy(self.loaded.model.logits(x, training=False))
        return softmax(logits[0].astype(np.float64))

    def describe(self) -> dict[str, Any]:
        return {
            "nnx_version": __version__,
            "architecture": self.header["architecture"],
            "parameters": self.loaded.model.count_parameters(),
            "description": self.loaded.model.describe(),
            "metrics": self.header.get("metrics", {}),
            "device": self.backend.name,
            "dataset": self.header.get("dataset", "mnist"),
            "classes": class_names(self.header),
        }


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """{"pixels": 28x28 or 784 numbers in 0-255, "preprocess": bool} -> (float array (28, 28), preprocess)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(400, f"the body is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        raise BadRequestError(400, f"the body is JSON nnx will not read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "pixels" not in data:
        raise BadRequestError(422, 'expected a JSON object with "pixels": a 28x28 or 784-long array of numbers 0-255')
    try:
        pixels = np.asarray(data["pixels"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise BadRequestError(422, '"pixels" must be an array of numbers') from None
    if pixels.shape not in ((28, 28), (784,)):
        raise BadRequestError(422, f'"pixels" has shape {list(pixels.shape)}; expected [28, 28] or [784]')
    if not np.isfinite(pixels).all():
        raise BadRequestError(422, '"pixels" contains NaN or infinity')
    if pixels.min() < 0 or pixels.max() > 255:
        raise BadRequestError(422, '"pixels" must lie in 0-255')
    preprocess = data.get("preprocess", True)
    if not isinstance(preprocess, bool):
        raise BadRequestError(422, '"preprocess" must be true or false')
    return pixels.reshape(28, 28), preprocess


def create_app(model_path: Path, device: str = "cpu", max_pixels: int = MAX_PIXELS) -> FastAPI:
    classifier = Classifier(model_path, device, max_pixels)
    app = FastAPI(title="nnx", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(BadRequestError)
    async def bad_request(request: Request, exc: BadRequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    # 404, 405 and the like in the same shape as every other error of the API.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()}"}, 422)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/model")
    def model_info() -> dict[str, Any]:
        return classifier.describe()

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise BadRequestError(413, f"the body is over {MAX_BODY} bytes")
        body = await _read_limited(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            body = await _form(request, body)
            content_type = "image/png"
        # Decoding and inference in the thread pool: a heavy request never stalls the event
        # loop, so /healthz and other clients are answered meanwhile.
        pixels, probabilities = await run_in_threadpool(classifier.classify, content_type, body)
        return JSONResponse(
            {
                "class": int(probabilities.argmax()),
                "label": classifier.classes[int(probabilities.argmax())],
                "probabilities": [round(float(p), 6) for p in probabilities],
                "input": pixels.tolist(),  # the 28x28 the network saw
                "found": bool(pixels.any()),  # false: a blank picture, whose class means nothing
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )

    return app


async def _read_limited(request: Request) -> bytes:
    """The body, at most MAX_BODY bytes, each part arriving within BODY_TIMEOUT_SECONDS: a client
    trickling its body (a 'slow loris') is answered 408 and let go instead of holding a worker."""
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), BODY_TIMEOUT_SECONDS)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise BadRequestError(408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS} s") from None
            size += len(chunk)
            if size > MAX_BODY:
                raise BadRequestError(413, f"the body is over {MAX_BODY} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        logger.warning("%s disconnected while sending its request body", client)  # one line, no traceback
        raise BadRequestError(400, "the client disconnected before the body was complete") from None
    return b"".join(chunks)


def sniffed(content_type: str, body: bytes) -> str:
    """The content type, or for a body sent without a telling one (UNSAID_TYPES), what its first
    bytes are: an image format's magic number, or JSON's opening brace."""
    if content_type not in UNSAID_TYPES:
        return content_type
    for magic, kind in MAGIC.items():
        if body.startswith(magic):
            return kind
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    if body.lstrip()[:1] == b"{":
        return "application/json"
    return content_type


def _pixels(content_type: str, body: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    if not body:
        raise BadRequestError(400, "the body is empty: send a PNG, or JSON with pixels")
    content_type = sniffed(content_type, body)
    if content_type == "application/json":
        pixels, preprocess = pixels_from_json(body)
        return mnist_style(pixels) if preprocess else np.uint8(np.rint(pixels)).reshape(784)
    if content_type in IMAGE_TYPES:
        return _image(body, max_pixels)
    raise BadRequestError(
        415, f"content type {content_type or '(none)'!r} is not supported: use image/png or application/json"
    )


async def _form(request: Request, body: bytes) -> bytes:
    """The first file of a multipart upload."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request as StarletteRequest

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, receive).form()
    except Exception as exc:  # malformed multipart bodies raise several parser errors
        raise BadRequestError(400, f"could not read the multipart form ({exc})") from None
    for value in form.values():
        if isinstance(value, UploadFile):
            return await value.read()
    raise BadRequestError(422, "the form holds no file: upload the image as a file field")


def _image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    try:
        return image_to_digit(data, max_pixels)
    except ImageTooLargeError as exc:
        raise BadRequestError(413, str(exc)) from None
    except DataError as exc:
        raise BadRequestError(422, str(exc)) from None


# Seconds an idle keep-alive connection stays open before the server closes it.
KEEP_ALIVE_SECONDS = 5
# Seconds a request body may take between two of its parts.
BODY_TIMEOUT_SECONDS = 10


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it is serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, as asyncio's own servers have: its transports then switch Nagle off on
    # each connection (with proto 0 they do not, and every reply waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise NnxError(f"port {port} on {host} is in use; choose another with --port") from None
        raise NnxError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port") from None
    sock.listen(128)
    return sock


def serve(model_path: Path, host: str, port: int, device: str, max_pixels: int = MAX_PIXELS,
          ready: Any = None) -> None:  # fmt: skip
    import uvicorn

    model_path = model_file(model_path)  # a run directory: its model.npz
    app = create_app(model_path, device, max_pixels)
    sock = bind(host, port)
    if ready is not None:
        ready()
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=KEEP_ALIVE_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])
