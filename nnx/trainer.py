"""The training loop: batches -> forward -> loss -> backward -> step.

It prints nothing: it reports through callbacks, which the CLI renders as progress bars and a
notebook or test can consume as they like. Loss and accuracy accumulate on the device; reading
them (a synchronisation on the GPU) is left to whoever listens, as often as it wants.

Everything random in an epoch is a function of (seed, epoch, batch): the batch order, dropout
masks, augmentation. So a run can stop anywhere and resume bitwise identical from a checkpoint
that holds the weights, the optimizer's state and the loop's `TrainState`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.data.mnist import Split
from nnx.errors import NnxError
from nnx.nn.loss import SoftmaxCrossEntropy
from nnx.nn.sequential import Sequential
from nnx.ops import mix_key
from nnx.optim import Optimizer, Schedule
from nnx.parallel import Communicator, Single
from nnx.preprocess import Preprocess

EVAL_BATCH = 500  # bounds memory: a CNN's im2col columns grow with the batch
# Batches between reads of the divergence tracker (a device scalar: reading it synchronises).
DIVERGENCE_CHECK_EVERY = 50


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
    samples: int  # seen so far this epoch (by every rank together)
    loss_sum: Any
    correct: Any
    elapsed: float  # seconds since the epoch (or its resumed part) began; host clock
    rows: int = 0  # the images loss_sum and correct cover: `samples`, or this rank's share of them


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
        return asdict(self)


@dataclass
class TrainState:
    """Where the loop stands: enough, with weights and optimizer state, to resume exactly."""

    epoch: int = 1  # the epoch in progress, or the next to run
    batch: int = 0  # batches of `epoch` already done
    loss_sum: float = 0.0  # partial-epoch accumulators
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        data = dict(data)
        data["history"] = [EpochMetrics(**m) for m in data.get("history", [])]
        return cls(**data)


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    interrupted: bool = False
    stopped_by: str = ""  # what interrupted it: "Ctrl-C" or "SIGTERM" (set by nnx.api.train)
    stopped_early: bool = False
    best_epoch: int = 0


@dataclass
class EarlyStopping:
    """Stop when `metric` (val_accuracy or val_loss) has not improved by min_delta for
    `patience` epochs; the trainer keeps the best weights."""

    metric: str = "val_accuracy"
    patience: int = 5
    min_delta: float = 0.0

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.metric == "val_loss":
            return value < best - self.min_delta
        return value > best + self.min_delta


class Callback:
    """Override what you need; every hook is optional."""

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_batch_end(self, progress: BatchProgress) -> None: ...
    def on_epoch_end(self, metrics: EpochMetrics) -> None: ...
    def on_train_end(self, result: TrainResult) -> None: ...


class TrainingDivergedError(NnxError):
    exit_code = 1


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The host permutation for one epoch: a function of (seed, epoch) only, so CPU and GPU runs
    see the same batches and a run can be resumed at any epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def evaluate(
    model: Sequential,
    data: DeviceSplit,
    preprocess: Preprocess,
    backend: Backend,
    batch_size: int = EVAL_BATCH,
    comm: Communicator | None = None,
) -> tuple[float, float, Any]:
    """(mean loss, accuracy, predicted classes as a device array) over a whole split, in batches of
    `batch_size` (fewer where the device's memory asks: `Sequential.inference_rows`).

    With a communicator of several ranks, each evaluates its contiguous shard and the sums are
    reduced: every rank gets the whole split's loss and accuracy, and its own shard's predictions."""
    xp = backend.xp
    comm = comm or Single()
    lo, hi = shard(len(data), comm.rank, comm.size)
    loss_fn = SoftmaxCrossEntropy(backend)
    loss_sum = xp.zeros((), dtype=backend.dtype)
    predictions = xp.empty(hi - lo, dtype=np.int64)
    batch_size = model.inference_rows(batch_size)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        z = model.logits(preprocess(data.images[start:stop], backend), training=False)
        loss_sum += loss_fn.forward(z, data.labels[start:stop]) * (stop - start)
        predictions[start - lo : stop - lo] = z.argmax(axis=1)
    correct = (predictions == data.labels[lo:hi]).sum()
    n = max(len(data), 1)
    total_loss, total_correct = comm.allreduce_host([backend.to_float(loss_sum), backend.to_float(correct)])
    return float(total_loss) / n, float(total_correct) / n, predictions


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank `rank` of `size` takes: contiguous, sizes differing by at most 1."""
    return n * rank // size, n * (rank + 1) // size


class Trainer:
    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        backend: Backend,
        preprocess: Preprocess,
        callbacks: list[Callback] | None = None,
        schedule: str | Schedule = "none",
        augment: Callable[[Any, int, int], Any] | None = None,
        early_stopping: EarlyStopping | None = None,
        checkpoint: Callable[[TrainState], None] | None = None,
        comm: Communicator | None = None,
    ) -> None:
        self.model = model
        # Data-parallel: each rank computes its rows of every global batch; gradients are summed.
        self.comm = comm or Single()
        self.optimizer = optimizer
        self.backend = backend
        self.preprocess = preprocess
        self.callbacks = callbacks or []
        self.loss_fn = SoftmaxCrossEntropy(backend)
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        # augment(uint8 images (B, 784) on the device, key, first row's place in the batch) -> images
        self.augment = augment
        self.early_stopping = early_stopping
        self.checkpoint = checkpoint  # called with the state after every epoch and on a stop
        self.best_state: dict[str, np.ndarray] | None = None
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
        state: TrainState | None = None,
    ) -> TrainResult:
        """Train until `epochs` are done, starting from `state` (a resumed run) or the start."""
        backend, xp, model, loss_fn, comm = self.backend, self.backend.xp, self.model, self.loss_fn, self.comm
        state = state or TrainState()
        n = len(train)
        if n == 0:  # (an epoch of nothing divided its accuracy by zero)
            raise NnxError("no training images to fit on")
        batches = math.ceil(n / batch_size)
        if comm.size > 1 and 0 < n % batch_size < comm.size:
            raise NnxError(
                f"the last batch of each epoch has {n % batch_size} images, fewer than the {comm.size} ranks: "
                "change training.batch_size or data.limit"
            )
        base_lr = self.optimizer.lr
        self._emit("on_train_start", epochs, batches, n)
        result = TrainResult()
        while state.epoch <= epochs and not self.stop_requested:
            epoch = state.epoch
            self._emit("on_epoch_start", epoch)
            order = backend.asarray(epoch_order(seed, epoch, n))
            # A run resumed mid-epoch under another batch size goes on from the image it stopped at
            # (batch 7,898 of batch size 1 was past the end of an epoch of batches of 128, which
            # then ended with 12,102 of its images never seen). Otherwise `offset` is 0.
            offset = 0
            if state.seen != state.batch * batch_size:
                offset, state.batch = state.seen % batch_size, state.seen // batch_size
            batches_now = math.ceil((n - offset) / batch_size)
            # A resumed epoch's partial sums are global: one rank carries them, the others start at 0.
            # [()]: NumPy scalars on the CPU, which += replaces with new ones in 0.1 us (adding in
            # place into a 0-d array took 0.8); 0-d arrays on a GPU, added to in place, unread.
            loss_sum = xp.asarray(state.loss_sum if comm.is_root else 0.0, dtype=backend.dtype)[()]
            correct = xp.asarray(state.correct if comm.is_root else 0, dtype=np.int64)[()]
            seen = state.seen
            rows = state.seen if comm.is_root else 0  # what this rank's loss_sum and correct cover
            # The losses since the last divergence check, left on the device and read at the check.
            window = xp.zeros(DIVERGENCE_CHECK_EVERY, dtype=backend.dtype)
            window_start = state.batch
            started = time.perf_counter()
            for batch in range(state.batch, batches_now):
                self.optimizer.lr = self.schedule.lr(base_lr, (epoch - 1) * batches + batch, epochs * batches, batches)
                idx = order[offset + batch * batch_size : offset + (batch + 1) * batch_size]
                global_rows = len(idx)
                lo, hi = shard(global_rows, comm.rank, comm.size)
                idx = idx[lo:hi]  # this rank's rows of the global batch (all of them on one process)
                y = train.labels[idx]
                if self.augment is None:
                    x = self.preprocess.rows(train.images, idx, backend)
                else:
                    pixels = self.augment(train.images[idx], batch_key(seed, epoch, batch, "augment"), lo)
                    x = self.preprocess(pixels, backend)
                model.set_random_key(seed, epoch, batch, row_offset=lo)
                z = model.logits(x, training=True)
                loss = loss_fn.forward(z, y)
                correct += backend.ops.count_correct(z, y)
                dz = loss_fn.backward()
                if comm.size > 1:
                    # dL/dz of the global batch's mean loss: (p - onehot) / N_global, not / N_rank;
                    # then the ranks' gradients add up to the one-process gradient (one allreduce).
                    dz *= len(idx) / global_rows
                model.backward(dz)
                if comm.size > 1:
                    comm.allreduce_sum(model.flat_grads)
                self.optimizer.step()
                loss_sum += loss * len(idx)
                seen += global_rows
                rows += len(idx)
                state.batch = batch + 1
                window[batch - window_start] = loss
                if (batch + 1) % DIVERGENCE_CHECK_EVERY == 0:
                    self._check_divergence(epoch, window[: batch + 1 - window_start], window_start)
                    window_start = batch + 1
                if self.callbacks:  # (a BatchProgress for no one was a microsecond of a 0.13 ms step)
                    self._emit(
                        "on_batch_end",
                        BatchProgress(
                            epoch, batch + 1, batches, seen, loss_sum, correct, time.perf_counter() - started, rows
                        ),
                    )
                if self._stop_agreed():
                    break
            backend.synchronize()
            state.epoch_seconds += time.perf_counter() - started
            self._check_divergence(epoch, window[: state.batch - window_start], window_start)
            epoch_loss, epoch_correct = backend.to_float(loss_sum), backend.to_float(correct)
            if comm.size > 1:
                epoch_loss, epoch_correct = comm.allreduce_host([epoch_loss, epoch_correct])
                self._average_buffers()
            train_loss = epoch_loss / max(seen, 1)
            if state.batch < batches_now:  # stopped mid-epoch: keep the partial accumulators
                state.loss_sum, state.correct, state.seen = float(epoch_loss), int(epoch_correct), seen
                result.interrupted = True
                break
            metrics = self._finish_epoch(state, validation, train_loss, float(epoch_correct) / seen, seen)
            stop_early = self._should_stop_early(state, metrics)
            self._checkpoint(state)  # before the callbacks: one that fails (a user's logger) loses no epoch
            self._emit("on_epoch_end", metrics)
            if stop_early:
                result.stopped_early = True
                break
        if self.stop_requested and not result.stopped_early:
            result.interrupted = state.epoch <= epochs
            self._checkpoint(state)
        self.optimizer.lr = base_lr
        result.history = list(state.history)
        # Counting the unfinished part of an epoch too (a run stopped mid-epoch).
        result.train_seconds = state.train_seconds + state.epoch_seconds
        result.samples_seen = state.samples_seen + state.seen
        result.best_epoch = state.best_epoch
        self._emit("on_train_end", result)
        return result

    def _check_divergence(self, epoch: int, losses: Any, start: int) -> None:
        """Stop if any of `losses` (of batches start+1, start+2, ...) is nan or inf; one read."""
        xp, count = self.backend.xp, len(losses)
        first = int(xp.where(xp.isfinite(losses), count, xp.arange(count)).min()) if count else count
        batch = start + first + 1 if first < count else -1
        if self.comm.size > 1:  # every rank must decide alike, or the others would wait forever
            flagged = self.comm.allreduce_host([batch if batch >= 0 else np.inf], "min")[0]
            batch = int(flagged) if np.isfinite(flagged) else -1
        if batch >= 0:
            raise TrainingDivergedError(f"the loss became nan or inf at epoch {epoch}, batch {batch}")

    def _stop_agreed(self) -> bool:
        """Whether to stop after this batch: on several ranks, when any rank was asked to (Ctrl-C
        reaches them at slightly different moments), so that all stop at the same batch."""
        if self.comm.size == 1:
            return self.stop_requested
        self.stop_requested = bool(self.comm.allreduce_host([self.stop_requested], "max")[0])
        return self.stop_requested

    def _average_buffers(self) -> None:
        """Per-rank batch norm statistics drift apart; after each epoch every rank takes their
        mean, so the saved model (and a resume with any number of ranks) sees one set."""
        for _, buffer in self.model.buffers():
            self.comm.allreduce_sum(buffer)
            buffer /= self.comm.size

    def _finish_epoch(
        self, state: TrainState, validation: DeviceSplit | None, train_loss: float, train_acc: float, seen: int
    ) -> EpochMetrics:
        val_loss = val_acc = None
        if validation is not None and len(validation):
            val_loss, val_acc, _ = evaluate(self.model, validation, self.preprocess, self.backend, comm=self.comm)
        metrics = EpochMetrics(
            state.epoch, train_loss, train_acc, val_loss, val_acc, state.epoch_seconds, self.optimizer.lr
        )
        state.history.append(metrics)
        state.train_seconds += state.epoch_seconds
        state.samples_seen += seen
        state.epoch += 1
        state.batch = state.seen = state.correct = 0
        state.loss_sum = state.epoch_seconds = 0.0
        return metrics

    def _should_stop_early(self, state: TrainState, metrics: EpochMetrics) -> bool:
        rule = self.early_stopping
        if rule is None:
            return False
        value = getattr(metrics, rule.metric)
        if value is None:
            raise NnxError(f"early stopping on {rule.metric} needs a validation split (training.validation > 0)")
        if rule.improved(value, state.best_metric):
            state.best_metric, state.best_epoch = value, metrics.epoch
            state.epochs_without_improvement = 0
            self.best_state = self.model.state()
            return False
        state.epochs_without_improvement += 1
        return state.epochs_without_improvement >= rule.patience

    def _checkpoint(self, state: TrainState) -> None:
        if self.checkpoint is not None:
            self.checkpoint(state)


def batch_key(seed: int, epoch: int, batch: int, purpose: str) -> int:
    """The key of a batch's random numbers for `purpose` ("augment"): a function of (seed, epoch,
    batch) alone, so a resumed run draws what it would have drawn."""
    return mix_key(seed, epoch, batch, sum(map(ord, purpose)))
