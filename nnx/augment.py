"""Training-time augmentation on the device: a small random shift and rotation per image, and
optionally an elastic distortion (Simard, Steinkraus & Platt 2003).

Each output pixel looks up its source through the inverse transform; sources outside the image
are black. Without the elastic distortion the lookup is the nearest pixel; with it, bilinear. The
random numbers come from the counter-based generator, keyed per batch and by each image's place
in the global batch, so they are the same on every backend, after a resume and on any number of
data-parallel ranks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.ops import mix_key

SIDE = 28
ELASTIC_STREAM = 1  # the elastic fields' numbers: a key of their own, beside the affine ones
# What one image's elastic distortion touches, for ops.parallel_for: its two fields, their two
# products (28 multiply-adds an element, /16) and the sampling's passes.
ELASTIC_COST = 2 * SIDE * SIDE * (2 + 2 * SIDE // 16) + 20 * SIDE * SIDE


def gaussian_rows(sigma: float, side: int = SIDE) -> np.ndarray:
    """G (side, side), G[i, j] = g(i - j) with g a Gaussian of standard deviation `sigma` (pixels)
    summing to 1 over the integers: G u G^T smooths a field u over a zero border."""
    offsets = np.arange(side)[:, None] - np.arange(side)[None, :]
    taps = np.arange(-side + 1, side)
    norm = np.exp(-(taps**2) / (2 * sigma**2)).sum()
    return (np.exp(-(offsets**2) / (2 * sigma**2)) / norm).astype(np.float32)


class ShiftRotate:
    """Random shift, rotation and (with elastic_alpha > 0) elastic distortion of each image."""

    def __init__(
        self,
        backend: Backend,
        max_shift: int = 2,
        max_rotation: float = 10.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
    ) -> None:
        self.backend = backend
        self.max_shift = max_shift
        self.max_radians = math.radians(max_rotation)
        self.elastic_alpha = elastic_alpha
        xp = backend.xp
        coords = xp.arange(SIDE, dtype=xp.float32) - (SIDE - 1) / 2
        self.ys = coords[:, None]  # (28, 1), centred
        self.xs = coords[None, :]  # (1, 28)
        # d = (alpha G) u G^T: the smoothing and the scale of the displacement fields
        G = gaussian_rows(elastic_sigma)
        self.left_t = backend.asarray(np.ascontiguousarray(G.T * np.float32(elastic_alpha)), dtype=xp.float32)
        self.right = backend.asarray(np.ascontiguousarray(G.T), dtype=xp.float32)

    def __call__(self, pixels: Any, key: int, row_offset: int = 0) -> Any:
        """pixels: uint8 (N, 784) -> uint8 (N, 784), each image moved by its own random transform.
        Image j's three numbers are counters 3 (row_offset + j) .. + 2: keyed by its position in
        the global batch, so a data-parallel rank moves its images as one process would."""
        xp, ops = self.backend.xp, self.backend.ops
        n = pixels.shape[0]
        u = ops.uniform((n, 3), key, xp.float32, 3 * row_offset) * 2 - 1  # three numbers in [-1, 1) per image
        angle = (u[:, 0] * self.max_radians)[:, None, None]
        shift_y = xp.rint(u[:, 1] * self.max_shift)[:, None, None]
        shift_x = xp.rint(u[:, 2] * self.max_shift)[:, None, None]
        cos, sin = xp.cos(angle), xp.sin(angle)
        # source = R(-angle) (target - shift), about the image centre
        ty, tx = self.ys - shift_y, self.xs - shift_x
        sy = cos * ty + sin * tx + (SIDE - 1) / 2
        sx = -sin * ty + cos * tx + (SIDE - 1) / 2
        if self.elastic_alpha:  # a few images at a time, while their fields are in cache
            out = xp.empty_like(pixels)

            def images(i: slice) -> None:
                dy, dx = self.displacements(i.stop - i.start, key, row_offset + i.start)
                out[i] = self._bilinear(pixels[i], sy[i] + dy, sx[i] + dx)

            ops.parallel_for(n, images, ELASTIC_COST)
            return out
        sy, sx = xp.rint(sy).astype(xp.int32), xp.rint(sx).astype(xp.int32)
        inside = (sy >= 0) & (sy < SIDE) & (sx >= 0) & (sx < SIDE)
        source = xp.clip(sy, 0, SIDE - 1) * SIDE + xp.clip(sx, 0, SIDE - 1)  # (N, 28, 28)
        moved = xp.take_along_axis(pixels, source.reshape(n, -1), axis=1)
        return moved * inside.reshape(n, -1).astype(pixels.dtype)

    def displacements(self, n: int, key: int, row_offset: int = 0) -> tuple[Any, Any]:
        """(dy, dx), each (n, 28, 28) in pixels: Simard's elastic fields, d = alpha G u G^T for
        u uniform in [-1, 1) at every pixel (G: gaussian_rows). Image j's 2 x 784 numbers are
        counters 1568 (row_offset + j) onward under the batch's key mixed with ELASTIC_STREAM."""
        xp, ops = self.backend.xp, self.backend.ops
        per_image = 2 * SIDE * SIDE
        u = ops.uniform((n, 2, SIDE, SIDE), mix_key(key, ELASTIC_STREAM), xp.float32, per_image * row_offset)
        u = u * 2 - 1
        # d = alpha G u G^T for all 2n fields in two products of many rows: w = u G^T (the fields'
        # rows stacked), then (alpha G w)^T = w^T (alpha G)^T (the transposed fields' rows stacked)
        w = xp.matmul(u.reshape(-1, SIDE), self.right).reshape(n, 2, SIDE, SIDE)
        w_t = w.transpose(0, 1, 3, 2).reshape(-1, SIDE)
        d = xp.matmul(w_t, self.left_t).reshape(n, 2, SIDE, SIDE).transpose(0, 1, 3, 2)
        return d[:, 0], d[:, 1]

    def _bilinear(self, pixels: Any, sy: Any, sx: Any) -> Any:
        """uint8 (N, 784): each image sampled at (sy, sx) (N, 28, 28) between its four nearest
        pixels, weighted by nearness (bilinear); pixels outside the image count as black; rounded.
        The images get a black border (one pixel before, two after), and the coordinates are
        clipped to [-1, 28]: a sample beyond the image then reads only black pixels."""
        xp = self.backend.xp
        n, wide = pixels.shape[0], SIDE + 3
        framed = xp.zeros((n, wide, wide), dtype=pixels.dtype)
        framed[:, 1 : SIDE + 1, 1 : SIDE + 1] = pixels.reshape(n, SIDE, SIDE)
        framed = framed.reshape(n, -1)
        sy, sx = xp.clip(sy, -1, SIDE), xp.clip(sx, -1, SIDE)
        y0, x0 = xp.floor(sy), xp.floor(sx)
        wy, wx = sy - y0, sx - x0
        top = ((y0.astype(xp.int32) + 1) * wide + x0.astype(xp.int32) + 1).reshape(n, -1)  # (y0, x0), framed

        def tap(offset: int) -> Any:
            return xp.take_along_axis(framed, top + offset, axis=1).reshape(sy.shape).astype(xp.float32)

        upper = tap(0) * (1 - wx) + tap(1) * wx
        lower = tap(wide) * (1 - wx) + tap(wide + 1) * wx
        out = upper * (1 - wy) + lower * wy
        return xp.clip(xp.rint(out), 0, 255).astype(xp.uint8).reshape(n, -1)


def make_augment(backend: Backend, augment: Any) -> ShiftRotate | None:
    """The augmentation a config's training.augment asks for, on `backend`, or None."""
    if not augment.enabled:
        return None
    elastic = augment.elastic
    alpha, sigma = (elastic.alpha, elastic.sigma) if elastic is not None else (0.0, 4.0)
    return ShiftRotate(backend, augment.max_shift, augment.max_rotation, alpha, sigma)
