"""The small things users meet first: --version, nnx runs --json and whole run names, --threads,
--plots without matplotlib, and what missing data says."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from nnx import __version__
from nnx.cli.app import app
from nnx.cpu_ops import usable_cpus

TINY = ["--epochs", "1", "--set", "training.validation=100"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"nnx {__version__}"


def test_runs_never_cuts_a_run_name_and_speaks_json(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    name = "a-run-with-a-really-quite-long-name-that-users-will-type-again-later"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", tmp_path / "runs" / name).exit_code == 0
    monkeypatch.setenv("COLUMNS", "60")
    table = invoke("runs", "--dir", tmp_path / "runs")
    assert table.exit_code == 0
    assert any(name in line for line in table.output.splitlines()), table.output  # on one line, whole
    as_json = invoke("runs", "--dir", tmp_path / "runs", "--json")
    rows = json.loads(as_json.output)
    assert [Path(r["run"]).name for r in rows] == [name] and rows[0]["epochs"] == 1


def test_threads_are_applied_and_recorded(tiny_mnist: Path, tmp_path: Path) -> None:
    assert (
        invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--threads", "1", "--out", tmp_path / "r").exit_code == 0
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["blas_threads"] == 1
    # More threads than CPUs left BLAS's spinning threads starving each other: an epoch of a
    # fraction of a second ran for minutes. Refused before anything is written.
    cpus = usable_cpus()
    result = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--threads", cpus + 1, "--out", tmp_path / "x")
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"error: --threads {cpus + 1}: this process may use {cpus} CPU(s); give 1 to {cpus}"
    )
    assert not (tmp_path / "x").exists()


def test_plots_without_matplotlib_fail_before_training(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = invoke("train", "--data-dir", tiny_mnist, *TINY, "--plots", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--plots needs matplotlib: pip install 'nnx[plot]'" in result.output
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written


def test_data_info_on_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    result = invoke("data", "info", "--data-dir", tmp_path)
    assert result.exit_code == 2
    assert "nnx data download" in result.output and "data/README.md" in result.output


def test_data_info_checks_each_dataset_against_its_own_published_hashes(tiny_mnist: Path, monkeypatch) -> None:
    """Fashion-MNIST's and KMNIST's authors publish the MD5 of each .gz: data info checks that,
    not MNIST's content hashes (which called every Fashion-MNIST file a 'checksum mismatch')."""
    import dataclasses
    import gzip
    import hashlib

    from nnx.data import datasets

    for path in list(tiny_mnist.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    md5 = {k: hashlib.md5((tiny_mnist / (f.name + ".gz")).read_bytes()).hexdigest() for k, f in datasets.FILES.items()}
    fashion = datasets.DATASETS["fashion-mnist"]
    files = {k: dataclasses.replace(f, archive_md5=md5[k]) for k, f in fashion.files.items()}
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", dataclasses.replace(fashion, files=files))
    result = invoke("data", "info", "--dataset", "fashion-mnist", "--data-dir", tiny_mnist)
    assert result.exit_code == 0, result.output
    assert "Fashion-MNIST in" in result.output and result.output.count("ok (archive md5)") == 4
    assert "train 600 images, test 200 images" in result.output
    # One byte changed in an archive is named.
    archive = tiny_mnist / "t10k-labels-idx1-ubyte.gz"
    labels = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(labels[:-1] + bytes([(labels[-1] + 1) % 10]), mtime=0))
    result = invoke("data", "info", "--dataset", "fashion-mnist", "--data-dir", tiny_mnist)
    assert result.exit_code == 2 and "t10k-labels-idx1-ubyte.gz checksum mismatch" in result.stderr
    empty = tiny_mnist.parent / "empty"
    empty.mkdir()
    result = invoke("data", "info", "--dataset", "kmnist", "--data-dir", empty)
    assert result.exit_code == 2 and "nnx data download --dataset kmnist" in result.stderr
    assert invoke("data", "info", "--dataset", "cifar").exit_code == 2


