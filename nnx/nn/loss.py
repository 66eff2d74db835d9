"""Softmax and cross-entropy fused into one numerically stable loss."""

from __future__ import annotations

from typing import Any

from nnx.backend import Backend


class SoftmaxCrossEntropy:
    """L = -(1/N) sum_n log softmax(z_n)[y_n].   z: (N, C) logits, y: (N,) integer labels.

    Fusing the two keeps it stable (log-sum-exp with the row maximum subtracted) and makes the
    gradient simple: dL/dz = (p - onehot(y)) / N. The arithmetic is `Ops.softmax_cross_entropy`
    (nnx/ops.py), which a GPU backend runs as one fused kernel.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def forward(self, z: Any, y: Any) -> Any:
        """The mean loss as a 0-d array (left on the device: reading it would synchronise).
        dL/dz is computed in the same pass and kept for `backward`."""
        loss, self.dz = self.backend.ops.softmax_cross_entropy(z, y)
        return loss

    def backward(self) -> Any:
        # dL/dz = (p - onehot(y)) / N
        return self.dz
