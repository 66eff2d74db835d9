"""Gradient checks and behaviour of the layers beyond the MLP: conv, pooling, dropout, batch norm."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.config import load_config
from nnx.nn import AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D, Reshape, build_model
from nnx.ops import Ops, im2col, output_size
from nnx.testing import EVERY_LAYER, directional_check, numerical_gradient, relative_error

TOL = 1e-6


def check_layer(layer, x, backend, rng, params=True):
    """Gradients of L = sum(y * w) w.r.t. x and every parameter, against central differences."""
    weights = backend.asarray(rng.normal(size=layer.forward(x, training=True).shape))

    def loss() -> float:
        return float((layer.forward(x, training=True) * weights).sum())

    layer.forward(x, training=True)
    dx = layer.backward(weights)
    assert relative_error(backend.to_numpy(dx), numerical_gradient(loss, x)) < TOL, "dx"
    if params:
        for name, param in layer.params.items():
            analytic = backend.to_numpy(layer.grads[name]).copy()
            assert relative_error(analytic, numerical_gradient(loss, param)) < TOL, name


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 1)])
def test_conv2d_gradients(backend, stride: int, padding: int) -> None:
    rng = np.random.default_rng(0)
    layer = Conv2D(backend, 2, 3, kernel=3, stride=stride, padding=padding, rng=rng)
    layer.params["b"][...] = backend.asarray(rng.normal(size=3))
    check_layer(layer, backend.asarray(rng.normal(size=(2, 2, 6, 5))), backend, rng)


def test_conv2d_matches_a_direct_convolution(cpu64) -> None:
    rng = np.random.default_rng(1)
    layer = Conv2D(cpu64, 2, 4, kernel=3, stride=2, padding=1, rng=rng)
    x = rng.normal(size=(3, 2, 7, 7))
    y = layer.forward(x)
    W, b = layer.params["W"], layer.params["b"]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((3, 4, 4, 4))
    for oy in range(4):
        for ox in range(4):
            window = padded[:, :, 2 * oy : 2 * oy + 3, 2 * ox : 2 * ox + 3]
            expected[:, :, oy, ox] = np.einsum("nchw,ochw->no", window, W) + b
    assert np.allclose(y, expected, atol=1e-12)


def col2im(xp, cols, shape, stride, padding):
    """The plain adjoint of im2col, the reference for col2im_product: every column entry summed
    back into the pixel it came from. cols: (N, OH, OW, kh, kw, C) -> (N, C, H, W)."""
    n, c, h, w = shape
    _, oh, ow, kh, kw, _ = cols.shape
    dx = xp.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] += cols[:, :, :, i, j, :]
    return dx[:, padding : padding + h, padding : padding + w, :].transpose(0, 3, 1, 2)


def test_col2im_is_the_adjoint_of_im2col(cpu64) -> None:
    """<im2col(x), c> = <x, col2im(c)> for all x, c: overlapping windows lose nothing. The same
    for the product form the layer uses: <im2col(x) W^T, g> = <x, col2im_product(g, W)>."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 7, 6))
    cols = im2col(np, x, 3, 3, 2, 1)
    c = rng.normal(size=cols.shape)
    assert abs((cols * c).sum() - (x * col2im(np, c, x.shape, 2, 1)).sum()) < 1e-10
    weights = rng.normal(size=(5, 3, 3, 3))  # (O, kh, kw, C)
    y = cols.reshape(-1, 27) @ weights.reshape(5, -1).T
    g = rng.normal(size=y.shape)
    assert (output_size(7, 3, 2, 1), output_size(6, 3, 2, 1)) == cols.shape[1:3]
    assert abs((y * g).sum() - (x * Ops(np).col2im_product(g, weights, x.shape, 2, 1)).sum()) < 1e-10


def test_col2im_product_equals_col2im_of_the_product(cpu64) -> None:
    rng = np.random.default_rng(10)
    shape, kernel, stride, padding = (2, 3, 7, 6), 3, 2, 1
    dy2 = rng.normal(size=(2 * 4 * 3, 5))
    weights = rng.normal(size=(5, kernel, kernel, 3))
    cols = (dy2 @ weights.reshape(5, -1)).reshape(2, 4, 3, kernel, kernel, 3)
    expected = col2im(np, cols, shape, stride, padding)
    assert np.allclose(Ops(np).col2im_product(dy2, weights, shape, stride, padding), expected, atol=1e-12)


