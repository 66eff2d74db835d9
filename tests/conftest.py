"""Shared fixtures: backends, the real MNIST, and a tiny MNIST-shaped dataset written per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Worker processes of pytest-xdist share the machine's cores: each gets its share of BLAS and
# OpenMP threads (set before NumPy loads OpenBLAS), as data-parallel ranks do, instead of every
# worker's BLAS spinning on every core. A value set by the caller stays.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

import emulated_cupy  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nnx.backend import get_backend, gpu_unavailable_reason  # noqa: E402
from nnx.data.idx import write_idx  # noqa: E402
from nnx.data.mnist import missing_files, resolve_data_dir  # noqa: E402

_gpu_reason: list[str | None] = []

# Measurements of CPU paths (nnx/cpu_choice.py) go to a folder of this session's, never the user's
# cache: a test sees what a new machine sees, whatever ran before it elsewhere.
os.environ["NNX_CACHE_DIR"] = tempfile.mkdtemp(prefix="nnx-test-cache-")


def gpu_skip_reason() -> str | None:
    if not _gpu_reason:
        _gpu_reason.append(gpu_unavailable_reason())
    return _gpu_reason[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords:
            reason = gpu_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"no usable GPU: {reason}"))
    items[:] = in_worker_order(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def heavy_seconds(item: pytest.Item) -> float:
    """A heavy test's rough duration (`@pytest.mark.heavy(seconds)`: alone, on 2 cores), used only
    to share heavy tests out between workers; 0 for the rest."""
    mark = item.get_closest_marker("heavy")
    return 0.0 if mark is None else float(mark.args[0])


def in_worker_order(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The tests in the order that keeps pytest-xdist's workers busy until the end.

    Its work stealing (`--dist worksteal`) gives each of the N workers a contiguous Nth of the list,
    and a worker that runs out takes the far half of a busy worker's queue. So each worker's Nth
    starts with a share of the heavy tests, the longest first and each to the share with the fewest
    heavy seconds so far, and is filled up with the light tests in their order: the heavy tests all
    start early and on every worker, and the light ones balance the end. With one worker: the heavy
    tests first.
    """
    heavy = sorted((item for item in items if heavy_seconds(item)), key=heavy_seconds, reverse=True)
    light = [item for item in items if not heavy_seconds(item)]
    shares: list[list[pytest.Item]] = [[] for _ in range(max(1, workers))]
    for item in heavy:
        min(shares, key=lambda share: sum(map(heavy_seconds, share))).append(item)
    ordered: list[pytest.Item] = []
    left = len(items)
    for k, share in enumerate(shares):
        size = left // (len(shares) - k)  # as pytest-xdist splits the list
        fill = max(0, size - len(share))
        ordered += share + light[:fill]
        light = light[fill:]
        left -= size
    return ordered + light


def must_run(gpu_test: bool | str) -> str | None:
    """Why a test may not be skipped here, or None when a skip is allowed.

    On a GPU machine (scripts/gpu_check.sh sets NNX_REQUIRE_GPU=1) a skipped GPU test is a
    failure: a run that skipped them all must not end green. In CI (CI set) every test that does
    not need a GPU must run: a missing browser, dataset or package fails instead of hiding.
    """
    if gpu_test == "multigpu":  # needs 2+ GPUs: skips, with the reason, wherever there are fewer
        return None
    if gpu_test:
        return "NNX_REQUIRE_GPU is set" if os.environ.get("NNX_REQUIRE_GPU") else None
    return "CI is set: every test that needs no GPU must run" if os.environ.get("CI") else None


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    why = must_run("multigpu" if "multigpu" in item.keywords else "gpu" in item.keywords)
    if report.skipped and why and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped, but {why}: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A whole module skipped at import (pytest.importorskip) counts the same way."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        why = must_run(gpu_test=False)
        if why:
            reason = skip_reason(report)
            report.outcome = "failed"
            report.longrepr = f"{collector.nodeid} skipped, but {why}: {reason}"


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu), "emulated"])
def backend(request: pytest.FixtureRequest):
    """Each test taking `backend` runs on the CPU, on the GPU where one is usable, and with the
    GPU's fused kernels emulated on the host (tests/emulated_cupy.py), everywhere."""
    if request.param == "emulated":
        return emulated_cupy.backend("float64")
    return get_backend(request.param, "float64")


@pytest.fixture
def cpu64():
    return get_backend("cpu", "float64")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST: $NNX_DATA_DIR, else ./data/mnist as the quick start leaves it (CI links that
    to ../shared/data/mnist). Missing data fails in CI, where it must be present, and skips
    elsewhere with the reason."""
    folder = resolve_data_dir().resolve()  # absolute: tests that change folder still find it
    missing = missing_files(folder)
    if missing:
        message = f"MNIST not found in {folder} (missing {', '.join(missing)}): nnx data download, or set NNX_DATA_DIR"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def make_tiny_mnist(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Learnable MNIST-shaped IDX files: each class is a fixed random stroke pattern plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((10, 784)) < 0.15) * 255.0

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.normal(0, 40, (n, 784))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        return images.reshape(n, 28, 28), labels.astype(np.uint8)

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = sample(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return make_tiny_mnist(tmp_path / "mnist")


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker process of this test run sees (pytest-xdist gives each worker its
    own temporary folder inside the run's), for what is worth making once per run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def trained_mlp(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default config trained on the real MNIST once per test run, whatever the number of
    workers (the first to ask trains it under a lock, the others wait and read it); read-only."""
    import fcntl

    from typer.testing import CliRunner

    from nnx.cli.app import app

    folder = shared_folder(tmp_path_factory)
    out = folder / "trained-mlp"
    with open(folder / "trained-mlp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "model.npz").is_file():
            result = CliRunner().invoke(app, ["train", "-q", "--data-dir", str(mnist_dir), "--out", str(out)])
            assert result.exit_code == 0, result.output
    return out / "model.npz"
