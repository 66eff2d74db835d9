"""nnx: a from-scratch neural network toolkit that runs on NumPy (CPU) or CuPy (GPU).

import nnx
run = nnx.train("mnist_mlp", {"training.epochs": 3})   # a run directory, like `nnx train`
model = nnx.load(run.path / "model.npz")
model.predict(images).classes                           # uint8 (N, 28, 28) -> (N,)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "Prediction", "Run", "__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    # The API loads on first use, so that `nnx --help` stays fast.
    if name in ("Model", "Prediction", "Run", "load", "train"):
        from nnx import api

        return getattr(api, name)
    raise AttributeError(f"module 'nnx' has no attribute {name!r}")
