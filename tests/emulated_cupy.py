"""CuPy's two kernel classes emulated on the host, so that CI runs nnx/gpu_kernels.py without a GPU.

`ElementwiseKernel` and `RawKernel` take the CUDA C that nnx hands CuPy, unchanged, and compile it
with the host's C++ compiler: an elementwise kernel becomes a loop over the element index `i`,
with CuPy's conventions (inputs by value, outputs by reference, all arguments broadcast to one
shape, the type `T` taken from the arguments); a raw kernel is called once per (block, thread),
with blockIdx, threadIdx and blockDim set as a GPU would set them. Everything else the module
offers is NumPy's.

What this checks: each kernel's arithmetic and its NaN handling, and the types, order and
contiguity of the arguments FusedOps passes (a kernel reads raw pointers here as on a GPU, so an
int32 array where it reads `long long` gives garbage here too). It is stricter than CuPy where
strictness catches mistakes: an array or NumPy scalar whose dtype differs from the parameter's is
refused instead of cast. Multiply-adds are fused where the CPU can, as nvcc fuses them
(`fma_flags`). What it cannot check: threads running at once, device memory, CuPy's own launch
code, nvcc's own choice of what to fuse. Those need the real GPU run.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib
import platform
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from nnx.backend import Backend

C_TYPES = {
    "float32": "float", "float64": "double", "uint8": "unsigned char", "uint32": "unsigned int",
    "int32": "int", "int64": "long long",
}  # fmt: skip
SCALARS = {
    "float32": ctypes.c_float, "float64": ctypes.c_double, "uint8": ctypes.c_uint8, "uint32": ctypes.c_uint32,
    "int32": ctypes.c_int32, "int64": ctypes.c_int64,
}  # fmt: skip

# What CUDA provides and C++ does not, with the same meaning.
PRELUDE = r"""
#include <cmath>
#include <cstring>
using std::isnan;
using std::sqrt;
#define __global__
struct nnx_dim3 { unsigned int x, y, z; };
static nnx_dim3 blockIdx, threadIdx, blockDim, gridDim;
extern "C" void nnx_emulate_thread(unsigned int block, unsigned int thread, unsigned int threads, unsigned int blocks) {
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
    blockDim = {threads, 1, 1};
    gridDim = {blocks, 1, 1};
}
static inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
static inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
"""

_libraries: dict[str, ctypes.CDLL] = {}
_build_dir: list[Path] = []


def compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++")


def fma_flags() -> list[str]:
    """nvcc contracts a * b + c into one fused multiply-add, rounded once, unless told not to; the
    host compiler is asked to do the same where the CPU has FMA (it may pick other expressions to
    contract than nvcc does), so that the float32 results differ from the reference's as a GPU's
    would, and the tolerances are tried against that."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        try:
            cpu = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ["-ffp-contract=off"]
        return ["-mfma", "-ffp-contract=fast"] if " fma " in cpu else ["-ffp-contract=off"]
    return ["-ffp-contract=fast"] if machine in ("aarch64", "arm64") else ["-ffp-contract=off"]


