"""Data-parallel training under `mpiexec -n 2`: the same mathematics as one process.

float64 runs with the same global batch must end within 1e-10 relative of a one-process run: the
MLP, and a small CNN with dropout and augmentation (their random numbers are keyed by each
sample's place in the global batch). Batch norm behaves as documented (synchronised statistics
match one process; per-rank ones do not), a 2-rank checkpoint resumes on 1 process, and a killed
or failing rank ends every rank. The NCCL path (GPU ranks) is in the GPU tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnx.io import read_header

pytest.importorskip("mpi4py")

BIN = Path(sys.executable).parent
TOLERANCE = 1e-10


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
    if found is None:
        message = "mpiexec not found: pip install '.[mpi]' brings MPICH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def env() -> dict[str, str]:
    # One BLAS thread per rank: two ranks on two cores, and the same threads in both runs.
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def nnx_args(*args) -> list[str]:
    return [sys.executable, "-m", "nnx", "train", "-q", *map(str, args)]


def train(ranks: int, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    command = nnx_args(*args) if ranks == 0 else [mpiexec(), "-n", str(ranks), *nnx_args("--distributed", *args)]
    result = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def weights(run: Path) -> dict[str, np.ndarray]:
    return read_header(run / "model.npz")[1]


def relative_difference(a: dict, b: dict, skip: tuple[str, ...] = ()) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-300)) for k in a if not k.endswith(skip))


CNN = {
    "name": "small_cnn",
    "dtype": "float64",
    "model": {
        "layers": [
            {"conv2d": {"out": 4, "kernel": 3, "padding": 1}},
            "relu",
            {"maxpool2d": {"size": 2}},
            "flatten",
            {"dropout": {"p": 0.3}},
            {"linear": {"out": 16}},
            "relu",
            {"linear": {"out": 10}},
        ]
    },
    "optimizer": {"name": "adam", "lr": 0.003},
    "training": {"epochs": 2, "batch_size": 50, "validation": 100, "augment": {"enabled": True}},
}
MLP = ["--dtype", "float64", "--epochs", "2", "--batch-size", "50", "--set", "training.validation=100"]


def test_two_ranks_train_the_mlp_as_one_process_does(tiny_mnist: Path, tmp_path: Path) -> None:
    train(0, *MLP, "--data-dir", tiny_mnist, "--out", "one", cwd=tmp_path)
    result = train(2, *MLP, "--data-dir", tiny_mnist, "--out", "two", cwd=tmp_path)
    assert relative_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < TOLERANCE
    assert result.stdout.count("test accuracy") == 1  # rank 0 reports for both
    assert "ranks" in (tmp_path / "two" / "summary.json").read_text()


def test_two_ranks_train_a_cnn_with_dropout_and_augmentation_as_one_process(tiny_mnist: Path, tmp_path: Path) -> None:
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(CNN))
    train(0, "-c", "cnn.yaml", "--data-dir", tiny_mnist, "--out", "one", cwd=tmp_path)
    train(2, "-c", "cnn.yaml", "--data-dir", tiny_mnist, "--out", "two", cwd=tmp_path)
    assert relative_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < TOLERANCE


def test_batch_norm_statistics_per_rank_or_synchronised(tiny_mnist: Path, tmp_path: Path) -> None:
    """Synchronised: one process's mathematics. Per rank (the default): each rank normalises its
    own rows, which is a different computation (so different weights), and the ranks' running
    averages are averaged after each epoch."""
    spec = yaml.safe_load(yaml.safe_dump(CNN))
    spec["model"]["layers"].insert(6, "batchnorm")  # linear 16 -> batchnorm -> relu
    spec["optimizer"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    spec["training"]["augment"]["enabled"] = False
    (tmp_path / "bn.yaml").write_text(yaml.safe_dump(spec))
    runs = {}
    for sync in ("true", "false"):
        args = ["-c", "bn.yaml", "--data-dir", tiny_mnist, "--set", f"training.sync_batchnorm={sync}"]
        train(0, *args, "--out", f"one-{sync}", cwd=tmp_path)
        train(2, *args, "--out", f"two-{sync}", cwd=tmp_path)
        runs[sync] = weights(tmp_path / f"one-{sync}"), weights(tmp_path / f"two-{sync}")
    # The bias of the layer feeding batch norm has a zero gradient (batch norm subtracts the
    # mean), so it holds rounding noise only: compared in absolute terms.
    one, two = runs["true"]
    assert relative_difference(one, two, skip=("6.b",)) < TOLERANCE
    assert np.abs(one["6.b"] - two["6.b"]).max() < 1e-12
    one, two = runs["false"]
    assert relative_difference(one, two, skip=("6.b",)) > 1e-6
    assert np.isfinite(two["7.running_mean"]).all() and (two["7.running_var"] > 0).all()


def test_a_two_rank_checkpoint_resumes_on_one_process(tiny_mnist: Path, tmp_path: Path) -> None:
    # A constant learning rate: a cosine schedule depends on the planned epochs, which change here.
    args = [*MLP[:2], "--batch-size", "50", "--set", "training.validation=100", "--set", "schedule.name=none",
            "--data-dir", tiny_mnist]  # fmt: skip
    train(0, *args, "--epochs", "3", "--out", "straight", cwd=tmp_path)
    train(2, *args, "--epochs", "2", "--out", "mixed", cwd=tmp_path)
    train(0, "--resume", "mixed", "--epochs", "3", cwd=tmp_path)
    assert relative_difference(weights(tmp_path / "straight"), weights(tmp_path / "mixed")) < TOLERANCE


def test_ranks_with_different_configs_stop_with_one_line(tiny_mnist: Path, tmp_path: Path) -> None:
    args = ["--distributed", *MLP, "--data-dir", tiny_mnist, "--out", "x"]
    command = [mpiexec(), "-n", "1", *nnx_args(*args, "--seed", "0"), ":", "-n", "1", *nnx_args(*args, "--seed", "1")]
    result = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    # The launcher merges the ranks' output (MPICH adds its own Abort line): ours is there once.
    assert result.stderr.count("error: ") == 1
    assert ("error: rank 0: ranks disagree on the config: rank 1 differs from rank 0 in training.seed; "
            "start every rank with the same config and flags\n") in result.stderr  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_ranks_started_without_distributed_are_refused_before_they_race(tiny_mnist: Path, tmp_path: Path) -> None:
    """mpiexec -n 2 nnx train (no --distributed) ran two copies of one run: one won the run's
    lock, the other failed with 'another nnx process is writing this run'."""
    command = [mpiexec(), "-n", "2", *nnx_args(*MLP, "--data-dir", tiny_mnist, "--out", "x")]
    result = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    line = "error: started as one of 2 MPI processes without --distributed: add --distributed"
    assert result.stderr.count(line) == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.mnist
def test_ranks_take_turns_to_download_so_each_file_comes_once(mnist_dir: Path, tmp_path: Path) -> None:
    """Two ranks starting on an empty data folder downloaded every file twice, at once, into the
    same folder. They take turns now: rank 0 fetches, rank 1 finds the files there. The mirror is
    a server on 127.0.0.1 (data.mirrors) that counts its requests."""
    import gzip
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from nnx.data.mnist import FILES, find_file

    site = tmp_path / "site"
    site.mkdir()
    for file in FILES.values():
        source = find_file(mnist_dir, file)
        data = source.read_bytes()
        (site / (file.name + ".gz")).write_bytes(data if source.suffix == ".gz" else gzip.compress(data, mtime=0))
    requests: list[str] = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Counting, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/"
        train(2, "--data-dir", tmp_path / "data", "--epochs", "1", "--set", "data.limit=500",
              "--set", "training.validation=100", "--set", f"data.mirrors=[{mirror}]", "--out", "r",
              cwd=tmp_path)  # fmt: skip
    finally:
        server.shutdown()
    assert sorted(requests) == sorted(f"/{file.name}.gz" for file in FILES.values())
    assert (tmp_path / "r" / "model.npz").is_file()


def test_the_world_size_is_read_from_either_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnx.parallel import mpi_world_size

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert mpi_world_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert mpi_world_size() == 4
    monkeypatch.setenv("PMI_SIZE", "3")
    assert mpi_world_size() == 3


def rank_pids(marker: str) -> dict[int, int]:
    """{rank: pid} of the running processes whose command line holds `marker`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "nnx" in cmdline and "mpiexec" not in cmdline:
            for item in environ:
                if item.startswith(b"PMI_RANK="):
                    found[int(item.split(b"=")[1])] = int(proc.name)
    return found


def test_a_killed_rank_ends_the_others_within_seconds(tiny_mnist: Path, tmp_path: Path) -> None:
    marker = f"killtest{os.getpid()}"
    args = ["--distributed", *MLP, "--epochs", "500", "--data-dir", tiny_mnist, "--out", marker]
    proc = subprocess.Popen([mpiexec(), "-n", "2", *nnx_args(*args)], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / marker / "metrics.jsonl").is_file():  # training is under way
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.1)
    pids = rank_pids(marker)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - killed_at < 30
    assert proc.returncode != 0
    assert "signal 9" in output or "Killed" in output, output  # the launcher names the cause
    assert not rank_pids(marker), "a rank is still running"
