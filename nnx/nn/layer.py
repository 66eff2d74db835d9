"""The layer contract every building block follows."""

from __future__ import annotations

from typing import Any

from nnx.backend import Backend


class Layer:
    """A differentiable map y = f(x; params).

    `forward(x, training)` returns y and caches what `backward` needs; `backward(dy)` fills
    `grads` (same keys and shapes as `params`) and returns dx = dL/dx. Gradients are written into
    arrays allocated once, so an optimizer can hold on to them.
    """

    kind: str = "layer"
    uses_random = False  # True for layers that draw random numbers in training (dropout)

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.xp = backend.xp
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        # State that is saved with the model but not trained (batch norm's running statistics).
        self.buffers: dict[str, Any] = {}
        # Set by Sequential before every training batch; random layers derive their numbers from it.
        self.random_key = 0
        self.row_offset = 0  # first row of this batch in the global batch (data-parallel ranks)
        # The first layer of a network has no use for dL/dx; skipping it saves a matmul.
        self.compute_dx = True

    def forward(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The layer's architecture as JSON-able data (what a model file records)."""
        return {"type": self.kind}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"
