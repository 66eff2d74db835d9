"""safetensors: the weights, with the architecture and preprocessing in the file's metadata.

The format holds tensors and string metadata only, so loading one runs no code (its own
guarantee); nnx then checks the architecture and every tensor's shape and dtype against it, as for
its .npz model files, before anything is built on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nnx.atomic import write_atomic
from nnx.errors import ModelFileError, NnxError

FORMAT = "nnx-model-safetensors"


def _library() -> Any:
    try:
        import safetensors.numpy
    except ImportError:
        raise NnxError("safetensors files need the safetensors package: pip install 'nnx[export]'") from None
    return safetensors.numpy


def export_safetensors(model: Any, preprocess: Any, path: Path, header: dict[str, Any] | None = None) -> Path:
    """Write the model's arrays and, as metadata, what rebuilds it (architecture, preprocessing)."""
    library = _library()
    from nnx import __version__

    arrays = {name: np.ascontiguousarray(a) for name, a in model.state().items()}
    meta = {
        "format": FORMAT,
        "nnx_version": __version__,
        "architecture": model.spec(),
        "dtype": np.dtype(model.backend.dtype).name,
        "preprocessing": preprocess.to_dict(),
        "metrics": (header or {}).get("metrics", {}),
    }
    data = library.save(arrays, metadata={"nnx": json.dumps(meta)})
    write_atomic(path, data)
    return path


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header in the form of an nnx model file's, host arrays), checked before use."""
    _library()
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            arrays = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # OSError, and the library's own SafetensorError for a malformed file
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if "nnx" not in metadata:
        raise ModelFileError(f"{path}: a safetensors file without nnx's metadata (not exported by nnx)")
    try:
        header = json.loads(metadata["nnx"])
    except (ValueError, RecursionError):  # not JSON, a number of thousands of digits, or nested too deep
        raise ModelFileError(f"{path}: its nnx metadata is not JSON nnx wrote") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: safetensors metadata is not nnx's (format {header.get('format')!r})")
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            raise ModelFileError(f"{path}: tensor {name} is {array.dtype}, not floating point")
    return header, arrays
