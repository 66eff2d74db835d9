"""Softmax and cross-entropy fused into one numerically stable loss."""

from __future__ import annotations

from typing import Any

from nnx.backend import Backend


class SoftmaxCrossEntropy:
    """L = -(1/N) sum_n log softmax(z_n)[y_n].   z: (N, C) logits, y: (N,) integer labels.

    Fusing the two keeps it stable (log-sum-exp with the row maximum subtracted) and makes the
    gradient simple: dL/dz = (p - onehot(y)) / N.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.xp = backend.xp

    def forward(self, z: Any, y: Any) -> Any:
        """The mean loss as a 0-d array (left on the device: reading it would synchronise)."""
        xp = self.xp
        n = z.shape[0]
        # log p_k = (z_k - m) - log sum_j exp(z_j - m),  m = max_j z_j
        shifted = z - z.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        sum_e = e.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        self.p = e / sum_e
        self.y = y
        self.rows = rows
        log_p_true = shifted[rows, y] - xp.log(sum_e[:, 0])
        return -log_p_true.mean()

    def backward(self) -> Any:
        # dL/dz = (p - onehot(y)) / N
        dz = self.p
        dz[self.rows, self.y] -= 1
        dz /= dz.shape[0]
        return dz
