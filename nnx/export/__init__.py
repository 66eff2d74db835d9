"""Taking a model elsewhere: one module per format, each walking the model's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnx.errors import NnxError

FORMATS = ("onnx", "safetensors")


def export(model: Any, preprocess: Any, path: Path, fmt: str, header: dict[str, Any] | None = None) -> Path:
    if fmt == "onnx":
        from nnx.export.onnx import export_onnx

        return export_onnx(model, preprocess, path)
    if fmt == "safetensors":
        from nnx.export.safetensors import export_safetensors

        return export_safetensors(model, preprocess, path, header)
    raise NnxError(f"--format {fmt}: unknown (use {', '.join(FORMATS)})")
