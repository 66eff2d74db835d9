"""Checkpoints, --resume, early stopping, the divergence guard, augmentation, layer configs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnx.augment import ShiftRotate
from nnx.backend import get_backend
from nnx.cli.app import app
from nnx.config import load_config
from nnx.errors import ConfigError
from nnx.io import load_model, save_model
from nnx.nn import build_model
from nnx.preprocess import Preprocess
from nnx.trainer import Callback

# Every source of randomness and state at once: dropout, batch norm, Adam, one-cycle, augmentation.
RICH_CONFIG = """
name: rich
model:
  layers:
    - conv2d: {out: 4, kernel: 3, padding: 1}
    - batchnorm
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dropout: {p: 0.3}
    - linear: {out: 16}
    - gelu
    - linear: {out: 10}
    - softmax
optimizer: {name: adam, lr: 0.003, clip_norm: 5.0}
schedule: {name: onecycle}
training:
  epochs: 3
  batch_size: 50
  validation: 100
  augment: {enabled: true}
"""


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def rich_config(tmp_path: Path) -> Path:
    path = tmp_path / "rich.yaml"
    path.write_text(RICH_CONFIG)
    return path


def stop_at(monkeypatch: pytest.MonkeyPatch, epoch: int, batch: int) -> None:
    """Press Ctrl-C once, after the given batch."""
    import nnx.cli.train_cmd as train_cmd

    class PressCtrlC(Callback):
        def on_batch_end(self, progress) -> None:
            if (progress.epoch, progress.batch) == (epoch, batch):
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_cmd, "make_progress", lambda *args: [PressCtrlC()])


def arrays(path: Path) -> dict[str, bytes]:
    with np.load(path) as npz:
        return {key: npz[key].tobytes() for key in npz.files if key != "__header__"}


def metrics_without_time(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k != "seconds"} for m in lines]


@pytest.mark.parametrize(("epoch", "batch"), [(2, 10), (2, 4)], ids=["after-epoch-2", "mid-epoch-2"])
def test_stopped_and_resumed_run_is_bitwise_identical(
    tiny_mnist: Path, tmp_path: Path, rich_config: Path, monkeypatch: pytest.MonkeyPatch, epoch: int, batch: int
) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke("train", "-c", rich_config, "--data-dir", tiny_mnist, "--out", straight).exit_code == 0

    stop_at(monkeypatch, epoch, batch)  # 500 training images / 50 = 10 batches an epoch
    first = invoke("train", "-c", rich_config, "--data-dir", tiny_mnist, "--out", stopped)
    assert first.exit_code == 130 and f"nnx train --resume {stopped}" in first.output
    assert json.loads((stopped / "summary.json").read_text())["interrupted"] is True

    monkeypatch.undo()
    resumed = invoke("train", "--resume", stopped)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming at epoch {epoch + (batch == 10)}" in resumed.output
    assert "changed since the checkpoint" not in resumed.output
    assert arrays(straight / "model.npz") == arrays(stopped / "model.npz")
    assert metrics_without_time(straight) == metrics_without_time(stopped)


def test_a_resume_says_what_changed_since_the_checkpoint(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edited config.yaml, or a flag given with --resume, continues the run under other
    settings than it began with: the resume line says which (before, it said nothing)."""
    run = tmp_path / "r"
    stop_at(monkeypatch, 1, 3)
    args = ["--set", "model.hidden=[16]", "--set", "training.validation=100", "--epochs", 3]
    assert invoke("train", "--data-dir", tiny_mnist, "--out", run, *args).exit_code == 130
    monkeypatch.undo()
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.02", "lr: 0.05"))
    resumed = invoke("train", "--resume", run, "--epochs", 4)
    assert resumed.exit_code == 0, resumed.output
    assert (
        "resuming at epoch 1, batch 3; changed since the checkpoint: optimizer.lr 0.02 -> 0.05, training.epochs 3 -> 4"
    ) in resumed.output


