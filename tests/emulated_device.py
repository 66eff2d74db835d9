"""A whole stand-in `cupy` (and `cupyx`): a device whose arrays keep apart from the host's, as CuPy's do.

tests/emulated_cupy.py emulates CuPy's two kernel classes, and the parity tests hand the fused
kernels NumPy arrays. This goes further, so that `nnx train --device gpu` runs end to end in CI:
`DeviceArray` holds a NumPy array "on the device" and, like `cupy.ndarray`,

- refuses to mix with host arrays: an operator, ufunc or function given a `numpy.ndarray` beside
  a device array raises CuPy's `TypeError: Unsupported type <class 'numpy.ndarray'>`;
- refuses implicit conversion to the host (`np.asarray(a)`, which CuPy refuses since v8): `.get()`
  is the way back, as in nnx's Backend.to_numpy;
- refuses a host array or list written through slices (`a[...] = host`, which CuPy hands to
  fill(), a scalar's); through an index array it is copied in, as CuPy does;
- gives 0-d device arrays, not NumPy scalars, from reductions and scalar indexing (`a.sum()`),
  which Python reads with float(), int() or bool() (a synchronisation on a real GPU).

`cupy.asarray` / `cupy.array` take host arrays (the host-to-device copy); every other function
takes device arrays. `cupy.cuda` answers as one device (Device, runtime, streams, events, the
memory pool) and `cupyx.scatter_add` is NumPy's add.at. The kernels are emulated_cupy's, given the
device arrays' memory.

What it finds: a host array where the code means a device array or the other way round, on any
path `--device gpu` takes (a GPU-only branch of the backend, the trainer, metrics, checkpoints,
the CLI). What it cannot: CuPy's own behaviour where it differs from NumPy's in ways not modelled
here, launches, device memory. Those are the real GPU run's (scripts/gpu_check.sh).
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
import os
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import emulated_cupy
import numpy as np

DEVICE_NAME = "Emulated GPU"
# How many devices `cupy.cuda.runtime.getDeviceCount()` reports (data-parallel ranks each take one).
DEVICES = int(os.environ.get("NNX_EMULATED_GPUS", "1"))
# Every copy between host and device, in order ("to device", "to host"): a test can tell that a
# training step makes none (CuPy would make them silently: a host index array, a float() read).
TRANSFERS: list[str] = []
DEVICE_MEMORY = 16 << 30


def _refuse(value: Any) -> None:
    raise TypeError(f"Unsupported type {type(value)}")


def _unwrap(value: Any) -> Any:
    """The NumPy array under a device array; lists and tuples element by element; a host array
    refused (CuPy does not take one where it computes)."""
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, np.ndarray):
        _refuse(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(item) for item in value)
    return value


def _unwrap_key(key: Any) -> Any:
    """An index: device arrays unwrapped; a host index array or list taken as CuPy takes it (copied
    to the device)."""
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_unwrap_key(part) for part in key)
    if isinstance(key, (np.ndarray, list)):
        TRANSFERS.append("to device")
    return key


def _advanced(key: Any) -> bool:
    """Whether an index holds an array or list (NumPy's advanced indexing)."""
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(part, (np.ndarray, DeviceArray, list)) for part in parts)


def _wrap(value: Any) -> Any:
    """NumPy results as device arrays: arrays, and NumPy scalars as 0-d arrays (CuPy's reductions
    stay on the device)."""
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    return value


def _call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """function on the NumPy arrays under device arrays (host arrays refused), its result wrapped."""
    return _wrap(function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))


