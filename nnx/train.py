"""The training loop: batches -> forward -> loss -> backward -> step.

It prints nothing: it reports through callbacks, which the CLI renders as progress bars and a
notebook or test can consume as they like. Loss and accuracy accumulate on the device; reading
them (a synchronisation on the GPU) is left to whoever listens, as often as it wants.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.data.mnist import Split
from nnx.nn.loss import SoftmaxCrossEntropy
from nnx.nn.sequential import Sequential
from nnx.preprocess import Preprocess

EVAL_BATCH = 2000


class DeviceSplit:
    """A split moved to the backend once: uint8 images, int64 labels."""

    def __init__(self, split: Split, backend: Backend) -> None:
        self.images = backend.asarray(split.images)
        self.labels = backend.asarray(split.labels, dtype=np.int64)
        self.host_labels = split.labels

    def __len__(self) -> int:
        return len(self.host_labels)


@dataclass
class BatchProgress:
    """What a callback sees after each batch. `loss_sum` and `correct` are device scalars."""

    epoch: int
    batch: int
    batches: int
    samples: int  # seen so far this epoch
    loss_sum: Any
    correct: Any
    elapsed: float  # seconds since the epoch began (host clock, not synchronised)


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    interrupted: bool = False


class Callback:
    """Override what you need; every hook is optional."""

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_batch_end(self, progress: BatchProgress) -> None: ...
    def on_epoch_end(self, metrics: EpochMetrics) -> None: ...
    def on_train_end(self, result: TrainResult) -> None: ...


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The host permutation for one epoch: a function of (seed, epoch) only, so CPU and GPU runs
    see the same batches and a run can be resumed at any epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    # lr_t = lr * (1 + cos(pi t / T)) / 2
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def evaluate(
    model: Sequential,
    data: DeviceSplit,
    preprocess: Preprocess,
    backend: Backend,
    batch_size: int = EVAL_BATCH,
) -> tuple[float, float, Any]:
    """(mean loss, accuracy, predicted classes as a device array) over a whole split."""
    xp = backend.xp
    loss_fn = SoftmaxCrossEntropy(backend)
    loss_sum = xp.zeros((), dtype=backend.dtype)
    predictions = xp.empty(len(data), dtype=np.int64)
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        z = model.forward(preprocess(data.images[start:stop], backend), training=False)
        loss_sum += loss_fn.forward(z, data.labels[start:stop]) * (stop - start)
        predictions[start:stop] = z.argmax(axis=1)
    correct = (predictions == data.labels).sum()
    n = max(len(data), 1)
    return backend.to_float(loss_sum) / n, backend.to_float(correct) / n, predictions


class Trainer:
    def __init__(
        self,
        model: Sequential,
        optimizer: Any,
        backend: Backend,
        preprocess: Preprocess,
        callbacks: list[Callback] | None = None,
        schedule: str = "none",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.backend = backend
        self.preprocess = preprocess
        self.callbacks = callbacks or []
        self.loss_fn = SoftmaxCrossEntropy(backend)
        self.schedule = schedule
        self.stop_requested = False

    def request_stop(self) -> None:
        """Ask the loop to stop after the current batch (e.g. from a SIGINT handler)."""
        self.stop_requested = True

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def fit(
        self,
        train: DeviceSplit,
        validation: DeviceSplit | None,
        epochs: int,
        batch_size: int,
        seed: int,
    ) -> TrainResult:
        backend, xp, model, loss_fn = self.backend, self.backend.xp, self.model, self.loss_fn
        n = len(train)
        batches = math.ceil(n / batch_size)
        base_lr = self.optimizer.lr
        result = TrainResult()
        self._emit("on_train_start", epochs, batches, n)
        for epoch in range(1, epochs + 1):
            self._emit("on_epoch_start", epoch)
            order = backend.asarray(epoch_order(seed, epoch, n))
            loss_sum = xp.zeros((), dtype=backend.dtype)
            correct = xp.zeros((), dtype=np.int64)
            started = time.perf_counter()
            seen = 0
            for batch in range(batches):
                if self.schedule == "cosine":
                    self.optimizer.lr = cosine_lr(base_lr, (epoch - 1) * batches + batch, epochs * batches)
                idx = order[batch * batch_size : (batch + 1) * batch_size]
                y = train.labels[idx]
                z = model.forward(self.preprocess(train.images[idx], backend), training=True)
                loss = loss_fn.forward(z, y)
                correct += (z.argmax(axis=1) == y).sum()
                model.backward(loss_fn.backward())
                self.optimizer.step()
                loss_sum += loss * len(idx)
                seen += len(idx)
                self._emit(
                    "on_batch_end",
                    BatchProgress(epoch, batch + 1, batches, seen, loss_sum, correct, time.perf_counter() - started),
                )
                if self.stop_requested:
                    break
            backend.synchronize()
            seconds = time.perf_counter() - started
            result.train_seconds += seconds
            result.samples_seen += seen
            if self.stop_requested:
                result.interrupted = True
                break
            val_loss = val_acc = None
            if validation is not None and len(validation):
                val_loss, val_acc, _ = evaluate(model, validation, self.preprocess, backend)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=backend.to_float(loss_sum) / seen,
                train_accuracy=backend.to_float(correct) / seen,
                val_loss=val_loss,
                val_accuracy=val_acc,
                seconds=seconds,
                lr=self.optimizer.lr,
            )
            result.history.append(metrics)
            self._emit("on_epoch_end", metrics)
        self.optimizer.lr = base_lr
        self._emit("on_train_end", result)
        return result
