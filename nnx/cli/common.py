"""What every command shares: consoles and turning NnxError into one line and an exit code."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from nnx.errors import NnxError

# markup=False, emoji=False: what nnx prints holds the user's paths, run and class names and
# values, and rich would read "[bold]" in them as a style (dropping it from the path shown), "[/x]"
# as a broken tag (a traceback) and the ":-1:" of "gpu:-1: ..." as an emoji. Styled cells are rich
# Text objects instead.


def stdout_console() -> Console:
    # soft_wrap: a message stays one line in logs instead of being cut at 80 columns.
    return Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False)


def print_error(message: str) -> None:
    stderr_console().print(f"error: {message}", markup=False, soft_wrap=True)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input becomes `error: <one line>` on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NnxError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None
        except MemoryError as exc:  # what no budget foresaw (evaluating a huge model on a small machine)
            print_error(f"out of memory ({exc or 'MemoryError'}); use smaller batches or a machine with more memory")
            raise typer.Exit(1) from None
        except OSError as exc:  # a path no check foresaw (a name too long, a loop of links...): still one line
            print_error(os_error_message(exc))
            raise typer.Exit(2 if exc.errno in PATH_ERRNOS else 1) from None

    return wrapper


# The path given is wrong (exit 2); any other OSError is the machine's (exit 1: a disk, a permission).
PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EEXIST}


def os_error_message(exc: OSError) -> str:
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    reason = exc.strerror or type(exc).__name__
    return f"{' -> '.join(names)}: {reason}" if names else reason
