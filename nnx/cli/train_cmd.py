"""`nnx train`: config -> data -> model -> trainer -> run directory and summary."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from nnx import __version__
from nnx.augment import ShiftRotate
from nnx.backend import Backend, get_backend
from nnx.checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint
from nnx.cli.common import stdout_console
from nnx.cli.data_cmd import ensure_data
from nnx.cli.progress import make_progress
from nnx.config import Config, load_config
from nnx.data.mnist import Split, load_mnist, resolve_data_dir
from nnx.errors import NnxError
from nnx.io import read_header, save_model
from nnx.metrics import peak_rss_mb
from nnx.nn import Sequential, build_model
from nnx.optim import OPTIMIZERS, Optimizer, Schedule
from nnx.preprocess import Preprocess
from nnx.runs import RunWriter, new_run_dir
from nnx.train import Callback, DeviceSplit, EarlyStopping, EpochMetrics, Trainer, TrainState, evaluate


class MetricsWriter(Callback):
    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.writer.add_epoch(metrics.to_dict())


def build_model_for(config: Config, backend: Backend) -> Sequential:
    rng = np.random.default_rng([config.training.seed, 0])
    try:
        return build_model(config.model.layer_specs(), backend, rng, classes=10)
    except ValueError as exc:
        raise NnxError(f"model.layers: {exc}") from None


def build_optimizer(config: Config, model: Sequential, backend: Backend) -> Optimizer:
    o = config.optimizer
    common = {"weight_decay": o.weight_decay, "ops": backend.ops, "clip_norm": o.clip_norm}
    params = model.flat_parameters()
    if o.name == "sgd":
        return OPTIMIZERS["sgd"](params, o.lr, o.momentum, o.nesterov, **common)
    if o.name == "rmsprop":
        return OPTIMIZERS["rmsprop"](params, o.lr, o.rho, o.eps, **common)
    return OPTIMIZERS[o.name](params, o.lr, o.betas, o.eps, **common)


def run_train(
    config_name: str | None,
    assignments: list[str],
    flags: dict[str, Any],
    out: Path | None,
    download: bool,
    quiet: bool,
    resume: Path | None = None,
    plots: bool = False,
) -> None:
    console = stdout_console()
    if resume is not None:
        if not (resume / "config.yaml").is_file() or not (resume / CHECKPOINT).is_file():
            raise NnxError(f"{resume}: not a run directory with config.yaml and {CHECKPOINT} to resume")
        _refuse_finished_run(resume, flags.get("training.epochs"))
        config_name = str(resume / "config.yaml")
    config, config_path = load_config(config_name, assignments, flags)
    backend = get_backend(config.device, config.dtype, config.allow_tf32)
    data_dir = resolve_data_dir(None, config.data.dir)
    config.data.dir = str(data_dir)
    model = build_model_for(config, backend)
    optimizer = build_optimizer(config, model, backend)
    ensure_data(data_dir, console, download)
    mnist = load_mnist(data_dir, config.training.validation)
    if config.data.limit is not None:
        mnist.train = Split(mnist.train.images[: config.data.limit], mnist.train.labels[: config.data.limit])
    t = config.training
    preprocess = Preprocess.named(config.data.normalize)

    run_dir = resume if resume is not None else new_run_dir(config, str(out) if out else None)
    writer = RunWriter(run_dir, config)
    state = TrainState()
    if resume is not None:
        state = load_checkpoint(run_dir / CHECKPOINT, model, optimizer)
        writer.metric_lines = [json.dumps(m.to_dict()) for m in state.history]
    if not quiet:
        if config.device == "auto":
            why = f": no usable GPU ({backend.auto_fallback})" if backend.auto_fallback else ""
            console.print(f"device auto -> {backend.name}{why}", markup=False)
        console.print(
            f"nnx {__version__} | {config_path.name} | device {backend.description()} | "
            f"model {model.describe()} ({model.count_parameters():,} parameters) | "
            f"train {len(mnist.train):,} val {len(mnist.validation):,} test {len(mnist.test):,} | run {run_dir}",
            markup=False,
        )
        if resume is not None:
            console.print(f"resuming at epoch {state.epoch}, batch {state.batch}", markup=False)

    early = t.early_stopping
    trainer = Trainer(
        model,
        optimizer,
        backend,
        preprocess,
        [MetricsWriter(writer), *make_progress(console, backend, quiet)],
        Schedule(**config.schedule.model_dump()),
        augment=ShiftRotate(backend, t.augment.max_shift, t.augment.max_rotation) if t.augment.enabled else None,
        early_stopping=EarlyStopping(early.metric, early.patience, early.min_delta) if early else None,
    )
    if resume is not None and (run_dir / BEST).is_file():
        trainer.best_state = read_header(run_dir / BEST)[1]
    saved_best_epoch = state.best_epoch

    def checkpoint(current: TrainState) -> None:
        nonlocal saved_best_epoch
        if trainer.best_state is not None and current.best_epoch != saved_best_epoch:
            save_model(run_dir / BEST, _with_state(model, trainer.best_state), preprocess)
            saved_best_epoch = current.best_epoch
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, current)

    trainer.checkpoint = checkpoint
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
        # A diverging run is reported by the trainer's guard; NumPy's overflow warnings are noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = trainer.fit(train_data, val_data, t.epochs, t.batch_size, t.seed, state)
    except NnxError as exc:
        kept = f"; the last good checkpoint is {run_dir / CHECKPOINT}" if (run_dir / CHECKPOINT).exists() else ""
        raise type(exc)(f"{exc}{kept}; try a lower optimizer.lr or optimizer.clip_norm") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    if trainer.early_stopping is not None and trainer.best_state is not None and not result.interrupted:
        model.load_state(trainer.best_state)  # early stopping keeps the best epoch's weights
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
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch or None,
        "model_description": model.describe(),
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
    _print_summary(console, summary, result, t.epochs, backend, run_dir, quiet)
    if plots and not result.interrupted:
        from nnx.viz.report import make_plots

        written = make_plots(run_dir, data_dir, "cpu")
        console.print(f"plots and report: {', '.join(p.name for p in written)} in {run_dir}", markup=False)
    if result.interrupted:
        console.print(
            f"Stopped by Ctrl-C during epoch {len(result.history) + 1}. Kept in {run_dir}: config.yaml, "
            f"metrics.jsonl ({len(result.history)} complete epoch(s)), {CHECKPOINT} (to continue: "
            f"nnx train --resume {run_dir}), model.npz (weights at the stop), summary.json",
            markup=False,
        )
        raise typer.Exit(130)


def _refuse_finished_run(run_dir: Path, epochs: int | None) -> None:
    """Resuming a run that ended on its own would retrain nothing or undo an early stop."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return
    summary = json.loads(summary_path.read_text())
    if summary.get("interrupted"):
        return
    done = summary.get("epochs", 0)
    if summary.get("stopped_early"):
        raise NnxError(f"{run_dir}: stopped early at its best epoch ({summary.get('best_epoch')}); nothing to resume")
    if epochs is None or epochs <= done:
        raise NnxError(
            f"{run_dir}: already finished its {done} epochs; to train it further, add --epochs N (N > {done})"
        )


