"""`nnx plot`, `nnx runs` and `nnx runs compare`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from nnx.atomic import check_replaceable
from nnx.cli.common import stderr_console, stdout_console
from nnx.cli.data_cmd import ensure_data
from nnx.data.mnist import TEST_FILES
from nnx.errors import NnxError
from nnx.runs import config_differences, is_figure, list_runs, read_run, test_data, unfinished_runs


def run_plot(run: Path, data_dir: Path | None, device: str) -> None:
    from nnx.viz.report import make_plots

    console = stdout_console()
    if run.is_file() and (run.parent / "metrics.jsonl").is_file():  # runs/x/model.npz: its run
        run = run.parent
    elif not run.exists():
        raise NnxError(f"{run}: no such run directory")
    dataset = _run_dataset(run)
    folder, csv = test_data(run, data_dir, dataset)  # the run's own test set, unless --data-dir
    if csv is None:
        ensure_data(folder, console, dataset=dataset, parts=TEST_FILES)
    for path in make_plots(run, folder, device, csv):
        console.print(f"wrote {path}", markup=False)


def _run_dataset(run: Path) -> str:
    """The dataset a run was trained on, from its model file (MNIST for older runs)."""
    from nnx.io import read_model_file

    model = run / "model.npz"
    return read_model_file(model)[0].get("dataset", "mnist") if model.is_file() else "mnist"


def _shown(value: Any, spec: str, unit: str = "") -> str:
    """A summary number as `spec` formats it, or "-" when it is missing (or not a figure nnx writes)."""
    return format(value, spec) + unit if is_figure(value) else "-"


def _percent(value: Any) -> str:
    return _shown(value, ".2%")


# `nnx runs --sort`: the summary figure each order reads, and whether more is better.
SORTS = {"test": ("test_accuracy", True), "val": ("best_val_accuracy", True), "time": ("train_seconds", False)}


def run_list(directory: Path, as_json: bool = False, sort: str = "finished") -> None:
    console = stdout_console()
    warnings = stderr_console()
    if sort != "finished" and sort not in SORTS:
        raise NnxError(f"--sort {sort}: use finished, {', '.join(SORTS)}")
    runs = list_runs(directory, lambda message: warnings.print(f"warning: {message}", markup=False))
    if sort in SORTS:  # best first; runs without the figure (stopped before it) last
        key, higher = SORTS[sort]
        figures = [run for run in runs if is_figure(run["summary"].get(key))]
        figures.sort(key=lambda run: run["summary"][key], reverse=higher)
        runs = figures + [run for run in runs if not is_figure(run["summary"].get(key))]
    unfinished = unfinished_runs(directory)
    if as_json:
        rows = [{"run": str(run["path"]), "modified": run["modified"], "status": _status(run["summary"]),
                 **run["summary"]} for run in runs]  # fmt: skip
        rows += [{"run": str(run["path"]), "modified": run["modified"], "status": _unfinished_status(run),
                  "epochs": run["epochs_done"], "epochs_planned": run["epochs"], "pid": run["pid"]}
                 for run in unfinished]  # fmt: skip
        console.print(json.dumps(rows, indent=1), markup=False, highlight=False, soft_wrap=True)
        return
    if not runs:
        console.print(f"no finished runs in {directory}", markup=False)
        _print_unfinished(console, unfinished)
        return
    # No rules and short cells (ep: epochs; val, test: accuracies), so that a list of runs stays
    # one line a run in 80 columns: run names are what users type next and are never cut or
    # folded; a long model description folds; a device shared by every run goes in the title.
    devices = {str(run["summary"].get("device", "-")) for run in runs}
    shared = f" (all on {next(iter(devices))})" if len(devices) == 1 else ""
    columns = ["run", "finished", "model", *([] if shared else ["device"]), "ep", "val", "test", "time"]
    table = Table(title=f"runs in {directory}{shared}", box=None, padding=(0, 1, 0, 0), pad_edge=False)
    width = max(len(run["path"].name) for run in runs)
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in ("ep", "val", "test", "time") else "left",
            no_wrap=column not in ("model", "device"),
            overflow="fold",
            min_width={"run": width, "model": 9, "device": 6}.get(column),
        )
    for run in runs:
        s = run["summary"]
        cells = {
            "run": run["path"].name,
            "finished": time.strftime("%m-%d %H:%M", time.localtime(run["modified"])),
            "model": str(s.get("model_description", "-")),
            "device": str(s.get("device", "-")),
            "ep": _epochs(s),
            "val": _percent(s.get("best_val_accuracy")),
            "test": _percent(s.get("test_accuracy")),
            "time": _shown(s.get("train_seconds"), ".1f", " s"),
        }
        table.add_row(*(cells[column] for column in columns))
    console.print(table)
    if any(run["summary"].get("interrupted") is True for run in runs):
        console.print("*: stopped (Ctrl-C, SIGTERM) before its last epoch; `nnx train --resume RUN` continues it",
                      markup=False)  # fmt: skip
    _print_unfinished(console, unfinished)


def _epochs(summary: dict[str, Any]) -> str:
    """Epochs trained: "12", or "5/12*" for a run stopped before its last one."""
    done = str(summary.get("epochs", "-"))
    if summary.get("interrupted") is not True:
        return done
    planned = summary.get("epochs_planned")
    return f"{done}/{planned}*" if is_figure(planned) else f"{done}*"


def _status(summary: dict[str, Any]) -> str:
    return "interrupted" if summary.get("interrupted") is True else "finished"


def _unfinished_status(run: dict[str, Any]) -> str:
    return "training" if run["pid"] else "died"


def _print_unfinished(console: Any, unfinished: list[dict[str, Any]]) -> None:
    """The runs without a summary: being trained now, or left by a process that died."""
    for run in unfinished:
        done, planned = run["epochs_done"], run["epochs"]
        progress = f"{'?' if done is None else done} of {'?' if planned is None else planned} epochs done"
        if run["pid"]:
            line = f"training now: {run['path'].name} (pid {run['pid']}; {progress})"
        elif run["resumable"]:
            line = f"died: {run['path'].name} ({progress}; `nnx train --resume {run['path']}` continues it)"
        else:
            line = f"died: {run['path'].name} (before its first checkpoint; nothing to resume)"
        console.print(line, markup=False)


def _config_value(value: Any) -> str:
    """A config value as the YAML a user would write it: null, true, [64, 32], {out: 32}."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20).strip().removesuffix("\n...")


