"""Convolution and pooling on NCHW arrays, written with xp.

im2col copies every kernel-sized window of the (padded) input into a column, so a convolution
becomes one matrix product; its adjoint (col2im, here fused with the product that feeds it)
takes the gradient back. Both loop over the kernel offsets (kh * kw iterations, e.g. 9), never
over samples or pixels, and overlapping windows accumulate by dense slice additions, so no update
is lost (unlike `x[idx] += v` with repeated indices). These copies, and max pooling's, are the
backend's ops (nnx/ops.py, the reference; on a GPU one fused kernel each). Where the ops choose it
(Ops.conv_by_winograd: the CPU's, for wide 3x3 stride-1 layers), a Conv2D computes the same
thing by Winograd's F(2x2, 3x3) instead (nnx/nn/winograd.py); im2col is the reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.nn import winograd
from nnx.nn.init import init_weight
from nnx.nn.layer import Layer
from nnx.ops import output_size, window_offsets


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
        W = init_weight(rng, fan_in, out_channels, init, backend.dtype).T.copy()
        W = W.reshape(out_channels, in_channels, kernel, kernel)
        self.params = {"W": backend.asarray(W), "b": self.xp.zeros(out_channels, dtype=backend.dtype)}
        self.grads = {k: self.xp.zeros(v.shape, dtype=v.dtype) for k, v in self.params.items()}
        self.fuse_relu = False  # set by Sequential when a ReLU follows, as for Linear
        self.by_winograd = False  # chosen by the backend's ops at each forward
        self.tiles: Any = None  # Winograd's transformed input, kept by a training forward for dW

    def forward(self, x: Any, training: bool = False) -> Any:
        xp, ops = self.xp, self.backend.ops
        n, c, h, w = self.x_shape = x.shape
        k, o = self.kernel, self.out_channels
        oh, ow = output_size(h, k, self.stride, self.padding), output_size(w, k, self.stride, self.padding)
        y = xp.empty((n, oh, ow, o), dtype=x.dtype)
        b = self.params["b"]
        self.by_winograd = ops.conv_by_winograd(self)
        if self.by_winograd:  # the same y by F(2x2, 3x3): 2.25x fewer multiply-adds (nnx/nn/winograd.py)
            self.x, self.cols = x, None
            U, xn = winograd.kernel_transform(xp, self.params["W"]), x.transpose(0, 2, 3, 1)
            # dW needs the transformed input tiles again: kept in training (4/9 the size of conv2's
            # columns), since reading them back costs less than transforming again (conv2 14.3 ->
            # 13.5 ms a step, medians of 6 alternations).
            th, tw = winograd.tiles(oh, ow)
            self.tiles = xp.empty((4, 4, n, th, tw, c), dtype=x.dtype) if training else None

            def images_by_tiles(i: slice) -> None:
                kept = None if self.tiles is None else self.tiles[:, :, i]
                winograd.conv3x3(xp, xn[i], U, self.padding, out=y[i], tiles_out=kept)
                self._add_bias(y[i].reshape(-1, o), b)

            ops.parallel_for(n, images_by_tiles, self._image_cost(oh, ow))
            return y.transpose(0, 3, 1, 2)
        W = self._weight_rows().T
        # dW needs the columns again. Ones no wider than the output (a first layer's 9 a pixel) are
        # kept; wider ones are built again in backward, a few images at a time, which costs less
        # than writing a batch of them out and reading it back (unless the whole batch is one piece).
        kept = xp.empty((n, oh, ow, k, k, c), dtype=x.dtype) if training and k * k * c <= o else None
        self.x, self.cols = x, None if kept is None else kept.reshape(n * oh * ow, k * k * c)

        def images(i: slice) -> None:  # Y = cols W^T + b for the images i, while their columns are in cache
            cols = self._columns(x[i], None if kept is None else kept[i])
            y_i = y[i].reshape(-1, o)
            xp.matmul(cols, W, out=y_i)
            self._add_bias(y_i, b)
            if training and i.start == 0 and i.stop == n:
                self.cols = cols

        ops.parallel_for(n, images, self._image_cost(oh, ow))
        return y.transpose(0, 3, 1, 2)

    def _add_bias(self, y: Any, b: Any) -> None:
        """y += b, or y = max(y + b, 0) when a ReLU follows (in place, y: (rows, O))."""
        if self.fuse_relu:
            self.backend.ops.bias_relu(y, b)
        else:
            y += b

    def _columns(self, x: Any, out: Any = None) -> Any:
        """im2col of some images as a matrix (filling `out`, im2col's shape, when given): a row per
        output pixel (n, y, x), a column per window element (i, j, c)."""
        k = self.kernel
        return self.backend.ops.im2col(x, k, k, self.stride, self.padding, out=out).reshape(
            -1, k * k * self.in_channels
        )

    def _image_cost(self, oh: int, ow: int) -> int:
        """One image's columns (or transformed tiles) and outputs, for ops.parallel_for."""
        if self.by_winograd:
            th, tw = winograd.tiles(oh, ow)
            return th * tw * 16 * (self.in_channels + self.out_channels) + oh * ow * self.out_channels
        return oh * ow * (self.kernel**2 * self.in_channels + self.out_channels)

    def _weight_rows(self) -> Any:
        """W as (O, kh * kw * C), in the column order of im2col."""
        return self.params["W"].transpose(0, 2, 3, 1).reshape(self.out_channels, -1)

    def backward(self, dy: Any) -> Any:
        # With Y = cols W^T + b:  dW = dY^T cols,  db = sum dY,  dcols = dY W
        xp, ops = self.xp, self.backend.ops
        n, o, oh, ow = dy.shape
        k, c, p = self.kernel, self.in_channels, self.padding
        dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
        if self.by_winograd:
            return self._backward_by_tiles(dy, dy2)
        if self.cols is not None:
            dW = ops.matmul_tn(dy2, self.cols)
        else:  # the forward ran in chunks: build the columns again, a few images at a time, in cache
            dy3 = dy2.reshape(n, oh * ow, o)

            def term(i: slice) -> Any:  # xp.dot, not @: NumPy's matmul keeps the GIL for a result of <= 500 elements
                return xp.dot(dy3[i].reshape(-1, o).T, self._columns(self.x[i]))

            dW = ops.parallel_sum(n, term, self._image_cost(oh, ow), o * k * k * c)
        self.grads["W"][...] = dW.reshape(o, k, k, c).transpose(0, 3, 1, 2)
        ops.sum_rows(dy2, out=self.grads["b"])
        if not self.compute_dx:
            return None
        # (O, kh, kw, C), contiguous: each W[:, i, j, :] must be a matrix BLAS can take as it is
        weights = xp.ascontiguousarray(self.params["W"].transpose(0, 2, 3, 1))
        _, _, h, w = self.x_shape
        dx = xp.empty((n, h + 2 * p, w + 2 * p, c), dtype=dy.dtype)
        dy3 = dy2.reshape(n, oh * ow, o)

        def images(i: slice) -> None:
            dx[i] = 0
            ops.col2im_product(dy3[i].reshape(-1, o), weights, (len(dx[i]), c, h, w), self.stride, p, out=dx[i])

        ops.parallel_for(n, images, oh * ow * (o + k * k * c) + dx[:1].size * 2)
        return dx[:, p : p + h, p : p + w, :].transpose(0, 3, 1, 2)

    def _backward_by_tiles(self, dy: Any, dy2: Any) -> Any:
        """backward for a forward by F(2x2, 3x3) (nnx/nn/winograd.py): dU over the batch's tiles,
        then dW = G^T dU G; dx from the same transformed dy in the same pass over each chunk."""
        xp, ops = self.xp, self.backend.ops
        n, o, oh, ow = dy.shape
        c, p = self.in_channels, self.padding
        _, _, h, w = self.x_shape
        xn, dyn = self.x.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1)
        U = winograd.kernel_transform(xp, self.params["W"])
        dx = xp.empty((n, h, w, c), dtype=dy.dtype) if self.compute_dx else None

        def term(i: slice) -> Any:
            kept = None if self.tiles is None else self.tiles[:, :, i]
            return winograd.backward_term(xp, xn[i], dyn[i], U, p, kept, None if dx is None else dx[i])

        dU = ops.parallel_sum(n, term, self._image_cost(oh, ow), shared=16 * c * o)
        self.grads["W"][...] = winograd.kernel_grad(xp, dU)
        ops.sum_rows(dy2, out=self.grads["b"])
        return None if dx is None else dx.transpose(0, 3, 1, 2)

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
    """Pooling over size x size windows, visited one window offset at a time: each offset (i, j)
    is a strided view of x with one element from every window, so a pass over size^2 views
    covers all windows without copying them out."""

    def __init__(self, backend: Backend, size: int = 2, stride: int | None = None) -> None:
        super().__init__(backend)
        self.size = size
        self.stride = stride or size

    def offsets(self, x: Any) -> list[tuple[slice, slice]]:
        """(rows, cols) slices of x, one per window offset; kept for backward."""
        _, _, h, w = x.shape
        k, s = self.size, self.stride
        oh, ow = output_size(h, k, s, 0), output_size(w, k, s, 0)
        self.x = x
        self.out_hw = (oh, ow)
        self.views = window_offsets(k, s, oh, ow)
        return self.views

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "size": self.size, "stride": self.stride}


