"""Model files: parameters in an .npz (loaded with allow_pickle=False) plus a JSON header.

The header records what is needed to rebuild and trust the model: format and nnx versions, the
layer list, preprocessing, dtype, metrics, and a SHA-256 per array so a tampered file is caught.
Saving copies arrays to the host and never moves or changes the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnx import __version__
from nnx.atomic import write_atomic
from nnx.backend import Backend, get_backend
from nnx.errors import ModelFileError
from nnx.nn.sequential import Sequential, build_model
from nnx.preprocess import Preprocess

FORMAT = "nnx-model"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"


@dataclass
class LoadedModel:
    model: Sequential
    preprocess: Preprocess
    header: dict[str, Any]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def save_model(
    path: Path,
    model: Sequential,
    preprocess: Preprocess,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model` to `path` atomically (temp file + rename)."""
    arrays = model.state()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnx_version": __version__,
        "architecture": model.spec(),
        "dtype": np.dtype(model.backend.dtype).name,
        "preprocessing": preprocess.to_dict(),
        "metrics": metrics or {},
        "arrays": {name: {"shape": list(a.shape), "sha256": _digest(a)} for name, a in arrays.items()},
        **(extra or {}),
    }
    buffer = io.BytesIO()
    header_bytes = np.frombuffer(json.dumps(header, indent=1).encode(), dtype=np.uint8)
    np.savez(buffer, **{HEADER_KEY: header_bytes}, **arrays)
    write_atomic(path, buffer.getvalue())


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checked header and host arrays of a model file; never unpickles anything."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path}: not an nnx model file (a bare .npy array, no header)")
            arrays = {key: npz[key] for key in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable nnx model file ({exc})") from None
    if HEADER_KEY not in arrays:
        raise ModelFileError(f"{path}: not an nnx model file (no {HEADER_KEY} entry)")
    try:
        header = json.loads(arrays.pop(HEADER_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nnx model file (format is {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} is not one this nnx {__version__} "
            f"understands (up to {FORMAT_VERSION}); upgrade nnx"
        )
    listed = header.get("arrays", {})
    if set(listed) != set(arrays):
        raise ModelFileError(f"{path}: arrays {sorted(arrays)} do not match the header's {sorted(listed)} (tampered?)")
    for name, array in arrays.items():
        if array.dtype.kind != "f" or list(array.shape) != listed[name]["shape"]:
            raise ModelFileError(
                f"{path}: array {name} has shape {array.shape} / {array.dtype}, not as the header says"
            )
        if _digest(array) != listed[name]["sha256"]:
            raise ModelFileError(f"{path}: array {name} does not match its checksum (file tampered or corrupt)")
    return header, arrays


def read_model_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An nnx .npz model file, or a .safetensors file that nnx exported: (header, host arrays)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        from nnx.export.safetensors import read_safetensors

        return read_safetensors(path)
    return read_header(path)


def load_model(path: Path, backend: Backend) -> LoadedModel:
    """Rebuild the network on `backend` (its dtype) from a model file (.npz or .safetensors)."""
    return _rebuild(path, *read_model_file(path), backend)


def open_model(path: Path, device: str = "cpu") -> LoadedModel:
    """Load a model file onto `device` in the dtype it was saved in, reading the file once."""
    header, arrays = read_model_file(path)
    return _rebuild(path, header, arrays, get_backend(device, header.get("dtype", "float32")))


def _rebuild(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], backend: Backend) -> LoadedModel:
    try:
        if not isinstance(header["architecture"], list):
            raise TypeError("the architecture is not a list of layers")
        model = build_model(header["architecture"], backend, np.random.default_rng(0))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: unsupported architecture ({exc})") from None
    expected = model.state_shapes()
    got = {name: a.shape for name, a in arrays.items()}
    if expected != got:
        raise ModelFileError(f"{path}: parameter shapes {got} do not fit the architecture {expected}")
    model.load_state(arrays)
    pre = header.get("preprocessing", {})
    preprocess = Preprocess(float(pre.get("mean", 0.0)), float(pre.get("std", 1.0)))
    return LoadedModel(model, preprocess, header)
