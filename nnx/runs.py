"""A run directory: config.yaml, metrics.jsonl, model.npz, summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nnx.atomic import write_atomic
from nnx.config import Config, to_yaml
from nnx.errors import NnxError


def new_run_dir(config: Config, out: str | None) -> Path:
    """--out, the config's output, or runs/<timestamp>-<name>; never reuses a finished run."""
    chosen = out or config.output
    if chosen:
        path = Path(chosen)
        if (path / "model.npz").exists():
            raise NnxError(f"{path}: already holds a trained model; choose another --out")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stamp}-{config.name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path("runs") / f"{stamp}-{config.name}-{suffix}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NnxError(f"{path}: cannot create the run directory ({exc.strerror})") from None
    return path


class RunWriter:
    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self.metric_lines: list[str] = []
        write_atomic(path / "config.yaml", to_yaml(config).encode())

    def add_epoch(self, metrics: dict[str, Any]) -> None:
        self.metric_lines.append(json.dumps(metrics))
        write_atomic(self.path / "metrics.jsonl", ("\n".join(self.metric_lines) + "\n").encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
