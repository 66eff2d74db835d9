"""`nnx info`: versions, usable backends and GPUs."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from rich.table import Table

from nnx import __version__
from nnx.backend import gpu_unavailable_reason
from nnx.cli.common import stdout_console
from nnx.cpu_ops import blas_kernels


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_info() -> None:
    console = stdout_console()
    versions = Table(title="nnx info", show_header=False)
    versions.add_column(style="bold")
    versions.add_column()
    versions.add_row("nnx", __version__)
    versions.add_row("python", f"{sys.version.split()[0]} ({platform.machine()}, {platform.system()})")
    for package in ("numpy", "typer", "rich", "pydantic", "pyyaml", "pillow"):
        versions.add_row(package, _version(package))
    cupy_versions = [
        f"{p} {_version(p)}" for p in ("cupy-cuda12x", "cupy-cuda13x", "cupy") if _version(p) != "not installed"
    ]
    versions.add_row("cupy", ", ".join(cupy_versions) or "not installed")
    versions.add_row("backend cpu", "usable")
    versions.add_row("cpu blas", blas_kernels())
    reason = gpu_unavailable_reason()
    versions.add_row("backend gpu", "usable" if reason is None else f"not usable: {reason}")
    if reason is None:
        import cupy

        for index in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            versions.add_row(f"gpu:{index}", f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB")
        versions.add_row("cuda runtime", str(cupy.cuda.runtime.runtimeGetVersion()))
    console.print(versions)