@pytest.mark.parametrize("new_batch", [40, 128, 150])
def test_a_resume_with_another_batch_size_goes_on_from_the_image_it_stopped_at(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_batch: int
) -> None:
    """Stopped after 3 batches of 50 (150 of the epoch's 500 images), resumed with batches of
    another size: the epoch goes on from image 150 and ends at image 500, each image once. The
    batch count had been kept: with batches of 40 images 120-149 were trained twice; with batches
    of 128, batch 3 (images 384-...) skipped 150-383."""
    import nnx

    run = tmp_path / "r"
    stop_at(monkeypatch, 1, 3)
    args = ["--set", "model.hidden=[16]", "--set", "training.validation=100", "--epochs", 2, "--batch-size", 50]
    assert invoke("train", "--data-dir", tiny_mnist, "--out", run, *args).exit_code == 130
    monkeypatch.undo()
    seen: dict[int, list[int]] = {}

    class Record(Callback):
        def on_batch_end(self, progress) -> None:
            seen.setdefault(progress.epoch, []).append(progress.samples)

    resumed = nnx.train(resume=run, overrides={"training.batch_size": new_batch}, callbacks=[Record()])
    first = [150 + k * new_batch for k in range(1, -(-350 // new_batch))] + [500]
    assert seen[1] == first and seen[2][-1] == 500, seen
    assert resumed.summary["epochs"] == 2 and resumed.history[0].epoch == 1


def test_a_run_whose_config_yaml_was_lost_resumes_under_its_checkpoints_copy(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.yaml deleted or lost with the checkpoint intact: the checkpoint keeps the config,
    so the run continues under it, as if nothing was lost, and config.yaml is written again."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = ["--data-dir", tiny_mnist, "--set", "model.hidden=[16]", "--set", "training.validation=100", "--epochs", 2]
    assert invoke("train", "-q", "--out", straight, *args).exit_code == 0
    stop_at(monkeypatch, 1, 3)
    assert invoke("train", "--out", stopped, *args).exit_code == 130
    monkeypatch.undo()
    kept = (stopped / "config.yaml").read_text()
    (stopped / "config.yaml").unlink()
    resumed = invoke("train", "--resume", stopped)
    assert resumed.exit_code == 0, resumed.output
    assert "config.yaml is missing: resuming under the config checkpoint.npz keeps" in resumed.output
    assert "resuming at epoch 1, batch 3" in resumed.output and "changed since" not in resumed.output
    assert (stopped / "config.yaml").read_text() == kept
    assert arrays(straight / "model.npz") == arrays(stopped / "model.npz")


def test_a_callback_that_fails_at_an_epochs_end_loses_no_epoch(tiny_mnist: Path, tmp_path: Path) -> None:
    """A user's logger raising in on_epoch_end: the epoch it was told of is in the checkpoint
    already, so the resume starts after it (it started at that epoch again)."""
    import nnx

    class BrokenLogger(Callback):
        def on_epoch_end(self, metrics) -> None:
            if metrics.epoch == 2:
                raise RuntimeError("my logger broke")

    run = tmp_path / "r"
    overrides = {"training.epochs": 3, "training.validation": 100, "model.hidden": [16], "data.dir": str(tiny_mnist)}
    with pytest.raises(RuntimeError, match="my logger broke"):
        nnx.train(None, overrides, out=run, callbacks=[BrokenLogger()])
    resumed = invoke("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 3, batch 0" in resumed.output
    assert [m["epoch"] for m in metrics_without_time(run)] == [1, 2, 3]


def test_resume_needs_a_run_directory(tmp_path: Path) -> None:
    result = invoke("train", "--resume", tmp_path)
    assert result.exit_code == 2 and "not a run directory" in result.stderr


def test_a_finished_run_resumes_only_to_train_further(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "done"
    tiny = ["--set", "model.hidden=[16]", "--set", "training.validation=100"]
    assert invoke("train", "-q", "--data-dir", tiny_mnist, "--out", run, "--epochs", 2, *tiny).exit_code == 0
    again = invoke("train", "--resume", run)
    assert again.exit_code == 2 and "already finished its 2 epochs" in again.stderr
    further = invoke("train", "-q", "--resume", run, "--epochs", 3)
    assert further.exit_code == 0, further.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_early_stopping_keeps_the_best_model(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "early"
    result = invoke(
        "train", "--data-dir", tiny_mnist, "--out", run, "--epochs", 30,
        "--set", "model.hidden=[16]", "--set", "training.validation=100",
        "--set", "training.early_stopping={metric: val_loss, patience: 2, min_delta: 0.5}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs"] == summary["best_epoch"] + 2 < 30
    assert arrays(run / "model.npz") == arrays(run / "best.npz")


def test_divergence_stops_with_the_epoch_and_batch(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "boom"
    result = invoke(
        "train", "--data-dir", tiny_mnist, "--out", run, "--lr", "1e30", "--set", "schedule.name=none",
        "--set", "training.validation=100",
    )  # fmt: skip
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("error: the loss became nan or inf at epoch 1, batch ") and "\n" not in line
    assert not (run / "model.npz").exists()


def test_divergence_is_one_line_without_numpys_warnings(tiny_mnist: Path, tmp_path: Path) -> None:
    """In a real process (pytest records warnings instead of printing them): Adam's d * d
    overflowing (a CNN's default optimizer) printed NumPy's RuntimeWarning and its source line before nnx's one line:
    the pool's helper threads ran outside the trainer's np.errstate."""
    command = [sys.executable, "-m", "nnx", "train", "-q", "-c", "mnist_cnn", "--lr", "1e9", "--out", tmp_path / "r",
               "--data-dir", tiny_mnist, "--set", "data.limit=300", "--set", "training.validation=100"]  # fmt: skip
    command = [str(part) for part in command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the loss became nan or inf at epoch 1, batch ")
    assert result.stderr.count("\n") == 1, result.stderr


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss that turns nan in epoch 2, batch 3: the run stops naming them, and the checkpoint
    written after epoch 1 is what stays."""
    from nnx.trainer import Trainer

    original_fit = Trainer.fit

    def fit_with_a_bad_batch(self, *args, **kwargs):
        real_forward, calls = self.loss_fn.forward, []

        def forward(z, y):
            calls.append(1)
            loss = real_forward(z, y)
            return loss * np.nan if len(calls) == 13 else loss  # 10 batches an epoch

        self.loss_fn.forward = forward
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_with_a_bad_batch)
    monkeypatch.setenv("NNX_CPU_PATH", "numpy")  # no timing of CPU paths, whose steps would count here
    run = tmp_path / "late"
    result = invoke(
        "train", "--data-dir", tiny_mnist, "--out", run, "--set", "model.hidden=[16]",
        "--set", "training.validation=100", "--set", "training.batch_size=50",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "epoch 2, batch 3" in result.stderr and str(run / "checkpoint.npz") in result.stderr
    with np.load(run / "checkpoint.npz") as npz:
        header = json.loads(npz["__header__"].tobytes())
    assert header["state"]["epoch"] == 2 and len(header["state"]["history"]) == 1
    assert not (run / "model.npz").exists()


def test_augmentation_shifts_and_rotates_on_the_device() -> None:
    backend = get_backend("cpu")
    rng = np.random.default_rng(0)
    images = np.zeros((64, 28, 28), dtype=np.uint8)
    images[:, 10:18, 12:16] = rng.integers(1, 255, size=(64, 8, 4))
    pixels = backend.asarray(images.reshape(64, 784))
    still = ShiftRotate(backend, max_shift=0, max_rotation=0)(pixels, key=1)
    assert np.array_equal(still, pixels)
    shifted = ShiftRotate(backend, max_shift=2, max_rotation=0)(pixels, key=1).reshape(64, 28, 28)
    for n in range(64):  # each image is its original moved by a whole shift within +-2 pixels
        assert any(
            np.array_equal(shifted[n], np.roll(images[n], (dy, dx), axis=(0, 1)))
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    assert len({shifted[n].tobytes() for n in range(64)}) > 5
    augment = ShiftRotate(backend, max_shift=2, max_rotation=15)
    assert np.array_equal(augment(pixels, key=5), augment(pixels, key=5))
    assert not np.array_equal(augment(pixels, key=5), augment(pixels, key=6))
    assert augment(pixels, key=5).dtype == np.uint8


def test_layer_configs_are_validated(tmp_path: Path) -> None:
    config, _ = load_config(None, ["model.layers=[relu, {leaky_relu: {alpha: 0.2}}, {linear: {out: 10}}]"])
    assert config.model.layer_specs() == [
        {"type": "relu"},
        {"type": "leaky_relu", "alpha": 0.2},
        {"type": "linear", "out": 10, "init": "he"},
    ]
    with pytest.raises(ConfigError, match=r"model\.layers: layer 1: unknown layer type 'lstm'"):
        load_config(None, ["model.layers=[relu, lstm]"])
    with pytest.raises(
        ConfigError, match=r"model\.layers: 0\.conv2d\.kernel: Input should be greater than or equal to 1"
    ):
        load_config(None, ["model.layers=[{conv2d: {out: 3, kernel: 0}}]"])
    with pytest.raises(ConfigError, match=r"model\.layers: 0\.dropout\.rate: unknown key"):
        load_config(None, ["model.layers=[{dropout: {rate: 0.1}}]"])


def test_model_files_hold_every_layer_type(tmp_path: Path, rich_config: Path) -> None:
    config, _ = load_config(str(rich_config))
    backend = get_backend("cpu", "float64")
    model = build_model(config.model.layer_specs(), backend, np.random.default_rng(0), classes=10)
    x = backend.asarray(np.random.default_rng(1).random((8, 784)))
    model.forward(x, training=True)  # moves batch norm's running statistics off their defaults
    save_model(tmp_path / "m.npz", model, Preprocess())
    loaded = load_model(tmp_path / "m.npz", backend)
    assert loaded.model.spec() == model.spec()
    assert np.array_equal(loaded.model.forward(x), model.forward(x))
    probabilities = loaded.model.forward(x)
    assert np.allclose(probabilities.sum(axis=1), 1.0)  # the final softmax layer


def test_predict_with_a_softmax_output_layer(tiny_mnist: Path, tmp_path: Path) -> None:
    """A model ending in a softmax layer: predict shows its probabilities, not a softmax of them."""
    run = tmp_path / "soft"
    layers = "model.layers=[{linear: {out: 16}}, relu, {linear: {out: 10}}, softmax]"
    args = ["train", "-q", "--data-dir", tiny_mnist, "--out", run, "--set", layers, "--set", "training.validation=100"]
    assert invoke(*args).exit_code == 0
    result = invoke("predict", run / "model.npz", "--test-index", 0, "--data-dir", tiny_mnist)
    assert result.exit_code == 0
    confidence = float(re.search(r"with ([\d.]+)% confidence", result.output).group(1))
    assert confidence > 90  # a softmax of the probabilities would flatten them to about 25%


def test_more_epochs_for_a_finished_cosine_run_say_what_the_schedule_does(tiny_mnist: Path, tmp_path: Path) -> None:
    """The schedule is computed over the new length: its rate, near zero at the old end, goes up
    again. Said with both rates, and how to train on at a constant rate instead."""
    run = tmp_path / "cos"
    tiny = ["--set", "training.validation=100", "--set", "schedule.name=cosine"]
    assert invoke("train", "--data-dir", tiny_mnist, "--epochs", "2", "--out", run, *tiny).exit_code == 0
    longer = invoke("train", "--resume", run, "--epochs", "4")
    assert longer.exit_code == 0, longer.output
    said = re.search(r"the cosine schedule now spans 4 epochs instead of 2: the learning rate goes from (\S+) "
                     r"\(where it was\) to (\S+) ", longer.output)  # fmt: skip
    assert said and float(said[1]) < 1e-3 < float(said[2]), longer.output
    assert "--set schedule.name=none with --lr R" in longer.output
    run2 = tmp_path / "flat"
    flat = ["--set", "training.validation=100", "--set", "schedule.name=none"]
    assert invoke("train", "--data-dir", tiny_mnist, "--epochs", "1", "--out", run2, *flat).exit_code == 0
    assert "schedule now spans" not in invoke("train", "--resume", run2, "--epochs", "2").output
