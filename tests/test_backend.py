"""The backend: device strings, clear errors when a GPU cannot be used, no silent copies."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.errors import BackendError
from nnx.nn import build_model, mlp_spec


def test_cpu_backend_roundtrip() -> None:
    backend = get_backend("cpu", "float32")
    x = backend.asarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert x.dtype == np.float32
    assert backend.asarray(np.arange(3, dtype=np.uint8)).dtype == np.uint8  # ints keep their type
    assert np.array_equal(backend.to_numpy(x), np.arange(6).reshape(2, 3))
    backend.synchronize()


@pytest.mark.parametrize("device", ["tpu", "gpu:x", "cuda"])
def test_unknown_device(device: str) -> None:
    with pytest.raises(BackendError, match="unknown device"):
        get_backend(device)


def test_unknown_dtype() -> None:
    with pytest.raises(BackendError, match="unknown dtype 'float16'"):
        get_backend("cpu", "float16")


def test_gpu_without_cupy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(BackendError) as info:
        get_backend("gpu")
    assert "pip install 'nnx[gpu]'" in str(info.value) and "nnx[gpu-cuda13]" in str(info.value)


def fake_cupy(get_count) -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_count))
    return cupy


def test_gpu_with_cupy_but_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> int:
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(no_driver))
    with pytest.raises(BackendError) as info:
        get_backend("gpu:0")
    message = str(info.value)
    assert "cudaErrorInsufficientDriver" in message and "--gpus all" in message


def test_gpu_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(lambda: 1))
    with pytest.raises(BackendError, match="gpu:3 does not exist: this machine has 1"):
        get_backend("gpu:3")


def test_auto_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    backend = get_backend("auto")
    assert backend.name == "cpu" and "nnx[gpu]" in backend.auto_fallback


def test_mixed_inputs_are_refused() -> None:
    backend = get_backend("cpu")
    model = build_model(mlp_spec([4, 2]), backend, np.random.default_rng(0))
    with pytest.raises(BackendError, match="the network's input is a builtins.list but the model lives on cpu"):
        model.forward([[0.0, 1.0, 2.0, 3.0]])


def test_scatter_add_accumulates_duplicates(backend) -> None:
    target = backend.xp.zeros(4, dtype=backend.dtype)
    index = backend.asarray(np.array([1, 1, 3]), dtype=np.int64)
    backend.scatter_add(target, index, backend.asarray(np.array([1.0, 2.0, 5.0])))
    assert backend.to_numpy(target).tolist() == [0.0, 3.0, 0.0, 5.0]


def test_a_batch_is_measured_against_the_devices_memory(backend) -> None:
    """memory_bytes is the device's whole memory (the GPU's on a GPU); check_batch_fits refuses
    the first batch size whose activations and gradients at a step's peak (the kept outputs, and the
    largest output's gradient with one working copy), beside the parameters, their gradients and
    the optimizer's state, exceed it, and nothing below."""
    from nnx.nn import build_model

    spec = [
        {"type": "conv2d", "out": 8, "kernel": 3},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "linear", "out": 10},
    ]
    model = build_model(spec, backend, np.random.default_rng(0))
    assert model.kept_per_sample == 8 * 26 * 26 * 2 + 10  # the flatten copies the channels-last images
    assert model.step_per_sample == model.kept_per_sample + 2 * 8 * 26 * 26
    memory = backend.memory_bytes()
    assert memory > 1 << 30
    itemsize = np.dtype(backend.dtype).itemsize
    per_image = model.step_per_sample * itemsize
    for state_arrays in (0, 2):  # plain SGD; Adam's two moments
        weights = model.count_parameters() * (2 + state_arrays) * itemsize
        most = (memory - weights) // per_image
        model.check_batch_fits(most, state_arrays)  # no array is allocated: the check is arithmetic
        with pytest.raises(
            ValueError, match=r"needs at least .* for its activations and gradients in this network, beside .* for its "
        ):
            model.check_batch_fits(most + 1, state_arrays)
