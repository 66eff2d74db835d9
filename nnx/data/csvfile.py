"""Reader for the seed project's CSV format: one image a row, the label then 784 pixels 0-255.

A header row is optional (detected by its first field not being a number). Images to classify may
come without labels, 784 pixels a row (Kaggle's digit-recognizer test.csv is such a file).
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np

from nnx.data.idx import check_labels
from nnx.errors import DataError

PIXELS = 784
# The whole file is read, then parsed into int64 (about 3x its size): a limit keeps a wrong path
# (a disk image, /dev/zero) from taking the memory. MNIST's 60,000-row training CSV is 110 MB.
MAX_CSV_BYTES = 1 << 30
_NOT_A_NUMBER_TABLE = re.compile(r"[^0-9,+\- \t\n]")


def read_csv(path: Path, unlabelled: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, 784), labels uint8 (N,)). With `unlabelled`, rows of 784 pixels alone are
    read too, and give labels None."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        if info.st_size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {info.st_size:,} bytes, over the {MAX_CSV_BYTES:,} nnx reads from a CSV file")
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheets write one) is fine
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as text ({exc})") from None
    lines = text.splitlines()
    sample = lines[0] if lines else ""
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):  # a spreadsheet's other CSV dialects
        if sample.count(separator) >= PIXELS and sample.count(",") < PIXELS:
            raise DataError(
                f"{path}: fields separated by {name}; nnx reads comma-separated values (label, then pixels)"
            )
    start = 1 if lines and not lines[0].split(",")[0].strip().lstrip("-").isdigit() else 0
    rows = [line for line in lines[start:] if line.strip()]
    if not rows:
        first = lines[0].split(",")[0][:20] if start else ""
        header = f" (row 1 is read as a header: its first field {first!r} is not an integer)" if start else ""
        raise DataError(f"{path}: no data rows{header}")
    # Only digits, signs, commas and blanks reach NumPy's parser: fed arbitrary Unicode, its C
    # tokenizer has crashed the process now and then (found by tests/test_hostile_files.py).
    body = "\n".join(rows)
    bad = _NOT_A_NUMBER_TABLE.search(body)
    if bad:
        row = body.count("\n", 0, bad.start()) + 1
        raise DataError(f"{path}: data row {row} has {bad.group()!r}, which is not part of a number or a comma")
    try:
        table = np.loadtxt(rows, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a table of integers ({exc})") from None
    if unlabelled and table.shape[1] == PIXELS:
        return _pixels(table, path), None
    if table.shape[1] != PIXELS + 1:
        either = f" or {PIXELS} (pixels alone)" if unlabelled else ""
        raise DataError(
            f"{path}: rows have {table.shape[1]} fields, expected {PIXELS + 1} (label then {PIXELS} pixels){either}"
        )
    labels, pixels = table[:, 0], _pixels(table[:, 1:], path)
    if labels.min() < 0:
        raise DataError(f"{path}: data row {int(np.argmin(labels)) + 1} has a negative label")
    labels = labels.astype(np.int64)
    check_labels(labels, path)
    return pixels, labels.astype(np.uint8)


def _pixels(table: np.ndarray, path: Path) -> np.ndarray:
    """The (N, 784) pixel fields as uint8, each checked to be in 0-255."""
    if table.min() < 0 or table.max() > 255:
        row, _ = np.argwhere((table < 0) | (table > 255))[0]
        raise DataError(f"{path}: data row {row + 1} has a pixel outside 0-255")
    return table.astype(np.uint8)
