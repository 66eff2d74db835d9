"""The fused CUDA kernels compile for the H100/H200 (sm_90) with nvcc, without a GPU or CuPy.

nnx/gpu_kernels.py imports CuPy, so its sources are read from the file's syntax tree: each
ElementwiseKernel body goes into a kernel with CuPy's conventions (inputs by value, outputs by
reference, `i` the element index), for float and double; the softmax RawKernel is formatted as
the module formats it. A kernel that does not compile would otherwise first fail on a lent GPU.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "nnx" / "gpu_kernels.py"
C_TYPES = {"uint8": "unsigned char", "uint32": "unsigned int", "int32": "int", "int64": "long long"}


def nvcc() -> str:
    found = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
    if found is None:
        pytest.skip("nvcc is not installed here (the CUDA toolkit); a GPU machine compiles the kernels itself")
    return found


def module_sources() -> tuple[list[tuple[str, str, str, str]], str, dict]:
    tree = ast.parse(SOURCE.read_text())
    elementwise, softmax, math = [], None, None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "ElementwiseKernel":
            elementwise.append(tuple(ast.literal_eval(arg) for arg in node.args))
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "_SOFTMAX_XENT":
                softmax = ast.literal_eval(node.value)
            elif node.targets[0].id == "_MATH":
                math = ast.literal_eval(node.value)
    return elementwise, softmax, math


def elementwise_kernel(in_params: str, out_params: str, body: str, name: str) -> str:
    """CuPy's ElementwiseKernel as plain CUDA C: one thread per element, template over T."""
    args, locals_ = [], []
    for params, is_output in ((in_params, False), (out_params, True)):
        for param in params.split(","):
            *raw, type_name, var = param.split()  # `raw T x`: the whole array, indexed by the kernel
            c_type = C_TYPES.get(type_name, type_name)
            args.append(f"{'' if is_output else 'const '}{c_type}* {var}_")
            if raw:
                locals_.append(f"const {c_type}* {var} = {var}_;")
            else:
                locals_.append(f"{c_type}{'&' if is_output else ''} {var} = {var}_[i];")
    lines = "\n    ".join(locals_)
    return (
        f"template <typename T>\n__global__ void {name}({', '.join(args)}, long long n) {{\n"
        f"    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (i >= n) return;\n"
        f"    {lines}\n    {body};\n}}\n"  # CuPy appends the semicolon too
        f"template __global__ void {name}<float>({', '.join(a.replace('T*', 'float*') for a in args)}, long long);\n"
        f"template __global__ void {name}<double>({', '.join(a.replace('T*', 'double*') for a in args)}, long long);\n"
    )


def test_every_fused_kernel_compiles_for_sm_90(tmp_path: Path) -> None:
    compiler = nvcc()
    elementwise, softmax, math = module_sources()
    names = {kernel[3] for kernel in elementwise}
    assert {
        "nnx_bias_relu",
        "nnx_relu_backward",
        "nnx_sgd_momentum",
        "nnx_adam",
        "nnx_rmsprop",
        "nnx_im2col",
        "nnx_col2im",
        "nnx_max_pool",
        "nnx_max_pool_backward",
    } <= names
    parts = ["#include <cmath>"] + [elementwise_kernel(*kernel) for kernel in elementwise]
    parts += [softmax.format(T=c_type, **math[c_type]) for c_type in ("float", "double")]
    source = tmp_path / "kernels.cu"
    source.write_text("\n".join(parts))
    result = subprocess.run(
        [compiler, "-arch=sm_90", "--ptx", "-Werror", "all-warnings", "-o", str(tmp_path / "k.ptx"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ptx = (tmp_path / "k.ptx").read_text()
    for name in names | {"nnx_softmax_xent_float", "nnx_softmax_xent_double"}:
        assert name in ptx, f"{name} missing from the PTX"
