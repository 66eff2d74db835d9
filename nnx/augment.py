"""Training-time augmentation on the device: a small random shift and rotation per image.

Each output pixel looks up its source pixel through the inverse transform (nearest neighbour);
sources outside the image are black. The random angles and shifts come from the counter-based
generator, keyed per batch, so they are the same on every backend and after a resume.
"""

from __future__ import annotations

import math
from typing import Any

from nnx.backend import Backend

SIDE = 28


class ShiftRotate:
    def __init__(self, backend: Backend, max_shift: int = 2, max_rotation: float = 10.0) -> None:
        self.backend = backend
        self.max_shift = max_shift
        self.max_radians = math.radians(max_rotation)
        xp = backend.xp
        coords = xp.arange(SIDE, dtype=xp.float32) - (SIDE - 1) / 2
        self.ys = coords[:, None]  # (28, 1), centred
        self.xs = coords[None, :]  # (1, 28)

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
        sy = xp.rint(cos * ty + sin * tx + (SIDE - 1) / 2).astype(xp.int32)
        sx = xp.rint(-sin * ty + cos * tx + (SIDE - 1) / 2).astype(xp.int32)
        inside = (sy >= 0) & (sy < SIDE) & (sx >= 0) & (sx < SIDE)
        source = xp.clip(sy, 0, SIDE - 1) * SIDE + xp.clip(sx, 0, SIDE - 1)  # (N, 28, 28)
        moved = xp.take_along_axis(pixels, source.reshape(n, -1), axis=1)
        return moved * inside.reshape(n, -1).astype(pixels.dtype)
