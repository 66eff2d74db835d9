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
    """Peak resident memory of this process so far: Linux's VmHWM where there is one, since
    ru_maxrss also counts the parent's memory at the fork before this program's exec (a run
    started by a benchmark, a sweep or a notebook would report its parent's size)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predict_probabilities(
    model: Any, images: Any, preprocess: Any, backend: Backend, batch_size: int = 500
) -> np.ndarray:
    """Class probabilities (host float64 (N, 10)) for uint8 images already on the backend, in
    batches of `batch_size` (fewer where the device's memory asks: `Sequential.inference_rows`)."""
    chunks = []
    batch_size = model.inference_rows(batch_size)
    for start in range(0, len(images), batch_size):
        logits = model.logits(preprocess(images[start : start + batch_size], backend), training=False)
        chunks.append(backend.to_numpy(logits).astype(np.float64))
    return softmax(np.concatenate(chunks)) if chunks else np.zeros((0, 10))


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of misclassified images, the most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]
