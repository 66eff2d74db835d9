"""Command definitions. Each command imports its implementation lazily so `nnx --help` is fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnx.cli.common import handles_errors

# The built-in configs, by name (read from the package's folder: `nnx --help` imports no pydantic).
BUILTINS = ", ".join(sorted(p.stem for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")))

app = typer.Typer(
    name="nnx",
    help="A from-scratch neural network toolkit: train, evaluate and run MNIST classifiers on CPU or GPU.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from nnx import __version__

        typer.echo(f"nnx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print nnx's version and exit.")
    ] = False,
) -> None:
    """A from-scratch neural network toolkit: train, evaluate and run MNIST classifiers on CPU or GPU."""


data_app = typer.Typer(help="Download and check the MNIST files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
runs_app = typer.Typer(help="List and compare runs.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="MNIST folder (default: config, then $NNX_DATA_DIR, then ./data/mnist)."),
]
Device = Annotated[str | None, typer.Option("--device", help="cpu, gpu, gpu:N or auto.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")]


@app.command()
@handles_errors
def train(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help=f"YAML file or built-in: {BUILTINS} (default mnist_mlp).",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training images (training.epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (training.batch_size).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", "--learning-rate", help="Learning rate (optimizer.lr).")] = None,
    device: Device = None,
    seed: Annotated[int | None, typer.Option(help="The seed of every random number (training.seed).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or float64 (dtype).")] = None,
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<time>-<name>).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any key: --set optimizer.momentum=0.5")
    ] = None,
    download: Annotated[bool, typer.Option(help="Download MNIST when it is missing.")] = True,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue a stopped run from its directory's checkpoint.")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots", help="Also write the plots and report.html (nnx plot).")] = False,
    distributed: Annotated[
        bool, typer.Option("--distributed", help="One of N data-parallel processes: mpiexec -n N nnx train ...")
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="BLAS/OpenMP threads (default: all cores).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into an --out folder holding other files (nothing is deleted).")
    ] = False,
    quiet: Quiet = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the config, device, network, memory and data; train and write nothing."),
    ] = False,
) -> None:
    """Train a network from a YAML config; writes a run directory with the model and metrics."""
    from nnx.cli.train_cmd import run_dry_run, run_train

    flags = {
        "training.epochs": epochs,
        "training.batch_size": batch_size,
        "optimizer.lr": lr,
        "device": device,
        "training.seed": seed,
        "dtype": dtype,
        "data.dir": str(data_dir) if data_dir else None,
    }
    if dry_run:
        run_dry_run(config, set_ or [], flags, resume, download, out, force, threads, plots)
        return
    run_train(config, set_ or [], flags, out, download, quiet, resume, plots, distributed, threads, force)


@app.command()
@handles_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="A model file, or a run directory (its model.npz).")],
    data_dir: DataDir = None,
    device: Device = None,
    show_errors: Annotated[int, typer.Option(help="Draw this many of the most confident mistakes.", min=0)] = 2,
    quiet: Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON (for scripts).")] = False,
) -> None:
    """Test accuracy, per-class accuracy and the confusion matrix of a model on MNIST's test set."""
    from nnx.cli.evaluate_cmd import run_evaluate

    run_evaluate(model, data_dir, device or "cpu", quiet, show_errors, as_json)


@app.command()
@handles_errors
def predict(
    model: Annotated[Path, typer.Argument(help="A model file, or a run directory (its model.npz).")],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="A PNG/JPEG image, or a CSV file (rows: label then 784 pixels, or the pixels alone); "
            "several: a line for each."
        ),
    ] = None,
    test_index: Annotated[int | None, typer.Option(help="Use this MNIST test image instead.")] = None,
    row: Annotated[int | None, typer.Option(help="Which data row of a CSV file (default 0).")] = None,
    all_rows: Annotated[bool, typer.Option("--all-rows", help="Every data row of the CSV files: a line each.")] = False,
    mnist_style: Annotated[
        bool | None,
        typer.Option(
            "--mnist-style/--as-is",
            help="Images: prepare as MNIST's digits were (crop, fit 20x20, centre by mass), or take as they are "
            "(fitted to 28x28); by default prepared unless they look MNIST-like already.",
        ),
    ] = None,
    data_dir: DataDir = None,
    device: Device = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON (for scripts).")] = False,
) -> None:
    """Classify one digit: draw it in the terminal with a confidence bar for every class (several
    inputs: a line for each)."""
    from nnx.cli.predict_cmd import run_predict

    run_predict(model, inputs or [], test_index, row, data_dir, device or "cpu", mnist_style, as_json, all_rows)


@app.command()
@handles_errors
def plot(
    run: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/<run>.")],
    data_dir: DataDir = None,
    device: Device = None,
) -> None:
    """Write a run's plots (curves, confusion matrix, misclassified digits, weights) and report.html."""
    from nnx.cli.plot_cmd import run_plot

    run_plot(run, data_dir, device or "cpu")


