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


def read_run(path: Path) -> dict[str, Any]:
    """A run's summary, config (as a dict) and per-epoch metrics."""
    import yaml

    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise NnxError(f"{path}: not a finished run (no summary.json)")
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    metrics_path = path / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
    return {
        "path": path,
        "summary": json.loads(summary_path.read_text()),
        "config": config,
        "history": history,
        "modified": summary_path.stat().st_mtime,
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every finished run under `root`, oldest first."""
    if not root.is_dir():
        return []
    runs = [read_run(p) for p in root.iterdir() if (p / "summary.json").is_file()]
    return sorted(runs, key=lambda run: run["modified"])


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted keys whose values are not the same in every config, with each one's value."""
    flats = [flatten(config) for config in configs]
    keys = sorted(set().union(*flats))
    missing = object()
    differences = {}
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            differences[key] = [None if value is missing else value for value in values]
    return differences