def compile_library(source: str) -> ctypes.CDLL:
    """The shared library built from PRELUDE + source (built once per source and process)."""
    source = PRELUDE + source
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key not in _libraries:
        if not _build_dir:
            _build_dir.append(Path(tempfile.mkdtemp(prefix="nnx-emulated-cupy-")))
            atexit.register(shutil.rmtree, _build_dir[0], True)  # the libraries stay loaded until then
        cc = compiler()
        if cc is None:
            raise RuntimeError("no C++ compiler (c++ or g++) to emulate CuPy's kernels with")
        src, lib = _build_dir[0] / f"{key}.cpp", _build_dir[0] / f"{key}.so"
        src.write_text(source)
        flags = ["-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", *fma_flags()]
        result = subprocess.run([cc, *flags, "-o", str(lib), str(src)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"the kernel does not compile on the host:\n{result.stderr[-3000:]}")
        _libraries[key] = ctypes.CDLL(str(lib))
    return _libraries[key]


def _params(text: str) -> list[tuple[str, str]]:
    """'T g, uint8 pixel, raw T w' -> [('T', 'g'), ('uint8', 'pixel'), ('raw T', 'w')]"""
    return [(" ".join(part.split()[:-1]), part.split()[-1]) for part in text.split(",")]


def _raw(type_name: str) -> bool:
    """A `raw` parameter: the whole array, indexed by the kernel, not an element of it."""
    return type_name.startswith("raw ")


def _element_type(type_name: str) -> str:
    """'raw T' -> 'T', 'uint8' -> 'uint8'"""
    return type_name.removeprefix("raw ")


class ElementwiseKernel:
    """cupy.ElementwiseKernel(in_params, out_params, operation, name), run as a loop on the host."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str) -> None:
        self.inputs, self.outputs = _params(in_params), _params(out_params)
        self.operation, self.name = operation, name

    def source(self) -> str:
        args, locals_ = [], []
        for params, is_output in ((self.inputs, False), (self.outputs, True)):
            for type_name, var in params:
                element = _element_type(type_name)
                c_type = "T" if element == "T" else C_TYPES[element]
                args.append(f"{'' if is_output else 'const '}{c_type}* {var}_")
                if _raw(type_name):
                    locals_.append(f"const {c_type}* {var} = {var}_;")
                else:
                    ref = "&" if is_output else ""
                    locals_.append(f"{'' if is_output else 'const '}{c_type}{ref} {var} = {var}_[i];")
        signature = ", ".join(args)
        lines = "\n        ".join(locals_)
        code = (
            f"template <typename T>\nstatic void {self.name}({signature}, long long n) {{\n"
            f"    for (long long i = 0; i < n; ++i) {{\n        {lines}\n        {self.operation};\n    }}\n}}\n"
        )
        for t in ("float", "double"):
            concrete = signature.replace("T*", f"{t}*")
            names = ", ".join(f"{var}_" for _, var in self.inputs + self.outputs)
            code += f'extern "C" void {self.name}_{t}({concrete}, long long n) {{ {self.name}<{t}>({names}, n); }}\n'
        return code

    def _type_of_t(self, args: tuple[Any, ...]) -> np.dtype:
        found = {
            np.dtype(arg.dtype)
            for (type_name, _), arg in zip(self.inputs + self.outputs, args, strict=False)
            if _element_type(type_name) == "T" and isinstance(arg, (np.ndarray, np.generic))
        }
        if len(found) != 1:
            raise TypeError(f"{self.name}: the arguments of type T disagree or none sets it: {sorted(map(str, found))}")
        return found.pop()

    def __call__(self, *args: Any) -> Any:
        if len(args) not in (len(self.inputs), len(self.inputs) + len(self.outputs)):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.inputs)} inputs")
        t = self._type_of_t(args)
        if t.name not in ("float32", "float64"):
            raise TypeError(f"{self.name}: T is {t}")
        params = self.inputs + self.outputs
        shape = np.broadcast_shapes(*(np.shape(a) for (tn, _), a in zip(params, args, strict=False) if not _raw(tn)))
        outs = list(args[len(self.inputs) :])
        if not outs:
            outs = [np.empty(shape, dtype=t if tn == "T" else tn) for tn, _ in self.outputs]
        pointers, keep = [], []
        for (type_name, var), arg in zip(self.inputs, args, strict=False):
            element = _element_type(type_name)
            dtype = t if element == "T" else np.dtype(element)
            if isinstance(arg, (np.ndarray, np.generic)) and arg.dtype != dtype:
                raise TypeError(f"{self.name}: {var} is {arg.dtype}, the kernel takes {dtype}")
            if _raw(type_name):  # indexed by the kernel in C order, as CuPy indexes a raw array
                buffer = np.ascontiguousarray(arg)
            else:
                buffer = np.ascontiguousarray(np.broadcast_to(np.asarray(arg, dtype=dtype), shape))
            keep.append(buffer)
            pointers.append(buffer.ctypes.data)
        work = []
        for (type_name, var), out in zip(self.outputs, outs, strict=True):
            dtype = t if type_name == "T" else np.dtype(type_name)
            if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape:
                raise TypeError(f"{self.name}: output {var} must be a {dtype} array of shape {shape}")
            buffer = np.array(out, order="C")  # read too: p -= ... reads p
            work.append(buffer)
            pointers.append(buffer.ctypes.data)
        function = getattr(compile_library(self.source()), f"{self.name}_{C_TYPES[t.name]}")
        function.argtypes = [ctypes.c_void_p] * len(pointers) + [ctypes.c_longlong]
        function(*pointers, int(np.prod(shape, dtype=np.int64)))
        for out, buffer in zip(outs, work, strict=True):
            out[...] = buffer
        return outs[0] if len(outs) == 1 else tuple(outs)


class RawKernel:
    """cupy.RawKernel(code, name): kernel(grid, block, args) calls it once per block and thread."""

    def __init__(self, code: str, name: str) -> None:
        self.code, self.name = code, name

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
        if any(g != 1 for g in grid[1:]) or any(b != 1 for b in block[1:]):
            raise ValueError(f"{self.name}: only one-dimensional launches are emulated")
        library = compile_library(self.code)
        function = getattr(library, self.name)
        c_args = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:  # a kernel indexes raw memory: strides would be ignored
                    raise ValueError(f"{self.name}: an argument is not C-contiguous")
                c_args.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.generic) and arg.dtype.name in SCALARS:
                c_args.append(SCALARS[arg.dtype.name](arg.item()))
            else:  # CuPy would guess a C type for a Python number: nnx passes typed scalars
                raise TypeError(f"{self.name}: argument {arg!r} needs an explicit NumPy type")
        for b in range(grid[0]):
            for thread in range(block[0]):
                library.nnx_emulate_thread(b, thread, block[0], grid[0])
                function(*c_args)


def module() -> types.ModuleType:
    """A stand-in `cupy` module: the two kernel classes above, NumPy for everything else."""
    fake = types.ModuleType("cupy", "CuPy's kernels emulated on the host (tests/emulated_cupy.py)")
    fake.ElementwiseKernel = ElementwiseKernel  # type: ignore[attr-defined]
    fake.RawKernel = RawKernel  # type: ignore[attr-defined]
    fake.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    return fake


def fused_ops() -> Any:
    """nnx.gpu_kernels.FusedOps imported against the stand-in: the real module's kernels, on the host.
    sys.modules is left as it was (no `cupy` seen by anything else)."""
    saved = {name: sys.modules.pop(name) for name in ("cupy", "nnx.gpu_kernels") if name in sys.modules}
    sys.modules["cupy"] = module()
    try:
        kernels = importlib.import_module("nnx.gpu_kernels")
    finally:
        for name in ("cupy", "nnx.gpu_kernels"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return kernels.FusedOps()


class EmulatedGPU(Backend):
    """NumPy arrays with the GPU's fused kernels (emulated on the host) as their ops. Like a GPU's,
    and unlike the CPU backend's, asarray copies: a run never changes host inputs in place."""

    def asarray(self, host_array: Any, dtype: Any = None) -> Any:
        return super().asarray(np.array(host_array), dtype)


def backend(dtype: str) -> Backend:
    """The emulated GPU for tests, or a skip (a failure in CI) where no C++ compiler is installed."""
    if compiler() is None:
        import pytest

        pytest.skip("no C++ compiler (c++ or g++) to emulate the GPU's kernels with")
    return EmulatedGPU("emulated", np, np.dtype(dtype), ops=fused_ops())
