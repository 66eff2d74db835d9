"""`--device gpu` end to end, on the emulated device (tests/emulated_device.py): every path a GPU run
takes (the backend's GPU branches, the fused kernels, the trainer, metrics, checkpoints, model
files, the CLI) with device arrays that refuse to mix with host arrays, as CuPy's do."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import emulated_cupy
import emulated_device
import numpy as np
import pytest
import yaml
from test_resume import RICH_CONFIG
from typer.testing import CliRunner

import nnx
from nnx.cli.app import app
from nnx.data.mnist import load_test
from nnx.trainer import Callback


def _cnn() -> str:
    """test_resume's network with every source of randomness and state, plus a second convolution,
    an average pool and the CSV logger."""
    config = yaml.safe_load(RICH_CONFIG)
    config["name"] = "cnn"
    config["model"]["layers"][4:4] = [{"conv2d": {"out": 4, "kernel": 3}}, "relu", {"avgpool2d": {"size": 2}}]
    config["training"].update(epochs=2, log=["csv"])
    return yaml.safe_dump(config)


CNN = _cnn()


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def device():
    """`import cupy` finds the emulated device for the test's length."""
    if emulated_cupy.compiler() is None:
        pytest.skip("no C++ compiler (c++ or g++) to emulate the GPU's kernels with")
    with emulated_device.installed() as cupy:
        yield cupy


