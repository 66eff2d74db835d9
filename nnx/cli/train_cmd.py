"""`nnx train`: a thin layer over nnx.api.train (which builds and runs everything) that renders it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from nnx.api import check_train, train
from nnx.checkpoint import CHECKPOINT
from nnx.cli.common import stdout_console
from nnx.cli.data_cmd import download_with_progress
from nnx.errors import NnxError
from nnx.parallel import mpi_world_size
from nnx.progress import make_progress


def run_train(
    config_name: str | None,
    assignments: list[str],
    flags: dict[str, Any],
    out: Path | None,
    download: bool,
    quiet: bool,
    resume: Path | None = None,
    plots: bool = False,
    distributed: bool = False,
    threads: int | None = None,
    force: bool = False,
) -> None:
    """The CLI over nnx.api.train: progress bars, the setup lines, the summary table, plots."""
    if plots:
        require_matplotlib()
    ranks = mpi_world_size()
    if ranks > 1 and not distributed:  # N copies of one run, racing for its directory
        raise NnxError(
            f"started as one of {ranks} MPI processes without --distributed: add --distributed to train one "
            "model on all of them, or run nnx train without mpiexec"
        )
    console = stdout_console()

    def log(line: str) -> None:
        if not quiet:
            console.print(wrap_fields(line, console.width if console.is_terminal else None), markup=False)

    run = train(
        config_name,
        flags,
        assignments=assignments,
        out=out,
        resume=resume,
        callbacks=make_progress(console, quiet),
        download=download,
        fetch=lambda data_dir, dataset, mirrors=None: download_with_progress(
            data_dir, console, mirrors, dataset=dataset
        ),
        log=log,
        distributed=distributed,
        threads=threads,
        force=force,
    )
    result, summary, run_dir = run.result, run.summary, run.path
    # 128 + the signal's number, as a shell reports a process the signal ended.
    code = 143 if result.stopped_by == "SIGTERM" else 130
    if run.rank != 0:  # rank 0 reports for every rank
        if result.interrupted:
            raise typer.Exit(code)
        return
    _print_summary(console, summary, result, run.config.training.epochs, run.backend, run_dir, quiet)
    if plots and not result.interrupted:
        from nnx.runs import test_data
        from nnx.viz.report import make_plots

        folder, csv = test_data(run_dir, None, run.config.data.dataset)  # the run's own test set
        written = make_plots(run_dir, folder, "cpu", csv)
        console.print(f"plots and report: {', '.join(p.name for p in written)} in {run_dir}", markup=False)
    if result.interrupted:
        kept = ["config.yaml"]
        if (run_dir / "metrics.jsonl").is_file():
            kept.append(f"metrics.jsonl ({len(result.history)} complete epoch(s))")
        if (run_dir / CHECKPOINT).is_file():
            kept.append(f"{CHECKPOINT} (to continue: nnx train --resume {run_dir})")
        kept += ["model.npz (weights at the stop)", "summary.json"]
        console.print(
            f"Stopped by {result.stopped_by or 'Ctrl-C'} during epoch {len(result.history) + 1}. "
            f"Kept in {run_dir}: {', '.join(kept)}",
            markup=False,
        )
        raise typer.Exit(code)


def run_dry_run(
    config_name: str | None,
    assignments: list[str],
    flags: dict[str, Any],
    resume: Path | None,
    download: bool,
    out: Path | None = None,
    force: bool = False,
    threads: int | None = None,
    plots: bool = False,
) -> None:
    """`nnx train --dry-run`: what a run would be, checked as `nnx train` checks it (its --out,
    --threads and --plots too), and nothing written."""
    from nnx.cli.render import layer_table
    from nnx.config import to_yaml
    from nnx.nn.sequential import human_bytes

    if plots:
        require_matplotlib()
    plan = check_train(
        config_name, flags, assignments=assignments, resume=resume, download=download, out=out, force=force,
        threads=threads,
    )  # fmt: skip
    console = stdout_console()
    console.print(f"# {plan['source']}, as nnx train would run it", markup=False)
    console.print(to_yaml(plan["config"]), markup=False, end="")
    data = f"data {plan['data_dir']}: " + (
        f"missing {', '.join(plan['missing'])} (nnx train downloads them)" if plan["missing"] else "present"
    )
    lines = [
        f"device {plan['device']}",
        f"model {plan['model']} ({plan['parameters']:,} parameters)",
        f"a batch needs at least {human_bytes(plan['batch_bytes'])} for activations and gradients, beside "
        f"{human_bytes(plan['weights_bytes'])} of parameters, gradients and optimizer state",
        data,
    ] + ([plan["changes"]] if plan["changes"] else [])
    for line in lines:
        console.print(f"# {line}", markup=False)
    console.print(layer_table(plan["network"]))
    console.print("# dry run: nothing trained, nothing written", markup=False)


def _print_summary(console, summary, result, epochs, backend, run_dir, quiet) -> None:
    test_acc = summary["test_accuracy"]
    if quiet:
        console.print(f"test accuracy {test_acc:.2%}; model saved to {run_dir / 'model.npz'}", markup=False)
        return
    table = Table(title="nnx train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("test accuracy", f"{test_acc:.2%}")
    stopped = f" (early stop; best epoch {result.best_epoch})" if result.stopped_early else ""
    table.add_row("epochs", f"{len(result.history)} of {epochs}{stopped}")
    table.add_row("training time", f"{result.train_seconds:.2f} s")
    table.add_row("samples/s", f"{summary['samples_per_second']:,.0f}")
    gpu = f", GPU pool {summary['gpu_pool_mb']:.0f} MB" if summary["gpu_pool_mb"] is not None else ""
    table.add_row("peak memory", f"{summary['peak_rss_mb']:.0f} MB RSS{gpu}")
    table.add_row("device", backend.description())
    table.add_row("model saved to", str(run_dir / "model.npz"))
    console.print(table)


def require_matplotlib() -> None:
    """--plots needs the plot extra: say so before training, not after."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise NnxError("--plots needs matplotlib: pip install 'nnx[plot]'")


def wrap_fields(line: str, width: int | None) -> str:
    """A ' | '-separated line broken between fields, never inside one (a number cut in two at the
    terminal's edge is misread), when it is wider than the terminal."""
    if width is None or len(line) <= width:
        return line
    lines, current = [], ""
    for field in line.split(" | "):
        candidate = f"{current} | {field}" if current else field
        if current and len(candidate) > width:
            lines.append(current)
            current = field
        else:
            current = candidate
    return "\n".join([*lines, current])
