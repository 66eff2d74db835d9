"""`nnx train`: config -> data -> model -> trainer -> run directory and summary."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from nnx import __version__
from nnx.backend import get_backend
from nnx.cli.common import stdout_console
from nnx.cli.data_cmd import ensure_data
from nnx.cli.progress import make_progress
from nnx.config import load_config
from nnx.data.mnist import load_mnist, resolve_data_dir
from nnx.io import save_model
from nnx.metrics import peak_rss_mb
from nnx.nn import build_model, mlp_spec
from nnx.optim import SGD
from nnx.preprocess import Preprocess
from nnx.runs import RunWriter, new_run_dir
from nnx.train import Callback, DeviceSplit, EpochMetrics, Trainer, evaluate


class MetricsWriter(Callback):
    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.writer.add_epoch(metrics.to_dict())


def run_train(
    config_name: str | None,
    assignments: list[str],
    flags: dict[str, Any],
    out: Path | None,
    download: bool,
    quiet: bool,
) -> None:
    console = stdout_console()
    config, config_path = load_config(config_name, assignments, flags)
    backend = get_backend(config.device, config.dtype, config.allow_tf32)
    data_dir = resolve_data_dir(None, config.data.dir)
    config.data.dir = str(data_dir)
    ensure_data(data_dir, console, download)
    mnist = load_mnist(data_dir, config.training.validation)

    t = config.training
    rng = np.random.default_rng([t.seed, 0])
    model = build_model(
        mlp_spec([784, *config.model.hidden, 10], config.model.activation, config.model.init), backend, rng
    )
    o = config.optimizer
    optimizer = SGD(model.flat_parameters(), o.lr, o.momentum, o.nesterov, o.weight_decay, backend.ops)
    preprocess = Preprocess.named(config.data.normalize)

    run_dir = new_run_dir(config, str(out) if out else None)
    writer = RunWriter(run_dir, config)
    if not quiet:
        if config.device == "auto":
            why = f": no usable GPU ({backend.auto_fallback})" if backend.auto_fallback else ""
            console.print(f"device auto -> {backend.name}{why}", markup=False)
        console.print(
            f"nnx {__version__} | {config_path.name} | device {backend.description()} | "
            f"model {' -> '.join(str(s) for s in [784, *config.model.hidden, 10])} "
            f"({model.count_parameters():,} parameters) | train {len(mnist.train):,} "
            f"val {len(mnist.validation):,} test {len(mnist.test):,} | run {run_dir}",
            markup=False,
        )

    trainer = Trainer(
        model,
        optimizer,
        backend,
        preprocess,
        [MetricsWriter(writer), *make_progress(console, backend, quiet)],
        o.schedule,
    )
    train_data = DeviceSplit(mnist.train, backend)
    val_data = DeviceSplit(mnist.validation, backend) if len(mnist.validation) else None

    def on_sigint(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (e.g. embedded): Ctrl-C keeps its default meaning
        previous = None
    try:
        result = trainer.fit(train_data, val_data, t.epochs, t.batch_size, t.seed)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    test_loss, test_acc, _ = evaluate(model, DeviceSplit(mnist.test, backend), preprocess, backend)
    val_accs = [m.val_accuracy for m in result.history if m.val_accuracy is not None]
    summary = {
        "name": config.name,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "best_val_accuracy": max(val_accs) if val_accs else None,
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_seen / result.train_seconds if result.train_seconds else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_pool_mb": backend.peak_memory_mb(),
        "device": backend.name,
        "device_description": backend.description(),
        "dtype": config.dtype,
        "tf32": backend.tf32,
        "seed": t.seed,
        "epochs": len(result.history),
        "epochs_planned": t.epochs,
        "interrupted": result.interrupted,
        "nnx_version": __version__,
        "model": str(run_dir / "model.npz"),
    }
    save_model(
        run_dir / "model.npz",
        model,
        preprocess,
        metrics={
            "test_accuracy": test_acc,
            "best_val_accuracy": summary["best_val_accuracy"],
            "epochs": len(result.history),
        },
        extra={"config_name": config.name, "interrupted": result.interrupted},
    )
    writer.write_summary(summary)

    if quiet:
        console.print(f"test accuracy {test_acc:.2%}; model saved to {run_dir / 'model.npz'}", markup=False)
    else:
        table = Table(title="nnx train: summary", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("test accuracy", f"{test_acc:.2%}")
        table.add_row("epochs", f"{len(result.history)} of {t.epochs}")
        table.add_row("training time", f"{result.train_seconds:.2f} s")
        table.add_row("samples/s", f"{summary['samples_per_second']:,.0f}")
        table.add_row(
            "peak memory",
            f"{summary['peak_rss_mb']:.0f} MB RSS"
            + (f", GPU pool {summary['gpu_pool_mb']:.0f} MB" if summary["gpu_pool_mb"] is not None else ""),
        )
        table.add_row("device", backend.description())
        table.add_row("model saved to", str(run_dir / "model.npz"))
        console.print(table)
    if result.interrupted:
        console.print(
            f"Stopped by Ctrl-C during epoch {len(result.history) + 1}. Kept in {run_dir}: config.yaml, "
            f"metrics.jsonl ({len(result.history)} complete epoch(s)), model.npz (weights at the stop), summary.json",
            markup=False,
        )
        raise typer.Exit(130)
