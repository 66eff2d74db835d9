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
        y = self.xp.empty((x.shape[0], self.out_features), dtype=x.dtype)

        def rows(i: slice) -> None:
            self.xp.matmul(x[i], W, out=y[i])
            if self.fuse_relu:
                ops.bias_relu(y[i], b)
            else:
                y[i] += b

        ops.parallel_for(len(y), rows, self.row_cost, shared=W.size)
        return y

    def backward(self, dy: Any) -> Any:
        # dL/dW = x^T dy,  dL/db = sum_n dy,  dL/dx = dy W^T
        xp, ops, x, W = self.xp, self.backend.ops, self.x, self.params["W"]
        ops.matmul_tn(x, dy, out=self.grads["W"])
        ops.sum_rows(dy, out=self.grads["b"])
        if not self.compute_dx:
            return None
        dx = xp.empty_like(x)

        def rows(i: slice) -> None:
            xp.matmul(dy[i], W.T, out=dx[i])

        ops.parallel_for(len(dx), rows, self.row_cost, shared=W.size)
        return dx

    @property
    def row_cost(self) -> int:
        """What one row of a batch costs, for ops.parallel_for: its elements plus multiply-adds / 16."""
        return self.in_features + self.out_features + self.in_features * self.out_features // 16

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in": self.in_features, "out": self.out_features, "init": self.init}
