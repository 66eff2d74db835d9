"""Plots, the run list and comparison, and the HTML report, on a tiny dataset."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import nnx
from nnx.backend import get_backend
from nnx.cli.app import app
from nnx.data.mnist import load_test
from nnx.io import load_model
from nnx.metrics import confusion_matrix, most_confident_mistakes, predict_probabilities
from nnx.runs import config_differences, read_run

TINY = ["--epochs", "2", "--set", "training.validation=100", "--set", "model.hidden=[16]", "--set", "optimizer.lr=0.05"]
EXPECTED_SIZES = {"curves.png": (1100, 400), "confusion.png": (700, 600)}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def plotted_run(tiny_mnist: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "a"
    result = invoke("train", "--data-dir", tiny_mnist, "--out", run, "--plots", *TINY)
    assert result.exit_code == 0, result.output
    return run


def test_every_png_exists_decodes_and_is_not_blank(plotted_run: Path) -> None:
    for name in ("curves.png", "confusion.png", "misclassified.png", "weights.png"):
        with Image.open(plotted_run / name) as image:
            image.load()
            assert image.format == "PNG"
            if name in EXPECTED_SIZES:
                assert image.size == EXPECTED_SIZES[name]
            else:
                assert image.size[0] == 960 and image.size[1] >= 120
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 5, f"{name} looks blank"


def test_confusion_matrix_matches_an_independent_count(plotted_run: Path, tiny_mnist: Path) -> None:
    backend = get_backend("cpu")
    loaded = load_model(plotted_run / "model.npz", backend)
    test = load_test(tiny_mnist)
    probabilities = predict_probabilities(loaded.model, test.images, loaded.preprocess, backend)
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(test.labels.astype(np.int64), predicted, backend)
    assert confusion.sum() == len(test)
    counts = Counter(zip(test.labels.tolist(), predicted.tolist(), strict=True))
    for (true, guess), count in np.ndenumerate(confusion):
        assert counts.get((true, guess), 0) == count


def test_most_confident_mistakes_are_ordered() -> None:
    labels = np.array([0, 1, 2, 3])
    probabilities = np.array([[0.1, 0.9, 0, 0], [0, 1.0, 0, 0], [0.6, 0, 0.4, 0], [0, 0, 0.95, 0.05]])
    assert most_confident_mistakes(labels, probabilities, 5).tolist() == [3, 0, 2]


def test_report_is_self_contained(plotted_run: Path) -> None:
    page = (plotted_run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "test accuracy" in page and "optimizer:" in page


def test_runs_list_and_compare_name_the_one_difference(tiny_mnist: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name, lr in (("slow", "0.01"), ("fast", "0.05")):
        args = ["train", "-q", "--data-dir", tiny_mnist, "--out", root / name, *TINY, "--lr", lr]
        assert invoke(*args).exit_code == 0
    listing = invoke("runs", "--dir", root)
    assert listing.exit_code == 0 and "slow" in listing.output and "fast" in listing.output
    assert config_differences([read_run(root / "slow")["config"], read_run(root / "fast")["config"]]) == {
        "optimizer.lr": [0.01, 0.05]
    }
    overlay = tmp_path / "both.png"
    compared = invoke("runs", "compare", root / "slow", root / "fast", "--plot", overlay)
    assert compared.exit_code == 0, compared.output
    assert "optimizer.lr" in compared.output and "training.epochs" not in compared.output
    with Image.open(overlay) as image:
        assert image.size == (1100, 400)


def test_compare_needs_two_runs(plotted_run: Path) -> None:
    result = invoke("runs", "compare", plotted_run)
    assert result.exit_code == 2 and "two or more" in result.stderr


def test_evaluate_draws_the_worst_mistakes(plotted_run: Path, tiny_mnist: Path) -> None:
    result = invoke("evaluate", plotted_run / "model.npz", "--data-dir", tiny_mnist, "--show-errors", 1)
    assert result.exit_code == 0
    assert "confusion matrix" in result.output


def test_report_values_of_any_size_are_shown_not_crashed_on() -> None:
    from nnx.runs import human_value as _show

    assert _show("test_accuracy", 0.9831) == "98.31%" and _show("train_seconds", 700) == "11.7 min"
    assert _show("test_accuracy", 10**400) == str(10**400)  # formatting it as a float raised OverflowError
    assert _show("samples_per_second", -(10**30)) == str(-(10**30)) and _show("epochs", None) == "-"


def test_plot_takes_a_run_or_its_model_file_and_names_a_missing_run(plotted_run: Path, tiny_mnist: Path) -> None:
    (plotted_run / "curves.png").unlink()
    result = invoke("plot", plotted_run / "model.npz", "--data-dir", tiny_mnist)
    assert result.exit_code == 0 and (plotted_run / "curves.png").is_file(), result.output
    result = invoke("plot", plotted_run.parent / "nope")
    assert (
        result.exit_code == 2
        and result.stderr.strip() == f"error: {plotted_run.parent / 'nope'}: no such run directory"
    )


def test_compare_never_plots_over_a_users_file(plotted_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    other = tmp_path / "runs" / "b"
    assert invoke("train", "--data-dir", tiny_mnist, "--out", other, *TINY, "--lr", "0.1").exit_code == 0
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    result = invoke("runs", "compare", plotted_run, other, "--plot", mine)
    assert result.exit_code == 2 and "the file exists and nnx did not write it" in result.stderr
    assert mine.read_bytes() == b"my picture"
    ours = tmp_path / "ab.png"
    for _ in range(2):  # a plot nnx wrote is written again
        assert invoke("runs", "compare", plotted_run, other, "--plot", ours).exit_code == 0
    with Image.open(ours) as image:
        assert image.info.get("Software") == "nnx"
    result = invoke("runs", "compare", plotted_run, other, "--plot", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_plots_of_a_run_trained_on_csv_files_use_its_csv_test_set(tiny_mnist: Path, tmp_path: Path) -> None:
    """data.train_csv / test_csv: the plots, the report and `nnx evaluate RUN` used the MNIST
    folder's test set instead ("8793 of 10000 test images right" under an accuracy measured on 500)."""
    from nnx.data.mnist import load_mnist

    train, test = load_mnist(tiny_mnist, 0).train, load_test(tiny_mnist)
    csv = {}
    for name, images, labels in (("train", train.images, train.labels), ("test", test.images, test.labels)):
        rows = np.column_stack([labels[:150], images[:150].reshape(150, -1)])  # 150 rows, not the folder's 200
        csv[name] = tmp_path / f"{name}.csv"
        np.savetxt(csv[name], rows, fmt="%d", delimiter=",")
    run = tmp_path / "run"
    args = ["train", "-q", "--plots", "--data-dir", str(tiny_mnist), "--epochs", "1", "--out", str(run),
            "--set", f"data.train_csv={csv['train']}", "--set", f"data.test_csv={csv['test']}",
            "--set", "training.validation=50"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = read_run(run)["summary"]
    for plotted in (result, CliRunner().invoke(app, ["plot", str(run)])):  # --plots, then nnx plot
        assert plotted.exit_code == 0, plotted.output
        right = re.search(r"(\d+) of (\d+) test images right", (run / "report.html").read_text())
        assert right and int(right[2]) == 150 and int(right[1]) / 150 == summary["test_accuracy"]
    evaluated = CliRunner().invoke(app, ["evaluate", str(run), "--json"])  # a run: on the run's test set
    assert evaluated.exit_code == 0, evaluated.output
    data = json.loads(evaluated.stdout)
    assert data["test_images"] == 150 and data["accuracy"] == summary["test_accuracy"]
    from_python = nnx.load(run).evaluate()  # the Python API, given the run directory, as well
    assert from_python["confusion"].sum() == 150 and from_python["accuracy"] == summary["test_accuracy"]


def test_a_run_with_augmentation_shows_its_distortions(tiny_mnist: Path, tmp_path: Path, plotted_run: Path) -> None:
    """augmented.png, in the report too, for a run that augments (elastic here); none without."""
    run = tmp_path / "runs" / "elastic"
    elastic = ["--set", "training.augment={enabled: true, elastic: {alpha: 34, sigma: 4}}"]
    result = invoke("train", "--data-dir", tiny_mnist, "--out", run, "--plots", *TINY, *elastic)
    assert result.exit_code == 0, result.output
    with Image.open(run / "augmented.png") as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5
    assert "three draws of the run" in (run / "report.html").read_text()  # (its caption, HTML-escaped)
    assert not (plotted_run / "augmented.png").exists()
