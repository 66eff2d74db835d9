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
        # Set by Sequential when the Linear before this layer already applied max(., 0), and when
        # the max pooling after it applies this layer's gradient mask.
        self.applied_by_previous = False
        self.mask_applied_by_next = False

    def forward(self, x: Any, training: bool = False) -> Any:
        self.y = x if self.applied_by_previous else self.xp.maximum(x, 0)
        return self.y

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * 1[x > 0], and x > 0 exactly where y > 0
        if self.mask_applied_by_next:
            return dy
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


class LeakyReLU(Layer):
    """y = x if x > 0 else alpha x.   Any shape."""

    kind = "leaky_relu"

    def __init__(self, backend: Backend, alpha: float = 0.01) -> None:
        super().__init__(backend)
        self.alpha = alpha

    def forward(self, x: Any, training: bool = False) -> Any:
        self.positive = x > 0
        return self.xp.where(self.positive, x, self.alpha * x)

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * (1 if x > 0 else alpha)
        return self.xp.where(self.positive, dy, self.alpha * dy)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "alpha": self.alpha}


class ELU(Layer):
    """y = x if x > 0 else alpha (exp(x) - 1).   Any shape."""

    kind = "elu"

    def __init__(self, backend: Backend, alpha: float = 1.0) -> None:
        super().__init__(backend)
        self.alpha = alpha

    def forward(self, x: Any, training: bool = False) -> Any:
        xp = self.xp
        self.positive = x > 0
        # exp of the negative part only: exp(x) of a large x would overflow in the unused branch.
        self.y = xp.where(self.positive, x, self.alpha * xp.expm1(xp.minimum(x, 0)))
        return self.y

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * (1 if x > 0 else alpha exp(x) = y + alpha)
        return self.xp.where(self.positive, dy, dy * (self.y + self.alpha))

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "alpha": self.alpha}


class GELU(Layer):
    """y = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi) (the tanh approximation)."""

    kind = "gelu"
    C = 0.7978845608028654
    A = 0.044715

    def forward(self, x: Any, training: bool = False) -> Any:
        self.x = x
        self.t = self.xp.tanh(self.C * (x + self.A * x * x * x))
        return 0.5 * x * (1 + self.t)

    def backward(self, dy: Any) -> Any:
        # dy/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2)
        x, t = self.x, self.t
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * self.C * (1 + 3 * self.A * x * x))


class Softmax(Layer):
    """y = exp(x) / sum exp(x) per row: an output layer for inference. x: (N, C).

    Training skips a final Softmax and feeds the logits to the fused SoftmaxCrossEntropy
    (Sequential.logits), which is stabler and cheaper than softmax followed by a log."""

    kind = "softmax"

    def forward(self, x: Any, training: bool = False) -> Any:
        e = self.xp.exp(x - x.max(axis=1, keepdims=True))
        self.y = e / e.sum(axis=1, keepdims=True)
        return self.y

    def backward(self, dy: Any) -> Any:
        # dx = y * (dy - sum_k dy_k y_k)
        y = self.y
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))


ACTIVATIONS: dict[str, type[Layer]] = {cls.kind: cls for cls in (ReLU, Sigmoid, Tanh, LeakyReLU, ELU, GELU, Softmax)}