def test_directional_check_on_a_larger_conv(cpu64) -> None:
    rng = np.random.default_rng(3)
    layer = Conv2D(cpu64, 8, 16, kernel=3, padding=1, rng=rng)
    x = rng.normal(size=(4, 8, 12, 12))
    weights = rng.normal(size=(4, 16, 12, 12))

    def loss() -> float:
        return float((layer.forward(x, training=True) * weights).sum())

    layer.forward(x, training=True)
    layer.backward(weights)
    assert directional_check(loss, layer.params["W"], layer.grads["W"].copy(), rng) < TOL


@pytest.mark.parametrize(
    ("cls", "size", "stride"), [(MaxPool2D, 2, 2), (MaxPool2D, 3, 2), (AvgPool2D, 2, 2), (AvgPool2D, 3, 1)]
)
def test_pool_gradients(backend, cls, size: int, stride: int) -> None:
    rng = np.random.default_rng(4)
    # Distinct values spaced well apart: finite differences never reorder a window's maximum.
    values = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.01
    check_layer(cls(backend, size, stride), backend.asarray(values), backend, rng, params=False)


def test_maxpool_ties_pass_the_gradient_once(cpu64) -> None:
    layer = MaxPool2D(cpu64, 2)
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 3] = 5.0
    y = layer.forward(x)
    assert y.tolist() == [[[[0.0, 5.0]]]]
    dx = layer.backward(np.ones((1, 1, 1, 2)))
    assert dx.tolist() == [[[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]]


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 3), (3, 2), (2, 1)])
def test_maxpool_gives_each_window_gradient_to_its_first_maximum(cpu64, size: int, stride: int) -> None:
    """Windows with ties in every position (small integers), against a loop over the windows
    that hands dy to the first maximum in row-major order."""
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.integers(0, 3, size=(3, 2, 7, 8)).astype(np.float64)
    layer = MaxPool2D(cpu64, size, stride)
    y = layer.forward(x, training=True)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)
    expected = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*y.shape):
        window = x[n, c, i * stride : i * stride + size, j * stride : j * stride + size]
        assert y[n, c, i, j] == window.max()
        a, b = np.unravel_index(np.argmax(window), window.shape)
        expected[n, c, i * stride + a, j * stride + b] += dy[n, c, i, j]
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-15)  # overlaps: sums in another order


def test_maxpool_overlapping_windows_accumulate(cpu64) -> None:
    """Stride 1, size 2: the centre maximum wins all four windows and receives all four
    gradients (the case where `dx[idx] += dy` with repeated indices would lose three)."""
    layer = MaxPool2D(cpu64, 2, 1)
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    assert dx[0, 0, 1, 1] == 4.0 and dx.sum() == 4.0


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 3, 2)])
def test_batchnorm_gradients_in_training(backend, shape) -> None:
    rng = np.random.default_rng(5)
    layer = BatchNorm(backend, shape[1])
    layer.params["gamma"][...] = backend.asarray(rng.uniform(0.5, 1.5, size=shape[1]))
    layer.params["beta"][...] = backend.asarray(rng.normal(size=shape[1]))
    check_layer(layer, backend.asarray(rng.normal(size=shape) * 2 + 1), backend, rng)


def test_batchnorm_statistics(cpu64) -> None:
    rng = np.random.default_rng(6)
    layer = BatchNorm(cpu64, 3, momentum=0.5)
    x = rng.normal(size=(50, 3)) * 4 + 2
    y = layer.forward(x, training=True)
    assert np.allclose(y.mean(axis=0), 0, atol=1e-12) and np.allclose(y.std(axis=0), 1, atol=1e-3)
    assert np.allclose(layer.buffers["running_mean"], 0.5 * x.mean(axis=0))
    assert np.allclose(layer.buffers["running_var"], 0.5 + 0.5 * x.var(axis=0, ddof=1))
    # Evaluation uses the running statistics, not the batch's.
    expected = (x - layer.buffers["running_mean"]) / np.sqrt(layer.buffers["running_var"] + 1e-5)
    assert np.allclose(layer.forward(x, training=False), expected)


def test_batchnorm_gradients_in_eval(cpu64) -> None:
    rng = np.random.default_rng(7)
    layer = BatchNorm(cpu64, 4)
    layer.buffers["running_mean"][...] = rng.normal(size=4)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, size=4)
    x = rng.normal(size=(5, 4))
    weights = rng.normal(size=(5, 4))

    def loss() -> float:
        return float((layer.forward(x, training=False) * weights).sum())

    layer.forward(x, training=False)
    dx = layer.backward(weights)
    assert relative_error(dx, numerical_gradient(loss, x)) < TOL


