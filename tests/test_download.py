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
    assert "by hand" in str(info.value)
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
