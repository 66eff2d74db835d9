"""training.log: TensorBoard event files (read back record by record) and metrics.csv."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnx.cli.app import app

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def read_events(path: Path) -> list:
    """TFRecord framing: u64 length, u32 CRC, the Event proto, u32 CRC."""
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def test_tensorboard_and_csv_logs_hold_every_epoch(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "-q", "--data-dir", str(tiny_mnist), "--epochs", "3", "--set", "training.validation=100",
            "--set", "training.log=[tensorboard, csv]", "--out", str(run)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_accuracy"]) for r in rows] == [h["val_accuracy"] for h in history]
    assert all(float(r["samples_per_second"]) > 0 for r in rows)

    (events_file,) = run.glob("events.out.tfevents.*")
    scalars: dict[str, dict[int, float]] = {}
    for event in read_events(events_file):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    assert {
        "loss/train",
        "loss/validation",
        "accuracy/train",
        "accuracy/validation",
        "lr",
        "samples_per_second",
    } <= set(scalars)
    for h in history:
        assert scalars["loss/train"][h["epoch"]] == pytest.approx(h["train_loss"], rel=1e-6)
        assert scalars["accuracy/validation"][h["epoch"]] == pytest.approx(h["val_accuracy"], rel=1e-6)
    # The config as text, to tell runs apart in TensorBoard: the run's config.yaml, as a code block.
    texts = [
        v.tensor.string_val[0].decode()
        for e in read_events(events_file)
        for v in e.summary.value
        if v.tensor.string_val
    ]
    assert len(texts) == 1 and texts[0] == "".join(
        f"    {line}\n" for line in (run / "config.yaml").read_text().splitlines()
    )


def test_an_unknown_log_is_a_config_error(tiny_mnist: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--data-dir", str(tiny_mnist), "--set", "training.log=[wandb]"])
    assert result.exit_code == 2 and "training.log.0: Input should be 'tensorboard' or 'csv'" in result.output


def test_tensorboard_without_tensorboardx_is_refused_before_the_run_directory(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was said once config.yaml was written, leaving a run directory that never trained."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    run = tmp_path / "r"
    args = ["train", "--data-dir", str(tiny_mnist), "--set", "training.log=[tensorboard]", "--out", str(run)]
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, args + extra)
        assert result.exit_code == 2 and result.stderr.strip() == (
            "error: training.log: tensorboard needs tensorboardX: pip install 'nnx[log]'"
        ), result.output
        assert not run.exists()
