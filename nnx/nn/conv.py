"""Convolution and pooling on NCHW arrays, via im2col / col2im written with xp.

im2col copies every kernel-sized window of the (padded) input into a column, so a convolution
becomes one matrix product. Both helpers loop over the kernel offsets (kh * kw iterations, e.g. 9),
never over samples or pixels; col2im accumulates overlapping windows with dense slice additions,
so no update is lost (unlike `x[idx] += v` with repeated indices).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.nn.init import init_weight
from nnx.nn.layer import Layer


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def im2col(xp: Any, x: Any, kh: int, kw: int, stride: int, padding: int) -> Any:
    """x: (N, C, H, W) -> cols: (N, C, kh, kw, OH, OW) with cols[n, c, i, j, y, x] =
    x_padded[n, c, y * stride + i, x * stride + j]."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return cols


def col2im(xp: Any, cols: Any, shape: tuple[int, ...], stride: int, padding: int) -> Any:
    """The adjoint of im2col: sums each column entry back into the pixel it came from."""
    n, c, h, w = shape
    _, _, kh, kw, oh, ow = cols.shape
    dx = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += cols[:, :, i, j]
    return dx[:, :, padding : padding + h, padding : padding + w] if padding else dx


class Conv2D(Layer):
    """y[n, o] = sum_c W[o, c] * x[n, c] + b[o]  (cross-correlation, as in every framework).

    x: (N, C, H, W), W: (O, C, kh, kw), b: (O,), y: (N, O, OH, OW).
    """

    kind = "conv2d"

    def __init__(
        self,
        backend: Backend,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 0,
        init: str = "he",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(backend)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding, self.init = kernel, stride, padding, init
        rng = rng if rng is not None else np.random.default_rng(0)
        fan_in = in_channels * kernel * kernel
        W = init_weight(rng, fan_in, out_channels, init).T.reshape(out_channels, in_channels, kernel, kernel)
        self.params = {"W": backend.asarray(W), "b": self.xp.zeros(out_channels, dtype=backend.dtype)}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: Any, training: bool = False) -> Any:
        xp = self.xp
        n = x.shape[0]
        self.x_shape = x.shape
        cols = im2col(xp, x, self.kernel, self.kernel, self.stride, self.padding)
        oh, ow = cols.shape[4], cols.shape[5]
        # rows: one per output pixel (n, y, x); columns: the window (c, i, j)
        self.cols = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)
        y = self.cols @ self.params["W"].reshape(self.out_channels, -1).T
        y += self.params["b"]
        return y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dy: Any) -> Any:
        # With Y = cols W^T + b:  dW = dY^T cols,  db = sum dY,  dcols = dY W
        xp = self.xp
        n, o, oh, ow = dy.shape
        dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
        xp.matmul(dy2.T, self.cols, out=self.grads["W"].reshape(o, -1))
        dy2.sum(axis=0, out=self.grads["b"])
        if not self.compute_dx:
            return None
        c = self.in_channels
        dcols = (dy2 @ self.params["W"].reshape(o, -1)).reshape(n, oh, ow, c, self.kernel, self.kernel)
        return col2im(xp, dcols.transpose(0, 3, 4, 5, 1, 2), self.x_shape, self.stride, self.padding)

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "in": self.in_channels,
            "out": self.out_channels,
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "init": self.init,
        }


class _Pool2D(Layer):
    def __init__(self, backend: Backend, size: int = 2, stride: int | None = None) -> None:
        super().__init__(backend)
        self.size = size
        self.stride = stride or size

    def windows(self, x: Any) -> Any:
        """(N, C, OH, OW, size * size): every pooling window of x as a row."""
        self.x_shape = x.shape
        cols = im2col(self.xp, x, self.size, self.size, self.stride, 0)
        n, c, k, _, oh, ow = cols.shape
        return cols.transpose(0, 1, 4, 5, 2, 3).reshape(n, c, oh, ow, k * k)

    def unwindow(self, dwindows: Any) -> Any:
        n, c, oh, ow, _ = dwindows.shape
        k = self.size
        dcols = dwindows.reshape(n, c, oh, ow, k, k).transpose(0, 1, 4, 5, 2, 3)
        return col2im(self.xp, dcols, self.x_shape, self.stride, 0)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "size": self.size, "stride": self.stride}


class MaxPool2D(_Pool2D):
    """y = max over each size x size window.   x: (N, C, H, W) -> (N, C, OH, OW)."""

    kind = "maxpool2d"

    def forward(self, x: Any, training: bool = False) -> Any:
        windows = self.windows(x)
        self.argmax = windows.argmax(axis=-1)
        return windows.max(axis=-1)

    def backward(self, dy: Any) -> Any:
        # The gradient flows only to each window's (first) maximum: dx_window = onehot(argmax) * dy.
        positions = self.xp.arange(self.size * self.size)
        dwindows = (positions == self.argmax[..., None]) * dy[..., None]
        return self.unwindow(dwindows)


class AvgPool2D(_Pool2D):
    """y = mean over each size x size window.   x: (N, C, H, W) -> (N, C, OH, OW)."""

    kind = "avgpool2d"

    def forward(self, x: Any, training: bool = False) -> Any:
        return self.windows(x).mean(axis=-1)

    def backward(self, dy: Any) -> Any:
        # dx_window = dy / size^2 for every element of the window
        k2 = self.size * self.size
        dwindows = self.xp.broadcast_to((dy / k2)[..., None], (*dy.shape, k2))
        return self.unwindow(dwindows)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    kind = "flatten"

    def forward(self, x: Any, training: bool = False) -> Any:
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Any) -> Any:
        return dy.reshape(self.x_shape)


class Reshape(Layer):
    """(N, ...) -> (N, *shape): e.g. flat 784-pixel images to (N, 1, 28, 28) for a convolution."""

    kind = "reshape"

    def __init__(self, backend: Backend, shape: list[int] | tuple[int, ...]) -> None:
        super().__init__(backend)
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Any, training: bool = False) -> Any:
        self.x_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy: Any) -> Any:
        return dy.reshape(self.x_shape)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "shape": list(self.shape)}
