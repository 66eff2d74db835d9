"""`nnx export MODEL --format onnx|safetensors`."""

from __future__ import annotations

from pathlib import Path

from nnx.cli.common import stdout_console
from nnx.errors import NnxError
from nnx.export import FORMATS, export
from nnx.io import model_file, open_model


def run_export(model_path: Path, fmt: str | None, output: Path | None, force: bool) -> None:
    named = output.suffix.lower().removeprefix(".") if output else ""
    if fmt is None:  # -o model.safetensors means safetensors
        fmt = named if named in FORMATS else "onnx"
    if fmt not in FORMATS:
        raise NnxError(f"--format {fmt}: unknown (use {', '.join(FORMATS)})")
    if named in FORMATS and named != fmt:  # a .safetensors file that holds ONNX would fool every reader
        raise NnxError(f"{output}: a .{named} name for --format {fmt}; name it .{fmt} or drop --format")
    model_path = model_file(model_path)  # a run directory: its model.npz
    output = output or model_path.with_suffix(f".{fmt}")
    if output.is_dir():  # --force replaces a file, never a folder
        raise NnxError(f"{output}: is a directory; give --output a file name")
    if output.exists() and not force:
        raise NnxError(f"{output}: exists; choose another --output or add --force")
    loaded = open_model(model_path, "cpu")
    written = export(loaded.model, loaded.preprocess, output, fmt, loaded.header)
    stdout_console().print(
        f"{fmt} written to {written} ({written.stat().st_size:,} bytes): {loaded.model.describe()}", markup=False
    )
