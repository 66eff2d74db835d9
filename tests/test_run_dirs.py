"""Run directories never mix or vanish: one process at a time, a user's folder is not written into
without --force, a stopped run is not overwritten, and temporary files of a killed write go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnx.cli.app import app
from nnx.runs import RunLock

TINY = ["--epochs", "1", "--set", "training.validation=100"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_folder_of_the_users_files_is_refused_unless_forced(tiny_mnist: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    result = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", mine)
    assert result.exit_code == 2 and "holds files nnx did not write (thesis.tex)" in result.output
    assert "--force" in result.output and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    forced = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", mine, "--force")
    assert forced.exit_code == 0 and (mine / "thesis.tex").read_text() == "precious" and (mine / "model.npz").exists()


def test_a_stopped_run_is_not_overwritten_by_a_new_one(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", run).exit_code == 0
    (run / "model.npz").unlink()  # as if stopped before the end: a checkpoint and no model
    result = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", run)
    assert result.exit_code == 2 and f"nnx train --resume {run}" in result.output


def test_a_second_process_on_the_same_run_fails_at_once(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["-m", "nnx", "train", "-q", "--data-dir", str(tiny_mnist), "--epochs", "400",
            "--set", "training.validation=100", "--out", str(run)]  # fmt: skip
    first = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").is_file():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        second = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
        assert time.monotonic() - started < 20
        assert second.returncode == 2
        assert f"another nnx process (pid {first.pid}) is writing this run" in second.stderr
        for dry in (["--out", str(run)], ["--resume", str(run)]):  # the dry run says so too
            checked = subprocess.run([sys.executable, *args[:3], "--dry-run", *dry], capture_output=True, text=True)
            assert checked.returncode == 2, (dry, checked.stdout, checked.stderr)
            assert f"another nnx process (pid {first.pid}) is writing this run" in checked.stderr
    finally:
        first.kill()
        first.wait()


def test_the_lock_clears_stale_temporary_files_and_is_released(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.npz.abc123.part").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.txt").write_text("a user's file stays")
    lock = RunLock(tmp_path)
    assert not list(tmp_path.glob(".*.part")) and (tmp_path / "notes.txt").exists()
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    lock.release()
    RunLock(tmp_path).release()  # free again


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tiny_mnist: Path, tmp_path: Path) -> None:
    """A 700 KB tmpfs: the first checkpoint (about 400 KB) fits; the second cannot be written
    beside it (an atomic write needs room for both for a moment)."""
    import shutil

    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        message = f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root"
        if os.environ.get("CI"):
            raise AssertionError(message)  # CI runs as root: this must run there
        pytest.skip(message)
    try:
        run = mount / "run"
        result = invoke("train", "-q", "--data-dir", tiny_mnist, "--epochs", "3", "--set", "training.validation=100",
                        "--out", run)  # fmt: skip
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("error: no space left on device writing") and "Traceback" not in result.output
        assert f"the last checkpoint is intact: nnx train --resume {run}" in lines[-1]
        assert not list(run.glob(".*.part"))
        from nnx.api import build_model_for, build_optimizer
        from nnx.backend import get_backend
        from nnx.checkpoint import load_checkpoint
        from nnx.config import load_config

        config, _ = load_config(str(run / "config.yaml"))
        backend = get_backend("cpu")
        model = build_model_for(config, backend)
        state = load_checkpoint(run / "checkpoint.npz", model, build_optimizer(config, model, backend))
        assert state.epoch >= 2  # a whole, readable checkpoint from before the disk filled
        copy = tmp_path / "copy"
        shutil.copytree(run, copy)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    resumed = invoke("train", "-q", "--resume", copy, "--data-dir", tiny_mnist)
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize(
    "broken,content",
    [
        ("summary.json", b"{not json"),
        ("summary.json", b"[" * 3000),  # json.loads raises RecursionError
        ("metrics.jsonl", b'{"epoch": 1}\n{trunc'),
        ("metrics.jsonl", b'{"epoch": 1, "train_loss": 0.1, "train_accuracy": ' + b"9" * 5000 + b"}\n"),  # ValueError
        ("metrics.jsonl", b'{"epoch": 1, "train_loss": "low", "train_accuracy": 0.9}\n'),  # the plots need numbers
        ("metrics.jsonl", b"[1, 2]\n"),
        ("config.yaml", b"\xff\xfe"),
        ("config.yaml", b"a: " + b"[" * 3000),
    ],
)
def test_corrupt_run_files_are_named_not_crashed_on(
    tiny_mnist: Path, tmp_path: Path, broken: str, content: bytes
) -> None:
    runs = tmp_path / "runs"
    for name in ("good", "bad"):
        assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", runs / name).exit_code == 0
    (runs / "bad" / broken).write_bytes(content)
    listed = CliRunner().invoke(app, ["runs", "--dir", str(runs)])
    assert listed.exit_code == 0 and "good" in listed.output
    assert f"warning: skipped bad: {runs / 'bad' / broken}" in listed.output.replace("\n", "")
    compared = invoke("runs", "compare", runs / "good", runs / "bad")
    assert compared.exit_code == 2 and str(runs / "bad" / broken) in compared.output
    resumed = invoke("train", "-q", "--resume", runs / "bad", "--epochs", "3", "--data-dir", tiny_mnist)
    if broken == "metrics.jsonl":  # rewritten from the checkpoint's own history
        assert resumed.exit_code == 0, resumed.output
        assert len((runs / "bad" / "metrics.jsonl").read_text().splitlines()) == 3
    else:
        assert resumed.exit_code == 2 and str(runs / "bad" / broken) in resumed.output.replace("\n", "")


def test_summary_values_of_the_wrong_type_show_as_missing(tiny_mnist: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("good", "bad"):
        assert invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", runs / name).exit_code == 0
    summary = json.loads((runs / "bad" / "summary.json").read_text())
    summary.update(train_seconds="slow", samples_per_second=10**400, test_accuracy=[1], epochs="3")
    (runs / "bad" / "summary.json").write_text(json.dumps(summary))
    listed = invoke("runs", "--dir", runs)
    assert listed.exit_code == 0 and "bad" in listed.output, listed.output
    compared = invoke("runs", "compare", runs / "good", runs / "bad")
    assert compared.exit_code == 0, compared.output
    resumed = invoke("train", "-q", "--resume", runs / "bad", "--epochs", "3", "--data-dir", tiny_mnist)
    assert resumed.exit_code == 2 and "epochs is '3', not a count" in resumed.output.replace("\n", ""), resumed.output


def test_a_batch_whose_activations_cannot_fit_is_refused_before_the_run_starts(
    tiny_mnist: Path, tmp_path: Path, monkeypatch
) -> None:
    """mnist_cnn keeps 50,314 activations per image (the outputs of its convolutions, pools and
    linear layers, and the flatten's copy of its channels-last images), and its largest output
    (25,088) has a gradient and a working copy of that at a step's peak: 49.1 MiB for 128 images
    in float32, beside 6.4 MiB for its 421,642 parameters, their gradients and Adam's two moments.
    On a device of 32 MiB that is refused with one line before any run directory exists; 64 images
    (24.5 MiB) train, and evaluate in batches that fit."""
    from nnx.api import build_model_for
    from nnx.backend import Backend, get_backend
    from nnx.config import load_config
    from nnx.nn.sequential import Sequential

    config, _ = load_config("mnist_cnn")
    model = build_model_for(config, get_backend("cpu"))
    assert model.kept_per_sample == 32 * 28 * 28 + 32 * 14 * 14 + 64 * 14 * 14 + 64 * 7 * 7 * 2 + 128 + 10
    assert model.step_per_sample == model.kept_per_sample + 2 * 32 * 28 * 28
    assert model.count_parameters() == 421_642 and config.optimizer.name == "adam"
    monkeypatch.setattr(Backend, "memory_bytes", lambda self: 32 << 20)
    out = tmp_path / "run"
    result = invoke("train", "-c", "mnist_cnn", "--data-dir", tiny_mnist, *TINY, "--batch-size", "128", "--out", out)
    assert result.exit_code == 2, result.output
    message = (
        "error: training.batch_size 128: a batch of 128 images needs at least 49.1 MiB for its activations and "
        "gradients in this network, beside 6.4 MiB for its 421,642 parameters, their gradients and the optimizer's "
        "state: more than all 32.0 MiB of this machine's memory; use smaller batches or layers"
    )
    assert message in " ".join(result.output.split()) and not out.exists(), result.output
    evaluated_rows = []
    logits = Sequential.logits

    def counted(self, x, training=False):
        if not training:
            evaluated_rows.append(len(x))
        return logits(self, x, training)

    monkeypatch.setattr(Sequential, "logits", counted)
    small = invoke(
        "train", "-q", "-c", "mnist_cnn", "--data-dir", tiny_mnist, *TINY, "--batch-size", "64", "--out", out
    )
    assert small.exit_code == 0, small.output
    # (32 MiB - 4 x 421,642 x 4 bytes) // (2 x 50,314 x 4 bytes): 500 images at a time had needed 192 MiB
    assert max(evaluated_rows) == (32 * 2**20 - 4 * 421_642 * 4) // (2 * 50_314 * 4) == 66, evaluated_rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_resume_is_bitwise(tiny_mnist: Path, tmp_path: Path, seed: int) -> None:
    """kill -9 wherever it lands (mid-batch, mid-checkpoint write), then --resume: the final
    weights are bitwise those of a run that was never stopped."""
    import random

    import numpy as np

    from nnx.io import read_header

    args = ["--data-dir", str(tiny_mnist), "--epochs", "150", "--set", "training.validation=100",
            "--set", "model.hidden=[32]", "--threads", "1"]  # fmt: skip
    base = [sys.executable, "-m", "nnx", "train", "-q"]
    subprocess.run([*base, *args, "--out", str(tmp_path / "straight")], check=True, capture_output=True, timeout=300)

    run = tmp_path / "killed"
    victim = subprocess.Popen([*base, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.npz").is_file():  # a checkpoint to come back to
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.8))
    victim.kill()
    victim.wait()
    if not (run / "model.npz").exists():  # killed before the end (nearly always)
        resumed = subprocess.run([*base, "--resume", str(run), "--threads", "1"], capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
    a, b = read_header(tmp_path / "straight" / "model.npz")[1], read_header(run / "model.npz")[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".*.part"))


def test_sigterm_stops_like_ctrl_c_and_keeps_the_run(tiny_mnist: Path, tmp_path: Path) -> None:
    """docker stop, Slurm's preemption, systemd and `timeout` send SIGTERM: it killed the run on
    the spot, with summary.json left from an earlier stop and the epoch's work lost."""
    import json

    run = tmp_path / "run"
    args = [sys.executable, "-m", "nnx", "train", "--data-dir", str(tiny_mnist), "--epochs", "500",
            "--set", "training.validation=100", "--set", "model.hidden=[32]", "--out", str(run)]  # fmt: skip
    victim = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.npz").is_file():
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.01)
    victim.terminate()
    out, err = victim.communicate(timeout=60)
    assert victim.returncode == 143, out + err
    assert "Stopped by SIGTERM during epoch" in out and f"nnx train --resume {run}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["stopped_by"] == "SIGTERM" and summary["epochs"] < 500
    assert (run / "model.npz").is_file() and not list(run.glob(".*.part"))
    resumed = subprocess.run([sys.executable, "-m", "nnx", "train", "-q", "--resume", str(run), "--epochs",
                              str(summary["epochs"] + 2)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr


def test_ctrl_c_during_the_final_evaluation_still_saves_the_model(
    tiny_mnist: Path, tmp_path: Path, monkeypatch
) -> None:
    import signal

    import nnx.api as api

    real = api.evaluate

    def evaluate_with_a_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C once, while the test set runs
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "evaluate", evaluate_with_a_ctrl_c)
    result = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.npz").exists() and (tmp_path / "run" / "summary.json").exists()


def test_a_second_ctrl_c_while_finishing_leaves_a_resumable_run(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    import nnx.api as api

    real = api.evaluate

    def evaluate_aborted(*args, **kwargs):
        raise KeyboardInterrupt  # what the second Ctrl-C raises

    monkeypatch.setattr(api, "evaluate", evaluate_aborted)
    run = tmp_path / "run"
    result = invoke("train", "-q", "--data-dir", tiny_mnist, *TINY, "--out", run)
    assert result.exit_code == 130
    assert f"interrupted while finishing the run; the last checkpoint is intact: nnx train --resume {run}" in (
        result.output.replace("\n", "")
    )
    assert not (run / "model.npz").exists()
    monkeypatch.setattr(api, "evaluate", real)
    resumed = invoke("train", "-q", "--resume", run, "--data-dir", tiny_mnist)
    assert resumed.exit_code == 0, resumed.output
    assert (run / "model.npz").exists()
