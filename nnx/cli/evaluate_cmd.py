"""`nnx evaluate`: accuracy, per-class accuracy and the confusion matrix on MNIST's test set."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from nnx.cli.common import stderr_console, stdout_console
from nnx.cli.data_cmd import ensure_data
from nnx.cli.render import class_label, digit_text, probability_table
from nnx.data.datasets import class_names
from nnx.data.mnist import TEST_FILES, load_test
from nnx.io import model_file, open_model
from nnx.metrics import confusion_matrix, most_confident_mistakes, per_class_accuracy, predict_probabilities
from nnx.runs import test_data
from nnx.trainer import DeviceSplit, evaluate


def run_evaluate(
    model_path: Path, data_dir: Path | None, device: str, quiet: bool, show_errors: int = 2, as_json: bool = False
) -> None:
    console = stdout_console()
    run = model_path if model_path.is_dir() else None  # measured on the run's own test set
    model_path = model_file(model_path)
    loaded = open_model(model_path, device)
    backend = loaded.model.backend
    dataset = loaded.header.get("dataset", "mnist")
    classes = class_names(loaded.header)
    folder, csv = test_data(run, data_dir, dataset)
    if csv is None:
        # the test files only; stdout: the JSON alone
        ensure_data(folder, stderr_console() if as_json else console, dataset=dataset, parts=TEST_FILES)
    host_test = load_test(folder, csv)
    test = DeviceSplit(host_test, backend)
    loss, accuracy, predictions = evaluate(loaded.model, test, loaded.preprocess, backend)
    confusion = confusion_matrix(test.labels, predictions, backend)
    if as_json:
        result = {
            "model": str(model_path),
            "dataset": dataset,
            "device": backend.description(),
            "test_images": len(test),
            "correct": int(confusion.trace()),
            "accuracy": accuracy,
            "loss": loss,
            "classes": classes,
            "per_class_accuracy": per_class_accuracy(confusion).tolist(),
            "confusion": confusion.tolist(),  # rows: true class, columns: predicted
        }
        console.print(json.dumps(result, indent=1), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(
        f"{model_path}: test accuracy {accuracy:.2%} ({int(confusion.trace()):,}/{len(test):,}), "
        f"loss {loss:.4f}, device {backend.description()}",
        markup=False,
    )
    if quiet:
        return
    per_class = per_class_accuracy(confusion)
    table = Table(title="per-class accuracy")
    table.add_column("class", justify="right")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for k in range(10):
        table.add_row(class_label(k, classes), f"{confusion[k].sum():,}", f"{per_class[k]:.2%}")
    console.print(table)
    matrix = Table(title="confusion matrix (rows: true class, columns: predicted)")
    matrix.add_column("", justify="right", style="bold")
    for digit in range(10):
        matrix.add_column(str(digit), justify="right")
    for true in range(10):
        cells = [
            Text(str(n), style="bold green" if true == pred else ("red" if n else "dim"))
            for pred, n in enumerate(confusion[true].tolist())
        ]
        matrix.add_row(str(true), *cells)
    console.print(matrix)
    if show_errors:
        probabilities = predict_probabilities(loaded.model, test.images, loaded.preprocess, backend)
        for index in most_confident_mistakes(host_test.labels, probabilities, show_errors):
            predicted = int(probabilities[index].argmax())
            console.print(
                f"test image {index}: label {class_label(int(host_test.labels[index]), classes)}, predicted "
                f"{class_label(predicted, classes)} ({probabilities[index, predicted]:.1%})",
                markup=False,
            )
            console.print(digit_text(host_test.images[index], console))
            console.print(probability_table(probabilities[index], classes=classes))
