"""The training loop: it learns, reports through callbacks, and is reproducible from its seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnx.backend import get_backend
from nnx.data.mnist import load_mnist
from nnx.nn import build_model, mlp_spec
from nnx.optim import SGD, Schedule
from nnx.preprocess import Preprocess
from nnx.testing import assert_parity
from nnx.trainer import Callback, DeviceSplit, Trainer, epoch_order, evaluate


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, epochs, batches, samples) -> None:
        self.events.append(("start", epochs, batches, samples))

    def on_epoch_start(self, epoch) -> None:
        self.events.append(("epoch", epoch))

    def on_batch_end(self, progress) -> None:
        self.events.append(("batch", progress.epoch, progress.batch, progress.samples))

    def on_epoch_end(self, metrics) -> None:
        self.events.append(("end", metrics.epoch, metrics.train_accuracy, metrics.val_accuracy))

    def on_train_end(self, result) -> None:
        self.events.append(("done", len(result.history), result.interrupted))


def train_tiny(folder: Path, device="cpu", dtype="float32", epochs=3, batch_size=32, seed=0, callbacks=(), lr=0.05):
    backend = get_backend(device, dtype)
    data = load_mnist(folder, validation=100)
    model = build_model(mlp_spec([784, 32, 10]), backend, np.random.default_rng([seed, 0]))
    trainer = Trainer(
        model,
        SGD(model.flat_parameters(), lr=lr, momentum=0.9, ops=backend.ops),
        backend,
        Preprocess.named("standard"),
        list(callbacks),
        schedule="cosine",
    )
    result = trainer.fit(
        DeviceSplit(data.train, backend), DeviceSplit(data.validation, backend), epochs, batch_size, seed
    )
    return model, result, trainer, data, backend


def test_learns_and_reports_events(tiny_mnist: Path) -> None:
    recorder = Recorder()
    model, result, _, data, backend = train_tiny(tiny_mnist, callbacks=[recorder])
    assert recorder.events[0] == ("start", 3, 16, 500)  # ceil(500 / 32) batches, the last one partial
    batches = [e for e in recorder.events if e[0] == "batch"]
    assert len(batches) == 3 * 16 and batches[15] == ("batch", 1, 16, 500)
    assert recorder.events[-1] == ("done", 3, False)
    assert result.history[-1].val_accuracy > 0.9
    assert result.history[-1].train_loss < result.history[0].train_loss
    _, accuracy, predictions = evaluate(model, DeviceSplit(data.test, backend), Preprocess.named("standard"), backend)
    assert accuracy > 0.9 and predictions.shape == (200,)


def test_two_runs_from_one_seed_are_bitwise_identical(tiny_mnist: Path) -> None:
    first = train_tiny(tiny_mnist, seed=3)[0].state()
    second = train_tiny(tiny_mnist, seed=3)[0].state()
    other = train_tiny(tiny_mnist, seed=4)[0].state()
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].tobytes() == second[name].tobytes(), name
    assert any(first[name].tobytes() != other[name].tobytes() for name in first)


def test_batch_size_one(tiny_mnist: Path) -> None:
    _, result, *_ = train_tiny(tiny_mnist, epochs=1, batch_size=1, lr=0.002)
    assert result.samples_seen == 500 and result.history[0].val_accuracy > 0.8


def test_stop_request_ends_after_the_current_batch(tiny_mnist: Path) -> None:
    class StopAtBatch(Callback):
        def __init__(self) -> None:
            self.trainer = None

        def on_batch_end(self, progress) -> None:
            if progress.epoch == 2 and progress.batch == 5:
                self.trainer.request_stop()

    stopper = StopAtBatch()
    backend = get_backend("cpu")
    data = load_mnist(tiny_mnist, validation=0)
    model = build_model(mlp_spec([784, 8, 10]), backend, np.random.default_rng(0))
    trainer = Trainer(model, SGD(model.flat_parameters(), lr=0.1, ops=backend.ops), backend, Preprocess(), [stopper])
    stopper.trainer = trainer
    result = trainer.fit(DeviceSplit(data.train, backend), None, 5, 50, 0)
    assert result.interrupted and len(result.history) == 1 and result.samples_seen == 600 + 5 * 50


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert np.array_equal(epoch_order(1, 2, 100), epoch_order(1, 2, 100))
    assert not np.array_equal(epoch_order(1, 2, 100), epoch_order(1, 3, 100))
    assert sorted(epoch_order(1, 2, 100).tolist()) == list(range(100))


def test_cosine_schedule() -> None:
    cosine = Schedule("cosine")
    assert cosine.lr(0.1, 0, 100, 100) == 0.1
    assert abs(cosine.lr(0.1, 50, 100, 100) - 0.05) < 1e-15
    assert cosine.lr(0.1, 100, 100, 100) < 1e-15


def test_parity_harness_on_two_cpu_configurations(tiny_mnist: Path) -> None:
    """CI has no GPU, so the comparison logic runs on float64 vs float32 CPU backends: a short
    training run agrees within float32 tolerance, and a real difference is caught."""

    def short_run(backend):
        model = train_tiny(tiny_mnist, "cpu", np.dtype(backend.dtype).name, epochs=1, batch_size=100)[0]
        return {name: p for name, p, _ in model.parameters()}

    cpu64, cpu32 = get_backend("cpu", "float64"), get_backend("cpu", "float32")
    assert_parity(short_run, cpu64, cpu32, rtol=1e-4, check_dtype=False)
    try:
        assert_parity(short_run, cpu64, cpu32)
    except AssertionError as exc:
        assert "dtype float64 on cpu vs float32" in str(exc)
    else:
        raise AssertionError("the harness missed a dtype difference")


def test_batch_progress_averages_cover_the_rows_they_sum(tiny_mnist: Path) -> None:
    """On one process `rows` is every image seen; the live loss is loss_sum / rows."""

    class Rows(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def on_batch_end(self, progress) -> None:
            self.seen.append((progress.samples, progress.rows))

    recorder = Rows()
    train_tiny(tiny_mnist, epochs=1, callbacks=[recorder])
    assert recorder.seen and all(samples == rows > 0 for samples, rows in recorder.seen)


def test_fitting_no_images_is_said() -> None:
    """An empty split trained an epoch of nothing, then divided its accuracy by zero."""
    import pytest

    from nnx.data.mnist import Split
    from nnx.errors import NnxError

    backend = get_backend("cpu")
    model = build_model(mlp_spec([784, 8, 10]), backend, np.random.default_rng(0))
    trainer = Trainer(model, SGD(model.flat_parameters(), lr=0.1, ops=backend.ops), backend, Preprocess())
    empty = DeviceSplit(Split(np.zeros((0, 784), np.uint8), np.zeros(0, np.uint8)), backend)
    with pytest.raises(NnxError, match="no training images to fit on"):
        trainer.fit(empty, None, 1, 64, seed=0)
