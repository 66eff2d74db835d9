"""Backprop is right: analytic gradients against central differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.nn import ACTIVATIONS, Linear, SoftmaxCrossEntropy, build_model, mlp_spec
from nnx.testing import directional_check, numerical_gradient, relative_error

TOL = 1e-6


def away_from_kink(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Inputs with |x| >= 0.1 so a finite difference never straddles ReLU's kink at 0."""
    x = rng.uniform(0.1, 1.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


def weighted_sum_loss(layer, x, weights, backend):
    """L = sum(y * weights): a scalar whose dL/dy is `weights`."""

    def loss() -> float:
        return float((layer.forward(x, training=True) * weights).sum())

    return loss


def test_linear_gradients(backend) -> None:
    rng = np.random.default_rng(1)
    layer = Linear(backend, 5, 4, "he", rng)
    layer.params["b"][...] = backend.asarray(rng.normal(size=4))
    x = backend.asarray(rng.normal(size=(3, 5)))
    weights = backend.asarray(rng.normal(size=(3, 4)))
    loss = weighted_sum_loss(layer, x, weights, backend)
    layer.forward(x, training=True)
    dx = layer.backward(weights)
    for name in ("W", "b"):
        numeric = numerical_gradient(loss, layer.params[name])
        assert relative_error(backend.to_numpy(layer.grads[name]), numeric) < TOL, name
    assert relative_error(backend.to_numpy(dx), numerical_gradient(loss, x)) < TOL


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_activation_gradients(backend, kind: str) -> None:
    rng = np.random.default_rng(2)
    layer = ACTIVATIONS[kind](backend)
    x = backend.asarray(away_from_kink(rng, (4, 6)))
    weights = backend.asarray(rng.normal(size=(4, 6)))
    loss = weighted_sum_loss(layer, x, weights, backend)
    layer.forward(x, training=True)
    dx = layer.backward(weights)
    assert relative_error(backend.to_numpy(dx), numerical_gradient(loss, x)) < TOL


def test_softmax_cross_entropy_gradient(backend) -> None:
    rng = np.random.default_rng(3)
    loss_fn = SoftmaxCrossEntropy(backend)
    z = backend.asarray(rng.normal(size=(5, 10)) * 3)
    y = backend.asarray(rng.integers(0, 10, size=5), dtype=np.int64)

    def loss() -> float:
        return float(loss_fn.forward(z, y))

    loss()
    dz = backend.to_numpy(loss_fn.backward()).copy()
    assert relative_error(dz, numerical_gradient(loss, z)) < TOL


def test_softmax_cross_entropy_value_matches_definition(cpu64) -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(6, 10))
    y = rng.integers(0, 10, size=6)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = -np.log(p[np.arange(6), y]).mean()
    got = float(SoftmaxCrossEntropy(cpu64).forward(z, y))
    assert abs(got - expected) < 1e-12


def test_softmax_cross_entropy_extreme_logits_stay_finite(backend) -> None:
    loss_fn = SoftmaxCrossEntropy(backend)
    z = backend.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]]))
    y = backend.asarray(np.array([1, 0, 2]), dtype=np.int64)
    loss = float(loss_fn.forward(z, y))
    dz = backend.to_numpy(loss_fn.backward())
    assert np.isfinite(loss) and loss > 1e3  # confidently wrong rows cost ~2e4 / 3
    assert np.isfinite(dz).all()
    # Each row of p - onehot sums to zero: the gradient of a softmax is shift-invariant.
    assert np.abs(dz.sum(axis=1)).max() < 1e-12


def test_whole_network_gradients(backend) -> None:
    """A 2-layer net (Linear, ReLU, Linear) with the loss: every parameter's gradient."""
    rng = np.random.default_rng(5)
    model = build_model(mlp_spec([6, 5, 3]), backend, rng)
    x = backend.asarray(rng.normal(size=(4, 6)))
    y = backend.asarray(rng.integers(0, 3, size=4), dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy(backend)

    def loss() -> float:
        return float(loss_fn.forward(model.forward(x, training=True), y))

    # Keep ReLU inputs away from 0 so finite differences are valid.
    hidden = backend.to_numpy(x @ model.layers[0].params["W"] + model.layers[0].params["b"])
    assert np.abs(hidden).min() > 1e-4
    loss()
    model.backward(loss_fn.backward())
    for name, param, grad in model.parameters():
        analytic = backend.to_numpy(grad).copy()
        assert relative_error(analytic, numerical_gradient(loss, param)) < TOL, name


def backpropagated_linear(backend, rng, batch: int, fan_in: int, fan_out: int):
    """A Linear layer after one forward and backward of L = sum(y * w); returns (layer, L())."""
    layer = Linear(backend, fan_in, fan_out, "he", rng)
    x = rng.normal(size=(batch, fan_in))
    weights = rng.normal(size=(batch, fan_out))
    layer.forward(x, training=True)
    layer.backward(weights)
    return layer, weighted_sum_loss(layer, x, weights, backend)


def test_directional_check_on_a_large_layer(cpu64) -> None:
    """784-64 is too big for element-wise differences: check one random direction instead."""
    rng = np.random.default_rng(6)
    layer, loss = backpropagated_linear(cpu64, rng, 32, 784, 64)
    assert directional_check(loss, layer.params["W"], layer.grads["W"].copy(), rng) < TOL


def test_a_wrong_gradient_is_caught(cpu64) -> None:
    """The checker itself can fail: a deliberately wrong backward is detected."""
    layer, loss = backpropagated_linear(cpu64, np.random.default_rng(7), 3, 5, 4)
    wrong = layer.grads["W"] * 1.001
    assert relative_error(wrong, numerical_gradient(loss, layer.params["W"])) > TOL
