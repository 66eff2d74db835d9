"""Fetch MNIST from its mirrors: each file verified by SHA-256 and written atomically."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from nnx.atomic import write_atomic
from nnx.data.mnist import FILES, MIRRORS, MnistFile, find_file, sha256_hex
from nnx.errors import DataError

# progress(file name, bytes so far, total bytes or None)
Progress = Callable[[str, int, "int | None"], None]

CHUNK = 1 << 16


class MirrorError(Exception):
    """A mirror's answer that nnx will not use; the message says why."""


def _fetch(url: str, name: str, progress: Progress | None, timeout: float, limit: int) -> bytes:
    """The body at `url`, at most `limit` bytes, and all of what its Content-Length announced."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if total is not None and total > limit:
            raise MirrorError(f"announces {total:,} bytes, more than the file can be ({limit:,})")
        chunks, done = [], 0
        while chunk := response.read(CHUNK):
            chunks.append(chunk)
            done += len(chunk)
            if done > limit:  # a mirror that never stops sending does not fill the memory
                raise MirrorError(f"sent over {limit:,} bytes, more than the file can be")
            if progress:
                progress(name, done, total)
    if total is not None and done < total:
        raise MirrorError(f"the transfer was cut short at {done:,} of {total:,} bytes")
    return b"".join(chunks)


def _archive_limit(file: MnistFile) -> int:
    """The most bytes an archive of `file` can take: gzip adds little even to incompressible data
    (a mirror may also serve the file uncompressed); 64 MB where the size is not known."""
    return file.size + file.size // 64 + (1 << 16) if file.size else 1 << 26


def _content_ok(archive: bytes, file: MnistFile) -> bool:
    """The published archive's hash (SHA-256, or the MD5 some authors publish), or (for a mirror
    that recompressed) the content's hash where it is known."""
    if file.archive_sha256 and sha256_hex(archive) == file.archive_sha256:
        return True
    if file.archive_md5 and hashlib.md5(archive, usedforsecurity=False).hexdigest() == file.archive_md5:
        return True
    if not file.sha256:
        return False
    try:
        return sha256_hex(gzip.decompress(archive)) == file.sha256
    except (OSError, EOFError, zlib.error):
        return False


MIRROR_SCHEMES = ("https", "http", "ftp", "file")  # file:// serves a local copy of the archives


def mirror_problem(mirror: str) -> str | None:
    """Why `mirror` is not a base URL nnx can download from, or None when it is one."""
    url = urllib.parse.urlsplit(mirror)
    if url.scheme not in MIRROR_SCHEMES or (url.scheme != "file" and not url.netloc):
        return f"not a URL nnx can fetch from ({', '.join(MIRROR_SCHEMES)})"
    return None


def download_file(
    file: MnistFile,
    data_dir: Path,
    mirrors: Iterable[str] = MIRRORS,
    progress: Progress | None = None,
    timeout: float = 30.0,
    dataset: str = "mnist",
) -> Path:
    """Try each mirror in order; keep the first archive whose hash checks out."""
    target = data_dir / (file.name + ".gz")
    tried = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file.name + ".gz"
        try:
            archive = _fetch(url, file.name + ".gz", progress, timeout, _archive_limit(file))
        except urllib.error.HTTPError as exc:
            tried.append(f"{url} (HTTP {exc.code})")
            continue
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            tried.append(f"{url} ({reason})")
            continue
        except MirrorError as exc:
            tried.append(f"{url} ({exc})")
            continue
        except (http.client.HTTPException, ValueError) as exc:  # a malformed answer; a bad port in the URL
            tried.append(f"{url} ({type(exc).__name__}: {exc})")
            continue
        if not _content_ok(archive, file):
            tried.append(f"{url} (checksum mismatch)")
            continue
        write_atomic(target, archive)
        return target
    # $NNX_DATA_DIR is MNIST's folder (resolve_data_dir); the other datasets have --data-dir alone.
    point = "--data-dir or $NNX_DATA_DIR" if dataset == "mnist" else "--data-dir"
    option = "" if dataset == "mnist" else f" --dataset {dataset}"
    raise DataError(
        f"could not download {file.name}.gz; tried: {'; '.join(tried) or 'no mirrors'}. Offline? Put the four "
        f"files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz) in {data_dir}, or point {point} at a folder holding "
        f"them, or give another mirror: nnx data download{option} --mirror URL"
    )


def download_mnist(
    data_dir: Path,
    mirrors: Iterable[str] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    dataset: str = "mnist",
    parts: tuple[str, ...] | None = None,
) -> list[Path]:
    """Download every file of `dataset` (MNIST, Fashion-MNIST, KMNIST) not already in `data_dir`,
    from `mirrors` (default: the dataset's own, in order); returns the paths fetched. `parts`: only
    these of the files (keys of FILES: "train_images", ...)."""
    from nnx.data.datasets import get_dataset

    entry = get_dataset(dataset)
    mirrors = list(mirrors or entry.mirrors)
    for mirror in mirrors:  # before anything is fetched
        problem = mirror_problem(mirror)
        if problem:
            raise DataError(f"--mirror {mirror!r}: {problem}")
    files = FILES if dataset == "mnist" else entry.files  # FILES: tests may stand in for it
    fetched = []
    for key, file in files.items():
        if parts is not None and key not in parts:
            continue
        if not force and find_file(data_dir, file) is not None:
            continue
        fetched.append(download_file(file, data_dir, mirrors, progress, dataset=dataset))
    return fetched
