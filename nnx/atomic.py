"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from nnx.errors import NnxError


def _default_mode() -> int:
    # What open() would give a new file: 0o666 less the umask (mkstemp's own 0o600 is too tight).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(NnxError):
    """The disk is full or will not take the file: what was there before stays as it was."""

    exit_code = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it. A full or read-only disk is
    one WriteError naming the file; the previous version of the file (if any) is untouched."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


# What marks a file nnx wrote: its PNGs' Software text chunk and its HTML reports' generator tag,
# both in the first bytes.
PNG_SOFTWARE = "nnx"
HTML_GENERATOR = '<meta name="generator" content="nnx">'
_MARKS = (b"Software\x00" + PNG_SOFTWARE.encode(), HTML_GENERATOR.encode())


def check_replaceable(path: Path, option: str) -> None:
    """Refuse to write a plot or report over a file the user named with `option` unless nnx wrote
    it (an earlier run of the same command, written again): never a user's own file."""
    if path.is_dir():
        raise NnxError(f"{option} {path}: is a directory; give a file name")
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = b""
    if not any(mark in head for mark in _MARKS):
        raise NnxError(f"{option} {path}: the file exists and nnx did not write it; choose another name or remove it")


def _write_error(path: Path, exc: OSError) -> NnxError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"no space left on device writing {path}")
    # The path given is wrong (exit 2). mkdir of a folder that is a file fails with EEXIST.
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return NnxError(f"cannot write {path}: part of its folder path is a file, not a folder")
    if exc.errno in (errno.EISDIR, errno.ENAMETOOLONG):
        return NnxError(f"cannot write {path} ({exc.strerror})")
    return WriteError(f"cannot write {path} ({exc.strerror})")  # read-only, no permission, I/O error...