@runs_app.callback()
@handles_errors
def runs(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Where the runs are.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Every run's summary as JSON, for scripts.")] = False,
    sort: Annotated[
        str, typer.Option(help="finished (oldest first), test or val (best accuracy first), time (fastest first).")
    ] = "finished",
) -> None:
    """List the runs in a table (subcommand `compare` compares some)."""
    if ctx.invoked_subcommand is None:
        from nnx.cli.plot_cmd import run_list

        run_list(directory, as_json, sort)


@runs_app.command("compare")
@handles_errors
def runs_compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories, or names as `nnx runs` lists them.")],
    plot: Annotated[Path | None, typer.Option("--plot", help="Write their curves overlaid to this PNG.")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where runs given by name are.")] = Path("runs"),
) -> None:
    """The config keys that differ between runs, and their metrics side by side."""
    from nnx.cli.plot_cmd import run_compare

    run_compare([run if run.is_dir() or not (directory / run).is_dir() else directory / run for run in runs], plot)


@app.command()
@handles_errors
def serve(
    model: Annotated[Path, typer.Argument(help="A model file, or a run directory (its model.npz).")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    device: Device = None,
    max_pixels: Annotated[
        int | None, typer.Option(help="Largest image (width x height) decoded; default 4,000,000.", min=1)
    ] = None,
) -> None:
    """A web page to draw digits on, classified live, and a JSON API (pip install 'nnx\\[web]')."""
    from nnx.cli.serve_cmd import run_serve

    run_serve(model, host, port, device or "cpu", max_pixels)


@app.command()
@handles_errors
def export(
    model: Annotated[Path, typer.Argument(help="A model file, or a run directory (its model.npz).")],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="onnx or safetensors (default: --output's suffix, else onnx)."),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where (default: beside MODEL).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Write a model as ONNX (preprocessing included: it takes uint8 pixels) or safetensors
    (weights, with the architecture in its metadata; nnx.load reads it back). pip install 'nnx\\[export]'."""
    from nnx.cli.export_cmd import run_export

    run_export(model, format, output, force)


@app.command()
@handles_errors
def sweep(
    target: Annotated[str, typer.Argument(help="A sweep YAML file to run, or `show` to look at a sweep.")],
    name: Annotated[str | None, typer.Argument(help="With show: the sweep's name.")] = None,
    trials: Annotated[
        int | None, typer.Option(help="Trials to finish in all (overrides the file's trials).", min=1, max=100_000)
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes on this machine, sharing the study (at most one a trial).", min=1)
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(help="Study database: sqlite:///PATH, or postgresql://USER@HOST/DB to share it between machines."),
    ] = None,
    device: Device = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key of every trial's base config.")
    ] = None,
    data_dir: DataDir = None,
    export: Annotated[Path | None, typer.Option(help="With show: write the best config to this YAML file.")] = None,
    report: Annotated[Path | None, typer.Option(help="With show: where report.html goes.")] = None,
    worker_id: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Search hyperparameters with Optuna: `nnx sweep FILE` runs (or continues) a sweep's trials,
    each a normal run directory under runs/<sweep>/; `nnx sweep show NAME` ranks them, prints the
    best config and writes report.html. Needs pip install 'nnx\\[sweep]'."""
    if target == "show":
        from nnx.cli.sweep_cmd import run_show

        run_show(name, storage, export, report)
        return
    if name is not None or export is not None or report is not None:
        from nnx.errors import ConfigError

        raise ConfigError(f"nnx sweep {target}: NAME, --export and --report go with `nnx sweep show`")
    from nnx.cli.sweep_cmd import run_sweep

    run_sweep(Path(target), trials, workers, storage, device, set_ or [], data_dir, worker_id)


@app.command()
@handles_errors
def info(
    model: Annotated[
        Path | None, typer.Argument(help="A model file or run directory: what it holds, and its layers.")
    ] = None,
) -> None:
    """Versions, which backends can run here, and the GPUs seen; or, given a model, its layers."""
    from nnx.cli.info_cmd import run_info, run_model_info

    if model is not None:
        run_model_info(model)
        return
    run_info()


@data_app.command("download")
@handles_errors
def data_download(
    data_dir: DataDir = None,
    mirror: Annotated[
        list[str] | None, typer.Option("--mirror", help="Base URL to try (repeatable; default: the known mirrors).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Download again even when the files are present.")] = False,
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist or kmnist.")] = "mnist",
) -> None:
    """Download a dataset's four files (checksums verified) into the data directory (data/<dataset>)."""
    from nnx.cli.data_cmd import run_download

    run_download(data_dir, mirror, force, dataset)


@data_app.command("info")
@handles_errors
def data_info(
    data_dir: DataDir = None,
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist or kmnist.")] = "mnist",
) -> None:
    """Where the data is, file sizes, checksums and split sizes."""
    from nnx.cli.data_cmd import run_data_info

    run_data_info(data_dir, dataset)


def main() -> None:
    app()