class DeviceArray:
    """An array on the emulated device (see the module's docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 100  # NumPy defers to it in mixed operations, which it then refuses

    def __init__(self, array: np.ndarray) -> None:
        self._a = array

    def get(self, stream: Any = None) -> np.ndarray:
        TRANSFERS.append("to host")
        return self._a.copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
            "explicitly."
        )

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(_unwrap(out) for out in outs)
        result = getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs)
        if outs is not None:  # the device arrays given as out
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        if any(issubclass(t, np.ndarray) for t in types_):
            return NotImplemented  # NumPy then raises TypeError, as with CuPy
        return _call(func, args, kwargs)

    # What Python reads from a 0-d array (a synchronising read on a GPU).
    def __float__(self) -> float:
        TRANSFERS.append("to host")
        return float(self._a)

    def __int__(self) -> int:
        TRANSFERS.append("to host")
        return int(self._a)

    def __bool__(self) -> bool:
        TRANSFERS.append("to host")
        return bool(self._a)

    def __format__(self, spec: str) -> str:
        TRANSFERS.append("to host")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator[Any]:
        return (_wrap(row) for row in self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap_key(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        # CuPy copies a host array or list in only through an index array (core.array); through
        # slices it calls fill(), which takes a scalar: `a[...] = host_array` raises.
        if isinstance(value, DeviceArray):
            value = value._a
        elif isinstance(value, (np.ndarray, list, tuple)) and np.ndim(value) > 0 and not _advanced(key):
            _refuse(value)
        self._a[_unwrap_key(key)] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # NumPy's __array_interface__ & co. would hand the host the memory
            raise AttributeError(name)
        attribute = getattr(self._a, name)
        if name in ("item", "tolist"):
            TRANSFERS.append("to host")
        if callable(attribute):
            return lambda *args, **kwargs: _call(attribute, args, kwargs)
        return _wrap(attribute)

    @property
    def data(self) -> types.SimpleNamespace:
        """CuPy's MemoryPointer: `.ptr`, the address of the array's memory (NCCL takes it)."""
        return types.SimpleNamespace(ptr=self._a.ctypes.data)

    # shape and friends are plain values; T and the like go through __getattr__.
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)


def _binary(op: Any, reflected: bool = False) -> Any:
    def method(self: DeviceArray, other: Any) -> Any:
        other = _unwrap(other)
        return _wrap(op(other, self._a) if reflected else op(self._a, other))

    return method


def _inplace(op: Any) -> Any:
    def method(self: DeviceArray, other: Any) -> DeviceArray:
        op(self._a, _unwrap(other))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift"):  # fmt: skip
    _op = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    setattr(DeviceArray, f"__{_name}__", _binary(_op))
    setattr(DeviceArray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(DeviceArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(DeviceArray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", (lambda op: lambda self: _wrap(op(self._a)))(getattr(operator, _name)))
DeviceArray.__hash__ = None  # type: ignore[assignment]


def _from_host(function: Any) -> Any:
    """cupy.asarray / cupy.array: a host array (or list) copied to the device; a device array as is
    (or cast)."""

    def make(a: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else DeviceArray(a._a.astype(dtype))
        TRANSFERS.append("to device")
        return DeviceArray(np.array(function(a, dtype, *args, **kwargs), copy=True))

    return make


def _on_device(function: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return _call(function, args, kwargs)

    return call


class _Stream:
    ptr = 0

    def synchronize(self) -> None: ...


class _Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.time = 0.0

    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None: ...


class _Device:
    def __init__(self, index: int = 0) -> None:
        self.id = index

    def use(self) -> None:
        if not 0 <= self.id < DEVICES:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {self.id}")

    mem_info = property(lambda self: (DEVICE_MEMORY, DEVICE_MEMORY))
    compute_capability = "90"

    def synchronize(self) -> None: ...

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None: ...


class _Pool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None: ...


def _properties(index: int) -> dict[str, Any]:
    return {"name": DEVICE_NAME.encode(), "totalGlobalMem": DEVICE_MEMORY, "major": 9, "minor": 0,
            "multiProcessorCount": 1}  # fmt: skip


class _ElementwiseKernel(emulated_cupy.ElementwiseKernel):
    def __call__(self, *args: Any) -> Any:
        return _wrap(super().__call__(*_unwrap(args)))


class _RawKernel(emulated_cupy.RawKernel):
    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
        super().__call__(grid, block, _unwrap(tuple(args)))


def cupy_module() -> types.ModuleType:
    cupy = types.ModuleType("cupy", __doc__)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: DEVICES, getDeviceProperties=_properties, runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: 13000,
    )  # fmt: skip
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = _Device  # type: ignore[attr-defined]
    cuda.runtime = runtime  # type: ignore[attr-defined]
    cuda.get_current_stream = _Stream  # type: ignore[attr-defined]
    cuda.Event = _Event  # type: ignore[attr-defined]
    cuda.get_elapsed_time = lambda start, end: (end.time - start.time) * 1e3  # type: ignore[attr-defined]
    cuda.nccl = nccl_module()  # type: ignore[attr-defined]
    special = {
        "ndarray": DeviceArray, "cuda": cuda, "ElementwiseKernel": _ElementwiseKernel, "RawKernel": _RawKernel,
        "get_default_memory_pool": _Pool, "asarray": _from_host(np.asarray), "array": _from_host(np.array),
        "asnumpy": lambda a: a.get() if isinstance(a, DeviceArray) else np.asarray(a), "__version__": "13.0.0-emulated",
    }  # fmt: skip

    def attribute(name: str) -> Any:
        if name in special:
            return special[name]
        found = getattr(np, name)
        if isinstance(found, type) or not callable(found):  # dtypes and constants are NumPy's in CuPy too
            return found
        return _on_device(found)

    cupy.__getattr__ = attribute  # type: ignore[attr-defined]
    return cupy


NCCL_TYPES = {0: np.float32, 1: np.float64}


class _NcclCommunicator:
    """cupy.cuda.nccl.NcclCommunicator over MPI: allReduce reads and writes the device memory at
    the addresses it is given, as NCCL does, and sums it across the ranks with MPI."""

    def __init__(self, size: int, unique_id: Any, rank: int) -> None:
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD
        if (self.comm.Get_size(), self.comm.Get_rank()) != (size, rank):
            raise RuntimeError(f"NcclCommunicator({size}, rank {rank}) in an MPI world of {self.comm.Get_size()}")
        self.unique_id = unique_id

    def allReduce(self, send: int, receive: int, count: int, datatype: int, op: int, stream: int) -> None:  # noqa: N802
        from mpi4py import MPI

        if op != 0:
            raise ValueError(f"only NCCL_SUM is emulated, not op {op}")
        c_type = np.ctypeslib.as_ctypes_type(NCCL_TYPES[datatype])
        buffers = [np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(c_type)), (count,))
                   for address in (send, receive)]  # fmt: skip
        self.comm.Allreduce(MPI.IN_PLACE if send == receive else buffers[0], buffers[1], op=MPI.SUM)


def nccl_module() -> types.ModuleType:
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 0, 1, 0  # type: ignore[attr-defined]
    nccl.get_unique_id = lambda: tuple(np.random.default_rng().integers(0, 256, 128).tolist())  # type: ignore[attr-defined]
    nccl.NcclCommunicator = _NcclCommunicator  # type: ignore[attr-defined]
    return nccl


def cupyx_module() -> types.ModuleType:
    cupyx = types.ModuleType("cupyx")

    def scatter_add(a: DeviceArray, indices: Any, values: Any) -> None:
        np.add.at(_unwrap(a), _unwrap_key(indices), _unwrap(values))

    cupyx.scatter_add = scatter_add  # type: ignore[attr-defined]
    return cupyx


@contextlib.contextmanager
def installed() -> Iterator[types.ModuleType]:
    """`import cupy` finds the emulated device within the block (and nnx.gpu_kernels is imported
    against it afresh); sys.modules is as it was after."""
    names = ("cupy", "cupy.cuda", "cupy.cuda.nccl", "cupyx", "nnx.gpu_kernels")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    cupy = cupy_module()
    cuda = cupy.cuda
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": cuda.nccl, "cupyx": cupyx_module()})
    try:
        yield cupy
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


if __name__ == "__main__":  # `python tests/emulated_device.py train ...`: nnx's CLI on the emulated device
    with installed():
        from nnx.cli.app import app

        app(prog_name="nnx")
