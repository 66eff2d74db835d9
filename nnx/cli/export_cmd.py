"""`nnx export MODEL --format onnx|safetensors`."""

from __future__ import annotations

from pathlib import Path

from nnx.cli.common import stdout_console
from nnx.export import export_model_file


def run_export(model_path: Path, fmt: str | None, output: Path | None, force: bool) -> None:
    written, fmt, loaded = export_model_file(model_path, output, fmt, force)
    stdout_console().print(
        f"{fmt} written to {written} ({written.stat().st_size:,} bytes): {loaded.model.describe()}", markup=False
    )
