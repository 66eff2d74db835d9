"""The CLI end to end through typer's CliRunner, on a tiny MNIST-shaped dataset."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import nnx
from nnx.cli.app import app
from nnx.data.csvfile import read_csv
from nnx.data.mnist import load_test
from nnx.errors import DataError
from nnx.trainer import Callback

runner = CliRunner()
TINY = ["--epochs", "2", "--set", "training.validation=100", "--set", "model.hidden=[16]", "--set", "optimizer.lr=0.05"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def trained(tiny_mnist: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    result = invoke("train", "--data-dir", tiny_mnist, "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    return run


def test_train_writes_a_complete_run(trained: Path, tiny_mnist: Path) -> None:
    assert sorted(p.name for p in trained.iterdir()) == [
        ".lock",  # the run's lock (free once training ends; see tests/test_run_dirs.py)
        "checkpoint.npz",
        "config.yaml",
        "metrics.jsonl",
        "model.npz",
        "summary.json",
    ]
    summary = json.loads((trained / "summary.json").read_text())
    for key in ("test_accuracy", "train_seconds", "samples_per_second", "peak_rss_mb", "device", "dtype", "seed"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["device"] == "cpu" and 0.9 < summary["test_accuracy"] <= 1
    epochs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    config = (trained / "config.yaml").read_text()
    assert "hidden:\n  - 16" in config and str(tiny_mnist) in config


def test_train_output_is_plain_when_not_a_terminal(tiny_mnist: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data-dir", tiny_mnist, "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 0
    assert "epoch 1/2  loss" in result.output and "epoch 2/2" in result.output
    assert "test accuracy" in result.output and "model saved to" in result.output
    assert "\r" not in result.output and "\x1b[" not in result.output  # no bars or colours in logs


def test_train_quiet(tiny_mnist: Path, tmp_path: Path) -> None:
    result = invoke("train", "-q", "--data-dir", tiny_mnist, "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 0
    assert result.output.strip().splitlines()[-1].startswith("test accuracy")
    assert "epoch 1/2" not in result.output


def test_train_refuses_to_overwrite_a_run(trained: Path, tiny_mnist: Path) -> None:
    before = (trained / "model.npz").read_bytes()
    line = assert_one_line_error(invoke("train", "--data-dir", tiny_mnist, "--out", trained, *TINY))
    assert "already holds a trained model" in line
    assert (trained / "model.npz").read_bytes() == before


def test_commands_that_measure_a_model_need_only_the_test_files(
    trained: Path, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine that evaluates models has no use for the 47 MB training set: nothing is fetched."""
    import shutil

    import nnx.data.download as download

    asked: list[str] = []

    def offline(file, *args, **kwargs):
        asked.append(file.name)
        raise DataError(f"{file.name}: offline")

    monkeypatch.setattr(download, "download_file", offline)
    test_only = tmp_path / "test-only"
    test_only.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(tiny_mnist / name, test_only / name)
    for args in (
        ("evaluate", trained, "--data-dir", test_only, "-q"),
        ("predict", trained, "--test-index", 2, "--data-dir", test_only),
        ("plot", trained, "--data-dir", test_only),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert asked == []
    (test_only / "t10k-labels-idx1-ubyte").unlink()  # a missing test file is still fetched, and only it
    missing = assert_one_line_error(invoke("evaluate", trained, "--data-dir", test_only))
    assert "t10k-labels-idx1-ubyte: offline" in missing
    assert asked == ["t10k-labels-idx1-ubyte"]


def test_evaluate(trained: Path, tiny_mnist: Path) -> None:
    result = invoke("evaluate", trained / "model.npz", "--data-dir", tiny_mnist)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "confusion matrix" in result.output
    assert "per-class accuracy" in result.output


def test_evaluate_json_for_scripts(trained: Path, tiny_mnist: Path) -> None:
    result = invoke("evaluate", trained, "--data-dir", tiny_mnist, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    model = nnx.load(trained).evaluate(data_dir=tiny_mnist)
    assert data["accuracy"] == model["accuracy"] and data["loss"] == model["loss"]
    assert data["confusion"] == model["confusion"].tolist() and data["correct"] == int(model["confusion"].trace())
    assert data["test_images"] == 200 and data["classes"] == [str(d) for d in range(10)]
    assert data["model"] == str(trained / "model.npz") and len(data["per_class_accuracy"]) == 10


def test_a_run_directory_stands_for_its_model(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    by_file = invoke("evaluate", trained / "model.npz", "--data-dir", tiny_mnist, "-q")
    by_run = invoke("evaluate", trained, "--data-dir", tiny_mnist, "-q")
    assert by_run.exit_code == 0 and by_run.output == by_file.output
    assert invoke("predict", trained, "--test-index", 3, "--data-dir", tiny_mnist).exit_code == 0
    assert nnx.load(trained).path == trained / "model.npz"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "a directory without a model.npz" in assert_one_line_error(invoke("evaluate", empty))
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x08")
    assert "an ONNX file, which nnx only writes" in assert_one_line_error(
        invoke("predict", onnx_file, "--test-index", 1)
    )


def test_predict_test_index(trained: Path, tiny_mnist: Path) -> None:
    result = invoke("predict", trained / "model.npz", "--test-index", 7, "--data-dir", tiny_mnist)
    assert result.exit_code == 0, result.output
    label = int(load_test(tiny_mnist).labels[7])
    assert f"MNIST test image 7: predicted {label}" in result.output
    assert "@" in result.output  # the digit drawn in ASCII shades


def test_predict_png_dark_ink_on_white(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    test = load_test(tiny_mnist)
    png = tmp_path / "digit.png"
    Image.fromarray(255 - test.images[3].reshape(28, 28)).resize((56, 56)).save(png)
    # --as-is: the tiny set's classes are patterns filling the whole frame, not digits to centre
    result = invoke("predict", trained / "model.npz", png, "--as-is")
    assert result.exit_code == 0, result.output
    assert f"predicted {int(test.labels[3])}" in result.output


def test_predict_several_inputs_a_line_each(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    test = load_test(tiny_mnist)
    files = []
    for i in range(3):
        files.append(tmp_path / f"d{i}.png")
        Image.fromarray(255 - test.images[i].reshape(28, 28)).resize((56, 56)).save(files[-1])
    csv = tmp_path / "rows.csv"
    csv.write_text(",".join(map(str, [int(test.labels[5]), *test.images[5].tolist()])) + "\n")
    result = invoke("predict", trained, *files, csv)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    model = nnx.load(trained)
    for path in files:  # the same classes as one at a time (and as the API's)
        alone = invoke("predict", trained, path).output
        predicted = int(alone.split("predicted ")[1].split()[0])
        assert predicted == model.predict(path).classes[0]
        assert any(line.startswith(f"{path}: predicted {predicted} with ") for line in lines), result.output
    label = int(test.labels[5])
    assert f"{csv} row 0: predicted {label} with" in result.output and f"(label {label}: correct)" in result.output
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    assert "x.png: not a readable image" in assert_one_line_error(invoke("predict", trained, files[0], not_image))
    assert "exactly one of" in assert_one_line_error(invoke("predict", trained, *files, "--test-index", 1))


def test_predict_json_for_scripts(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    test = load_test(tiny_mnist)
    files = []
    for i in range(2):
        files.append(tmp_path / f"d{i}.png")
        Image.fromarray(test.images[i].reshape(28, 28)).save(files[-1])
    answers = json.loads(invoke("predict", trained, *files, "--json").stdout)
    expected = nnx.load(trained).predict(files)
    assert [a["input"] for a in answers] == [str(f) for f in files]
    assert [a["predicted"] for a in answers] == expected.classes.tolist()
    assert np.allclose([a["probabilities"] for a in answers], expected.probabilities, rtol=1e-6, atol=1e-9)
    assert all(a["label"] is None and a["class"] == str(a["predicted"]) for a in answers)
    one = json.loads(invoke("predict", trained, "--test-index", 4, "--data-dir", tiny_mnist, "--json").stdout)
    assert len(one) == 1 and one[0]["label"] == int(test.labels[4]) and 0 < one[0]["confidence"] <= 1


def test_predict_csv_row(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    test = load_test(tiny_mnist)
    csv = tmp_path / "digits.csv"
    rows = [",".join(map(str, [int(test.labels[i]), *test.images[i].tolist()])) for i in (0, 1)]
    csv.write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + "\n".join(rows) + "\n")
    result = invoke("predict", trained / "model.npz", csv, "--row", 1)
    assert result.exit_code == 0, result.output
    assert f"row 1: predicted {int(test.labels[1])}" in result.output and "correct" in result.output


def test_predict_csv_rows_without_labels(trained: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    """Pixels alone, as Kaggle's digit-recognizer test.csv holds them (pixel0..pixel783): were refused."""
    test = load_test(tiny_mnist)
    csv = tmp_path / "test.csv"
    rows = [",".join(map(str, test.images[i].tolist())) for i in (0, 1)]
    csv.write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + "\n".join(rows) + "\n")
    expected = nnx.load(trained).predict(test.images[1]).classes[0]
    answer = json.loads(invoke("predict", trained, csv, "--row", 1, "--json").stdout)[0]
    assert answer["label"] is None and answer["predicted"] == expected
    every = json.loads(invoke("predict", trained, csv, "--all-rows", "--json").stdout)
    assert [a["input"] for a in every] == [f"{csv} row 0", f"{csv} row 1"]
    assert [a["predicted"] for a in every] == nnx.load(trained).predict(str(csv)).classes.tolist()  # the API too
    assert every[1]["predicted"] == expected
    assert "give one of --row N and --all-rows" in assert_one_line_error(
        invoke("predict", trained, csv, "--all-rows", "--row", 1)
    )
    csv.write_text("1,2,3\n")
    assert "expected 785 (label then 784 pixels) or 784 (pixels alone)" in assert_one_line_error(
        invoke("predict", trained, csv)
    )
    train = tmp_path / "train.csv"
    train.write_text(rows[0] + "\n")
    with pytest.raises(DataError, match="rows have 784 fields, expected 785"):  # training data needs its labels
        read_csv(train)


def test_predict_bad_inputs(trained: Path, tmp_path: Path) -> None:
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    assert "not a readable image" in assert_one_line_error(invoke("predict", trained / "model.npz", not_image))
    assert "exactly one of" in assert_one_line_error(invoke("predict", trained / "model.npz"))
    assert "no such model file" in assert_one_line_error(invoke("predict", tmp_path / "none.npz", not_image))


def test_device_gpu_without_cupy(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    line = assert_one_line_error(invoke("train", "--device", "gpu", "--data-dir", tiny_mnist, "--out", tmp_path / "r"))
    assert "nnx[gpu]" in line
    assert not (tmp_path / "r").exists()


def test_device_auto_says_what_it_chose(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    result = invoke("train", "--device", "auto", "--data-dir", tiny_mnist, "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 0, result.output
    assert "device auto -> cpu: no usable GPU" in result.output


def test_bad_config_values_exit_2(tiny_mnist: Path, tmp_path: Path) -> None:
    line = assert_one_line_error(invoke("train", "--batch-size", 0, "--lr", -1, "--data-dir", tiny_mnist))
    assert "training.batch_size" in line and "optimizer.lr" in line


def test_missing_data_without_download(tmp_path: Path) -> None:
    line = assert_one_line_error(invoke("train", "--no-download", "--data-dir", tmp_path / "empty"))
    assert "missing train-images-idx3-ubyte" in line
    # A file given as the data folder: named, nothing downloaded (it had tried to download into it).
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    line = assert_one_line_error(invoke("train", "--out", tmp_path / "r", "--data-dir", a_file))
    assert line == f"error: {a_file}: not a folder; point --data-dir, data.dir or $NNX_DATA_DIR at the data's folder"
    assert not (tmp_path / "r").exists()


def test_ctrl_c_stops_cleanly_and_keeps_the_run(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class PressCtrlC(Callback):
        def on_batch_end(self, progress) -> None:
            if progress.epoch == 2 and progress.batch == 3:
                os.kill(os.getpid(), signal.SIGINT)

    import nnx.cli.train_cmd as train_cmd

    monkeypatch.setattr(train_cmd, "make_progress", lambda *args: [PressCtrlC()])
    run = tmp_path / "r"
    result = invoke("train", "--data-dir", tiny_mnist, "--out", run, *TINY)
    assert result.exit_code == 130, result.output
    assert "Stopped by Ctrl-C during epoch 2" in result.output and "Traceback" not in result.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["epochs"] == 1
    assert invoke("evaluate", run / "model.npz", "--data-dir", tiny_mnist).exit_code == 0


def test_info_and_data_info(tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("info")
    assert result.exit_code == 0 and "backend cpu" in result.output and "numpy" in result.output
    assert "cpu blas" in result.output and "threads" in result.output
    assert "cpu loops" in result.output and "compiled by Numba " in result.output
    monkeypatch.setenv("NNX_NUMBA", "0")
    assert "NumPy's chains (NNX_NUMBA=0 is set)" in invoke("info").output
    assert "extra plot" in result.output and "extra export" in result.output  # what is installed, or how to
    bad = invoke("data", "info", "--data-dir", tiny_mnist)  # tiny files are not the official ones
    assert bad.exit_code == 2 and "checksum mismatch" in bad.stderr


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "evaluate", "predict", "info", "data"):
        assert command in result.output


def test_model_trained_in_float64_predicts(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "r64"
    assert invoke("train", "--dtype", "float64", "--data-dir", tiny_mnist, "--out", run, *TINY).exit_code == 0
    with np.load(run / "model.npz") as npz:
        assert npz["0.W"].dtype == np.float64
    assert invoke("predict", run / "model.npz", "--test-index", 0, "--data-dir", tiny_mnist).exit_code == 0


@pytest.mark.mnist
def test_pictures_are_prepared_as_mnist_s_digits_unless_they_look_so_already(trained_mlp: Path, mnist_dir: Path,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    """One preparation for every picture: a thick dark digit on a white 200x200 page, small and off
    centre, is read as --mnist-style reads it (it was read as-is, and wrongly); a 28x28 MNIST
    digit as it is; a blank page is "no digit found", not a confident class."""
    test = load_test(mnist_dir)
    model = nnx.load(trained_mlp)
    right = 0
    for i in range(10):
        page = np.full((200, 200), 255, dtype=np.uint8)
        digit = Image.fromarray(255 - test.images[i].reshape(28, 28)).resize((70, 70))
        page[20:90, 110:180] = np.asarray(digit)  # small, in a corner
        path = tmp_path / f"page{i}.png"
        Image.fromarray(page).save(path)
        default, centred = (invoke("predict", trained_mlp, path, *flags).output for flags in ([], ["--mnist-style"]))
        assert default.split("predicted ")[1].split()[0] == centred.split("predicted ")[1].split()[0]
        right += model.predict(path).classes[0] == test.labels[i]
    assert right >= 9
    as_is = tmp_path / "as_is.png"
    Image.fromarray(test.images[0].reshape(28, 28)).save(as_is)
    assert np.array_equal(nnx.images.picture_pixels(as_is), test.images[0].reshape(784))  # MNIST-like: untouched
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 90), 250, dtype=np.uint8)).save(blank)
    result = invoke("predict", trained_mlp, blank)
    assert result.exit_code == 0 and f"{blank}: no digit found (the picture is blank)" in result.output
    assert model.predict(blank).found.tolist() == [False] and model.predict(as_is).found.tolist() == [True]
