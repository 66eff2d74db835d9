"""`nnx serve`."""

from __future__ import annotations

from pathlib import Path

from nnx.cli.common import stdout_console
from nnx.errors import NnxError


def run_serve(model: Path, host: str, port: int, device: str, max_pixels: int | None = None) -> None:
    try:
        from nnx.web.server import MAX_PIXELS, serve
    except ImportError as exc:
        raise NnxError(f"nnx serve needs the web extra ({exc.name} is missing): pip install 'nnx[web]'") from None
    if not 0 < port < 65536:
        raise NnxError(f"--port {port}: not a TCP port (1-65535)")
    console = stdout_console()
    # Said once the socket is bound: a port in use is an error line, never a false "serving".
    ready = lambda: console.print(f"serving {model} on http://{host}:{port}/ (Ctrl-C stops)", markup=False)  # noqa: E731
    serve(model, host, port, device, max_pixels or MAX_PIXELS, ready)
