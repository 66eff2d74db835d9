"""`nnx info`: versions, usable backends and GPUs."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

from rich.table import Table

from nnx import __version__
from nnx.backend import gpu_unavailable_reason
from nnx.cli.common import stdout_console
from nnx.cpu_choice import ENV, PATHS, Cache, forced_path, host, host_key
from nnx.cpu_ops import blas_kernels, cpu_has_avx512, default_threads, numba_turned_off, products_turned_off
from nnx.errors import NnxError


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# The extras `nnx info` reports on, as pyproject.toml defines them (a test keeps the two alike;
# the installed metadata can be older than the code in an editable install); gpu has its own rows.
EXTRAS = {
    "plot": ["matplotlib"],
    "web": ["fastapi", "uvicorn", "python-multipart"],
    "sweep": ["optuna", "psycopg"],
    "export": ["onnx", "onnxruntime", "safetensors"],
    "log": ["tensorboardX"],
    "mpi": ["mpi4py", *(["mpich"] if sys.platform.startswith("linux") else [])],  # MPICH's wheel: Linux only
}


def _extra_row(extra: str, packages: list[str]) -> str:
    missing = [p for p in packages if _version(p) == "not installed"]
    if missing:
        return f"not installed ({', '.join(missing)}): pip install 'nnx[{extra}]'"
    return ", ".join(f"{p} {_version(p)}" for p in packages)


def _cpu_loops() -> str:
    """Whether the CPU's elementwise chains can run as nnx/cpu_kernels.py's compiled loops, read
    from the installed packages and the environment without importing Numba (0.2 s)."""
    if numba_turned_off():
        return "NumPy's chains (NNX_NUMBA=0 is set)"
    numba = _version("numba")
    if numba == "not installed":
        return "NumPy's chains (Numba is not installed: pip install numba)"
    return f"NumPy's chains, or compiled by Numba {numba} where a run's measurement says (NNX_NUMBA=0: never)"


def _cpu_products() -> str:
    """Whether the CPU's float32 matrix products can be nnx/cpu_products.py's AVX-512 tiles."""
    if products_turned_off():
        return "BLAS's (NNX_PRODUCTS=blas is set)"
    if numba_turned_off() or _version("numba") == "not installed":
        return "BLAS's (nnx's own need Numba)"
    if not cpu_has_avx512():
        return "BLAS's (this CPU has no AVX-512)"
    return "BLAS's, or nnx's AVX-512 tiles where an MLP's measurement says (NNX_PRODUCTS=blas: never)"


def _cpu_path_rows() -> list[tuple[str, str]]:
    """How a run's CPU path is chosen, and the measurements kept for this machine (as a run with
    the default thread count describes it)."""
    try:
        forced = forced_path()
    except NnxError as exc:
        return [("cpu path", str(exc))]
    if forced is not None:
        rows = [("cpu path", f"{forced} for every run ({ENV}={forced} is set)")]
    else:
        rows = [("cpu path", f"measured per network on this machine, once (nnx/cpu_choice.py); {ENV}: "
                 f"{', '.join(PATHS)} (+winograd for 3x3 convolutions)")]  # fmt: skip
    cache = Cache()
    here = host_key(host(max(1, default_threads())))
    for entry in cache.hosts():
        if host_key(entry.get("host", {})) != here:
            continue
        for network, measured in sorted(entry.get("networks", {}).items()):
            figures = measured.get("step_seconds", {}) if isinstance(measured, dict) else {}
            text = ", ".join(f"{path} {1e3 * s:.3g} ms" for path, s in figures.items() if isinstance(s, (int, float)))
            rows.append(("cpu measured", f"{network}: a step {text} ({str(measured.get('measured', '?'))[:10]})"))
    if len(rows) == 1:
        rows.append(("cpu measured", f"nothing yet ({cache.path})"))
    return rows


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
    versions.add_row("cpu loops", _cpu_loops())
    versions.add_row("cpu products", _cpu_products())
    for name, value in _cpu_path_rows():
        versions.add_row(name, value)
    reason = gpu_unavailable_reason()
    versions.add_row("backend gpu", "usable" if reason is None else f"not usable: {reason}")
    if reason is None:
        import cupy

        for index in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            versions.add_row(f"gpu:{index}", f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB")
        versions.add_row("cuda runtime", str(cupy.cuda.runtime.runtimeGetVersion()))
    for extra, packages in EXTRAS.items():
        versions.add_row(f"extra {extra}", _extra_row(extra, packages))
    console.print(versions)


def run_model_info(path: Path) -> None:
    """`nnx info MODEL`: what a model file holds, and its layers."""
    from nnx.cli.render import layer_table
    from nnx.data.datasets import class_names
    from nnx.io import model_file, open_model
    from nnx.runs import human_value

    path = model_file(path)  # a run directory: its model.npz
    loaded = open_model(path, "cpu")
    header, model = loaded.header, loaded.model
    table = Table(title=f"{path}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("model", f"{model.describe()} ({model.count_parameters():,} parameters, {header.get('dtype', '?')})")
    table.add_row("dataset", f"{header.get('dataset', 'mnist')}: classes {', '.join(class_names(header))}")
    pre = loaded.preprocess
    table.add_row("preprocessing", f"x = (pixels / 255 - {pre.mean:g}) / {pre.std:g}")
    for key, value in dict(header.get("metrics") or {}).items():
        table.add_row(key.replace("_", " "), human_value(key, value))
    table.add_row("written by", f"nnx {header.get('nnx_version', '?')}")
    console = stdout_console()
    console.print(table)
    console.print(layer_table(model))
