"""Model files: parameters in an .npz (loaded with allow_pickle=False) plus a JSON header.

The header records what is needed to rebuild and trust the model: format and nnx versions, the
layer list, preprocessing, dtype, metrics, and a SHA-256 per array so a tampered file is caught.
Saving copies arrays to the host and never moves or changes the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def digest(array: np.ndarray) -> str:
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
        "arrays": {name: {"shape": list(a.shape), "sha256": digest(a)} for name, a in arrays.items()},
        **(extra or {}),
    }
    buffer = io.BytesIO()
    header_bytes = np.frombuffer(json.dumps(header, indent=1).encode(), dtype=np.uint8)
    np.savez(buffer, **{HEADER_KEY: header_bytes}, **arrays)
    write_atomic(path, buffer.getvalue())


HEADER_LIMIT = 1 << 22  # 4 MB of JSON is far more than any architecture needs


class _ArrayEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: list[int]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class _Header(BaseModel):
    """What a model file's JSON header must hold before anything is built from it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    format: str
    format_version: int
    architecture: list[dict[str, Any]] = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"
    preprocessing: _Preprocessing = Field(default_factory=_Preprocessing)
    arrays: dict[str, _ArrayEntry]


def check_members(path: Path, listed: dict[str, Any], limit_bytes: int | None = None) -> None:
    """Every array's shape and dtype, read from the .npy headers inside the zip (no data read),
    against what the JSON header lists, and their total size against `limit_bytes`: a small file
    cannot make nnx allocate gigabytes."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist() if n != HEADER_KEY + ".npy"}
            if set(members) != set(listed):
                raise ModelFileError(
                    f"{path}: arrays {sorted(members)} do not match the header's {sorted(listed)} (tampered?)"
                )
            for name, member in members.items():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                if dtype.kind != "f" or list(shape) != list(listed[name]["shape"]):
                    raise ModelFileError(
                        f"{path}: array {name} is {dtype} {list(shape)}, but the header lists {listed[name]['shape']}"
                    )
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable nnx model file ({exc})") from None
    if limit_bytes is not None and total > limit_bytes:
        raise ModelFileError(f"{path}: its arrays hold {total:,} bytes, more than the {limit_bytes:,} allowed here")


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy stream's header, leaving its data unread."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def read_json_member(path: Path) -> dict[str, Any]:
    """The __header__ entry, its size checked before it is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            if HEADER_KEY + ".npy" not in archive.namelist():
                raise ModelFileError(f"{path}: not an nnx model file (no {HEADER_KEY} entry)")
            with archive.open(HEADER_KEY + ".npy") as f:
                shape, dtype = _npy_header(f)
                if dtype != np.uint8 or len(shape) != 1 or shape[0] > HEADER_LIMIT:
                    raise ModelFileError(f"{path}: its header entry is {dtype} {list(shape)}, not JSON text")
                raw = f.read(shape[0])
        header = json.loads(raw.decode())
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: not a readable nnx model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt header (not a JSON object)")
    return header


def memory_limit() -> int:
    """Bytes of arrays a model file may hold: a quarter of this machine's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checked header and host arrays of a model file; never unpickles anything. The header
    is validated against its schema, and every array's declared shape and dtype against it, before
    any array is read."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    header = read_json_member(path)
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nnx model file (format is {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} is not one this nnx {__version__} "
            f"understands (up to {FORMAT_VERSION}); upgrade nnx"
        )
    try:
        _Header.model_validate(header)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ModelFileError(f"{path}: invalid header ({problems})") from None
    listed = header["arrays"]
    check_members(path, listed, memory_limit())  # names, shapes, dtypes, total size: before reading
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files if key != HEADER_KEY}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable nnx model file ({exc})") from None
    for name, array in arrays.items():
        if digest(array) != listed[name]["sha256"]:
            raise ModelFileError(f"{path}: array {name} does not match its checksum (file tampered or corrupt)")
    return header, arrays


def read_model_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An nnx .npz model file, or a safetensors file that nnx exported (by its name's .safetensors
    or, under any other name, by its first bytes): (header, host arrays). A run directory stands
    for the model.npz in it."""
    path = model_file(path)
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(
            f"{path}: an ONNX file, which nnx only writes; give the .npz or .safetensors model it came from "
            "(ONNX runs in onnxruntime)"
        )
    if path.suffix == ".safetensors" or _starts_like_safetensors(path):
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        from nnx.export.safetensors import read_safetensors

        return read_safetensors(path)
    return read_header(path)


def model_file(path: Path) -> Path:
    """`path`, or the model.npz inside it when it is a run directory."""
    path = Path(path)
    if not path.is_dir():
        if path.exists() and not path.is_file():  # a FIFO or a device would block the read, or never end
            raise ModelFileError(f"{path}: not a regular file; give a model file or a run directory")
        return path
    if not (path / "model.npz").is_file():
        raise ModelFileError(f"{path}: a directory without a model.npz; give a model file or a run directory")
    return path / "model.npz"


def _starts_like_safetensors(path: Path) -> bool:
    """A safetensors file opens with its JSON header's length (8 bytes, little-endian), then "{";
    a zip (.npz) with "PK"."""
    try:
        with open(path, "rb") as f:
            start = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False  # read_header names what is wrong with the path
    return len(start) == 9 and start[8:] == b"{" and 8 + int.from_bytes(start[:8], "little") <= size


def load_model(path: Path, backend: Backend) -> LoadedModel:
    """Rebuild the network on `backend` (its dtype) from a model file (.npz or .safetensors)."""
    path = model_file(path)
    return _rebuild(path, *read_model_file(path), backend)


def open_model(path: Path, device: str = "cpu") -> LoadedModel:
    """Load a model file onto `device` in the dtype it was saved in, reading the file once."""
    path = model_file(path)
    header, arrays = read_model_file(path)
    return _rebuild(path, header, arrays, get_backend(device, header.get("dtype", "float32"), cpu_path="numpy"))


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
