"""Winograd's F(2x2, 3x3) (nnx/nn/winograd.py), which the CPU's ops choose for wide 3x3 stride-1
convolutions: the same forward, gradients and input gradients as the im2col reference, for every
size and padding, and chosen only where it pays."""

from __future__ import annotations

import numpy as np
import pytest

import nnx.cpu_ops as cpu_ops
from nnx.backend import Backend
from nnx.config import load_config
from nnx.cpu_ops import CpuOps
from nnx.nn import Conv2D, build_model
from nnx.ops import Ops
from nnx.testing import numerical_gradient, relative_error


@pytest.fixture
def every_3x3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 3x3 stride-1 convolution by Winograd, however narrow."""
    monkeypatch.setattr(cpu_ops, "WINOGRAD_MIN_CHANNEL_RATIO", 0)
    monkeypatch.setattr(cpu_ops.CpuOps, "winograd", True)


def backends(dtype: type) -> tuple[Backend, Backend]:
    """(Winograd on the CPU's ops, the im2col reference), in `dtype`."""
    return Backend("cpu", np, np.dtype(dtype), ops=CpuOps(threads=2, own_threads=True)), Backend(
        "cpu", np, np.dtype(dtype), ops=Ops(np)
    )


def forward_backward(backend: Backend, n: int, c: int, h: int, w: int, k: int, padding: int, relu: bool) -> dict:
    rng = np.random.default_rng([n, c, h, w, k, padding])
    layer = Conv2D(backend, c, k, kernel=3, padding=padding, rng=rng)
    layer.params["b"][...] = rng.normal(size=k)
    layer.fuse_relu = relu
    x = rng.normal(size=(n, c, h, w)).astype(backend.dtype)
    y = layer.forward(x, training=True)
    dx = layer.backward(rng.normal(size=y.shape).astype(backend.dtype))
    return {"y": y.copy(), "dx": dx.copy(), "dW": layer.grads["W"].copy(), "db": layer.grads["b"].copy(),
            "winograd": layer.by_winograd}  # fmt: skip


SHAPES = [  # n, c, h, w, k, padding, relu
    (3, 4, 14, 14, 5, 1, True),
    (2, 3, 7, 9, 4, 0, False),  # odd sizes: a last tile half outside
    (2, 2, 5, 6, 3, 2, True),
    (2, 2, 2, 3, 3, 3, False),  # padding wider than the kernel's reach: outputs of zeros plus b
    (2, 2, 1, 1, 3, 1, False),  # one pixel: one tile, three of its outputs dropped
    (1, 1, 3, 3, 2, 0, False),  # one output
    (0, 3, 6, 6, 4, 1, True),  # an empty batch
]


@pytest.mark.parametrize(("n", "c", "h", "w", "k", "padding", "relu"), SHAPES)
def test_winograd_gives_the_im2col_references_numbers(every_3x3, n, c, h, w, k, padding, relu) -> None:
    winograd, reference = backends(np.float64)
    ours = forward_backward(winograd, n, c, h, w, k, padding, relu)
    theirs = forward_backward(reference, n, c, h, w, k, padding, relu)
    assert ours.pop("winograd") and not theirs.pop("winograd")
    for key, expected in theirs.items():
        assert ours[key].shape == expected.shape, key
        np.testing.assert_allclose(ours[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)


def test_winograd_float32_is_as_close_to_exact_as_im2col(every_3x3) -> None:
    """F(2x2, 3x3)'s transforms add little rounding: against float64, its float32 results are
    within a few times im2col's float32 error (the GPU parity tolerances are 8x the CPU's own)."""
    exact = forward_backward(backends(np.float64)[1], 8, 32, 14, 14, 64, 1, True)
    wino32 = forward_backward(backends(np.float32)[0], 8, 32, 14, 14, 64, 1, True)
    im2col32 = forward_backward(backends(np.float32)[1], 8, 32, 14, 14, 64, 1, True)
    for key in ("y", "dx", "dW", "db"):
        ours, theirs = relative_error(wino32[key], exact[key]), relative_error(im2col32[key], exact[key])
        assert ours < 1e-5 and ours < 4 * max(theirs, 1e-7), (key, ours, theirs)


def test_winograd_gradients_against_central_differences(every_3x3) -> None:
    backend = backends(np.float64)[0]
    rng = np.random.default_rng(0)
    layer = Conv2D(backend, 3, 4, kernel=3, padding=1, rng=rng)
    layer.params["b"][...] = rng.normal(size=4)
    x = rng.normal(size=(2, 3, 5, 7))
    weights = rng.normal(size=(2, 4, 5, 7))

    def loss() -> float:
        return float((layer.forward(x, training=True) * weights).sum())

    layer.forward(x, training=True)
    dx = layer.backward(weights)
    assert layer.by_winograd
    assert relative_error(dx, numerical_gradient(loss, x)) < 1e-6
    for name, param in layer.params.items():
        assert relative_error(layer.grads[name].copy(), numerical_gradient(loss, param)) < 1e-6, name


def test_it_runs_where_a_run_s_path_says_and_the_convolution_is_a_candidate() -> None:
    """Candidates: wide 3x3 stride-1 convolutions. They go by Winograd when the ops' path has
    "+winograd" (nnx/cpu_choice.py measured it faster on this machine), by im2col otherwise."""
    backend = backends(np.float32)[0]

    def candidates(config: str) -> list[bool]:
        model = build_model(load_config(config)[0].model.layer_specs(), backend, np.random.default_rng(0), 10)
        return [cpu_ops.winograd_candidate(layer) for layer in model.layers if layer.kind == "conv2d"]

    assert candidates("mnist_cnn") == [False, True]  # 1 -> 32 im2col; 32 -> 64 a candidate
    assert candidates("mnist_fast") == [False, False]  # 12 -> 32: the transforms cost what the products save
    assert not cpu_ops.winograd_candidate(Conv2D(backend, 32, 64, kernel=3, stride=2, padding=1))
    assert not cpu_ops.winograd_candidate(Conv2D(backend, 32, 64, kernel=5, padding=2))
    assert cpu_ops.winograd_candidate(Conv2D(backend, 32, 64, kernel=3, padding=3))
    wide = Conv2D(backend, 32, 64, kernel=3, padding=1)
    ops = CpuOps()
    assert not ops.conv_by_winograd(wide) and ops.path in ("numpy", "compiled", "tiles")  # by default: im2col
    for path, by_winograd in [("compiled+winograd", True), ("numpy+winograd", True), ("numpy", False)]:
        ops.use_path(path)
        assert ops.conv_by_winograd(wide) == by_winograd and ops.path == path
        assert not ops.conv_by_winograd(Conv2D(backend, 1, 32, kernel=3, padding=1))  # never a narrow one
    assert not Ops(np).conv_by_winograd(wide)  # the reference: never


def test_dw_is_the_same_from_kept_tiles_or_tiles_built_again(every_3x3) -> None:
    """A training forward keeps the transformed input for dW; after an evaluation forward, backward
    transforms it again, with the same numbers."""
    backend = backends(np.float32)[0]
    rng = np.random.default_rng(3)
    layer = Conv2D(backend, 8, 16, kernel=3, padding=1, rng=rng)
    x = rng.normal(size=(5, 8, 9, 9)).astype(np.float32)
    dy = rng.normal(size=(5, 16, 9, 9)).astype(np.float32)
    grads = []
    for training in (True, False):
        layer.forward(x, training=training)
        assert (layer.tiles is not None) == training
        dx = layer.backward(dy)
        grads.append((dx.copy(), layer.grads["W"].copy(), layer.grads["b"].copy()))
    for kept, rebuilt in zip(*grads, strict=True):
        assert np.array_equal(kept, rebuilt)