def test_data_info_reads_the_seeds_csv_files(tmp_path: Path) -> None:
    rows = "\n".join(",".join([str(i % 10)] + ["0"] * 784) for i in range(20))
    for name in ("mnist_train.csv", "mnist_test.csv"):
        (tmp_path / name).write_text(rows + "\n")
    result = invoke("data", "info", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "the seed's CSV files" in result.output and "train 20 images, test 20 images" in result.output


def test_config_help_lists_the_built_in_configs() -> None:
    result = invoke("train", "--help")
    assert "mnist_cnn" in result.output


def test_help_keeps_the_extras_in_install_commands(monkeypatch) -> None:
    """Rich reads [web] in a help text as a style tag and drops it, leaving `pip install 'nnx'`,
    which installs nothing the command needs; the brackets must reach the user."""
    monkeypatch.setenv("COLUMNS", "200")  # one line per sentence, not wrapped inside the box
    assert "pip install 'nnx[web]'" in invoke("--help").output  # the command list shows the first line
    for command, extra in [("serve", "web"), ("export", "export"), ("sweep", "sweep")]:
        assert f"pip install 'nnx[{extra}]'" in invoke(command, "--help").output, command


def test_brackets_in_paths_and_names_are_printed_as_typed(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """Rich markup would drop "[bold]" from a path and raise on "[/x]": every console prints text."""
    monkeypatch.setenv("COLUMNS", "250")
    runs = tmp_path / "runs[/x]"
    out = runs / "lr[bold]0.1"
    result = invoke("train", "--data-dir", tiny_mnist, *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out / "model.npz") in result.output
    listed = invoke("runs", "--dir", runs)
    assert listed.exit_code == 0 and "lr[bold]0.1" in listed.output, listed.output
    other = runs / "[red]other"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--lr", "0.05", "--out", other).exit_code == 0
    compared = invoke("runs", "compare", out, other)
    assert compared.exit_code == 0 and "lr[bold]0.1" in compared.output and "[red]other" in compared.output
    evaluated = invoke("evaluate", out / "model.npz", "--data-dir", tiny_mnist)
    assert evaluated.exit_code == 0 and str(out / "model.npz") in evaluated.output, evaluated.output
    missing = invoke("data", "info", "--data-dir", tmp_path / "mnist[/x]")
    assert missing.exit_code == 2 and str(tmp_path / "mnist[/x]") in missing.output, missing.output


def test_values_in_messages_are_not_read_as_emoji(monkeypatch) -> None:
    """rich turns ":-1:" into a thumbs-down: "--device gpu:-1: ..." must reach the user as typed."""
    monkeypatch.setenv("COLUMNS", "250")
    result = invoke("train", "--device", "gpu:-1")
    assert result.exit_code == 2 and "error: --device gpu:-1: device: expected cpu, gpu" in result.output, result.output


def test_a_path_the_os_refuses_is_one_line_naming_it(tmp_path: Path, monkeypatch) -> None:
    """Path.is_file() and friends raise OSError for a name over 255 bytes; no check foresees every
    such path, so the commands' error handler turns any OSError into one line."""
    monkeypatch.setenv("COLUMNS", "1000")
    long = tmp_path / ("a" * 300)
    for args in (["evaluate", f"{long}.npz"], ["train", "-c", f"{long}.yaml"], ["runs", "--dir", long]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().splitlines() == [f"error: {args[-1]}: File name too long"], args


def test_running_out_of_memory_is_one_line(monkeypatch) -> None:
    """Whatever the budgets miss ends as one line and exit 1, not a MemoryError traceback."""
    import nnx.cli.info_cmd

    def exhausted() -> None:
        raise MemoryError("Unable to allocate 1.91 GiB for an array with shape (51380224, 10)")

    monkeypatch.setattr(nnx.cli.info_cmd, "run_info", exhausted)  # `nnx info` imports it when run
    result = invoke("info")
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith("error: out of memory (Unable to allocate 1.91 GiB"), result.output


def test_runs_fit_an_80_column_terminal_one_line_a_run(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    names = ["20261130-113302-mnist_mlp", "20261130-113303-mnist_mlp-2"]  # what nnx names runs
    for name in names:
        assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", tmp_path / "runs" / name).exit_code == 0
    monkeypatch.setenv("COLUMNS", "80")
    table = invoke("runs", "--dir", tmp_path / "runs")
    lines = table.output.splitlines()[1:]  # below the title, "runs in <the folder>"
    assert table.exit_code == 0 and max(len(line.rstrip()) for line in lines) <= 80, table.output
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", "finished", "model", "ep", "val", "test", "time"], header
    assert table.output.splitlines()[0].endswith(" (all on cpu)")  # one device: in the title
    for name in names:
        row = next(line for line in lines if line.startswith(name + " "))
        assert "784-64-10" in row and row.endswith(" s"), row


def test_compare_in_80_columns_letters_the_runs_and_keeps_keys_whole(
    tiny_mnist: Path, tmp_path: Path, monkeypatch
) -> None:
    """Same-day run names share their first 16 characters: cut to fit, two columns would look
    alike. Too wide for the terminal, the columns are A, B, ... under a legend of whole names."""
    a, b = tmp_path / "20261130-113302-mnist_mlp", tmp_path / "20261130-113303-mnist_mlp-2"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", a).exit_code == 0
    warm = ["--set", "schedule.warmup_epochs=0.5", "--set", "model.hidden=[32, 16]"]
    assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, *warm, "--out", b).exit_code == 0
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("runs", "compare", a, b)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and lines[:2] == [f"A  {a}", f"B  {b}"], result.output
    assert max(len(line) for line in lines[2:]) <= 80, result.output
    rows = {cells[1]: cells[2:4] for line in lines if len(cells := [c.strip() for c in line.split("│")]) == 5}
    assert rows["schedule.warmup_epochs"] == ["0.0", "0.5"], rows  # the key whole, on one line
    assert rows["model.hidden"] == ["[64]", "[32, 16]"], rows  # values as YAML
    assert rows["test accuracy"][0].endswith("%"), rows
    monkeypatch.setenv("COLUMNS", "200")
    wide = invoke("runs", "compare", a, b)
    assert a.name in wide.output and b.name in wide.output and "A  " not in wide.output, wide.output


def test_info_says_which_extras_are_installed_and_how_to_get_the_others(monkeypatch) -> None:
    import importlib.metadata

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setenv("COLUMNS", "200")
    output = invoke("info").output
    assert "extra export │ not installed (onnxruntime): pip install 'nnx[export]'" in output
    assert f"extra plot   │ matplotlib {real('matplotlib')}" in output


def test_runs_sort_by_accuracy_or_time(tmp_path: Path) -> None:
    figures = {"a": (0.97, 0.98, 5.0), "b": (0.99, 0.985, 9.0), "c": (0.95, 0.99, 1.0), "stopped": (None, None, None)}
    for age, (name, (test, val, seconds)) in enumerate(figures.items()):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        summary = {"test_accuracy": test, "best_val_accuracy": val, "train_seconds": seconds, "epochs": 1}
        (run / "summary.json").write_text(json.dumps(summary))
        os.utime(run / "summary.json", (1_700_000_000 + age, 1_700_000_000 + age))

    def order(*args: str) -> list[str]:
        result = invoke("runs", "--dir", tmp_path / "runs", "--json", *args)
        assert result.exit_code == 0, result.output
        return [Path(row["run"]).name for row in json.loads(result.stdout)]

    assert order() == ["a", "b", "c", "stopped"]  # finished, oldest first
    assert order("--sort", "test") == ["b", "a", "c", "stopped"]  # best first, runs without the figure last
    assert order("--sort", "val") == ["c", "b", "a", "stopped"]
    assert order("--sort", "time") == ["c", "a", "b", "stopped"]  # fastest first
    result = invoke("runs", "--dir", tmp_path / "runs", "--sort", "loss")
    assert result.exit_code == 2 and "--sort loss: use finished, test, val, time" in result.stderr


def test_runs_lists_stopped_training_and_dead_runs_too(tmp_path: Path, monkeypatch) -> None:
    """A run being trained, or whose process died (kill -9, a crash, a reboot), has no summary.json:
    `nnx runs` used to leave it out, and showed a run stopped by Ctrl-C like a finished one."""
    from nnx.runs import RunLock

    runs = tmp_path / "runs"
    epoch = {"train_loss": 0.5, "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None}
    for name in ("done", "stopped", "training", "died", "died-early"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text("training:\n  epochs: 10\n")
    (runs / "done" / "summary.json").write_text(json.dumps({"epochs": 10, "test_accuracy": 0.98}))
    stopped = {"epochs": 4, "epochs_planned": 10, "interrupted": True, "test_accuracy": 0.9}
    (runs / "stopped" / "summary.json").write_text(json.dumps(stopped))
    for name, epochs in (("training", 3), ("died", 2)):
        lines = [json.dumps({"epoch": e, **epoch}) for e in range(1, epochs + 1)]
        (runs / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (runs / name / "checkpoint.npz").write_bytes(b"")
    lock = RunLock(runs / "training")  # as `nnx train` holds it
    try:
        monkeypatch.setenv("COLUMNS", "120")
        listed = invoke("runs", "--dir", runs)
        rows = json.loads(invoke("runs", "--dir", runs, "--json").stdout)
    finally:
        lock.release()
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert next(line for line in lines if line.startswith("stopped ")).split()[4] == "4/10*"
    assert next(line for line in lines if line.startswith("done ")).split()[4] == "10"
    assert "*: stopped (Ctrl-C, SIGTERM) before its last epoch; `nnx train --resume RUN` continues it" in lines
    assert f"training now: training (pid {os.getpid()}; 3 of 10 epochs done)" in lines
    assert f"died: died (2 of 10 epochs done; `nnx train --resume {runs / 'died'}` continues it)" in lines
    assert "died: died-early (before its first checkpoint; nothing to resume)" in lines
    status = {Path(row["run"]).name: row["status"] for row in rows}
    assert status == {"done": "finished", "stopped": "interrupted", "training": "training", "died": "died",
                      "died-early": "died"}  # fmt: skip


def test_dry_run_checks_everything_a_run_would_and_writes_nothing(
    tiny_mnist: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--dry-run", "-c", "mnist_cnn", "--lr", "0.01", "--data-dir", tiny_mnist)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "lr: 0.01" in out and "# model 784-conv32-conv64-128-10 (421,642 parameters)" in out
    assert (
        "# a batch needs at least 49.1 MiB for activations and gradients, beside 6.4 MiB" in out
        and f"# data {tiny_mnist}: present" in out
    )
    assert "linear(in=3136, out=128, init=he)" in out and "401,536" in out  # the layer table
    assert "# dry run: nothing trained, nothing written" in out and not (tmp_path / "runs").exists()
    # What would stop the run stops the dry run, with the same line.
    for args, message in [
        (["--set", "training.batch_size=0"], "--set training.batch_size=0: training.batch_size: Input should be"),
        (["--no-download", "--data-dir", tmp_path / "none"], "missing train-images-idx3-ubyte"),
        (["--device", "gpu:-1"], "device"),
    ]:
        failed = invoke("train", "--dry-run", *args)
        assert failed.exit_code == 2 and message in failed.stderr, failed.output
    missing = invoke("train", "--dry-run", "--data-dir", tmp_path / "none")  # downloading is on: said, not done
    assert missing.exit_code == 0 and "missing train-images-idx3-ubyte" in missing.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "runs").exists()
    # A resume: the changes since the checkpoint are listed, and nothing moves.
    run = tmp_path / "r"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, "--out", run, *TINY).exit_code == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    resumed = invoke("train", "--dry-run", "--resume", run, "--epochs", 5)
    assert resumed.exit_code == 0, resumed.output
    assert "# changed since the checkpoint: training.epochs 1 -> 5" in resumed.output
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamp
    # What stopped `nnx train` with one line while the dry run said all was well: the run's folder,
    # --threads, a data folder that is a file. Now the same line, from both.
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    theirs = tmp_path / "theirs"
    (theirs / "notes").mkdir(parents=True)
    for args, message in [
        (["--out", run], "already holds a trained model; choose another --out"),
        (["--out", a_file], "is a file, not a directory"),
        (["--out", theirs], "holds files nnx did not write (notes)"),
        (["--threads", "100000"], "--threads 100000: this process may use"),
        (["--data-dir", a_file], "not a folder; point --data-dir"),
    ]:
        for dry in (["--dry-run"], []):
            data = [] if "--data-dir" in args else ["--data-dir", tiny_mnist]
            failed = invoke("train", *dry, "-q", *args, *data, *TINY)
            assert failed.exit_code == 2 and message in failed.stderr, (dry, args, failed.output)
    assert invoke("train", "--dry-run", "--out", theirs, "--force", "--data-dir", tiny_mnist).exit_code == 0
    assert a_file.read_text() == "mine" and sorted(p.name for p in theirs.iterdir()) == ["notes"]


def test_info_on_a_model_shows_what_it_holds_and_its_layers(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    run = tmp_path / "r"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, "--out", run, *TINY).exit_code == 0
    result = invoke("info", run)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    out = result.output
    assert f"{run / 'model.npz'}" in out and "784-64-10 (50,890 parameters, float32)" in out
    assert f"test accuracy     │ {summary['test_accuracy']:.2%}" in out
    assert "linear(in=784, out=64, init=he)" in out and "50,240" in out and "total" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("info", empty)
    assert result.exit_code == 2 and "a directory without a model.npz" in result.stderr


def test_runs_lists_a_run_whose_lock_it_may_not_read(tmp_path: Path, monkeypatch) -> None:
    import nnx.runs

    run = tmp_path / "runs" / "theirs"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("training:\n  epochs: 3\n")

    def unreadable(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path / ".lock"))

    monkeypatch.setattr(nnx.runs, "locked_by", unreadable)
    listed = invoke("runs", "--dir", tmp_path / "runs")
    assert listed.exit_code == 0, listed.output
    assert "training now: theirs (pid ?; 0 of 3 epochs done)" in listed.output


def test_compare_takes_the_names_runs_lists(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """`nnx runs` prints names; `nnx runs compare` takes them back (from ./runs, or --dir)."""
    monkeypatch.chdir(tmp_path)
    for name in ("one", "two"):
        assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", f"runs/{name}").exit_code == 0
    listed = invoke("runs")
    assert "one" in listed.output and "two" in listed.output
    assert invoke("runs", "compare", "one", "two").exit_code == 0
    monkeypatch.chdir(tiny_mnist)
    elsewhere = invoke("runs", "compare", "one", "two", "--dir", tmp_path / "runs")
    assert elsewhere.exit_code == 0, elsewhere.output
    missing = invoke("runs", "compare", "one", "three", "--dir", tmp_path / "runs")
    assert missing.exit_code == 2 and "three: not a finished run" in missing.output


def test_the_help_lists_every_built_in_config_and_the_flags_other_tools_use(tmp_path: Path, monkeypatch) -> None:
    from nnx.config import BUILTIN_CONFIGS

    monkeypatch.setenv("COLUMNS", "200")  # rich folds and cuts the options' table to fit
    text = invoke("train", "--help").output
    for path in BUILTIN_CONFIGS.glob("*.yaml"):
        assert path.stem in text, path.stem
    assert "--learning-rate" in text
    dry = invoke("train", "--learning-rate", "0.05", "--dry-run", "--out", tmp_path / "run")
    assert dry.exit_code == 0 and "lr: 0.05" in dry.output, dry.output


def test_configs_paths_of_the_readme_work_outside_a_clone(tmp_path: Path, monkeypatch) -> None:
    """-c configs/mnist_cnn.yaml as the README writes it, from a folder without configs/: the built-in."""
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "-c", "configs/mnist_cnn.yaml", "--dry-run")
    assert result.exit_code == 0 and "name: mnist_cnn" in result.output, result.output
    missing = invoke("train", "-c", "configs/mnist_cnm.yaml", "--dry-run")
    assert missing.exit_code == 2 and "no such config file" in missing.output


def test_plot_of_a_run_stopped_before_its_first_epoch_says_so(tmp_path: Path) -> None:
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text("name: early\n")
    result = invoke("plot", run)
    assert result.exit_code == 2 and "stopped before its first epoch ended: nothing to plot yet" in result.output
    (run / "checkpoint.npz").write_bytes(b"")
    assert f"nnx train --resume {run} continues it" in invoke("plot", run).output
    assert "not a run directory?" in invoke("plot", tmp_path).output
