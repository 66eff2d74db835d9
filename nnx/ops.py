"""The few hot elementwise chains, as plain `xp` code.

These are the reference implementations: the CPU runs them as written, and the GPU backend swaps
in fused CUDA kernels (nnx/gpu_kernels.py) that tests compare against these. Layers and
optimizers call them through `backend.ops`, so they never know which one they got.
"""

from __future__ import annotations

from typing import Any


class Ops:
    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def normalize(self, pixels: Any, scale: float, shift: float, dtype: Any) -> Any:
        """x = pixels * scale - shift, from uint8 to `dtype`."""
        x = pixels.astype(dtype)
        x *= scale
        if shift:
            x -= shift
        return x

    def bias_relu(self, a: Any, b: Any) -> Any:
        """y = max(a + b, 0), written over `a` (the fresh result of a matmul)."""
        a += b
        return self.xp.maximum(a, 0, out=a)

    def relu_backward(self, dy: Any, y: Any) -> Any:
        """dx = dy * 1[y > 0]   (y = relu(x), so y > 0 exactly where x > 0)."""
        return dy * (y > 0)

    def softmax_cross_entropy(self, z: Any, y: Any) -> tuple[Any, Any]:
        """(mean loss, dL/dz) for logits z (N, C) and labels y (N,).

        log p_k = (z_k - m) - log sum_j exp(z_j - m), m = max_j z_j   (stable log-sum-exp)
        L = -(1/N) sum_n log p[n, y_n];   dL/dz = (p - onehot(y)) / N
        """
        xp = self.xp
        n = z.shape[0]
        shifted = z - z.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        sum_e = e.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        loss = -(shifted[rows, y] - xp.log(sum_e[:, 0])).mean()
        dz = e
        dz /= sum_e
        dz[rows, y] -= 1
        dz /= n
        return loss, dz

    def sgd_update(self, p: Any, g: Any, v: Any, lr: float, mu: float, nesterov: bool, wd: float) -> None:
        """In place: d = g + wd p;  v <- mu v + d;  p <- p - lr (d + mu v) (Nesterov) or p - lr v.
        With no velocity buffer (mu = 0): p <- p - lr d."""
        d = g + wd * p if wd else g
        if v is None:
            p -= lr * d
            return
        v *= mu
        v += d
        p -= lr * (d + mu * v if nesterov else v)
