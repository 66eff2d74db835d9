"""IDX and CSV readers: good files load; every kind of bad file is one clear error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from nnx.data import idx
from nnx.data.csvfile import MAX_CSV_BYTES, read_csv
from nnx.data.idx import read_idx_images, read_idx_labels, write_idx
from nnx.data.mnist import FILES, label_counts, load_mnist, resolve_data_dir, verify_file
from nnx.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_raw_and_gzip(tmp_path: Path, images: np.ndarray, compress: bool, monkeypatch) -> None:
    """Read whole, whatever the chunks (here 1,000 bytes: the gzip path gathers several), into
    NumPy's own memory (which it backs with huge pages where it can), not a view of a bytearray."""
    monkeypatch.setattr(idx, "CHUNK", 1000)
    data = idx_bytes(images)
    path = tmp_path / "imgs"
    path.write_bytes(gzip.compress(data) if compress else data)
    loaded = read_idx_images(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (7, 784)
    assert np.array_equal(loaded, images.reshape(7, 784))
    owner = loaded
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    assert owner.base is None and owner.flags.owndata


@pytest.mark.parametrize("tail", [b"\x00", b"\x07\x00"])
def test_a_gzip_file_longer_than_its_header_is_refused(tmp_path: Path, images: np.ndarray, tail: bytes) -> None:
    path = tmp_path / "imgs.gz"
    path.write_bytes(gzip.compress(idx_bytes(images) + tail))
    with pytest.raises(DataError, match="longer than its header"):
        read_idx_images(path)


def test_idx_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([0, 9, 3], dtype=np.uint8))
    assert read_idx_labels(path).tolist() == [0, 9, 3]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad IDX magic"),
        (lambda b: b"\x01\x00\x08\x03" + b[4:], "bad IDX magic"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: b + b"\x00", "longer than its header"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_idx_bad_files(tmp_path: Path, images: np.ndarray, mutate, message: str) -> None:
    path = tmp_path / "bad-images"
    path.write_bytes(mutate(idx_bytes(images)))
    with pytest.raises(DataError, match=message) as info:
        read_idx_images(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_wrong_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "labels-as-images"
    write_idx(path, np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="expected 3 dimensions"):
        read_idx_images(path)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([1, 2, 12], dtype=np.uint8))
    with pytest.raises(DataError, match="label 12 at index 2"):
        read_idx_labels(path)


def test_idx_corrupt_gzip(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "imgs.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-40])
    with pytest.raises(DataError, match="corrupt gzip|truncated"):
        read_idx_images(path)


def test_images_and_labels_must_agree(tmp_path: Path, images: np.ndarray) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, dtype=np.uint8))
    with pytest.raises(DataError, match="7 images but .* 6 labels"):
        load_mnist(tmp_path, validation=0)


def test_validation_split(tiny_mnist: Path) -> None:
    mnist = load_mnist(tiny_mnist, validation=100)
    assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (500, 100, 200)
    assert len(load_mnist(tiny_mnist, validation=0).validation) == 0
    with pytest.raises(DataError, match="training.validation: 600 must be between 0 and 599"):
        load_mnist(tiny_mnist, validation=600)


def test_missing_data_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found; run `nnx data download`"):
        load_mnist(tmp_path)


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNX_DATA_DIR", "/from/env")
    assert resolve_data_dir("/flag", "/config") == Path("/flag")
    assert resolve_data_dir(None, "/config") == Path("/config")
    assert resolve_data_dir() == Path("/from/env")
    monkeypatch.delenv("NNX_DATA_DIR")
    assert resolve_data_dir() == Path("data/mnist")


