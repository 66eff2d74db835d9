"""Classification metrics, computed on the device and read back once."""

from __future__ import annotations

import resource
import sys
from typing import Any

import numpy as np

from nnx.backend import Backend


def confusion_matrix(labels: Any, predictions: Any, backend: Backend, classes: int = 10) -> np.ndarray:
    """C[i, j] = number of images of class i predicted as j (host int64 array)."""
    counts = backend.xp.bincount(labels * classes + predictions, minlength=classes * classes)
    return backend.to_numpy(counts).reshape(classes, classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
