"""The one place that knows whether arrays live in NumPy (CPU) or CuPy (GPU).

Layers, losses and optimizers receive a `Backend` and write `xp.maximum(x, 0)`; they never import
numpy or cupy themselves for array math. CuPy is imported lazily, only when a GPU is asked for.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from nnx.errors import BackendError
from nnx.ops import Ops

DTYPES = {"float32": np.float32, "float64": np.float64}

GPU_INSTALL_HINT = "install the GPU extra: pip install 'nnx[gpu]' (CUDA 12) or 'nnx[gpu-cuda13]' (CUDA 13)"


@dataclass
class Backend:
    """An array namespace (`xp`) plus the few operations where NumPy and CuPy differ.

    name: "cpu" or "gpu:N"; dtype: the floating type parameters and activations use.
    """

    name: str
    xp: ModuleType
    dtype: np.dtype
    tf32: bool = False
    # Why "auto" settled on the CPU (None when it was not asked to choose or found a GPU).
    auto_fallback: str | None = None
    # The hot elementwise chains: plain xp (the reference) or fused GPU kernels.
    ops: Ops = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ops is None:
            self.ops = Ops(self.xp)

    @property
    def is_gpu(self) -> bool:
        return self.name.startswith("gpu")

    def asarray(self, host_array: Any, dtype: Any = None) -> Any:
        """A host (NumPy) array on this backend; floats become `self.dtype` unless told. A GPU gets
        a copy; the CPU gets the host array itself when its dtype already fits (no copy: the data
        set is not doubled in memory), so code that changes the result in place copies first."""
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype.kind == "f":
            dtype = self.dtype
        return self.xp.asarray(host_array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        """Bring an array back to the host (a no-op view on the CPU)."""
        if self.is_gpu:
            return array.get()
        return np.asarray(array)

    def to_float(self, scalar: Any) -> float:
        """Read a 0-d device array as a Python float (a synchronising read on the GPU)."""
        return float(scalar)

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings); nothing to wait for on the CPU."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def owns(self, array: Any) -> bool:
        return isinstance(array, self.xp.ndarray)

    def check_owned(self, array: Any, what: str = "input") -> None:
        """Refuse arrays from another backend instead of copying them silently."""
        if not self.owns(array):
            kind = type(array).__module__.split(".")[0] + "." + type(array).__name__
            raise BackendError(
                f"{what} is a {kind} but the model lives on {self.name}: move it with backend.asarray() first"
            )

    def scatter_add(self, target: Any, indices: Any, values: Any) -> None:
        """target[indices] += values, accumulating duplicate indices (unlike `x[idx] += v`)."""
        if self.is_gpu:
            import cupyx

            cupyx.scatter_add(target, indices, values)
        else:
            np.add.at(target, indices, values)

    def memory_bytes(self) -> int:
        """All the memory arrays can live in: the GPU's (total, not free), or the host's RAM."""
        if self.is_gpu:
            return int(self.xp.cuda.Device().mem_info[1])
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 16 GB machine
            return 16 << 30

    def peak_memory_mb(self) -> float | None:
        """Peak device memory held by the array pool (GPU only)."""
        if not self.is_gpu:
            return None
        pool = self.xp.get_default_memory_pool()
        return pool.total_bytes() / 2**20

    def description(self) -> str:
        if not self.is_gpu:
            return f"cpu ({np.dtype(self.dtype).name})"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        tf32 = ", TF32 matmuls" if self.tf32 else ""
        return f"{self.name} {gpu} ({np.dtype(self.dtype).name}{tf32})"


def _parse_device(device: str) -> tuple[str, int]:
    device = device.strip().lower()
    if device in ("cpu", "auto"):
        return device, 0
    if device == "gpu":
        return "gpu", 0
    if device.startswith("gpu:") and device[4:].isdigit():
        return "gpu", int(device[4:])
    raise BackendError(f"unknown device {device!r}: use cpu, gpu, gpu:N or auto")


def _import_cupy(allow_tf32: bool) -> ModuleType:
    # CuPy reads CUPY_TF32 when it is imported; fp32 stays true fp32 unless a config asks.
    if "cupy" not in sys.modules:
        os.environ["CUPY_TF32"] = "1" if allow_tf32 else "0"
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(f"--device gpu needs CuPy, which is not installed ({exc}); {GPU_INSTALL_HINT}") from None
    return cupy


def gpu_unavailable_reason(index: int = 0) -> str | None:
    """Why the GPU cannot be used here, or None when it can (imports CuPy if present)."""
    try:
        _open_gpu(index, allow_tf32=os.environ.get("CUPY_TF32", "0") == "1")
    except BackendError as exc:
        return str(exc)
    return None


def gpu_count() -> int:
    """CUDA devices visible here (0 without CuPy or a driver)."""
    try:
        return _import_cupy(os.environ.get("CUPY_TF32", "0") == "1").cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver
        return 0


def _open_gpu(index: int, allow_tf32: bool) -> ModuleType:
    cupy = _import_cupy(allow_tf32)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, or a missing driver library
        raise BackendError(
            f"CuPy is installed but no usable CUDA device/driver was found ({exc}); inside Docker, run with --gpus all"
        ) from None
    if count == 0:
        raise BackendError("CuPy is installed but no CUDA device was found; inside Docker, run with --gpus all")
    if index >= count:
        raise BackendError(f"gpu:{index} does not exist: this machine has {count} CUDA device(s)")
    cupy.cuda.Device(index).use()
    return cupy


def _cpu_ops(fused: bool, cpu_path: str | None) -> Ops:
    if not fused:
        return Ops(np)
    from nnx.cpu_ops import CpuOps

    if cpu_path is None:  # Numba's loops and products wherever they run
        return CpuOps()
    ops = CpuOps(compiled=False)
    ops.use_path(cpu_path)
    return ops


def get_backend(
    device: str = "cpu",
    dtype: str = "float32",
    allow_tf32: bool = False,
    fused: bool = True,
    cpu_path: str | None = None,
) -> Backend:
    """Make the backend for `device` ("cpu", "gpu", "gpu:N" or "auto"). `fused` picks the fast
    versions of the hot chains (fused CUDA kernels on a GPU, all cores on the CPU) over the plain
    xp reference in nnx/ops.py. `cpu_path` (nnx/cpu_choice.py: numpy, compiled, tiles, each with
    "+winograd" or not) says which of the CPU's fast versions; None: Numba's compiled loops and
    products wherever they run, convolutions by im2col."""
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}: use float32 or float64")
    kind, index = _parse_device(device)
    np_dtype = np.dtype(DTYPES[dtype])
    if kind == "cpu":
        return Backend("cpu", np, np_dtype, ops=_cpu_ops(fused, cpu_path))
    if kind == "auto":
        try:
            cupy = _open_gpu(index, allow_tf32)
        except BackendError as exc:
            return Backend("cpu", np, np_dtype, auto_fallback=str(exc), ops=_cpu_ops(fused, cpu_path))
    else:
        cupy = _open_gpu(index, allow_tf32)
    tf32 = os.environ.get("CUPY_TF32", "0") == "1" and np_dtype == np.float32
    ops = None
    if fused:
        from nnx.gpu_kernels import FusedOps

        ops = FusedOps()
    return Backend(f"gpu:{index}", cupy, np_dtype, tf32=tf32, ops=ops)