def csv_text(rows: list[list[int]], header: bool) -> str:
    lines = ["label," + ",".join(f"pixel{i}" for i in range(784))] if header else []
    lines += [",".join(map(str, row)) for row in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("header", [False, True])
def test_csv_with_and_without_header(tmp_path: Path, header: bool) -> None:
    rows = [[3] + [0] * 783 + [255], [7] + list(range(255)) + [1] * 529]
    path = tmp_path / "digits.csv"
    path.write_text(csv_text(rows, header))
    images, labels = read_csv(path)
    assert labels.tolist() == [3, 7]
    assert images.shape == (2, 784) and images.dtype == np.uint8
    assert images[0, -1] == 255 and images[1, 10] == 10


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[3] + [0] * 700], "rows have 701 fields, expected 785"),
        ([[3] + [0] * 783 + [256]], "pixel outside 0-255"),
        ([[10] + [0] * 784], "label 10"),
        ([[-1] + [0] * 784], "negative label"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, rows, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(csv_text(rows, header=False))
    with pytest.raises(DataError, match=message):
        read_csv(path)


def test_csv_not_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("label,a\n1,x\n")
    with pytest.raises(DataError, match="bad.csv: data row 1 has 'x', which is not part of a number or a comma"):
        read_csv(path)
    path.write_text("label,a\n1,2-3\n")  # only number characters, still no number
    with pytest.raises(DataError, match="not a table of integers"):
        read_csv(path)
    path.write_text(",".join(["0.0"] * 785) + "\n")  # np.savetxt's floats: the one row looks like a header
    with pytest.raises(DataError, match="no data rows \\(row 1 is read as a header: its first field '0.0' is not"):
        read_csv(path)
    # A spreadsheet's semicolon or tab dialects (semicolons where the comma is the decimal mark).
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        for header in ("label" + separator + separator.join(f"p{i}" for i in range(784)) + "\n", ""):
            path.write_text(header + separator.join(["5"] + ["0"] * 784) + "\n")
            with pytest.raises(DataError, match=f"bad.csv: fields separated by {name}; nnx reads comma-separated"):
                read_csv(path)


def test_csv_that_could_take_the_memory_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="/dev/zero: not a regular file"):
        read_csv(Path("/dev/zero"))  # endless: read_text would never return
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:
        f.truncate(MAX_CSV_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DataError, match=f"huge.csv: {MAX_CSV_BYTES + 1:,} bytes, over the {MAX_CSV_BYTES:,}"):
        read_csv(huge)


@pytest.mark.mnist
def test_real_mnist_facts(mnist_dir: Path) -> None:
    """The shared MNIST matches its published facts: sizes, label counts, pixel statistics."""
    mnist = load_mnist(mnist_dir, validation=0)
    assert mnist.train.images.shape == (60000, 784) and mnist.test.images.shape == (10000, 784)
    assert label_counts(mnist.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert label_counts(mnist.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = mnist.train.images / 255.0
    assert round(float(pixels.mean()), 4) == 0.1307 and round(float(pixels.std()), 4) == 0.3081
    for file in (FILES["train_labels"], FILES["test_labels"]):
        assert verify_file(mnist_dir / (file.name + ".gz"), file)


def write_seed_csv(path: Path, images: np.ndarray, labels: np.ndarray, header: bool, bom: bool = False) -> None:
    table = np.concatenate([labels[:, None].astype(np.int64), images.reshape(len(images), -1).astype(np.int64)], 1)
    lines = [",".join(map(str, row)) for row in table]
    if header:
        lines.insert(0, "label," + ",".join(f"pixel{i}" for i in range(784)))
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def test_a_folder_of_the_seeds_csv_files_trains_like_the_idx_files(tiny_mnist: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nnx.cli.app import app
    from nnx.io import read_header

    mnist = load_mnist(tiny_mnist, 0)
    folder = tmp_path / "csv"
    folder.mkdir()
    write_seed_csv(folder / "mnist_train.csv", mnist.train.images, mnist.train.labels, header=True, bom=True)
    write_seed_csv(folder / "mnist_test.csv", mnist.test.images, mnist.test.labels, header=False)
    args = ["train", "-q", "--epochs", "2", "--set", "training.validation=100"]
    for name, data in (("idx", tiny_mnist), ("csv", folder)):
        result = CliRunner().invoke(app, [*args, "--data-dir", str(data), "--out", str(tmp_path / f"run-{name}")])
        assert result.exit_code == 0, result.output
    explicit = [
        "--set",
        f"data.train_csv={folder / 'mnist_train.csv'}",
        "--set",
        f"data.test_csv={folder / 'mnist_test.csv'}",
    ]
    result = CliRunner().invoke(app, [*args, *explicit, "--out", str(tmp_path / "run-paths")])
    assert result.exit_code == 0, result.output
    idx = read_header(tmp_path / "run-idx" / "model.npz")[1]
    for other in ("run-csv", "run-paths"):
        weights = read_header(tmp_path / other / "model.npz")[1]
        assert all(np.array_equal(idx[k], weights[k]) for k in idx)
