"""Layers that behave differently in training and evaluation: dropout and batch normalization."""

from __future__ import annotations

from typing import Any

from nnx.backend import Backend
from nnx.nn.layer import Layer


class Dropout(Layer):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p), in training; y = x in eval.

    The mask comes from the backend's counter-based generator keyed by (seed, epoch, batch,
    layer): the same mask on every backend and after a resume. Tests may set `mask` directly
    through `next_mask` to inject one."""

    kind = "dropout"
    uses_random = True

    def __init__(self, backend: Backend, p: float = 0.5) -> None:
        super().__init__(backend)
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.mask: Any = None
        self.next_mask: Any = None

    def forward(self, x: Any, training: bool = False) -> Any:
        if not training or self.p == 0:
            self.mask = None
            return x
        if self.next_mask is not None:
            keep, self.next_mask = self.next_mask, None
        else:
            # Counters from this rank's first row: the mask is that of the whole batch's rows.
            offset = self.row_offset * (x.size // max(x.shape[0], 1))
            keep = self.backend.ops.uniform(x.shape, self.random_key, x.dtype, offset) >= self.p
        self.mask = keep * x.dtype.type(1 / (1 - self.p))
        return x * self.mask

    def backward(self, dy: Any) -> Any:
        # dL/dx = dy * m / (1 - p)
        return dy if self.mask is None else dy * self.mask

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "p": self.p}


class BatchNorm(Layer):
    """y = gamma (x - mu) / sqrt(var + eps) + beta, per feature (N, F) or channel (N, C, H, W).

    Training normalises with the batch's statistics and updates running averages
    (r <- (1 - momentum) r + momentum batch_stat); evaluation uses the running ones, which are
    saved in model files as buffers.

    Data-parallel ranks each normalise with their own rows' statistics, unless `sum_across` is set
    (synchronised batch norm): a function that sums an array over the ranks in place, through
    which the statistics and their gradient terms become those of the whole global batch."""

    kind = "batchnorm"

    def __init__(self, backend: Backend, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(backend)
        xp, dtype = self.xp, backend.dtype
        self.features, self.momentum, self.eps = features, momentum, eps
        self.params = {"gamma": xp.ones(features, dtype=dtype), "beta": xp.zeros(features, dtype=dtype)}
        self.grads = {k: xp.zeros(v.shape, dtype=v.dtype) for k, v in self.params.items()}
        self.buffers = {"running_mean": xp.zeros(features, dtype=dtype), "running_var": xp.ones(features, dtype=dtype)}
        self.sum_across: Any = None  # set by the trainer for synchronised statistics

    def _shape(self, x: Any) -> tuple[int, ...]:
        """The shape a per-feature array broadcasts against x with: (1, F) or (1, C, 1, 1)."""
        return (1, self.features) if x.ndim == 2 else (1, self.features, 1, 1)

    def forward(self, x: Any, training: bool = False) -> Any:
        xp = self.xp
        shape = self._shape(x)
        # A batch without rows has no statistics: it is normalised as in evaluation and the running
        # averages stay as they were (a mean over nothing would make them NaN). With synchronised
        # statistics every rank still takes part in the sums, which cover the others' rows.
        training = training and (self.sum_across is not None or x.shape[0] > 0)
        self.training = training
        if training:
            mu, var, count = self._statistics(x, shape)
            self.count = count
            m = self.momentum
            self.buffers["running_mean"] *= 1 - m
            self.buffers["running_mean"] += m * mu
            self.buffers["running_var"] *= 1 - m
            # The running variance is the unbiased estimate, as in other frameworks: var M / (M - 1)
            # (M a device scalar when synchronised: no read back).
            unbias = count / max(count - 1, 1) if isinstance(count, int) else count / xp.maximum(count - 1, 1)
            self.buffers["running_var"] += m * var * unbias
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv_std = (1 / xp.sqrt(var + self.eps)).reshape(shape)
        self.x_hat = (x - mu.reshape(shape)) * self.inv_std
        return self.params["gamma"].reshape(shape) * self.x_hat + self.params["beta"].reshape(shape)

    def backward(self, dy: Any) -> Any:
        shape = self._shape(dy)
        x_hat = self.x_hat
        self._sum(dy * x_hat, out=self.grads["gamma"])
        self._sum(dy, out=self.grads["beta"])
        dx_hat = dy * self.params["gamma"].reshape(shape)
        if not self.training:
            return dx_hat * self.inv_std
        # With batch statistics mu and var depend on x too:
        # dx = inv_std / M (M dx_hat - sum dx_hat - x_hat sum(dx_hat x_hat)),  M = values per feature
        count = self.count
        sum_dx_hat = self._sum(dx_hat)
        sum_dx_hat_x_hat = self._sum(dx_hat * x_hat)
        if self.sum_across is not None:  # the sums run over the whole global batch
            both = self.xp.concatenate([sum_dx_hat, sum_dx_hat_x_hat])
            self.sum_across(both)
            sum_dx_hat, sum_dx_hat_x_hat = both[: self.features], both[self.features :]
        sum_dx_hat, sum_dx_hat_x_hat = sum_dx_hat.reshape(shape), sum_dx_hat_x_hat.reshape(shape)
        return self.inv_std / count * (count * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat)

    def _sum(self, a: Any, out: Any = None) -> Any:
        """The sum over all but the feature axis: (N, F) -> (F,), (N, C, H, W) -> (C,). As rows
        (N * H * W, C) through ops.sum_rows, a product with ones: a reduction along the rows of a
        tall array is slow on a GPU (CuPy: 1.03 ms for a (100352, 32) one on an H200, against 0.03
        ms) and on the CPU (NumPy). The rows are a view where a is channels-last in memory, as a
        Conv2D's output and what is computed from it are."""
        rows = a if a.ndim == 2 else a.transpose(0, 2, 3, 1).reshape(-1, self.features)
        return self.backend.ops.sum_rows(rows, out=out)

    def _statistics(self, x: Any, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """Mean, (biased) variance and M, the values per feature, in two passes like x.var():
        mu = sum x / M, then var = sum (x - mu)^2 / M. Synchronised (sum_across set), each sum and M
        are reduced across ranks, M left on the device (reading it would synchronise)."""
        xp = self.xp
        sums, count = self._sum(x), x.size // self.features
        if self.sum_across is not None:
            sums = xp.concatenate([sums, xp.asarray([count], dtype=x.dtype)])
            self.sum_across(sums)
            sums, count = sums[:-1], sums[-1]
        mu = sums / count
        centred = x - mu.reshape(shape)
        squares = self._sum(centred * centred)
        if self.sum_across is not None:
            self.sum_across(squares)
        return mu, squares / count, count

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "features": self.features, "momentum": self.momentum, "eps": self.eps}
