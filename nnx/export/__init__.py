"""Taking a model elsewhere: one module per format, each walking the model's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnx.errors import NnxError

FORMATS = ("onnx", "safetensors")


def choose_format(output: Path | None, fmt: str | None) -> str:
    """The format to write: `fmt`, or else the output's suffix (.onnx, .safetensors), else ONNX; a
    format that contradicts the name is refused (a .safetensors file holding ONNX fools every reader)."""
    named = output.suffix.lower().removeprefix(".") if output else ""
    if named == "npz":  # ONNX bytes in a .npz would pass for an nnx model file until loaded
        raise NnxError(
            f"{output}: .npz is nnx's own model file, which this model already is; name it .onnx or .safetensors"
        )
    fmt = fmt if fmt is not None else (named if named in FORMATS else "onnx")
    if fmt not in FORMATS:
        raise NnxError(f"--format {fmt}: unknown (use {', '.join(FORMATS)})")
    if named in FORMATS and named != fmt:
        raise NnxError(f"{output}: a .{named} name for --format {fmt}; name it .{fmt} or drop --format")
    return fmt


def export(model: Any, preprocess: Any, path: Path, fmt: str, header: dict[str, Any] | None = None) -> Path:
    if fmt == "onnx":
        from nnx.export.onnx import export_onnx

        return export_onnx(model, preprocess, path)
    if fmt == "safetensors":
        from nnx.export.safetensors import export_safetensors

        return export_safetensors(model, preprocess, path, header)
    raise NnxError(f"--format {fmt}: unknown (use {', '.join(FORMATS)})")


def export_model_file(model_path: Path, output: Path | None, fmt: str | None, force: bool) -> tuple[Path, str, Any]:
    """Export an nnx model file (or a run directory's model.npz) as `fmt`, to `output` (by default
    beside it), never over an existing file unless `force`, never over a folder. Returns (the
    file written, its format, the loaded model)."""
    from nnx.io import model_file, open_model

    fmt = choose_format(output, fmt)  # -o model.safetensors means safetensors
    model_path = model_file(Path(model_path))
    output = Path(output) if output is not None else model_path.with_suffix(f".{fmt}")
    if output.is_dir():  # force replaces a file, never a folder
        raise NnxError(f"{output}: is a directory; give --output a file name")
    if output.exists() and not force:
        raise NnxError(f"{output}: exists; choose another --output or add --force (force=True from Python)")
    loaded = open_model(model_path, "cpu")  # the file's arrays, on the host, whatever device trained them
    return export(loaded.model, loaded.preprocess, output, fmt, loaded.header), fmt, loaded
