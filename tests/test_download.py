"""The downloader against HTTP servers on 127.0.0.1: no internet, real sockets."""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nnx.data.download import download_file, download_mnist
from nnx.data.mnist import MnistFile
from nnx.errors import DataError

CONTENT = b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"
FILE = MnistFile(
    "tiny-labels-idx1-ubyte",
    hashlib.sha256(gzip.compress(CONTENT, mtime=0)).hexdigest(),
    hashlib.sha256(CONTENT).hexdigest(),
    len(CONTENT),
)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving that folder."""
    servers = []

    def start(folder: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def mirror_with(tmp_path: Path, name: str, payload: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / (FILE.name + ".gz")).write_bytes(payload)
    return folder


def refused_url() -> str:
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_is_verified_and_written(tmp_path: Path, serve) -> None:
    url = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=0)))
    seen = []
    dest = tmp_path / "data"
    path = download_file(FILE, dest, [url], progress=lambda name, done, total: seen.append((done, total)))
    assert gzip.decompress(path.read_bytes()) == CONTENT
    assert leftovers(dest) == [FILE.name + ".gz"]
    assert seen and seen[-1][0] == seen[-1][1]


def test_recompressed_archive_is_accepted_by_content_hash(tmp_path: Path, serve) -> None:
    url = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=12345, compresslevel=1)))
    path = download_file(FILE, tmp_path / "data", [url])
    assert gzip.decompress(path.read_bytes()) == CONTENT


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, serve) -> None:
    url = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT + b"x", mtime=0)))
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download_file(FILE, dest, [url])
    # The way out offline: the four files by name, --data-dir, $NNX_DATA_DIR, another mirror.
    for hint in ("t10k-labels-idx1-ubyte.gz", "--data-dir", "$NNX_DATA_DIR", "nnx data download --mirror"):
        assert hint in str(info.value)
    assert leftovers(dest) == []


def test_404_then_second_mirror(tmp_path: Path, serve) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    first = serve(empty)
    second = serve(mirror_with(tmp_path, "m2", gzip.compress(CONTENT, mtime=0)))
    path = download_file(FILE, tmp_path / "data", [first, second])
    assert gzip.decompress(path.read_bytes()) == CONTENT


def test_all_mirrors_fail_lists_each(tmp_path: Path, serve) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dead, missing = refused_url(), serve(empty)
    dest = tmp_path / "data"
    with pytest.raises(DataError) as info:
        download_file(FILE, dest, [dead, missing], timeout=5)
    message = str(info.value)
    assert dead in message and "HTTP 404" in message and "refused" in message.lower()
    assert leftovers(dest) == []


def test_refused_then_good_mirror(tmp_path: Path, serve) -> None:
    good = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=0)))
    path = download_file(FILE, tmp_path / "data", [refused_url(), good], timeout=5)
    assert path.exists()


def test_download_mnist_fetches_only_what_is_missing(tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnx.data.download as download

    monkeypatch.setattr(download, "FILES", {"tiny": FILE})
    url = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=0)))
    dest = tmp_path / "data"
    assert [p.name for p in download_mnist(dest, [url])] == [FILE.name + ".gz"]
    assert download_mnist(dest, [url]) == []


def test_download_mnist_fetches_only_the_parts_asked_for(
    tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nnx.data.download as download

    other = MnistFile("other-labels-idx1-ubyte", FILE.archive_sha256, FILE.sha256, FILE.size)
    site = mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=0))
    (site / (other.name + ".gz")).write_bytes(gzip.compress(CONTENT, mtime=0))
    monkeypatch.setattr(download, "FILES", {"train_labels": other, "test_labels": FILE})
    dest = tmp_path / "data"
    assert [p.name for p in download_mnist(dest, [serve(site)], parts=("test_labels",))] == [FILE.name + ".gz"]
    assert sorted(p.name for p in dest.iterdir()) == [FILE.name + ".gz"]


def test_every_dataset_is_registered_with_checksums_mirrors_and_class_names() -> None:
    from nnx.data.datasets import DATASETS

    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist"}
    for entry in DATASETS.values():
        assert set(entry.files) == {"train_images", "train_labels", "test_images", "test_labels"}
        assert all(len(f.archive_sha256) == 64 or len(f.archive_md5) == 32 for f in entry.files.values())
        assert entry.mirrors and all(m.startswith("http") for m in entry.mirrors)
        assert len(entry.classes) == len(set(entry.classes)) == 10
    assert DATASETS["fashion-mnist"].classes[7] == "Sneaker"


def test_fashion_mnist_downloads_by_its_published_md5(serve, tmp_path: Path, monkeypatch) -> None:
    """Synthetic IDX files, gzipped, served from 127.0.0.1 under the dataset's file names; the
    registry entry carries their MD5s as the real one carries the authors' published ones."""
    from dataclasses import replace

    from conftest import make_tiny_mnist

    from nnx.data import datasets

    source = make_tiny_mnist(tmp_path / "source", n_train=100, n_test=20)
    site = tmp_path / "site"
    site.mkdir()
    md5 = {}
    for key, file in datasets.DATASETS["fashion-mnist"].files.items():
        archive = gzip.compress((source / file.name).read_bytes(), mtime=0)
        (site / (file.name + ".gz")).write_bytes(archive)
        md5[key] = hashlib.md5(archive).hexdigest()
    entry = replace(datasets.DATASETS["fashion-mnist"], files=datasets._md5_files(md5), mirrors=(serve(site),))
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", entry)
    target = tmp_path / "data" / "fashion-mnist"
    fetched = download_mnist(target, None, None, False, "fashion-mnist")
    assert sorted(p.name for p in fetched) == sorted(f.name + ".gz" for f in entry.files.values())
    # A mirror serving other bytes under those names is refused: the MD5 decides.
    (site / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    with pytest.raises(DataError, match="checksum mismatch") as failed:
        download_mnist(tmp_path / "again", None, None, False, "fashion-mnist")
    # The way out names this dataset: $NNX_DATA_DIR is MNIST's folder alone.
    assert "point --data-dir at a folder" in str(failed.value) and "$NNX_DATA_DIR" not in str(failed.value)
    assert str(failed.value).endswith("nnx data download --dataset fashion-mnist --mirror URL")


class CutShortHandler(QuietHandler):
    """Promises 1,000 bytes and hangs up after 10."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"\x00" * 8)
        self.wfile.flush()
        self.close_connection = True


def test_a_body_cut_short_is_a_failed_mirror_and_the_next_is_tried(tmp_path: Path, serve) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutShortHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cut = f"http://127.0.0.1:{server.server_address[1]}/"
        good = serve(mirror_with(tmp_path, "m1", gzip.compress(CONTENT, mtime=0)))
        assert download_file(FILE, tmp_path / "data", [cut, good], timeout=5).exists()
        with pytest.raises(DataError, match="the transfer was cut short at 10 of 1,000 bytes"):
            download_file(FILE, tmp_path / "other", [cut], timeout=5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mirror", ["not a url", "http:///no-host", "javascript:alert(1)", "127.0.0.1:8000"])
def test_a_mirror_that_is_not_a_url_is_refused_before_any_download(tmp_path: Path, mirror: str) -> None:
    with pytest.raises(DataError, match="not a URL nnx can fetch from"):
        download_mnist(tmp_path / "data", [mirror])
    assert leftovers(tmp_path / "data") == []


class EndlessHandler(QuietHandler):
    """Sends zeros without a Content-Length, as if without end: 4 MB (60 times the file's limit),
    or until the client hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(b"\x00" * 65536)
        except OSError:
            pass


def test_a_mirror_sending_more_than_the_file_can_be_is_cut_off(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EndlessHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DataError, match="sent over 65,547 bytes, more than the file can be"):
            download_file(FILE, tmp_path / "data", [f"http://127.0.0.1:{server.server_address[1]}/"], timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert leftovers(tmp_path / "data") == []