class MaxPool2D(_Pool2D):
    """y = max over each size x size window.   x: (N, C, H, W) -> (N, C, OH, OW)."""

    kind = "maxpool2d"
    relu_before = False  # set by Sequential: apply the preceding ReLU's gradient mask here

    def forward(self, x: Any, training: bool = False) -> Any:
        xp, ops = self.xp, self.backend.ops
        slots = len(self.offsets(x))
        # Channels-last (the memory order a Conv2D's output has): see Ops.max_pool.
        xn = x.transpose(0, 2, 3, 1)
        n, _, _, c = xn.shape
        self.y = xp.empty((n, *self.out_hw, c), dtype=x.dtype)
        # For backward, the slot of each window's first maximum (ties are common after a ReLU:
        # windows of zeros), one byte a window instead of keeping the packed windows (4x y).
        self.first = xp.empty(self.y.shape, dtype=xp.uint8 if slots <= 256 else xp.uint16)

        def images(i: slice) -> None:
            ops.max_pool(xn[i], self.size, self.stride, out=self.y[i], first=self.first[i])

        ops.parallel_for(n, images, self.y[:1].size * (2 * slots + 2))
        return self.y.transpose(0, 3, 1, 2)

    def backward(self, dy: Any) -> Any:
        # The gradient goes to each window's first maximum, so every window passes dy exactly once.
        ops = self.backend.ops
        dx = self.xp.empty(self.x.transpose(0, 2, 3, 1).shape, dtype=dy.dtype)
        dyn = dy.transpose(0, 2, 3, 1)

        def images(i: slice) -> None:
            ops.max_pool_backward(dyn[i], self.y[i], self.first[i], self.size, self.stride, self.relu_before, out=dx[i])

        ops.parallel_for(len(dx), images, dx[:1].size * 3)
        return dx.transpose(0, 3, 1, 2)


class AvgPool2D(_Pool2D):
    """y = mean over each size x size window.   x: (N, C, H, W) -> (N, C, OH, OW)."""

    kind = "avgpool2d"

    def forward(self, x: Any, training: bool = False) -> Any:
        views = self.offsets(x)
        y = x[:, :, views[0][0], views[0][1]].copy(order="K")
        for rows, cols in views[1:]:
            y += x[:, :, rows, cols]
        y /= self.size * self.size
        return y

    def backward(self, dy: Any) -> Any:
        # dx = dy / size^2 at every element of the window
        dx = self.xp.zeros_like(self.x)
        share = dy / (self.size * self.size)
        for rows, cols in self.views:
            dx[:, :, rows, cols] += share
        return dx


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    kind = "flatten"

    def forward(self, x: Any, training: bool = False) -> Any:
        self.x = x
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: that fails for an empty batch

    def backward(self, dy: Any) -> Any:
        # Hand the gradient back in x's memory layout (channels-last after a convolution), so the
        # layers below work on one layout instead of mixing two, which is several times slower.
        dx = self.xp.empty_like(self.x)
        dx[...] = dy.reshape(self.x.shape)
        return dx


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
