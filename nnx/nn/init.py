"""Initial weights, always drawn on the host so every backend starts from the same numbers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing

INITS = ("he", "xavier", "uniform")


# Weights are drawn this many at a time: a large layer never holds a float64 copy of itself.
DRAW_ELEMENTS = 1 << 20


def init_weight(
    rng: np.random.Generator, fan_in: int, fan_out: int, scheme: str, dtype: np.typing.DTypeLike = np.float64
) -> np.ndarray:
    """A host array of shape (fan_in, fan_out) in `dtype`: drawn in float64 (the same numbers
    whatever the dtype; rng's stream does not depend on how the draws are split) and rounded to
    `dtype`, a block of rows at a time."""
    draw = _draw(scheme, fan_in, fan_out)
    W = np.empty((fan_in, fan_out), dtype=dtype)
    rows = max(DRAW_ELEMENTS // max(fan_out, 1), 1)
    for first in range(0, fan_in, rows):
        block = W[first : first + rows]
        block[...] = draw(rng, block.shape)
    return W


def _draw(scheme: str, fan_in: int, fan_out: int) -> Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]:
    if scheme == "he":
        # He et al. 2015: Var(W) = 2 / fan_in keeps ReLU activations' variance steady.
        std = np.sqrt(2.0 / fan_in)
        return lambda rng, shape: rng.normal(0.0, std, size=shape)
    if scheme == "xavier":
        # Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return lambda rng, shape: rng.uniform(-limit, limit, size=shape)
    if scheme == "uniform":
        # The seed project's init: U(-0.5, 0.5) whatever the layer size.
        return lambda rng, shape: rng.uniform(-0.5, 0.5, size=shape)
    raise ValueError(f"unknown init {scheme!r}: use one of {', '.join(INITS)}")
