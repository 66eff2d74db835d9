"""The datasets nnx knows: one registry entry each (files, checksums, mirrors, class names).

All three share MNIST's IDX format and file names, so the readers stay format-only; what differs
is where the files come from, what they hash to (as their authors publish it) and what the ten
classes are called. The class names travel in every model file, to evaluate, predict, the plots,
the report and `nnx serve`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnx.data.mnist import FILES, MIRRORS, MnistFile
from nnx.errors import DataError

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    files: dict[str, MnistFile]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    homepage: str


def _md5_files(md5: dict[str, str]) -> dict[str, MnistFile]:
    """Files known by their published archive MD5 (no content hash is published for these)."""
    return {key: MnistFile(FILES[key].name, "", "", 0, archive_md5=digest) for key, digest in md5.items()}


DATASETS = {
    "mnist": Dataset("mnist", "MNIST", FILES, MIRRORS, DIGITS, "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": Dataset(
        "fashion-mnist",
        "Fashion-MNIST",
        _md5_files(
            {
                "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                "test_images": "bef4ecab320f06d8554ea6380940ec79",
                "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
            }
        ),  # fmt: skip
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "kmnist": Dataset(
        "kmnist",
        "Kuzushiji-MNIST",
        _md5_files(
            {
                "train_images": "bdb82020997e1d708af4cf47b453dcf7",
                "train_labels": "e144d726b3acfaa3e44228e80efcd344",
                "test_images": "5c965bf0a639b31b8f53240b1b52f4d7",
                "test_labels": "7320c461ea6c1c855c0b718fb2a4b134",
            }
        ),  # fmt: skip
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # お き す つ な は ま や れ を
        "https://github.com/rois-codh/kmnist",
    ),
}


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def class_names(header: dict | None) -> list[str]:
    """A model file's class names (digits for MNIST and for files written before they were kept)."""
    names = (header or {}).get("classes")
    if isinstance(names, list) and len(names) == 10 and all(isinstance(n, str) for n in names):
        return names
    return list(DIGITS)
