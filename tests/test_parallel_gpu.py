"""The NCCL path of data-parallel training, on a GPU machine (scripts/gpu_check.sh runs these).

One GPU: NCCL's allreduce through nnx.parallel.NCCLComm, and `--distributed --device gpu` on one
rank against a plain GPU run. Two or more GPUs: `mpiexec -n 2` against one process, float64,
within 1e-10 relative (marked multigpu: skipped, with the reason, on a machine with one GPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnx.backend import get_backend, gpu_count
from nnx.io import read_header


def mpi():
    return pytest.importorskip("mpi4py", reason="mpi4py (carried to the GPU machine by gpu_check.sh)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nccl_allreduce_on_one_gpu(dtype: str) -> None:
    mpi()
    from nnx.parallel import NCCLComm

    comm = NCCLComm()
    gpu = get_backend("gpu", dtype)
    x = gpu.asarray(np.arange(1000, dtype=dtype))
    comm.allreduce_sum(x)  # one rank: the sum is the array itself, through NCCL all the same
    gpu.synchronize()
    assert comm._nccl_comm is not None and np.array_equal(gpu.to_numpy(x), np.arange(1000, dtype=dtype))


def run_train(command: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


ARGS = ["-q", "--device", "gpu", "--dtype", "float64", "--epochs", "1", "--batch-size", "50",
        "--set", "training.validation=100"]  # fmt: skip


@pytest.mark.gpu
def test_one_distributed_gpu_rank_trains_as_a_plain_gpu_run(tiny_mnist: Path, tmp_path: Path) -> None:
    mpi()
    base = [sys.executable, "-m", "nnx", "train", *ARGS, "--data-dir", str(tiny_mnist)]
    run_train([*base, "--out", "plain"], tmp_path)
    run_train([*base, "--distributed", "--out", "one-rank"], tmp_path)
    a, b = read_header(tmp_path / "plain" / "model.npz")[1], read_header(tmp_path / "one-rank" / "model.npz")[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.multigpu
def test_two_gpu_ranks_train_as_one_process(tiny_mnist: Path, tmp_path: Path) -> None:
    if gpu_count() < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {gpu_count()}")
    mpi()
    mpiexec = shutil.which("mpiexec")
    assert mpiexec, "mpiexec (MPICH, carried with mpi4py)"
    base = [sys.executable, "-m", "nnx", "train", *ARGS, "--data-dir", str(tiny_mnist)]
    run_train([*base, "--out", "one"], tmp_path)
    run_train([mpiexec, "-n", "2", *base, "--distributed", "--out", "two"], tmp_path)
    a, b = read_header(tmp_path / "one" / "model.npz")[1], read_header(tmp_path / "two" / "model.npz")[1]
    worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-300)) for k in a)
    assert worst < 1e-10
