"""Which vector kernels each contender's CPU arithmetic ran with, printed above the benchmark tables.

nnx's products come from NumPy's BLAS, whose kernel family an environment may force
(OPENBLAS_CORETYPE=Haswell: AVX2 even on a CPU with AVX-512). PyTorch ignores OpenBLAS's
settings: its elementwise code (ATen), convolutions (oneDNN) and products (MKL) take the widest
vectors the CPU has, unless capped by ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and
MKL_ENABLE_INSTRUCTIONS. A ratio between the two is only about the code when both used the same
width, e.g. on a machine whose OpenBLAS is held at AVX2:

  ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/cnn.py speed
"""

from __future__ import annotations

import os

from nnx.cpu_ops import blas_kernels

TORCH_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# Variables that change which code runs or on how many threads: printed with every figure.
HOST_ENV = (
    "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES",
    "NNX_CPU_PATH", "NNX_NUMBA", "NNX_PRODUCTS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", *TORCH_CAPS,
)  # fmt: skip


def host_line() -> str:
    """The machine a benchmark's figures belong to, in one line: CPU model, CPUs this process may use
    (of all), vector extensions, BLAS and its kernels, versions, and every variable of HOST_ENV set.
    Every benchmark prints it first: these figures hold for that host and no other."""
    import platform

    import numpy as np

    from nnx.cpu_choice import _cpu_model, _isa, numba_installed
    from nnx.cpu_ops import usable_cpus

    numba = "Numba " + __import__("importlib.metadata").metadata.version("numba") if numba_installed() else "no Numba"
    env = [f"{name}={os.environ[name]}" for name in HOST_ENV if name in os.environ]
    return (
        f"host: {_cpu_model()}, {usable_cpus()} of {os.cpu_count()} CPUs, {_isa()}; BLAS: {blas_kernels()}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, {numba}; "
        f"environment: {' '.join(env) if env else 'none of ' + ', '.join(HOST_ENV[:3]) + ', ... set'}"
    )


def cpu_kernels() -> str:
    """One line: nnx's BLAS and its kernels; PyTorch's CPU capability and any caps set on it."""
    text = f"CPU kernels: nnx (NumPy's BLAS) {blas_kernels()}, {cpu_loops()}"
    try:
        import torch
    except ImportError:
        return text + "; PyTorch not installed"
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    caps = [f"{name}={os.environ[name]}" for name in TORCH_CAPS if name in os.environ]
    return text + f"; PyTorch {torch.__version__}: {capability}" + (f" ({', '.join(caps)})" if caps else "")


def cpu_loops() -> str:
    """What runs nnx's elementwise chains on the CPU: Numba's compiled loops or NumPy's passes."""
    from nnx.cpu_ops import compiled_kernels

    if compiled_kernels() is None:
        return "elementwise chains in NumPy (no Numba, or NNX_NUMBA=0)"
    import numba

    from nnx.cpu_ops import avx512_products

    products = ", an MLP's float32 products by nnx's AVX-512 tiles" if avx512_products() is not None else ""
    return f"elementwise chains compiled by Numba {numba.__version__}{products}"


def torch_on(device: str):  # noqa: ANN201 (torch may not be installed)
    """PyTorch, for `device` ("cpu" or "cuda"): ImportError when it is not installed, or has no
    usable CUDA for "cuda" (a CPU-only wheel on a GPU machine), which the tables show as a
    missing contender instead of a crash."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ImportError(f"PyTorch {torch.__version__} has no usable CUDA")
    return torch
