"""nnx as a library: `train` a config into a run directory, `load` a model file to predict.

The one place a run is put together (config -> backend -> data -> model -> optimizer -> trainer
-> run directory, checkpoints, resume, summary): `nnx train`, `nnx sweep` and a notebook all call
`train`. Nothing here prints; progress goes to the callbacks given, and human-readable lines
about the setup to `log` when one is given.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnx import __version__
from nnx.atomic import WriteError
from nnx.augment import make_augment
from nnx.backend import Backend, get_backend
from nnx.checkpoint import BEST, CHECKPOINT, checkpoint_cpu_path, load_checkpoint, save_checkpoint, saved_config
from nnx.config import Config, apply_overrides, check_overrides, load_config, to_yaml, validate
from nnx.cpu_choice import MAX_ROUND_STEPS, Choice, choose, cpu_candidates, forced_path
from nnx.cpu_ops import CpuOps, default_threads, usable_cpus, winograd_candidate
from nnx.data.datasets import class_names, get_dataset
from nnx.data.mnist import Split, load_mnist, missing_files, resolve_data_dir
from nnx.errors import DataError, NnxError
from nnx.io import read_header, save_model
from nnx.loggers import check_loggers, make_loggers
from nnx.metrics import peak_rss_mb
from nnx.nn import Sequential, build_model
from nnx.optim import OPTIMIZERS, Optimizer, Schedule
from nnx.parallel import Communicator, MPIComm, NCCLComm, RanksDisagreeError, Single, check_same_config
from nnx.preprocess import Preprocess
from nnx.runs import RunLock, RunWriter, check_not_locked, check_out, config_differences, new_run_dir, read_json
from nnx.trainer import (
    Callback,
    DeviceSplit,
    EarlyStopping,
    EpochMetrics,
    Trainer,
    TrainingDivergedError,
    TrainResult,
    TrainState,
    evaluate,
)

# How long a failing rank waits after its error line before ending the job, and how long a rank
# that found what rank 0 reports waits for rank 0 to end the job before ending it itself.
PRINT_GRACE_SECONDS = 0.5
ABORT_GRACE_SECONDS = 3.0

__all__ = ["Model", "Prediction", "Run", "build_model_for", "build_optimizer", "load", "train"]


@dataclass
class Run:
    """A finished (or stopped) training run: where it lives and what it produced."""

    path: Path
    config: Config
    summary: dict[str, Any]
    history: list[EpochMetrics]
    model: Sequential
    preprocess: Preprocess
    backend: Backend
    result: TrainResult
    rank: int = 0  # data-parallel: which process this is (rank 0 wrote the run directory)

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


class MetricsWriter(Callback):
    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.writer.add_epoch(metrics.to_dict())


def build_model_for(config: Config, backend: Backend) -> Sequential:
    """The config's network, initial weights drawn on the host from (seed, 0)."""
    rng = np.random.default_rng([config.training.seed, 0])
    try:
        return build_model(config.model.layer_specs(), backend, rng, classes=10)
    except ValueError as exc:
        raise NnxError(f"model.layers: {exc}") from None


def build_optimizer(config: Config, model: Sequential | None, backend: Backend) -> Optimizer:
    """The config's optimizer over the model's parameters (over none without a model: what it
    would keep, without allocating it)."""
    o = config.optimizer
    common = {"weight_decay": o.weight_decay, "ops": backend.ops, "clip_norm": o.clip_norm}
    params = model.flat_parameters() if model is not None else []
    if o.name == "sgd":
        return OPTIMIZERS["sgd"](params, o.lr, o.momentum, o.nesterov, **common)
    if o.name == "rmsprop":
        return OPTIMIZERS["rmsprop"](params, o.lr, o.rho, o.eps, **common)
    return OPTIMIZERS[o.name](params, o.lr, o.betas, o.eps, **common)


def resolve_config(
    config: str | Path | Config | dict[str, Any] | None,
    overrides: dict[str, Any] | None = None,
    assignments: Sequence[str] = (),
) -> tuple[Config, str]:
    """(validated config, where it came from). `config` is a YAML path, a built-in name, a Config,
    a dict shaped like a config file, or None (the default); `assignments` are `--set key=value`
    strings, `overrides` typed values by dotted key, applied after them."""
    assignments = [assignments] if isinstance(assignments, str) else list(assignments)  # not one a character
    if isinstance(config, (Config, dict)):
        raw = config.model_dump() if isinstance(config, Config) else copy.deepcopy(config)
        source = f"config {raw.get('name', 'dict')!r}"
        return validate(raw, source, apply_overrides(raw, assignments, overrides)), source
    resolved, path = load_config(str(config) if config is not None else None, assignments, overrides)
    return resolved, path.name


