"""SGD updates against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.optim import SGD


def one_param(value: float, grad: float):
    p = np.array([value])
    g = np.array([grad])
    return p, g, [("w", p, g)]


def test_plain_sgd() -> None:
    p, g, params = one_param(1.0, 0.5)
    SGD(params, lr=0.1).step()
    assert p[0] == pytest.approx(1.0 - 0.1 * 0.5)


def test_momentum_two_steps() -> None:
    p, g, params = one_param(1.0, 1.0)
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step()  # v = 1, p = 1 - 0.1 = 0.9
    assert p[0] == pytest.approx(0.9)
    opt.step()  # v = 0.9 * 1 + 1 = 1.9, p = 0.9 - 0.19 = 0.71
    assert p[0] == pytest.approx(0.71)


def test_nesterov_two_steps() -> None:
    p, g, params = one_param(1.0, 1.0)
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    opt.step()  # v = 1, step g + mu v = 1.9, p = 0.81
    assert p[0] == pytest.approx(0.81)
    opt.step()  # v = 1.9, step 1 + 0.9 * 1.9 = 2.71, p = 0.81 - 0.271 = 0.539
    assert p[0] == pytest.approx(0.539)


def test_weight_decay() -> None:
    p, g, params = one_param(2.0, 0.0)
    SGD(params, lr=0.1, weight_decay=0.5).step()  # g = 0 + 0.5 * 2 = 1, p = 2 - 0.1
    assert p[0] == pytest.approx(1.9)
    assert g[0] == 0.0  # the layer's gradient buffer is not modified


def test_update_is_in_place() -> None:
    p, g, params = one_param(1.0, 1.0)
    before = p
    SGD(params, lr=0.1, momentum=0.5).step()
    assert p is before
