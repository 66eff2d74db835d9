"""`nnx serve`."""

from __future__ import annotations

from pathlib import Path

from nnx.cli.common import stdout_console
from nnx.errors import NnxError


def run_serve(model: Path, host: str, port: int, device: str) -> None:
    try:
        from nnx.web.server import serve
    except ImportError as exc:
        raise NnxError(f"nnx serve needs the web extra ({exc.name} is missing): pip install 'nnx[web]'") from None
    if not 0 < port < 65536:
        raise NnxError(f"--port {port}: not a TCP port (1-65535)")
    stdout_console().print(f"serving {model} on http://{host}:{port}/ (Ctrl-C stops)", markup=False)
    serve(model, host, port, device)
