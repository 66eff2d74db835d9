"""Elementwise nonlinearities."""

from __future__ import annotations

from typing import Any

from nnx.backend import Backend
from nnx.nn.layer import Layer


class ReLU(Layer):
    """y = max(x, 0).   Any shape."""

    kind = "relu"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        # Set by Sequential when the Linear before this layer already applied max(., 0).
        self.applied_by_previous = False

    def forward(self, x: Any, training: bool = False) -> Any:
        self.y = x if self.applied_by_previous else self.xp.maximum(x, 0)
        return self.y

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * 1[x > 0], and x > 0 exactly where y > 0
        return self.backend.ops.relu_backward(dy, self.y)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)).   Any shape."""

    kind = "sigmoid"

    def forward(self, x: Any, training: bool = False) -> Any:
        # tanh form: never overflows, unlike exp(-x) for very negative x.
        self.y = 0.5 * (self.xp.tanh(0.5 * x) + 1)
        return self.y

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * y (1 - y)
        return dy * self.y * (1 - self.y)


class Tanh(Layer):
    """y = tanh(x).   Any shape."""

    kind = "tanh"

    def forward(self, x: Any, training: bool = False) -> Any:
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * (1 - y^2)
        return dy * (1 - self.y * self.y)


ACTIVATIONS: dict[str, type[Layer]] = {cls.kind: cls for cls in (ReLU, Sigmoid, Tanh)}