def test_dropout_train_and_eval(cpu64) -> None:
    layer = Dropout(cpu64, 0.25)
    x = np.ones((400, 500))
    assert layer.forward(x, training=False) is x
    layer.random_key = 7
    y = layer.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01 and np.allclose(y[kept], 1 / 0.75)
    assert np.array_equal(layer.backward(np.ones_like(x)), y)  # dL/dx = m / (1 - p)
    assert np.array_equal(layer.forward(x, training=True), y)  # same key, same mask
    layer.random_key = 8
    assert not np.array_equal(layer.forward(x, training=True), y)


def test_dropout_gradient_with_an_injected_mask(backend) -> None:
    rng = np.random.default_rng(8)
    layer = Dropout(backend, 0.5)
    x = backend.asarray(rng.normal(size=(4, 6)))
    mask = backend.asarray(rng.random((4, 6)) > 0.5)

    class Injecting(Dropout):
        def forward(self, x, training=False):
            self.next_mask = mask
            return super().forward(x, training)

    injecting = Injecting(backend, 0.5)
    check_layer(injecting, x, backend, rng, params=False)
    assert np.array_equal(backend.to_numpy(injecting.forward(x, True)), backend.to_numpy(x * mask * 2))
    del layer


def test_flatten_and_reshape_round_trip(cpu64) -> None:
    x = np.arange(2 * 784.0).reshape(2, 784)
    images = Reshape(cpu64, (1, 28, 28)).forward(x)
    assert images.shape == (2, 1, 28, 28)
    assert np.array_equal(Flatten(cpu64).forward(images), x)


def test_cnn_config_builds_and_checks_shapes() -> None:
    config, _ = load_config("mnist_cnn")
    backend = get_backend("cpu")
    model = build_model(config.model.layer_specs(), backend, np.random.default_rng(0), classes=10)
    x = backend.asarray(np.zeros((2, 784)))
    assert model.forward(x).shape == (2, 10)
    bad = [{"type": "conv2d", "out": 4}, {"type": "linear", "out": 10}]
    with pytest.raises(ValueError, match="needs a flat input but gets shape"):
        build_model(bad, backend, np.random.default_rng(0), classes=10)
    with pytest.raises(ValueError, match="MNIST needs 10"):
        build_model([{"type": "linear", "out": 5}], backend, np.random.default_rng(0), classes=10)


def test_small_cnn_gradients_through_the_fused_conv_relu(backend) -> None:
    """conv -> relu (fused by Sequential) -> maxpool -> flatten -> linear, with the loss."""
    from nnx.nn import SoftmaxCrossEntropy

    rng = np.random.default_rng(9)
    spec = [
        {"type": "reshape", "shape": [1, 6, 6]},
        {"type": "conv2d", "out": 3, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "linear", "out": 4},
    ]
    model = build_model([{"type": "linear", "in": 36, "out": 36}, *spec], backend, rng)
    assert model.layers[2].fuse_relu and model.layers[3].applied_by_previous
    x = backend.asarray(rng.normal(size=(3, 36)))
    y = backend.asarray(rng.integers(0, 4, size=3), dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy(backend)

    def loss() -> float:
        return float(loss_fn.forward(model.logits(x, training=True), y))

    loss()
    model.backward(loss_fn.backward())
    for name, param, grad in model.parameters():
        analytic = backend.to_numpy(grad).copy()
        assert relative_error(analytic, numerical_gradient(loss, param)) < TOL, name


def test_the_summary_gives_each_layers_true_output_shape_and_parameters() -> None:
    """nnx info and --dry-run list the shapes build_model worked out: each must be what the layer
    really returns, and the parameters must add up."""
    backend = get_backend("cpu", "float64")
    model = build_model(EVERY_LAYER, backend, np.random.default_rng(0), classes=10)
    rows = model.summary()
    assert len(rows) == len(model.layers) and sum(count for _, _, count in rows) == model.count_parameters()
    x = np.random.default_rng(1).random((3, 784))
    for layer, (text, shape, count) in zip(model.layers, rows, strict=True):
        x = layer.forward(x, training=False)
        assert x.shape == (3, *shape), text
        assert text.startswith(layer.spec()["type"]) and count == sum(p.size for p in layer.params.values())