def test_device_arrays_keep_apart_from_host_arrays(device) -> None:
    """The emulation is only worth its runs if it refuses what CuPy refuses."""
    a = device.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    host = np.ones(3, dtype=np.float32)
    for mix in (lambda: a + host, lambda: host * a, lambda: np.maximum(a, host), lambda: device.maximum(a, host)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            mix()
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.concatenate([a, host[None]])
    total = a.sum()
    assert isinstance(total, device.ndarray) and total.shape == () and float(total) == 15.0
    assert isinstance(a[0, 1], device.ndarray) and int(a[0, 1]) == 1
    assert isinstance(a.get(), np.ndarray) and a.get().tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        a[0] = host
    a[0] = device.zeros(3, dtype=np.float32)
    a += 1
    assert a.get().tolist() == [[1, 1, 1], [4, 5, 6]]


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_nnx_train_device_gpu_end_to_end(device, tiny_mnist: Path, tmp_path: Path, network: str) -> None:
    config = ["-c", tmp_path / "cnn.yaml"] if network == "cnn" else ["--set", "training.validation=100"]
    (tmp_path / "cnn.yaml").write_text(CNN)
    run, cpu_run = tmp_path / "run", tmp_path / "cpu"
    for device_name, out in (("gpu", run), ("cpu", cpu_run)):
        result = invoke("train", "-q", *config, "--device", device_name, "--epochs", 2, "--data-dir", tiny_mnist,
                        "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "gpu:0" and "Emulated GPU" in summary["device_description"]
    assert summary["epochs"] == 2
    # The same run as the CPU's, to float32 rounding: the same weights, batches, masks and updates.
    cpu = json.loads((cpu_run / "summary.json").read_text())
    test_images = 200  # at most one of them classified otherwise (counted: 0.275 - 0.27 is 0.0050000000000000044)
    assert round(abs(summary["test_accuracy"] - cpu["test_accuracy"]) * test_images) <= 1
    assert summary["test_loss"] == pytest.approx(cpu["test_loss"], rel=1e-3)
    assert (run / "checkpoint.npz").is_file() and (run / "metrics.csv").is_file() == (network == "cnn")
    # The model file holds host arrays: it loads anywhere, and the CPU measures what the device did.
    on_cpu = json.loads(invoke("evaluate", run, "--device", "cpu", "--json", "--data-dir", tiny_mnist).stdout)
    on_gpu = json.loads(invoke("evaluate", run, "--device", "gpu", "--json", "--data-dir", tiny_mnist).stdout)
    assert on_gpu["accuracy"] == summary["test_accuracy"]
    assert abs(on_cpu["accuracy"] - on_gpu["accuracy"]) <= 1 / 200  # one image of 200 at most: float32 rounding
    predicted = invoke("predict", run, "--device", "gpu", "--test-index", 3, "--data-dir", tiny_mnist, "--json")
    assert predicted.exit_code == 0, predicted.output
    test = load_test(tiny_mnist)
    model = nnx.load(run, device="gpu")
    prediction = model.predict(test.images[:20])
    assert isinstance(prediction.classes, np.ndarray) and isinstance(prediction.probabilities, np.ndarray)
    assert (prediction.classes == nnx.load(run).predict(test.images[:20]).classes).mean() >= 0.95
    assert model.evaluate(data_dir=tiny_mnist)["accuracy"] == summary["test_accuracy"]


def test_a_run_stopped_on_the_device_resumes_bitwise(device, tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    import nnx.cli.train_cmd as train_cmd

    (tmp_path / "cnn.yaml").write_text(CNN)
    args = ["-c", tmp_path / "cnn.yaml", "--device", "gpu", "--data-dir", tiny_mnist]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke("train", "-q", *args, "--out", straight).exit_code == 0

    class PressCtrlC(Callback):
        def on_batch_end(self, progress) -> None:
            if (progress.epoch, progress.batch) == (2, 3):
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_cmd, "make_progress", lambda *a: [PressCtrlC()])
    assert invoke("train", *args, "--out", stopped).exit_code == 130
    monkeypatch.undo()
    resumed = invoke("train", "-q", "--resume", stopped)
    assert resumed.exit_code == 0, resumed.output
    with np.load(straight / "model.npz") as a, np.load(stopped / "model.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "__header__")


def test_nnx_info_reports_the_device(device) -> None:
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "Emulated GPU" in result.output and "usable" in result.output


@pytest.mark.parametrize(
    "settings",
    [
        ["--set", "optimizer={name: sgd, lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 0.001}"],
        ["--set", "optimizer={name: sgd, lr: 0.05, momentum: 0.0}", "--dtype", "float64"],
        ["--set", "optimizer={name: adamw, lr: 0.003, weight_decay: 0.01}", "--set", "schedule.name=cosine"],
        ["--set", "optimizer={name: rmsprop, lr: 0.001, clip_norm: 1.0}", "--set", "schedule={name: step}"],
        ["--set", "training.early_stopping={patience: 1}", "--set", "model.activation=tanh", "--epochs", 4],
        ["--set", "model.layers=[{linear: {out: 32}}, leaky_relu, {dropout: {p: 0.2}}, {linear: {out: 32}}, elu,"
         " batchnorm, sigmoid, {linear: {out: 10}}]"],
    ],
    ids=["sgd-decay", "plain-sgd-float64", "adamw-cosine", "rmsprop-clip-step", "early-stopping-tanh", "layers"],
)  # fmt: skip
def test_every_optimizer_and_layer_trains_on_the_device_as_on_the_cpu(
    device, tiny_mnist: Path, tmp_path: Path, settings: list
) -> None:
    summaries = []
    for device_name in ("gpu", "cpu"):
        out = tmp_path / device_name
        args = ["train", "-q", "--device", device_name, "--data-dir", tiny_mnist, "--out", out, "--epochs", 2]
        result = invoke(*args, "--set", "training.validation=100", *settings)
        assert result.exit_code == 0, result.output
        summaries.append(json.loads((out / "summary.json").read_text()))
    gpu, cpu = summaries
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 1 / 200 and gpu["epochs"] == cpu["epochs"]
    assert gpu["test_loss"] == pytest.approx(cpu["test_loss"], rel=1e-3 if gpu["dtype"] == "float32" else 1e-9)


def test_plots_and_the_server_run_a_device_model(device, tiny_mnist: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nnx.web.server import create_app

    run = tmp_path / "run"
    args = [
        "--device",
        "gpu",
        "--data-dir",
        tiny_mnist,
        "--out",
        run,
        "--epochs",
        1,
        "--set",
        "training.validation=100",
    ]
    assert invoke("train", "-q", *args, "--plots").exit_code == 0
    assert (run / "report.html").is_file() and (run / "misclassified.png").is_file()
    replotted = invoke("plot", run, "--device", "gpu", "--data-dir", tiny_mnist)
    assert replotted.exit_code == 0, replotted.output
    client = TestClient(create_app(run / "model.npz", device="gpu"))
    digit = load_test(tiny_mnist).images[0].reshape(28, 28)
    answer = client.post("/api/predict", json={"pixels": digit.tolist(), "preprocess": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["class"] == int(nnx.load(run).predict(digit).classes[0])


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_a_training_step_copies_nothing_between_host_and_device(
    device, tiny_mnist: Path, tmp_path: Path, network: str
) -> None:
    """No host index array, no float() of a loss, no batch fetched: between one batch's end and the
    next's, not one copy either way (an epoch's order goes over once, its sums come back once)."""
    config = yaml.safe_load(CNN) if network == "cnn" else {"training": {"epochs": 2, "validation": 100}}
    copies: dict[int, list[int]] = {}

    class Count(Callback):
        def on_batch_end(self, progress) -> None:
            copies.setdefault(progress.epoch, []).append(len(emulated_device.TRANSFERS))

    overrides = {"device": "gpu", "data.dir": str(tiny_mnist), "training.log": []}
    nnx.train(config, overrides, out=tmp_path / "run", callbacks=[Count()])
    assert len(copies) == 2 and all(len(counts) >= 8 for counts in copies.values()), copies
    assert all(len(set(counts)) == 1 for counts in copies.values()), {e: sorted(set(c)) for e, c in copies.items()}


def small_mnist(load_mnist, train: int = 1500, test: int = 500, validation: int | None = None):  # noqa: ANN201
    """load_mnist cut to a few images of each split, for the benchmarks' code paths (not figures);
    the validation split whole unless `validation` is given."""
    from nnx.data.mnist import Split

    def load(*args, **kwargs):  # noqa: ANN202
        mnist = load_mnist(*args, **kwargs)
        sizes = {"train": train, "test": test, "validation": validation}
        for name, n in sizes.items():
            if n is not None:
                split = getattr(mnist, name)
                setattr(mnist, name, Split(split.images[:n], split.labels[:n]))
        return mnist

    return load


@pytest.mark.heavy(28)
def test_the_gpu_checks_benchmarks_run_on_the_device(
    device, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """What scripts/gpu_check.sh runs after the tests (benchmarks/gpu_mlp.py, cnn.py gpu and
    profile_layers.py --device gpu), on a few images and one epoch: a mistake in a benchmark's GPU
    path would otherwise first show on a lent GPU, costing minutes of it. PyTorch has no CUDA here:
    its columns are left out, as on a GPU machine whose PyTorch has none."""
    import sys

    from nnx.config import load_config

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    monkeypatch.setenv("NNX_DATA_DIR", str(mnist_dir))
    for name in ("gpu_mlp", "cnn", "profile_layers"):
        sys.modules.pop(name, None)
    import cnn
    import gpu_mlp
    import profile_layers

    monkeypatch.setattr(gpu_mlp, "CASES", [([784, 64, 10], 64), ([784, 128, 128, 10], 256)])
    monkeypatch.setattr(gpu_mlp, "load_mnist", small_mnist(gpu_mlp.load_mnist))
    monkeypatch.setattr(sys, "argv", ["gpu_mlp.py", "--epochs", "1", "--no-cpu", "--json", str(tmp_path / "mlp.json")])
    gpu_mlp.main()
    mlp = json.loads((tmp_path / "mlp.json").read_text())
    assert "Emulated GPU" in mlp["gpu"] and all(row["nnx_gpu"] > 0 and "torch_gpu" not in row for row in mlp["rows"])
    assert len(mlp["gpu_test_accuracies"]) >= 1 and mlp["torch_time_to_97_5"] is None

    # cnn.py trains on the first (train + validation) - training.validation images: with a
    # validation split of 500 held out too, every config trains on the 600 training images.
    def one_epoch(name: str, assignments: tuple = ()):  # noqa: ANN202
        return load_config(name, [*assignments, "training.epochs=1", "training.validation=500"])

    monkeypatch.setattr(cnn, "load_mnist", small_mnist(cnn.load_mnist, train=600, validation=500))
    monkeypatch.setattr(cnn, "load_config", one_epoch)
    monkeypatch.setattr(sys, "argv", ["cnn.py", "gpu", "--json", str(tmp_path / "cnn.json")])
    cnn.main()
    results = json.loads((tmp_path / "cnn.json").read_text())
    assert results["speed"]["gpu"]["nnx"] > 0 and results["speed"]["gpu"]["torch"] is None
    assert len(results["time_to_99"]) == 3 and all(
        len(row["accuracies"]) == 1 for row in results["time_to_99"].values()
    )

    monkeypatch.setattr(profile_layers, "load_mnist", small_mnist(profile_layers.load_mnist))
    monkeypatch.setattr(sys, "argv", ["profile_layers.py", "--device", "gpu", "--batches", "3", "--config",
                                      "mnist_cnn", "mnist_mlp"])  # fmt: skip
    profile_layers.main()
    out = capsys.readouterr().out
    assert "| mnist_cnn on gpu, per batch | ms on the GPU |" in out and "| mnist_mlp on gpu, per batch |" in out


def test_a_sweep_runs_its_trials_on_the_device(
    device, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials report each epoch's validation accuracy to Optuna (the pruner's callback reads it)."""
    pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: dev\nbase: mnist_mlp\ntrials: 2\nsearch:\n  optimizer.lr: {log_uniform: [0.01, 0.1]}\n")
    sets = ["device=gpu", "training.epochs=2", "training.validation=100", f"data.dir={tiny_mnist}"]
    result = invoke("sweep", sweep, *(part for s in sets for part in ("--set", s)))
    assert result.exit_code == 0, result.output
    assert "2/2 done (pruned 0, failed 0)" in result.output
    trials = sorted((tmp_path / "runs" / "dev").glob("trial-*"))
    assert len(trials) == 2
    assert all(json.loads((trial / "summary.json").read_text())["device"] == "gpu:0" for trial in trials)


def test_two_ranks_on_two_emulated_gpus_train_as_one_process(tiny_mnist: Path, tmp_path: Path) -> None:
    """The NCCL path of data-parallel training (nnx.parallel.NCCLComm), which a lent machine with
    one GPU cannot run: `mpiexec -n 2` on two emulated devices, gradients summed by the emulated
    NCCL (MPI over the arrays' memory), against one process on one; float64, within 1e-10. Each
    process runs nnx's CLI under the emulation (`python tests/emulated_device.py train ...`)."""
    pytest.importorskip("mpi4py")
    import subprocess
    import sys

    from test_parallel import env, mpiexec

    from nnx.io import read_header

    if emulated_cupy.compiler() is None:
        pytest.skip("no C++ compiler (c++ or g++) to emulate the GPU's kernels with")
    nnx_on_device = [sys.executable, str(Path(emulated_device.__file__)), "train", "-q", "--device", "gpu", "--dtype",
                     "float64", "--epochs", "1", "--batch-size", "50", "--set", "training.validation=100",
                     "--data-dir", str(tiny_mnist)]  # fmt: skip
    for command in ([*nnx_on_device, "--out", "one"],
                    [mpiexec(), "-n", "2", *nnx_on_device, "--distributed", "--out", "two"],
                    [mpiexec(), "-n", "1", *nnx_on_device, "--distributed", "--out", "one-rank"]):  # fmt: skip
        result = subprocess.run(command, cwd=tmp_path, env=dict(env(), NNX_EMULATED_GPUS="2"), capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    one, two, one_rank = (read_header(tmp_path / run / "model.npz")[1] for run in ("one", "two", "one-rank"))
    worst = max(float(np.abs(one[k] - two[k]).max() / max(np.abs(one[k]).max(), 1e-300)) for k in one)
    assert worst < 1e-10 and json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2
    assert all(np.array_equal(one[k], one_rank[k]) for k in one)  # one rank through NCCL: the very same bits
