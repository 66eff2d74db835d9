"""The web app: GET / (the drawing page), POST /api/predict, GET /api/model, GET /healthz.

The model is loaded once; requests share it behind a lock (layers keep per-call caches, so two
forwards at once must not interleave). Every bad request gets a 4xx JSON error naming the
problem, and the server keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from nnx import __version__
from nnx.data.datasets import class_names
from nnx.errors import DataError
from nnx.images import image_to_digit, mnist_style
from nnx.io import open_model
from nnx.metrics import softmax

MAX_BODY = 1 << 20  # 1 MB
STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")


class BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Classifier:
    """One model on one backend: uint8 (784,) pixels -> probabilities."""

    def __init__(self, model_path: Path, device: str = "cpu") -> None:
        self.loaded = open_model(model_path, device)
        self.backend = self.loaded.model.backend
        self.header = self.loaded.header
        self.classes = class_names(self.header)
        self.lock = threading.Lock()

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
    if not isinstance(data, dict) or "pixels" not in data:
        raise BadRequestError(422, 'expected a JSON object with "pixels": a 28x28 or 784-long array of numbers 0-255')
    try:
        pixels = np.asarray(data["pixels"], dtype=np.float64)
    except (TypeError, ValueError):
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


def create_app(model_path: Path, device: str = "cpu") -> FastAPI:
    classifier = Classifier(model_path, device)
    app = FastAPI(title="nnx", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(BadRequestError)
    async def bad_request(request: Request, exc: BadRequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

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
        pixels = await _pixels(request, content_type, body)
        probabilities = classifier.probabilities(pixels)
        return JSONResponse(
            {
                "class": int(probabilities.argmax()),
                "label": classifier.classes[int(probabilities.argmax())],
                "probabilities": [round(float(p), 6) for p in probabilities],
                "input": pixels.tolist(),  # the 28x28 the network saw
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )

    return app


async def _read_limited(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequestError(413, f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _pixels(request: Request, content_type: str, body: bytes) -> np.ndarray:
    if not body:
        raise BadRequestError(400, "the body is empty: send a PNG, or JSON with pixels")
    if content_type == "application/json":
        pixels, preprocess = pixels_from_json(body)
        return mnist_style(pixels) if preprocess else np.uint8(np.rint(pixels)).reshape(784)
    if content_type in IMAGE_TYPES:
        return _image(body)
    if content_type == "multipart/form-data":
        form = await _form(request, body)
        return _image(form)
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


def _image(data: bytes) -> np.ndarray:
    try:
        return image_to_digit(data)
    except DataError as exc:
        raise BadRequestError(422, str(exc)) from None


def serve(model_path: Path, host: str, port: int, device: str) -> None:
    import uvicorn

    app = create_app(model_path, device)
    uvicorn.run(app, host=host, port=port, log_level="warning")