def run_compare(paths: list[Path], plot: Path | None) -> None:
    if len(paths) < 2:
        raise NnxError("runs compare needs two or more run directories")
    if plot is not None:
        check_replaceable(plot, "--plot")
    console = stdout_console()
    runs = [read_run(path) for path in paths]
    names = [run["path"].name for run in runs]
    differences = config_differences([run["config"] for run in runs])
    key_width = max((len(key) for key in differences), default=6)
    if key_width + sum(len(name) + 3 for name in names) + 4 > console.width:
        # Run names of the same day share their first 16 characters: cut, the columns would look
        # alike. Letters head the columns instead, with the whole names above.
        headers = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(runs))]
        for header, run in zip(headers, runs, strict=True):
            console.print(f"{header}  {run['path']}", markup=False)
    else:
        headers = names
    table = Table(title="config keys that differ" if differences else "the configs are identical")
    table.add_column("key", no_wrap=True)  # keys are what users --set next: never cut
    for header in headers:
        table.add_column(header, overflow="fold")
    for key, values in differences.items():
        table.add_row(key, *(_config_value(v) for v in values))
    console.print(table)
    metrics = Table(title="metrics")
    metrics.add_column("metric", no_wrap=True)
    for header in headers:
        metrics.add_column(header, justify="right")
    rows = [
        ("test accuracy", lambda s: _percent(s.get("test_accuracy"))),
        ("best val accuracy", lambda s: _percent(s.get("best_val_accuracy"))),
        ("epochs", lambda s: str(s.get("epochs", "-"))),
        ("training time", lambda s: _shown(s.get("train_seconds"), ".1f", " s")),
        ("samples/s", lambda s: _shown(s.get("samples_per_second"), ",.0f")),
        ("device", lambda s: str(s.get("device", "-"))),
    ]
    for label, show in rows:
        metrics.add_row(label, *(show(run["summary"]) for run in runs))
    console.print(metrics)
    if plot is not None:
        from nnx.viz.plots import plot_curves

        plot_curves({run["path"].name: run["history"] for run in runs}, plot)
        console.print(f"wrote {plot}", markup=False)
