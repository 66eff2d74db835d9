"""Logs that other tools read, as trainer callbacks: TensorBoard event files and a CSV file.

`training.log: [tensorboard, csv]` in a config. Both go into the run directory, so
`tensorboard --logdir runs` shows every run, and metrics.csv opens in a spreadsheet.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from nnx.atomic import write_atomic
from nnx.errors import NnxError
from nnx.trainer import Callback, EpochMetrics, TrainResult

COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "lr", "samples_per_second")


def _row(metrics: EpochMetrics, samples: int) -> dict[str, Any]:
    row = metrics.to_dict()
    row["samples_per_second"] = samples / metrics.seconds if metrics.seconds else 0.0
    return {k: row.get(k) for k in COLUMNS}


class CSVLogger(Callback):
    """metrics.csv beside metrics.jsonl: a header, then a row per epoch (rewritten atomically)."""

    def __init__(self, run_dir: Path, history: list[EpochMetrics] | None = None, samples: int = 0) -> None:
        self.path = run_dir / "metrics.csv"
        self.samples = samples
        self.rows = [_row(m, samples) for m in history or []]

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None:
        self.samples = samples_per_epoch

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.rows.append(_row(metrics, self.samples))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in self.rows)
        write_atomic(self.path, out.getvalue().encode())


class TensorBoardLogger(Callback):
    """Scalars per epoch (loss, accuracy, lr, samples/s) through tensorboardX's SummaryWriter, and
    the run's config as text (TensorBoard's Text tab), to tell runs apart."""

    def __init__(self, run_dir: Path, config_yaml: str = "") -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise NnxError(TENSORBOARD_MISSING) from None
        self.writer = SummaryWriter(logdir=str(run_dir))
        self.samples = 0
        if config_yaml:  # indented four spaces: a code block in the Markdown TensorBoard renders
            self.writer.add_text("config", "".join(f"    {line}\n" for line in config_yaml.splitlines()), 0)

    def on_train_start(self, epochs: int, batches_per_epoch: int, samples_per_epoch: int) -> None:
        self.samples = samples_per_epoch

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        step, add = metrics.epoch, self.writer.add_scalar
        add("loss/train", metrics.train_loss, step)
        add("accuracy/train", metrics.train_accuracy, step)
        if metrics.val_loss is not None:
            add("loss/validation", metrics.val_loss, step)
            add("accuracy/validation", metrics.val_accuracy, step)
        add("lr", metrics.lr, step)
        if metrics.seconds:
            add("samples_per_second", self.samples / metrics.seconds, step)
        self.writer.flush()

    def on_train_end(self, result: TrainResult) -> None:
        self.writer.close()


TENSORBOARD_MISSING = "training.log: tensorboard needs tensorboardX: pip install 'nnx[log]'"


def check_loggers(names: list[str]) -> None:
    """What the loggers need, checked before a run directory is made (not after, leaving one)."""
    import importlib.util

    if "tensorboard" in names and importlib.util.find_spec("tensorboardX") is None:
        raise NnxError(TENSORBOARD_MISSING)


def make_loggers(names: list[str], run_dir: Path, history: list[EpochMetrics], config_yaml: str = "") -> list[Callback]:
    loggers: list[Callback] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(run_dir, history))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, config_yaml))
    return loggers
