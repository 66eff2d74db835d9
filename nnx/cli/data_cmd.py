"""`nnx data download` and `nnx data info`, and fetching data on first use."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from nnx.cli.common import stdout_console
from nnx.data.datasets import get_dataset
from nnx.data.download import download_mnist
from nnx.data.idx import content_sha256
from nnx.data.mnist import MnistFile, csv_files, find_file, label_counts, load_mnist, resolve_data_dir
from nnx.errors import DataError


def download_with_progress(
    data_dir: Path,
    console: Console,
    mirrors: list[str] | None = None,
    force: bool = False,
    dataset: str = "mnist",
    parts: tuple[str, ...] | None = None,
) -> None:
    """Download what is missing, with a byte progress bar on a terminal and a line per file elsewhere."""
    mirrors = mirrors or list(get_dataset(dataset).mirrors)
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
        ) as bars:
            tasks: dict[str, int] = {}

            def progress(name: str, done: int, total: int | None) -> None:
                if name not in tasks:
                    tasks[name] = bars.add_task(name, total=total)
                bars.update(tasks[name], completed=done)

            fetched = download_mnist(data_dir, mirrors, progress, force, dataset, parts)
    else:
        fetched = download_mnist(data_dir, mirrors, None, force, dataset, parts)
    for path in fetched:
        console.print(f"downloaded {path} (sha256 verified)", markup=False)


def ensure_data(
    data_dir: Path,
    console: Console,
    download: bool = True,
    dataset: str = "mnist",
    parts: tuple[str, ...] | None = None,
) -> None:
    """nnx.api.ensure_data with a progress bar and the CLI's console; `parts`: only these files."""
    from nnx.api import ensure_data as ensure

    def fetch(folder: Path, name: str) -> None:
        download_with_progress(folder, console, dataset=name, parts=parts)

    ensure(data_dir, download, fetch, lambda line: console.print(line, markup=False), dataset, parts=parts)


def run_download(data_dir: Path | None, mirrors: list[str] | None, force: bool, dataset: str = "mnist") -> None:
    console = stdout_console()
    entry = get_dataset(dataset)
    target = resolve_data_dir(data_dir, None, dataset)
    download_with_progress(target, console, mirrors, force, dataset)
    console.print(f"{entry.title} is in {target}", markup=False)


def _check(path: Path, file: MnistFile) -> tuple[str, int | None]:
    """What a data file's hash says, against what its dataset's authors publish, and its size:
    the content's SHA-256 (MNIST) or, for a .gz, the archive's MD5 (Fashion-MNIST, KMNIST)."""
    if file.sha256:
        digest, size = content_sha256(path)
        return ("ok" if digest == file.sha256 else "MISMATCH"), size
    if file.archive_md5 and path.suffix == ".gz":
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
        return ("ok (archive md5)" if md5.hexdigest() == file.archive_md5 else "MISMATCH"), None
    return "unchecked (only the archive's hash is published)", None


def run_data_info(data_dir: Path | None, dataset: str = "mnist") -> None:
    console = stdout_console()
    entry = get_dataset(dataset)
    folder = resolve_data_dir(data_dir, None, dataset)
    csv = csv_files(folder) if dataset == "mnist" else None
    if csv is not None:  # the seed project's two CSV files
        console.print(f"{entry.title} in {folder.resolve()}: the seed's CSV files {csv[0].name}, {csv[1].name}")
    else:
        table = Table(title=f"{entry.title} in {folder.resolve()}")
        for column in ("file", "on disk", "bytes", "hash"):
            table.add_column(column)
        problems = []
        for file in entry.files.values():
            path = find_file(folder, file)
            if path is None:
                table.add_row(file.name, "missing", "", "")
                problems.append(f"{file.name} missing")
                continue
            verdict, size = _check(path, file)
            if verdict == "MISMATCH":
                problems.append(f"{path.name} checksum mismatch")
            table.add_row(file.name, path.name, f"{size if size is not None else path.stat().st_size:,}", verdict)
        console.print(table)
        if problems:
            get = "nnx data download" + ("" if dataset == "mnist" else f" --dataset {dataset}")
            how = (
                f"; get them with `{get}` (or --data-dir / $NNX_DATA_DIR to a folder holding them; "
                "data/README.md says how to fill it by hand)"
                if any(p.endswith("missing") for p in problems)
                else ""
            )
            raise DataError(f"{folder}: {'; '.join(problems)}{how}")
    data = load_mnist(folder, validation=0, csv=csv)
    console.print(f"train {len(data.train):,} images, test {len(data.test):,} images, 28x28 uint8", markup=False)
    console.print("train label counts 0-9: " + " ".join(map(str, label_counts(data.train.labels))), markup=False)