def _with_state(model: Sequential, arrays: dict[str, np.ndarray]) -> Sequential:
    """A copy of `model` holding `arrays` (for saving the best weights without touching it)."""
    copy = build_model(model.spec(), model.backend, np.random.default_rng(0))
    copy.load_state(arrays)
    return copy


def _print_summary(console, summary, result, epochs, backend, run_dir, quiet) -> None:
    test_acc = summary["test_accuracy"]
    if quiet:
        console.print(f"test accuracy {test_acc:.2%}; model saved to {run_dir / 'model.npz'}", markup=False)
        return
    table = Table(title="nnx train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("test accuracy", f"{test_acc:.2%}")
    stopped = f" (early stop; best epoch {result.best_epoch})" if result.stopped_early else ""
    table.add_row("epochs", f"{len(result.history)} of {epochs}{stopped}")
    table.add_row("training time", f"{result.train_seconds:.2f} s")
    table.add_row("samples/s", f"{summary['samples_per_second']:,.0f}")
    gpu = f", GPU pool {summary['gpu_pool_mb']:.0f} MB" if summary["gpu_pool_mb"] is not None else ""
    table.add_row("peak memory", f"{summary['peak_rss_mb']:.0f} MB RSS{gpu}")
    table.add_row("device", backend.description())
    table.add_row("model saved to", str(run_dir / "model.npz"))
    console.print(table)
