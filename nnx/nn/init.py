"""Initial weights, always drawn on the host so every backend starts from the same numbers."""

from __future__ import annotations

import numpy as np

INITS = ("he", "xavier", "uniform")


def init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, scheme: str) -> np.ndarray:
    """A float64 host array of shape (fan_in, fan_out)."""
    shape = (fan_in, fan_out)
    if scheme == "he":
        # He et al. 2015: Var(W) = 2 / fan_in keeps ReLU activations' variance steady.
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    if scheme == "xavier":
        # Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)
    if scheme == "uniform":
        # The seed project's init: U(-0.5, 0.5) whatever the layer size.
        return rng.uniform(-0.5, 0.5, size=shape)
    raise ValueError(f"unknown init {scheme!r}: use one of {', '.join(INITS)}")