def train(
    config: str | Path | Config | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    assignments: Sequence[str] = (),
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    download: bool = True,
    fetch: Callable[[Path, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    handle_sigint: bool = True,
    distributed: bool = False,
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> Run:
    """Train `config` (a YAML path, a built-in name such as "mnist_cnn", a Config, a dict shaped like
    a config file, or None for the default) with `overrides` ({"optimizer.lr": 0.05, ...}) into a
    run directory, and return the Run.

    `resume`: a stopped run's directory, continued from its checkpoint (then `config` is ignored).
    `callbacks` see every event of the loop. `fetch(data_dir, dataset)` downloads missing files
    (`fetch(data_dir, dataset, mirrors)` when the config sets data.mirrors; by default the mirrors
    in order, silently; `download=False` refuses instead). `log` receives the
    setup lines the CLI shows. With `handle_sigint`, Ctrl-C (or SIGTERM) stops after the current
    batch and the run is kept resumable (a second one aborts). A stopped run comes back with
    `run.interrupted` set (and `run.result.stopped_by`); its model.npz holds the weights at the stop.

    `progress`: show bars (a terminal or a notebook, through rich) or a line per epoch.
    `force`: write the run into an `out` folder that holds other files (nothing is deleted).
    `threads`: the threads a CPU run computes on (nnx's own and BLAS's), recorded in the summary;
    by default every core this process may use (divided among the ranks a machine runs).

    `distributed`: one of N processes started by `mpiexec -n N` (nnx.parallel): each trains on
    its rows of every global batch, gradients are summed by one allreduce per step, and rank 0
    alone writes the run directory and reports. An error on any rank ends every rank.
    """
    if progress:
        from rich.console import Console

        from nnx.progress import make_progress

        # soft_wrap: in a pipe or a log, each epoch's line stays one line (not cut at 80 columns)
        console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
        callbacks = [*make_progress(console, quiet=False), *callbacks]
    comm = MPIComm() if distributed else None
    if threads is None and comm is not None and comm.local_size > 1:
        # Ranks on one machine share its cores: each gets its part, not all of them.
        threads = max(1, usable_cpus() // comm.local_size)
    limits = contextlib.nullcontext()
    if threads is not None:
        from threadpoolctl import threadpool_limits

        check_threads(threads)
        limits = threadpool_limits(limits=threads)
    try:
        with limits:
            return _train(config, overrides, assignments, out, resume, callbacks, download, fetch, log,
                          handle_sigint, comm, force)  # fmt: skip
    except BaseException as exc:  # any failure must end every rank, not leave them waiting
        if comm is None or comm.size == 1:
            raise
        code = 130 if isinstance(exc, KeyboardInterrupt) else getattr(exc, "exit_code", 1)
        # One line from the rank that failed (rank 0 alone for what every rank finds alike).
        if not isinstance(exc, SystemExit) and (comm.is_root or not isinstance(exc, RanksDisagreeError)):
            # One write, so that the launcher, which merges the ranks' output, keeps the line whole.
            sys.stderr.write(f"error: rank {comm.rank}: {exc or type(exc).__name__}\n")
            sys.stderr.flush()
            # The launcher reads the line from a pipe; an abort at once could end the job first.
            time.sleep(PRINT_GRACE_SECONDS)
        elif isinstance(exc, RanksDisagreeError):
            # Rank 0 says it and ends the job: an abort from here first could end the job before
            # the launcher had forwarded rank 0's line (seen now and then with MPICH).
            time.sleep(ABORT_GRACE_SECONDS)
        comm.abort(code)
        raise


def _train(
    config: str | Path | Config | dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    assignments: Sequence[str],
    out: str | Path | None,
    resume: str | Path | None,
    callbacks: Sequence[Callback],
    download: bool,
    fetch: Callable[[Path, str], None] | None,
    log: Callable[[str], None] | None,
    handle_sigint: bool,
    comm: Communicator | None = None,
    force: bool = False,
) -> Run:
    comm = comm or Single()
    root = comm.is_root
    say = (log or (lambda line: None)) if root else (lambda line: None)
    callbacks = list(callbacks) if root else []  # progress and the like: rank 0 reports for all
    if resume is not None:
        resume, config = Path(resume), resumable_config(Path(resume), overrides)
        if isinstance(config, dict):
            say(f"{resume / 'config.yaml'} is missing: resuming under the config {CHECKPOINT} keeps (written back)")
    config, source = resolve_config(config, overrides, assignments)
    check_loggers(config.training.log)
    if comm.size > 1:
        check_same_config(comm, config.model_dump(mode="json"))
    # On the CPU, NumPy's chains until the run's path is chosen (below), so that Numba is loaded
    # only where it pays.
    backend = get_backend(_rank_device(config.device, comm), config.dtype, config.allow_tf32, cpu_path="numpy")
    if comm.size > 1 and backend.is_gpu:
        comm = NCCLComm()  # gradients between GPUs through NCCL; host agreements stay on MPI
    dataset = get_dataset(config.data.dataset)
    data_dir = resolve_data_dir(None, config.data.dir, dataset.name)
    config.data.dir = str(data_dir)
    model = build_model_for(config, backend)
    optimizer = build_optimizer(config, model, backend)
    csv = (Path(config.data.train_csv), Path(config.data.test_csv)) if config.data.train_csv else None
    if csv is None:
        # Ranks take turns: the first to find a file missing fetches it, and the others, sharing
        # its folder, find it there (one download, not one a rank at once into one folder).
        for turn in range(comm.size):
            if comm.rank == turn:
                ensure_data(data_dir, download, fetch, say, dataset.name, config.data.mirrors)
            comm.barrier()
    mnist = load_mnist(data_dir, config.training.validation, csv)
    if config.data.limit is not None:
        mnist.train = Split(mnist.train.images[: config.data.limit], mnist.train.labels[: config.data.limit])
    rows = -(-min(config.training.batch_size, len(mnist.train)) // comm.size)
    _check_batch_fits(model, config, rows, len(optimizer.state))

    lock = None
    if root:
        run_dir = resume if resume is not None else new_run_dir(config, str(out) if out else None, force)
        lock = RunLock(run_dir)  # a second `nnx train --out` here fails now, not halfway
    run_dir = Path(comm.broadcast_object(str(run_dir) if root else None))
    try:
        cpu = None
        if isinstance(backend.ops, CpuOps):  # which CPU code trains this network here
            steps = config.training.epochs * -(-len(mnist.train) // config.training.batch_size)
            image = mnist.train.images.shape[1:]
            cpu = _choose_cpu_path(config, model, rows, image, steps, resume, say) if root else None
            if comm.size > 1:
                cpu = Choice(**comm.broadcast_object(cpu.to_dict() if root else None))
            backend.ops.use_path(cpu.path)
        return _train_in(run_dir, config, source, backend, comm, model, optimizer, mnist, dataset, resume,
                         callbacks, say, handle_sigint, cpu)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _choose_cpu_path(
    config: Config,
    model: Sequential,
    rows: int,
    image: tuple[int, ...],
    steps: int,
    resume: Path | None,
    say: Callable[[str], None],
) -> Choice:
    """The CPU path of this run (nnx/cpu_choice.py): a resumed run's own, else measured on its
    network and batch (or read from the cache of such measurements)."""
    if resume is not None:
        kept = checkpoint_cpu_path(resume / CHECKPOINT)
        if kept is not None and forced_path() is None:  # the same code as before the stop: the same bits
            return Choice(kept, "the path the run was started on (its checkpoint keeps it)", steps=steps,
                          source="checkpoint")  # fmt: skip
    convolutions = [layer for layer in model.layers if layer.kind == "conv2d"]
    candidates = cpu_candidates(config.dtype, bool(convolutions), any(map(winograd_candidate, convolutions)))
    t = config.training
    optimizer = config.optimizer.name + (
        "-momentum" if config.optimizer.name == "sgd" and config.optimizer.momentum else ""
    )
    network = (
        f"{model.describe()} x{rows} {config.dtype} {optimizer}{_augmented(t.augment)} "
        f"[{hashlib.sha256(json.dumps(model.spec(), sort_keys=True).encode()).hexdigest()[:8]}]"
    )
    preprocess = Preprocess.named(config.data.normalize)

    def make_runner(path: str) -> Callable[[int], float]:
        """k training steps of the run's network on `path`, on synthetic images: seconds per step."""
        backend = get_backend("cpu", config.dtype, cpu_path=path)
        net = build_model_for(config, backend)
        trainer = Trainer(net, build_optimizer(config, net, backend), backend, preprocess,
                          augment=make_augment(backend, t.augment))  # fmt: skip
        most = max(1, min(MAX_ROUND_STEPS, 8192 // rows))
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (rows * most, *image), dtype=np.uint8)
        labels = rng.integers(0, 10, rows * most).astype(np.uint8)

        def run(k: int) -> float:
            k = min(k, most)
            data = DeviceSplit(Split(images[: rows * k], labels[: rows * k]), backend)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return trainer.fit(data, None, 1, rows, 0).train_seconds / k

        return run

    choice = choose(network, candidates, steps, max(1, default_threads()), make_runner)
    if choice.source == "measured":
        say(f"cpu path {choice.path}, measured once on this machine for {network}: {choice.reason}")
    return choice


def _augmented(augment: Any) -> str:
    """How a run's augmentation shows in the name of its CPU path's measurements."""
    if not augment.enabled:
        return ""
    return " augmented" + (" elastic" if augment.elastic is not None else "")


def _check_batch_fits(model: Sequential, config: Config, rows: int, state_arrays: int) -> None:
    """Training on batches of `rows` (this process's share) that cannot fit the device is refused."""
    try:
        model.check_batch_fits(rows, state_arrays)
    except ValueError as exc:
        raise NnxError(
            f"training.batch_size {config.training.batch_size}: {exc}; use smaller batches or layers"
        ) from None


def check_train(
    config: str | Path | Config | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    assignments: Sequence[str] = (),
    resume: str | Path | None = None,
    download: bool = True,
    out: str | Path | None = None,
    force: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """What `train` would run, checked as `train` checks it but training and writing nothing (`nnx
    train --dry-run`): the config with its overrides, the device, the network, a batch's memory,
    the data and the run's folder (`out`, `force`). Raises the error `train` would raise before its
    first batch."""
    if threads is not None:
        check_threads(threads)
    if resume is not None:
        resume, config = Path(resume), resumable_config(Path(resume), overrides)
    config, source = resolve_config(config, overrides, assignments)
    check_loggers(config.training.log)
    backend = get_backend(config.device, config.dtype, config.allow_tf32, cpu_path="numpy")
    dataset = get_dataset(config.data.dataset)
    data_dir = resolve_data_dir(None, config.data.dir, dataset.name)
    config.data.dir = str(data_dir)
    model = build_model_for(config, backend)
    state_arrays = len(build_optimizer(config, None, backend).state)  # arrays of the parameters' size
    rows = config.training.batch_size
    if not config.data.train_csv:  # MNIST and its kin: 60,000 training images, less validation and limit
        rows = min(rows, 60_000 - config.training.validation, config.data.limit or rows)
    rows = max(rows, 1)
    _check_batch_fits(model, config, rows, state_arrays)
    activations, weights = model.training_bytes(rows, state_arrays)
    if not config.data.train_csv:
        check_data_folder(data_dir)
    if resume is None:
        check_out(config, str(out) if out else None, force)
    else:
        check_not_locked(resume)
    missing = [] if config.data.train_csv else missing_files(data_dir)
    if missing and not download:
        ensure_data(data_dir, False, None, lambda line: None, dataset.name)  # the error train would raise
    return {
        "config": config,
        "source": source,
        "device": backend.description(),
        "model": model.describe(),
        "network": model,
        "parameters": model.count_parameters(),
        "batch_bytes": activations,
        "weights_bytes": weights,  # parameters, gradients and the optimizer's state
        "data_dir": data_dir,
        "missing": missing,
        "changes": _changes_since(resume, config) if resume is not None else "",
    }


def _train_in(run_dir, config, source, backend, comm, model, optimizer, mnist, dataset, resume, callbacks, say,
              handle_sigint, cpu) -> Run:  # fmt: skip
    root = comm.is_root
    t = config.training
    preprocess = Preprocess.named(config.data.normalize)
    writer = RunWriter(run_dir, config) if root else None
    state = TrainState()
    if resume is not None:
        state = _resume(run_dir, model, optimizer, comm)
        if writer is not None:
            writer.metric_lines = [json.dumps(m.to_dict()) for m in state.history]
    if config.device == "auto":
        why = f": no usable GPU ({backend.auto_fallback})" if backend.auto_fallback else ""
        say(f"device auto -> {backend.name}{why}")
    say(
        f"nnx {__version__} | {source} | device {backend.description()} | "
        f"model {model.describe()} ({model.count_parameters():,} parameters) | "
        f"train {len(mnist.train):,} val {len(mnist.validation):,} test {len(mnist.test):,} | run {run_dir}"
        + (f" | {comm.size} ranks, global batch {t.batch_size}" if comm.size > 1 else "")
    )
    if resume is not None:
        changes = _changes_since(run_dir, config) if root else ""
        say(f"resuming at epoch {state.epoch}, batch {state.batch}" + (f"; {changes}" if changes else ""))
        stretched = _stretched_schedule(run_dir, config, len(mnist.train), state) if root else ""
        if stretched:
            say(stretched)

    early = t.early_stopping
    loggers = make_loggers(t.log, run_dir, state.history, to_yaml(config)) if writer is not None else []
    trainer = Trainer(
        model,
        optimizer,
        backend,
        preprocess,
        ([MetricsWriter(writer)] if writer is not None else []) + loggers + callbacks,
        Schedule(**config.schedule.model_dump()),
        augment=make_augment(backend, t.augment),
        early_stopping=EarlyStopping(early.metric, early.patience, early.min_delta) if early else None,
        comm=comm,
    )
    if t.sync_batchnorm and comm.size > 1:
        for layer in model.layers:
            if layer.kind == "batchnorm":
                layer.sum_across = comm.allreduce_sum
    for callback in callbacks:  # a callback may want to stop the run (a sweep's pruner does)
        if hasattr(callback, "bind"):
            callback.bind(trainer)
    if resume is not None and (run_dir / BEST).is_file():
        trainer.best_state = read_header(run_dir / BEST)[1]
    saved_best_epoch = state.best_epoch

    def checkpoint(current: TrainState) -> None:
        nonlocal saved_best_epoch
        if not root:  # every rank holds the same weights and state: rank 0 writes them
            return
        if trainer.best_state is not None and current.best_epoch != saved_best_epoch:
            save_model(run_dir / BEST, _with_state(model, trainer.best_state), preprocess)
            saved_best_epoch = current.best_epoch
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, current, config.model_dump(mode="json"),
                        cpu.path if cpu is not None else None)  # fmt: skip

    trainer.checkpoint = checkpoint
    train_data = DeviceSplit(mnist.train, backend)
    val_data = DeviceSplit(mnist.validation, backend) if len(mnist.validation) else None

    stopped_by: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        # SIGTERM is how docker stop, Slurm's preemption, systemd and `timeout` ask a process
        # to end: like Ctrl-C, finish the batch and keep everything.
        stopped_by.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")
        trainer.request_stop()

    previous: dict[int, Any] = {}
    if handle_sigint:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (e.g. embedded): the signals keep their default meaning
            previous = {}
    try:
        # A diverging run is reported by the trainer's guard; NumPy's overflow warnings are noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = trainer.fit(train_data, val_data, t.epochs, t.batch_size, t.seed, state)
        result.stopped_by = stopped_by[0] if result.interrupted and stopped_by else ""
        # Ctrl-C from here on: the first is noted and the model is still evaluated and saved; a
        # second stops at once, and the checkpoint (already written) finishes the job on --resume.
        return _finish(run_dir, config, model, preprocess, backend, comm, trainer, result, mnist, dataset, writer,
                       cpu)  # fmt: skip
    except TrainingDivergedError as exc:
        kept = f"; the last good checkpoint is {run_dir / CHECKPOINT}" if (run_dir / CHECKPOINT).exists() else ""
        raise TrainingDivergedError(f"{exc}{kept}; try a lower optimizer.lr or optimizer.clip_norm") from None
    except WriteError as exc:
        raise WriteError(f"{exc}{_resumable(run_dir)}") from None
    except KeyboardInterrupt:
        if not (run_dir / CHECKPOINT).exists():
            raise
        raise InterruptedRunError(f"interrupted while finishing the run{_resumable(run_dir)}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class InterruptedRunError(NnxError):
    exit_code = 130


def _resumable(run_dir: Path) -> str:
    if not (run_dir / CHECKPOINT).exists():
        return ""
    return f"; the last checkpoint is intact: nnx train --resume {run_dir} continues from it"


def _finish(run_dir, config, model, preprocess, backend, comm, trainer, result, mnist, dataset, writer, cpu) -> Run:
    """After the loop: the best weights (early stopping), the test set, the model file, the summary."""
    root, t = comm.is_root, config.training
    if trainer.early_stopping is not None and trainer.best_state is not None and not result.interrupted:
        model.load_state(trainer.best_state)  # early stopping keeps the best epoch's weights
    test_loss, test_acc, _ = evaluate(model, DeviceSplit(mnist.test, backend), preprocess, backend, comm=comm)
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
        "stopped_by": result.stopped_by or None,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch or None,
        "model_description": model.describe(),
        "nnx_version": __version__,
        "model": str(run_dir / "model.npz"),
        "ranks": comm.size,
        "blas_threads": _blas_threads(),
        "threads": getattr(backend.ops, "threads", None),  # the CPU's compute threads
        "cpu_path": cpu.to_dict() if cpu is not None else None,  # which CPU code ran, and why
    }
    if not root:
        return Run(run_dir, config, summary, list(result.history), model, preprocess, backend, result, comm.rank)
    save_model(
        run_dir / "model.npz",
        model,
        preprocess,
        metrics={
            "test_accuracy": test_acc,
            "best_val_accuracy": summary["best_val_accuracy"],
            "epochs": len(result.history),
        },
        extra={
            "config_name": config.name,
            "interrupted": result.interrupted,
            "stopped_by": result.stopped_by or None,
            "dataset": dataset.name,
            "classes": list(dataset.classes),
        },
    )
    writer.write_summary(summary)
    return Run(run_dir, config, summary, list(result.history), model, preprocess, backend, result)


def _blas_threads() -> int | None:
    """The threads NumPy's BLAS uses now (after any --threads limit), as threadpoolctl sees them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(blas) if blas else None


def _rank_device(device: str, comm: Communicator) -> str:
    """Each rank its own GPU: the node-local rank modulo the node's GPU count."""
    if comm.size == 1 or not device.startswith("gpu"):
        return device
    from nnx.backend import gpu_count

    return f"gpu:{comm.local_rank % max(gpu_count(), 1)}"


def _changes_since(run_dir: Path, config: Config) -> str:
    """What differs from the config the checkpoint was written under (an edited config.yaml, --lr
    on the resume): "changed since the checkpoint: optimizer.lr 0.02 -> 0.5", or "" for nothing."""
    saved = saved_config(run_dir / CHECKPOINT)
    if saved is None:
        return ""
    changes = config_differences([saved, config.model_dump(mode="json")])
    if not changes:
        return ""
    return "changed since the checkpoint: " + ", ".join(f"{key} {a} -> {b}" for key, (a, b) in changes.items())


def _stretched_schedule(run_dir: Path, config: Config, images: int, state: TrainState) -> str:
    """What a resume with another training.epochs does to a schedule that depends on the run's
    length (cosine, onecycle): it is computed over the new length, so the learning rate goes
    back up from where the old one ended. Said, with both figures, since a finished run's
    schedule had brought it to about zero; "" when nothing changes."""
    saved = saved_config(run_dir / CHECKPOINT) or {}
    old_epochs = saved.get("training", {}).get("epochs") if isinstance(saved.get("training"), dict) else None
    name, epochs = config.schedule.name, config.training.epochs
    if name not in ("cosine", "onecycle") or not isinstance(old_epochs, int) or old_epochs == epochs:
        return ""
    per_epoch = -(-images // config.training.batch_size)
    schedule, lr = Schedule(**config.schedule.model_dump()), config.optimizer.lr
    step = (state.epoch - 1) * per_epoch + state.batch
    was = schedule.lr(lr, max(step - 1, 0), old_epochs * per_epoch, per_epoch)
    now = schedule.lr(lr, step, epochs * per_epoch, per_epoch)
    return (
        f"the {name} schedule now spans {epochs} epochs instead of {old_epochs}: the learning rate goes from "
        f"{was:.3g} (where it was) to {now:.3g} and follows the longer schedule from there (--set "
        f"schedule.name=none with --lr R trains on at a constant rate R instead)"
    )


def _resume(run_dir: Path, model: Sequential, optimizer: Optimizer, comm: Communicator) -> TrainState:
    """Rank 0 reads the checkpoint (whatever number of ranks wrote it) and sends its contents to
    the others, which need no access to the run directory."""
    if comm.size == 1:
        return load_checkpoint(run_dir / CHECKPOINT, model, optimizer)
    payload = None
    if comm.is_root:
        state = load_checkpoint(run_dir / CHECKPOINT, model, optimizer)
        payload = (model.state(), optimizer.state_arrays(model.backend.to_numpy), optimizer.steps, state.to_dict())
    weights, optimizer_state, steps, state_dict = comm.broadcast_object(payload)
    model.load_state(weights)
    optimizer.load_state_arrays(optimizer_state, steps)
    return TrainState.from_dict(state_dict)


def check_threads(threads: int) -> None:
    cpus = usable_cpus()
    if not 1 <= threads <= cpus:  # more threads than CPUs: BLAS's spinning threads starve each other
        raise NnxError(f"--threads {threads}: this process may use {cpus} CPU(s); give 1 to {cpus}")


def check_data_folder(data_dir: Path) -> None:
    """A data folder that is there as something else: "missing", and a download that cannot land."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a folder; point --data-dir, data.dir or $NNX_DATA_DIR at the data's folder")


def ensure_data(
    data_dir: Path,
    download: bool,
    fetch: Callable[..., None] | None,
    say: Callable[[str], None],
    dataset: str,
    mirrors: list[str] | None = None,
    parts: tuple[str, ...] | None = None,
) -> None:
    """Download what `dataset` lacks in `data_dir` (through `fetch(data_dir, dataset)` when given,
    `fetch(data_dir, dataset, mirrors)` when the config names its own), or say how to get it when
    downloading is off. `parts`: only these of its files (keys of FILES: "test_images", ...); a
    `fetch` given must keep to them itself."""
    check_data_folder(data_dir)
    missing = missing_files(data_dir, parts)
    if not missing:
        return
    option = "" if dataset == "mnist" else f" --dataset {dataset}"
    if not download:
        raise DataError(
            f"{data_dir}: missing {', '.join(missing)}; run `nnx data download{option}` or drop --no-download"
        )
    say(f"{get_dataset(dataset).title} not found in {data_dir}: downloading {len(missing)} file(s)")
    if fetch is not None:
        fetch(data_dir, dataset, *([mirrors] if mirrors else []))
    else:
        from nnx.data.download import download_mnist

        download_mnist(data_dir, mirrors, None, False, dataset, parts)


def resumable_config(run_dir: Path, overrides: dict[str, Any] | None) -> Path | dict[str, Any]:
    """The config of a run that --resume can continue (with these overrides): its config.yaml, or,
    when that file was lost, the copy its checkpoint keeps (the run writes config.yaml again); or
    the reason it cannot be resumed."""
    check_overrides(overrides)
    checkpoint, config = run_dir / CHECKPOINT, run_dir / "config.yaml"
    saved = saved_config(checkpoint) if checkpoint.is_file() and not config.exists() else None
    if not checkpoint.is_file() or not (config.is_file() or saved is not None):
        raise NnxError(f"{run_dir}: not a run directory with config.yaml and {CHECKPOINT} to resume")
    refuse_finished_run(run_dir, (overrides or {}).get("training.epochs"))
    return config if saved is None else saved


def refuse_finished_run(run_dir: Path, epochs: int | None) -> None:
    """Resuming a run that ended on its own would retrain nothing or undo an early stop."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return
    aside = "move it aside to resume from the checkpoint"
    try:
        summary = read_json(summary_path)
    except NnxError as exc:
        raise NnxError(f"{exc}; {aside}") from None
    if summary.get("interrupted"):
        return
    done = summary.get("epochs", 0)
    if not isinstance(done, int) or isinstance(done, bool):
        raise NnxError(f"{summary_path}: corrupt (epochs is {done!r}, not a count); {aside}")
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


class LayerTable(list):
    """Model.summary()'s rows (dicts: layer, output, parameters), which print as a table."""

    def __repr__(self) -> str:
        cells = [
            (row["layer"], "x".join(map(str, row["output"] or ())) or "-", f"{row['parameters']:,}") for row in self
        ]
        total = f"{sum(row['parameters'] for row in self):,}"
        cells = [("layer", "output", "parameters"), *cells, ("total", "", total)]
        widths = [max(len(row[i]) for row in cells) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in cells]
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])

    __str__ = __repr__


@dataclass
class Prediction:
    """What `Model.predict` returns: a class index and 10 probabilities per image, and whether the
    image held a digit at all (a blank picture, or all zeros, holds none: its class means nothing)."""

    classes: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, 10) float64, rows summing to 1
    found: np.ndarray | None = None  # (N,) bool


class Model:
    """A trained network ready to use in a notebook or a script: `nnx.load(path)`.

    `predict(images)` takes uint8 pixels (a 28x28 image, a batch (N, 28, 28), (N, 784) or
    (N, 1, 28, 28)), floats (0-1, or 0-255 when any value exceeds 1), or image files and PIL
    images; NumPy out. `evaluate()` runs the test set; `export(path)` writes ONNX or safetensors;
    `summary()` lists the layers."""

    def __init__(self, loaded: Any, path: Path, run_dir: Path | None = None) -> None:
        self.network: Sequential = loaded.model
        self.preprocess: Preprocess = loaded.preprocess
        self.header: dict[str, Any] = loaded.header
        self.backend: Backend = loaded.model.backend
        self.path = path
        self.run_dir = run_dir  # loaded from a run directory: evaluate() uses the run's own data

    def __repr__(self) -> str:
        return f"nnx.Model({self.network.describe()}, {self.network.count_parameters():,} parameters, {self.path})"

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.header.get("metrics", {}))

    def summary(self) -> LayerTable:
        """A dict per layer, as `nnx info MODEL` shows them: what it is, its output shape for one
        image and its parameter count; shown (in a notebook, at a prompt, by print) as a table."""
        rows = [{"layer": text, "output": shape, "parameters": count} for text, shape, count in self.network.summary()]
        return LayerTable(rows)

    @property
    def classes(self) -> list[str]:
        """The ten class names (digits for MNIST; garment names for Fashion-MNIST...)."""
        return class_names(self.header)

    def predict(self, images: Any, batch_size: int = 500, mnist_style: bool | None = None) -> Prediction:
        """Classes and probabilities of uint8 pixels or floats (one 28x28 image, a batch (N, 28, 28),
        (N, 784) or (N, 1, 28, 28)), or of image files or PIL images of any size, prepared as `nnx
        predict FILE` prepares them: as MNIST's digits were (cropped, fitted to 20x20, centred by
        mass, dark ink on light paper inverted) unless they look so already; `mnist_style` True:
        always, False: never (as --mnist-style / --as-is)."""
        from nnx.images import as_pixels
        from nnx.metrics import predict_probabilities

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise NnxError(f"batch_size: expected a whole number >= 1, got {batch_size!r}")  # -1 gave no predictions
        pixels = as_pixels(images, mnist_style)
        probabilities = predict_probabilities(
            self.network, self.backend.asarray(pixels), self.preprocess, self.backend, batch_size
        )
        return Prediction(probabilities.argmax(axis=1), probabilities, pixels.any(axis=1))

    def export(self, path: str | Path, format: str | None = None, force: bool = False) -> Path:
        """Write this model's file as ONNX or safetensors (`format`, or by `path`'s suffix, as
        `nnx export` does; pip install 'nnx[export]'); an existing file only with `force`."""
        from nnx.export import export_model_file

        return export_model_file(self.path, Path(path), format, force)[0]

    def evaluate(self, split: str = "test", data_dir: str | Path | None = None) -> dict[str, Any]:
        """Loss, accuracy, per-class accuracy and the confusion matrix on MNIST's test set (or
        "train": all 60,000 training images). A model loaded from a run directory is measured on
        the run's own data (its CSV files, its data folder), as `nnx evaluate RUN` does."""
        from nnx.data.mnist import load_test
        from nnx.metrics import confusion_matrix, per_class_accuracy
        from nnx.runs import test_data

        folder, csv = test_data(self.run_dir, Path(data_dir) if data_dir else None, self.header.get("dataset", "mnist"))
        if split == "test":
            data = load_test(folder, csv)
        elif split == "train":
            data = load_mnist(folder, 0, csv).train
        else:
            raise NnxError(f"split {split!r}: use 'test' or 'train'")
        device_data = DeviceSplit(data, self.backend)
        loss, accuracy, predictions = evaluate(self.network, device_data, self.preprocess, self.backend)
        confusion = confusion_matrix(device_data.labels, predictions, self.backend)
        return {"loss": loss, "accuracy": accuracy, "per_class_accuracy": per_class_accuracy(confusion),
                "confusion": confusion}  # fmt: skip


def load(path: str | Path, device: str = "cpu") -> Model:
    """A model file (.npz, or .safetensors exported by nnx) or a run directory (its model.npz) on
    `device`, ready to predict."""
    from nnx.io import model_file, open_model

    given = Path(path)
    path = model_file(given)
    return Model(open_model(path, device), path, run_dir=given if given.is_dir() else None)
