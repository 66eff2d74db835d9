"""Edge cases of the hot elementwise chains, the same on every backend: the CPU runs the xp
reference (nnx/ops.py), a GPU the fused kernels (nnx/gpu_kernels.py), which "emulated" also runs
everywhere, compiled for the host (tests/emulated_cupy.py)."""

from __future__ import annotations

import warnings

import emulated_cupy
import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.data.mnist import Split
from nnx.nn import SoftmaxCrossEntropy, build_model, mlp_spec
from nnx.optim import SGD
from nnx.preprocess import Preprocess
from nnx.testing import EVERY_LAYER
from nnx.trainer import DeviceSplit, Trainer, TrainingDivergedError, epoch_order

DEVICES = [
    ("cpu", "float64"),
    ("cpu", "float32"),
    pytest.param("gpu", "float64", marks=pytest.mark.gpu),
    pytest.param("gpu", "float32", marks=pytest.mark.gpu),
    ("emulated", "float64"),
    ("emulated", "float32"),
]


def make_backend(device: str, dtype: str):
    return emulated_cupy.backend(dtype) if device == "emulated" else get_backend(device, dtype)


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_labels_outside_the_classes_give_nan_rows_not_a_wild_read(device: str, dtype: str) -> None:
    backend = make_backend(device, dtype)
    z = np.random.default_rng(0).normal(size=(5, 10))
    labels = np.array([3, 10, -1, 9, 1000])
    loss, dz = backend.ops.softmax_cross_entropy(backend.asarray(z), backend.asarray(labels, dtype=np.int64))
    dz = backend.to_numpy(dz)
    assert np.isnan(backend.to_float(loss))
    assert np.isnan(dz[[1, 2, 4]]).all()
    assert np.isfinite(dz[[0, 3]]).all()
    # the good rows are untouched by the bad ones: (p - onehot) / N as usual
    p = np.exp(z[0] - z[0].max()) / np.exp(z[0] - z[0].max()).sum()
    expected = (p - np.eye(10)[3]) / 5
    assert np.allclose(dz[0], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_an_empty_batch_has_loss_zero_and_an_empty_gradient(device: str, dtype: str) -> None:
    backend = make_backend(device, dtype)
    z = backend.xp.zeros((0, 10), dtype=backend.dtype)
    loss, dz = backend.ops.softmax_cross_entropy(z, backend.xp.zeros(0, dtype=np.int64))
    assert backend.to_float(loss) == 0.0 and dz.shape == (0, 10) and dz.dtype == backend.dtype


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_an_empty_batch_goes_through_every_layer(device: str, dtype: str) -> None:
    """No rows, after a real batch: forward in training and evaluation, loss 0, backward with zero
    gradients, no warning, and the batch norms' running averages untouched (a mean over no rows
    is NaN, which would have spoiled them for good)."""
    backend = make_backend(device, dtype)
    model = build_model(EVERY_LAYER, backend, np.random.default_rng(0))
    loss_fn = SoftmaxCrossEntropy(backend)
    x = backend.asarray(np.random.default_rng(1).normal(size=(6, 784)))
    y = backend.asarray(np.arange(6) % 10, dtype=np.int64)
    model.set_random_key(0, 1, 0)
    loss_fn.forward(model.logits(x, training=True), y)
    model.backward(loss_fn.backward())
    buffers = {name: backend.to_numpy(b).copy() for name, b in model.buffers()}
    assert buffers and all(np.isfinite(b).all() for b in buffers.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_random_key(0, 1, 1)
        loss = loss_fn.forward(model.logits(x[:0], training=True), y[:0])
        model.backward(loss_fn.backward())
        assert model.logits(x[:0]).shape == (0, 10)
    assert backend.to_float(loss) == 0.0
    for name, _, g in model.parameters():
        assert not backend.to_numpy(g).any(), name
    for name, b in model.buffers():
        assert np.array_equal(backend.to_numpy(b), buffers[name]), name


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_relu_backward_lets_nan_and_inf_through_as_the_product_does(device: str, dtype: str) -> None:
    backend = make_backend(device, dtype)
    dy = np.array([np.nan, np.nan, np.inf, np.inf, 2.0, 2.0, 3.0])
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, np.nan])
    with np.errstate(invalid="ignore"):  # inf * 0, as the trainer runs it
        dx = backend.to_numpy(backend.ops.relu_backward(backend.asarray(dy), backend.asarray(y)))
    with np.errstate(invalid="ignore"):
        expected = dy * (y > 0)  # nan, nan, inf, nan, 2, 0, 0
    assert np.array_equal(np.isnan(dx), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(dx[finite], expected[finite])


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_bias_relu_lets_nan_through(device: str, dtype: str) -> None:
    backend = make_backend(device, dtype)
    a = backend.asarray(np.array([[np.nan, -1.0, 2.0]]))
    y = backend.to_numpy(backend.ops.bias_relu(a, backend.asarray(np.array([0.0, 0.5, -3.0]))))
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 0


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_a_label_out_of_range_stops_training_naming_the_batch(device: str, dtype: str) -> None:
    """Data readers refuse such labels; if one slips through, the divergence guard names it."""
    backend = make_backend(device, dtype)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 784), dtype=np.uint8)
    labels = (np.arange(64) % 10).astype(np.uint8)
    labels[37] = 12
    model = build_model(mlp_spec([784, 8, 10]), backend, np.random.default_rng(1))
    trainer = Trainer(model, SGD(model.flat_parameters(), 0.01, ops=backend.ops), backend, Preprocess())
    bad_batch = list(epoch_order(0, 1, 64)).index(37) // 16 + 1
    with pytest.raises(TrainingDivergedError, match=f"at epoch 1, batch {bad_batch}$"):
        trainer.fit(DeviceSplit(Split(images, labels), backend), None, 1, 16, 0)


def test_divergence_after_the_first_check_names_its_batch() -> None:
    """The guard reads the losses every 50 batches: a bad batch in the second window (whose
    nan then spreads to every later one) is named, and not one of the first window's."""
    backend = get_backend("cpu", "float64")
    images = np.random.default_rng(0).integers(0, 256, size=(1000, 784), dtype=np.uint8)
    labels = (np.arange(1000) % 10).astype(np.uint8)
    order = list(epoch_order(0, 1, 1000))
    labels[order[10 * 66 + 3]] = 12  # in batch 67 of 100
    model = build_model(mlp_spec([784, 8, 10]), backend, np.random.default_rng(1))
    trainer = Trainer(model, SGD(model.flat_parameters(), 0.01, ops=backend.ops), backend, Preprocess())
    with pytest.raises(TrainingDivergedError, match="at epoch 1, batch 67$"):
        trainer.fit(DeviceSplit(Split(images, labels), backend), None, 1, 10, 0)
