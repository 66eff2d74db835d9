"""Run directories never mix or vanish: one process at a time, a user's folder is not written into
without --force, a stopped run is not overwritten, and temporary files of a killed write go."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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
