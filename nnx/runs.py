"""A run directory: config.yaml, metrics.jsonl, model.npz, summary.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from nnx.atomic import write_atomic
from nnx.config import Config, to_yaml
from nnx.errors import NnxError

# What nnx writes into a run directory (write_atomic's temporary files start with a dot too).
RUN_FILES = {
    "config.yaml", "metrics.jsonl", "metrics.csv", "checkpoint.npz", "best.npz", "model.npz", "summary.json", ".lock",
}  # fmt: skip


def new_run_dir(config: Config, out: str | None, force: bool = False) -> Path:
    """--out, the config's output, or runs/<timestamp>-<name>. Never reuses a run (finished or
    stopped), and never writes into a folder of the user's files unless `force` (which deletes
    nothing)."""
    chosen = check_out(config, out, force)
    if chosen:
        path = chosen
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


def check_out(config: Config, out: str | None, force: bool = False) -> Path | None:
    """The folder --out (or the config's output) names, once checked that a run may be written
    there (new_run_dir's refusals, nothing created); None when neither names one."""
    chosen = out or config.output
    if chosen:
        path = Path(chosen)
        check_not_locked(path)
        if (path / "model.npz").exists():
            raise NnxError(f"{path}: already holds a trained model; choose another --out")
        if (path / "checkpoint.npz").exists():
            raise NnxError(
                f"{path}: holds a stopped run; continue it with nnx train --resume {path}, or choose another --out"
            )
        if path.is_file():
            raise NnxError(f"{path}: is a file, not a directory; choose another --out")
        theirs = (
            sorted(p.name for p in path.iterdir() if p.name not in RUN_FILES and not _temporary(p.name))
            if path.is_dir()
            else []
        )
        if theirs and not force:
            shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
            raise NnxError(
                f"{path}: holds files nnx did not write ({shown}); choose another --out, or add --force to write "
                "the run beside them (nothing is deleted)"
            )
        return path
    return None


def _temporary(name: str) -> bool:
    """write_atomic's temporary files (.NAME.XXXX.part), which a killed write leaves behind."""
    return name.startswith(".") and name.endswith(".part")


def locked_by(path: Path) -> str | None:
    """The pid holding `path`'s run lock, or None when nobody does (creating nothing)."""
    import fcntl

    lock_file = path / ".lock"
    if not lock_file.is_file():
        return None
    with open(lock_file) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return f.read().strip() or "unknown"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def check_not_locked(path: Path) -> None:
    """Refuse a run directory another process is training in (RunLock's refusal, taking no lock)."""
    holder = locked_by(path)
    if holder is not None:
        raise _busy(path, holder)


def _busy(path: Path, holder: str) -> NnxError:
    return NnxError(
        f"{path}: another nnx process (pid {holder}) is writing this run; wait for it, or choose another --out"
    )


class RunLock:
    """A run directory belongs to one process at a time: an exclusive fcntl lock on its .lock file,
    held while the run trains and released (by the OS too) when the process ends."""

    def __init__(self, path: Path) -> None:
        import fcntl

        self.file = open(path / ".lock", "a+")  # noqa: SIM115 (held open for the lock's life)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise _busy(path, holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        # Temporary files of a write that was killed halfway (write_atomic's .NAME.*.part): not ours to keep.
        for stale in path.glob(".*.part"):
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        import fcntl

        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


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
    """A run's summary, config (as a dict) and per-epoch metrics; a broken file is an NnxError
    naming it."""
    import yaml

    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise NnxError(f"{path}: not a finished run (no summary.json)")
    summary = read_json(summary_path)
    config_path = path / "config.yaml"
    config = _read(config_path, yaml.safe_load, dict) if config_path.is_file() else {}
    metrics_path = path / "metrics.jsonl"
    history = read_metrics(metrics_path) if metrics_path.is_file() else []
    return {"path": path, "summary": summary, "config": config, "history": history,
            "modified": summary_path.stat().st_mtime}  # fmt: skip


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file of a run (summary.json) holding a `kind`; anything else is an NnxError naming it."""
    return _read(path, json.loads, kind)


# Numbers in every line of metrics.jsonl (what the tables and plots read); the validation ones may be null.
METRICS = ("epoch", "train_loss", "train_accuracy")
VALIDATION_METRICS = ("val_loss", "val_accuracy")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one JSON object per epoch. A line that is not one, or lacks the numbers of
    METRICS, is an NnxError naming the file and line: the plots would otherwise fail on it."""
    history = []
    for number, line in enumerate(_read(path, lambda t: t, str).splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # not JSON; an integer of thousands of digits; nested too deep
            raise NnxError(f"{path}: line {number} is not JSON (a corrupt file)") from None
        if not (
            isinstance(entry, dict)
            and all(is_figure(entry.get(key)) for key in METRICS)
            and all(entry.get(key) is None or is_figure(entry[key]) for key in VALIDATION_METRICS)
            and isinstance(entry["epoch"], int)
            and entry["epoch"] >= 1
        ):
            raise NnxError(
                f"{path}: line {number} is not an epoch's metrics (epoch: a whole number >= 1; "
                f"{', '.join(METRICS[1:])}: numbers; {', '.join(VALIDATION_METRICS)}: numbers or null)"
            )
        history.append(entry)
    return history


def is_figure(value: Any) -> bool:
    """A JSON number a float can hold (NaN and infinity included: a diverged epoch's loss), as
    nnx writes in metrics.jsonl and summary.json; not a bool, a string, or an integer past 2^63."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or abs(value) < 2**63


def human_value(key: str, value: Any) -> str:
    """A summary value in human units: 98.31%, 11.7 s, 124 MB, 374,718 images/s."""
    if value is None:
        return "-"
    if not is_figure(value):  # text, or an integer past float's range: shown as written
        return str(value)
    if "accuracy" in key:
        return f"{value:.2%}"
    if key.endswith("seconds"):
        return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"
    if key.endswith("_mb"):
        return f"{value:,.0f} MB"
    if key == "samples_per_second":
        return f"{value:,.0f} images/s"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if abs(value) >= 10_000 else str(value)


def _read(path: Path, parse: Any, kind: type) -> Any:
    try:
        value = parse(path.read_bytes().decode("utf-8"))
    except Exception as exc:  # OSError, UnicodeDecodeError, JSONDecodeError, YAMLError, RecursionError...
        raise NnxError(f"{path}: unreadable or corrupt ({type(exc).__name__})") from None
    if not isinstance(value, kind):
        raise NnxError(f"{path}: corrupt (expected a {kind.__name__}, found {type(value).__name__})")
    return value


def list_runs(root: Path, warn: Any = None) -> list[dict[str, Any]]:
    """Every finished run under `root`, oldest first; a run with a broken file is skipped and
    `warn(message)` told which file."""
    if not root.is_dir():
        return []
    runs = []
    for path in root.iterdir():
        if (path / "summary.json").is_file():
            try:
                runs.append(read_run(path))
            except NnxError as exc:
                if warn is not None:
                    warn(f"skipped {path.name}: {exc}")
    return sorted(runs, key=lambda run: run["modified"])


def unfinished_runs(root: Path) -> list[dict[str, Any]]:
    """The run directories under `root` that have no summary.json yet: one being trained now
    (`pid`: the process holding its lock), or one whose process died (`resumable` when its
    checkpoint is there), each with the epochs it has done and was to do. Oldest first."""
    import yaml

    if not root.is_dir():
        return []
    runs = []
    for path in root.iterdir():
        if not (path / "config.yaml").is_file() or (path / "summary.json").exists():
            continue
        try:
            done = len(read_metrics(path / "metrics.jsonl")) if (path / "metrics.jsonl").is_file() else 0
        except NnxError:
            done = None
        try:
            epochs = _read(path / "config.yaml", yaml.safe_load, dict)["training"]["epochs"]
        except (NnxError, KeyError, TypeError):
            epochs = None
        try:
            pid = locked_by(path)
        except OSError:  # a lock file this user may not read: another user's run, as far as we can tell
            pid = "?"
        files = [path / name for name in ("config.yaml", "metrics.jsonl", "checkpoint.npz") if (path / name).is_file()]
        runs.append({
            "path": path, "pid": pid, "resumable": (path / "checkpoint.npz").is_file(),
            "epochs_done": done, "epochs": epochs if is_figure(epochs) else None,
            "modified": max(f.stat().st_mtime for f in files),
        })  # fmt: skip
    return sorted(runs, key=lambda run: run["modified"])


def run_test_set(run: Path) -> tuple[Path | None, tuple[Path, Path] | None]:
    """Where a run directory's test set is, from its config.yaml: (its data folder, when it is
    still there; its CSV files, when it trained on data.train_csv and test_csv). (None, None) when
    the config says neither or cannot be read. A missing CSV test file is an NnxError naming it."""
    import yaml

    try:
        data = _read(run / "config.yaml", yaml.safe_load, dict).get("data")
    except NnxError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    folder = data.get("dir")
    folder = Path(folder) if isinstance(folder, str) and Path(folder).is_dir() else None
    train, test = data.get("train_csv"), data.get("test_csv")
    if not (isinstance(train, str) and isinstance(test, str)):
        return folder, None
    if not Path(test).is_file():
        raise NnxError(f"{test}: the CSV test set {run} was trained with is not there; give --data-dir")
    return folder, (Path(train), Path(test))


def test_data(run: Path | None, data_dir: Path | None, dataset: str) -> tuple[Path, tuple[Path, Path] | None]:
    """(folder, CSV files or None) of the test set a model is measured on: --data-dir when given;
    else, for a run directory, the run's own (its CSV files, its folder while it is there); else
    the usual folder of `dataset` (resolve_data_dir)."""
    from nnx.data.mnist import resolve_data_dir

    trained_on, csv = run_test_set(run) if run is not None and data_dir is None else (None, None)
    return resolve_data_dir(data_dir, trained_on, dataset), csv


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
