"""`nnx predict`: classify a digit from an image, a CSV row or the MNIST test set (or several images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnx.cli.common import stderr_console, stdout_console
from nnx.cli.data_cmd import ensure_data
from nnx.cli.render import class_label, digit_text, probability_table
from nnx.data.csvfile import read_csv
from nnx.data.datasets import class_names, get_dataset
from nnx.data.mnist import TEST_FILES, load_test, resolve_data_dir
from nnx.errors import NnxError
from nnx.images import picture_pixels
from nnx.io import open_model
from nnx.metrics import predict_probabilities


def _read_input(
    input: Path | None,
    test_index: int | None,
    row: int | None,
    data_dir: Path | None,
    mnist_style: bool | None = None,
    dataset: str = "mnist",
) -> list[tuple[np.ndarray, int | None, str]]:
    """[(pixels uint8 (784,), true label if known, description)]: one image, or with `row` None
    every data row of a CSV file."""
    if (input is None) == (test_index is None):
        raise NnxError("give exactly one of: an input file (PNG/JPEG/CSV) or --test-index N")
    if test_index is not None:
        folder = resolve_data_dir(data_dir, None, dataset)
        # the test files only; stdout: the prediction alone (--json)
        ensure_data(folder, stderr_console(), dataset=dataset, parts=TEST_FILES)
        test = load_test(folder)
        if not 0 <= test_index < len(test):
            raise NnxError(f"--test-index {test_index}: the test set has images 0-{len(test) - 1}")
        return [
            (
                test.images[test_index],
                int(test.labels[test_index]),
                f"{get_dataset(dataset).title} test image {test_index}",
            )
        ]
    if input.suffix.lower() == ".csv":
        images, labels = read_csv(input, unlabelled=True)
        if row is not None and not 0 <= row < len(images):
            raise NnxError(f"--row {row}: {input} has data rows 0-{len(images) - 1}")
        rows = range(len(images)) if row is None else [row]
        return [(images[i], None if labels is None else int(labels[i]), f"{input} row {i}") for i in rows]
    return [(picture_pixels(input, mnist_style), None, str(input))]


def run_predict(
    model_path: Path,
    inputs: list[Path],
    test_index: int | None,
    row: int | None,
    data_dir: Path | None,
    device: str,
    mnist_style: bool | None = None,
    as_json: bool = False,
    all_rows: bool = False,
) -> None:
    console = stdout_console()
    loaded = open_model(model_path, device)
    backend = loaded.model.backend
    dataset = loaded.header.get("dataset", "mnist")
    classes = class_names(loaded.header)
    if len(inputs) > 1 and test_index is not None:
        raise NnxError("give exactly one of: input files (PNG/JPEG/CSV) or --test-index N")
    if all_rows and row is not None:
        raise NnxError("give one of --row N and --all-rows")
    if all_rows and not any(path.suffix.lower() == ".csv" for path in inputs):
        raise NnxError("--all-rows: for CSV files; give one")
    row = None if all_rows else row or 0
    # Every input read (and refused) before any is classified, then in batches.
    read = []
    for path in inputs or [None]:
        read += _read_input(path, test_index, row, data_dir, mnist_style, dataset)
    images = backend.asarray(np.stack([pixels for pixels, _, _ in read]))
    probabilities = predict_probabilities(loaded.model, images, loaded.preprocess, backend)
    if as_json:
        answers = [
            {"input": source, "predicted": int(p.argmax()), "class": classes[int(p.argmax())],
             "confidence": float(p.max()), "label": label, "probabilities": p.tolist(),
             "found": bool(pixels.any())}
            for (pixels, label, source), p in zip(read, probabilities, strict=True)
        ]  # fmt: skip
        console.print(json.dumps(answers, indent=1), markup=False, highlight=False, soft_wrap=True)
    elif len(read) > 1:
        for (pixels, label, source), p in zip(read, probabilities, strict=True):  # a line each, paths never cut
            console.print(_verdict(source, p, label, classes, pixels), markup=False, soft_wrap=True)
    else:
        (pixels, label, source), p = read[0], probabilities[0]
        console.print(digit_text(pixels, console))
        console.print(_verdict(source, p, label, classes, pixels), markup=False)
        if pixels.any():
            console.print(probability_table(p, classes=classes))


def _verdict(source: str, probabilities: np.ndarray, label: int | None, classes: list[str], pixels: np.ndarray) -> str:
    """ "digit.png: predicted 7 with 98.1% confidence (label 7: correct)", or "no digit found" for a
    blank picture (all zeros once prepared), whose class would mean nothing."""
    if not pixels.any():
        return f"{source}: no digit found (the picture is blank)"
    predicted = int(np.argmax(probabilities))
    verdict = "correct" if label == predicted else "wrong"
    truth = f" (label {class_label(label, classes)}: {verdict})" if label is not None else ""
    return (
        f"{source}: predicted {class_label(predicted, classes)} with {probabilities[predicted]:.1%} confidence{truth}"
    )
