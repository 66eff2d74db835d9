"""Training progress for people: rich bars on a terminal or in a notebook, a plain line per epoch elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from nnx.trainer import BatchProgress, Callback, EpochMetrics, TrainResult

REFRESH_SECONDS = 0.25


def epoch_line(m: EpochMetrics, epochs: int, eta: float | None = None) -> str:
    val = f"  val loss {m.val_loss:.4f}  val acc {m.val_accuracy:.2%}" if m.val_accuracy is not None else ""
    left = f"  ETA {format_seconds(eta)}" if eta is not None and m.epoch < epochs else ""
    return (
        f"epoch {m.epoch}/{epochs}  loss {m.train_loss:.4f}  train acc {m.train_accuracy:.2%}"
        f"{val}  {m.seconds:.2f}s  lr {m.lr:.4g}{left}"
    )


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Clock:
    """Time left for the run, from the epochs done (or, in the first, the batches done)."""

    def __init__(self) -> None:
        self.epochs = 0
        self.batches = 0
        self.epoch_seconds: list[float] = []

    def after_epoch(self, m: EpochMetrics) -> float:
        self.epoch_seconds.append(m.seconds)
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        return mean * (self.epochs - m.epoch)

    def during_epoch(self, p: BatchProgress) -> float | None:
        if p.batch == 0 or p.elapsed <= 0:
            return None
        per_epoch = (
            sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else p.elapsed / p.batch * p.batches
        )
        return p.elapsed / p.batch * (p.batches - p.batch) + per_epoch * (self.epochs - p.epoch)


class PlainProgress(Callback):
    """One line per epoch: for logs, CI and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0
        self.clock = Clock()

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None:
        self.epochs = self.clock.epochs = epochs

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.console.print(epoch_line(metrics, self.epochs, self.clock.after_epoch(metrics)), markup=False)


class RichProgress(PlainProgress):
    """An epoch bar and a batch bar with live loss and samples/s.

    Device scalars are read only when the display refreshes (a few times a second), so a GPU is
    not synchronised after every batch.
    """

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.last_refresh = 0.0
        self.progress = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        )

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None:
        super().on_train_start(epochs, batches_per_epoch, samples_per_epoch)
        self.epoch_task = self.progress.add_task("epoch", total=epochs, status="")
        self.batch_task = self.progress.add_task("batch", total=batches_per_epoch, status="")
        self.progress.start()

    def on_epoch_start(self, epoch: int) -> None:
        self.progress.reset(self.batch_task, status="")

    def on_batch_end(self, p: BatchProgress) -> None:
        now = time.monotonic()
        if now - self.last_refresh < REFRESH_SECONDS and p.batch != p.batches:
            return
        self.last_refresh = now
        # Device scalars: these reads synchronise a GPU. On several ranks they are rank 0's rows.
        loss = float(p.loss_sum) / max(p.rows, 1)
        accuracy = float(p.correct) / max(p.rows, 1)
        rate = p.samples / p.elapsed if p.elapsed > 0 else 0.0
        eta = self.clock.during_epoch(p)
        left = f"  ETA {format_seconds(eta)}" if eta is not None else ""
        status = f"loss {loss:.4f}  acc {accuracy:.2%}  {rate:,.0f} samples/s{left}"
        self.progress.update(self.batch_task, completed=p.batch, status=status)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        eta = self.clock.after_epoch(metrics)
        self.progress.console.print(epoch_line(metrics, self.epochs, eta), markup=False)
        self.progress.advance(self.epoch_task)

    def on_train_end(self, result: TrainResult) -> None:
        self.progress.stop()


def make_progress(console: Console, quiet: bool) -> list[Callback]:
    if quiet:
        return []
    if console.is_terminal:
        return [RichProgress(console)]
    return [PlainProgress(console)]
