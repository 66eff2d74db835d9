"""Where MNIST lives, what its files must hash to, and loading it as uint8 arrays."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnx.data.idx import content_sha256, read_idx_images, read_idx_labels
from nnx.errors import DataError

DEFAULT_DATA_DIR = Path("data/mnist")
ENV_DATA_DIR = "NNX_DATA_DIR"

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class MnistFile:
    name: str  # without .gz
    archive_sha256: str  # of the published .gz ("" where its authors publish an MD5 only)
    sha256: str  # of the decompressed IDX bytes ("" where unknown)
    size: int  # decompressed bytes (0 where unknown)
    archive_md5: str = ""  # what Fashion-MNIST's and KMNIST's authors publish


FILES = {
    "train_images": MnistFile(
        "train-images-idx3-ubyte",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
    ),
    "train_labels": MnistFile(
        "train-labels-idx1-ubyte",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
    ),
    "test_images": MnistFile(
        "t10k-images-idx3-ubyte",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
    ),
    "test_labels": MnistFile(
        "t10k-labels-idx1-ubyte",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
    ),
}


def resolve_data_dir(flag: str | Path | None = None, config: str | Path | None = None, dataset: str = "mnist") -> Path:
    """--data-dir beats the config, which beats $NNX_DATA_DIR (MNIST's folder, so for MNIST only),
    which beats ./data/<dataset>."""
    environment = os.environ.get(ENV_DATA_DIR) or None if dataset == "mnist" else None
    for candidate in (flag, config, environment):
        if candidate:
            return Path(candidate).expanduser()
    return DEFAULT_DATA_DIR if dataset == "mnist" else Path("data") / dataset


def find_file(data_dir: Path, file: MnistFile) -> Path | None:
    """The raw or .gz copy of `file` in `data_dir`, raw first."""
    for name in (file.name, file.name + ".gz"):
        path = data_dir / name
        if path.is_file():
            return path
    return None


# The seed project's own format: a folder holding these two works as a data directory.
CSV_FILES = ("mnist_train.csv", "mnist_test.csv")


def csv_files(data_dir: Path) -> tuple[Path, Path] | None:
    """The seed's two CSV files in `data_dir`, when both are there and the IDX files are not."""
    train, test = (data_dir / name for name in CSV_FILES)
    if train.is_file() and test.is_file() and any(find_file(data_dir, f) is None for f in FILES.values()):
        return train, test
    return None


# What evaluate, predict and plot read: a machine that only measures models needs no training set.
TEST_FILES = ("test_images", "test_labels")


def missing_files(data_dir: Path, parts: tuple[str, ...] | None = None) -> list[str]:
    """The names of the files (of FILES' keys `parts`, default all) that `data_dir` lacks."""
    if csv_files(data_dir) is not None:
        return []
    return [f.name for key, f in FILES.items() if (parts is None or key in parts) and find_file(data_dir, f) is None]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_file(path: Path, file: MnistFile) -> bool:
    """True when the decompressed content is the official one."""
    return content_sha256(path)[0] == file.sha256


@dataclass
class Split:
    """Images uint8 (N, 784) and labels uint8 (N,), kept small; converted to float per batch."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Mnist:
    train: Split
    validation: Split
    test: Split
    data_dir: Path


def _load_pair(data_dir: Path, images_key: str, labels_key: str) -> Split:
    paths = {}
    for key in (images_key, labels_key):
        path = find_file(data_dir, FILES[key])
        if path is None:
            raise DataError(
                f"{data_dir}: {FILES[key].name}(.gz) not found; run `nnx data download` "
                f"or point --data-dir / {ENV_DATA_DIR} at a folder holding the MNIST files"
            )
        paths[key] = path
    images = read_idx_images(paths[images_key])
    labels = read_idx_labels(paths[labels_key])
    if len(images) != len(labels):
        raise DataError(
            f"{paths[images_key]}: {len(images)} images but {paths[labels_key].name} has {len(labels)} labels"
        )
    if images.shape[1] != 784:
        raise DataError(f"{paths[images_key]}: images are {images.shape[1]} pixels, expected 28x28 = 784")
    return Split(images, labels)


def _read_csv_split(path: Path) -> Split:
    from nnx.data.csvfile import read_csv

    images, labels = read_csv(path)
    return Split(images, labels)


def load_test(data_dir: Path, csv: tuple[Path, Path] | None = None) -> Split:
    csv = csv or csv_files(data_dir)
    if csv is not None:
        return _read_csv_split(csv[1])
    return _load_pair(data_dir, "test_images", "test_labels")


def load_mnist(data_dir: Path, validation: int = 5000, csv: tuple[Path, Path] | None = None) -> Mnist:
    """Train / validation / test; the validation set is the last `validation` training images.
    From the IDX files, or from the seed's mnist_train.csv and mnist_test.csv (in `data_dir`, or
    the two paths given as `csv`)."""
    csv = csv or csv_files(data_dir)
    train = _read_csv_split(csv[0]) if csv else _load_pair(data_dir, "train_images", "train_labels")
    if not 0 <= validation < len(train):
        raise DataError(
            f"training.validation: {validation} must be between 0 and {len(train) - 1} "
            f"(the training set has {len(train)} images)"
        )
    cut = len(train) - validation
    return Mnist(
        train=Split(train.images[:cut], train.labels[:cut]),
        validation=Split(train.images[cut:], train.labels[cut:]),
        test=load_test(data_dir, csv),
        data_dir=data_dir,
    )


def label_counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10)
