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
