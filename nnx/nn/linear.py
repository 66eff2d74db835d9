"""Fully connected layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.nn.init import init_weight
from nnx.nn.layer import Layer


class Linear(Layer):
    """y = x W + b.   x: (N, in_features), W: (in_features, out_features), b: (out_features,).

    When a ReLU follows, `Sequential` sets `fuse_relu` and this layer returns max(x W + b, 0) in
    one pass over the output (one fused kernel on a GPU); the ReLU then only does the backward.
    """

    kind = "linear"

    def __init__(
        self,
        backend: Backend,
        in_features: int,
        out_features: int,
        init: str = "he",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(backend)
        self.in_features = in_features
        self.out_features = out_features
        self.init = init
        rng = rng if rng is not None else np.random.default_rng(0)
        W = init_weight(rng, in_features, out_features, init, backend.dtype)
        self.params = {"W": backend.asarray(W), "b": self.xp.zeros(out_features, dtype=backend.dtype)}
        self.grads = {k: self.xp.zeros(v.shape, dtype=v.dtype) for k, v in self.params.items()}
        self.fuse_relu = False

    def forward(self, x: Any, training: bool = False) -> Any:
        self.x = x
        ops, W, b = self.backend.ops, self.params["W"], self.params["b"]
        y = ops.matmul(x, W, self.row_cost, shared=W.size)
        # y = x W + b, and max(y, 0) in the same pass over y when a ReLU follows
        return ops.bias_relu(y, b) if self.fuse_relu else ops.add_bias(y, b)

    def backward(self, dy: Any) -> Any:
        # dL/dW = x^T dy,  dL/db = sum_n dy,  dL/dx = dy W^T
        ops, x, W = self.backend.ops, self.x, self.params["W"]
        ops.matmul_tn(x, dy, out=self.grads["W"])
        ops.sum_rows(dy, out=self.grads["b"])
        if not self.compute_dx:
            return None
        return ops.matmul(dy, W.T, self.row_cost, shared=W.size)

    @property
    def row_cost(self) -> int:
        """What one row of a batch costs, for ops.matmul (as for parallel_for): its elements plus multiply-adds / 16."""
        return self.in_features + self.out_features + self.in_features * self.out_features // 16

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in": self.in_features, "out": self.out_features, "init": self.init}
