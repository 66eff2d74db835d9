"""benchmarks/profile_layers.py, whose GPU branch first runs on a lent GPU: its bookkeeping is
checked here with stand-in CUDA events, and its CPU table on real MNIST."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_layers import PartTimer  # noqa: E402


class FakeEvent:
    """A CUDA event that records a made-up device clock; counts synchronisations."""

    clock = 0.0
    synchronized = 0

    def record(self) -> None:
        self.at = FakeEvent.clock

    def synchronize(self) -> None:
        FakeEvent.synchronized += 1


def elapsed_ms(start: FakeEvent, end: FakeEvent) -> float:
    return (end.at - start.at) * 1e3


def test_gpu_parts_are_timed_by_events_read_once_a_step() -> None:
    cuda = SimpleNamespace(Event=FakeEvent, get_elapsed_time=elapsed_ms)
    timer = PartTimer(SimpleNamespace(is_gpu=True, xp=SimpleNamespace(cuda=cuda)))

    def kernel(seconds: float) -> str:
        FakeEvent.clock += seconds  # the device works this long
        return "result"

    FakeEvent.synchronized = 0
    for step in range(3):
        assert timer.time("conv forward", step > 0, kernel, 0.002) == "result"
        timer.time("conv backward", step > 0, kernel, seconds=0.005)
        timer.end_step()
    assert FakeEvent.synchronized == 2  # one read per timed step, none for the warm-up
    assert timer.device["conv forward"] == pytest.approx(0.004)
    assert timer.device["conv backward"] == pytest.approx(0.010)
    assert set(timer.host) == {"conv forward", "conv backward"} and all(v >= 0 for v in timer.host.values())


@pytest.mark.mnist
def test_the_cpu_profile_lists_every_layer(mnist_dir: Path) -> None:
    args = [sys.executable, "benchmarks/profile_layers.py", "--config", "mnist_mlp", "--batches", "2"]
    env = {**os.environ, "NNX_DATA_DIR": str(mnist_dir)}
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[0].strip("| ") for line in result.stdout.splitlines() if line.startswith("| ")]
    for part in ["0 linear forward", "2 linear backward", "0 linear backward", "loss forward+backward",
                 "optimizer step", "preprocess", "total"]:  # fmt: skip
        assert part in rows, (part, result.stdout)


def test_the_kernel_line_names_both_contenders_vector_widths(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import cpu_kernels

    fake_torch = SimpleNamespace(__version__="9.9", backends=SimpleNamespace(cpu=SimpleNamespace(
        get_cpu_capability=lambda: "AVX512")))  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    line = cpu_kernels()
    assert line.startswith("CPU kernels: nnx (NumPy's BLAS) ") and "(OPENBLAS_CORETYPE=Haswell)" in line
    assert line.endswith("; PyTorch 9.9: AVX512 (ONEDNN_MAX_CPU_ISA=AVX2)")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert cpu_kernels().endswith("; PyTorch not installed")


def test_compare_conv_alternates_and_restores_the_choice(monkeypatch, capsys) -> None:
    import profile_layers

    from nnx.cpu_ops import CpuOps

    seen = []

    def fake_profile(config: str, batches: int) -> SimpleNamespace:
        seen.append(CpuOps.winograd)
        conv = 0.010 if CpuOps.winograd else 0.012
        return SimpleNamespace(host={"4 conv2d backward": conv, "9 linear forward": 0.001})

    monkeypatch.setattr(profile_layers, "profile", fake_profile)
    profile_layers.compare_conv("mnist_cnn", 2, rounds=3)
    assert seen == [True, False] * 3 and CpuOps.winograd is False
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| ms a step | 4 conv2d backward |")
    assert rows[2] == "| winograd | 11.00 | 10.00 |" and rows[3] == "| im2col | 13.00 | 12.00 |"


def test_the_products_floor_calls_the_products_an_mlp_step_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_mlp.py --floor times the very matrix products of nnx's CPU MLP step (the same shapes,
    the first layer's dx left out as nnx leaves it out), and bounds the speed-up over PyTorch by
    PyTorch's time over theirs."""
    import gpu_mlp
    import numpy as np

    from nnx.backend import get_backend
    from nnx.cpu_ops import CpuOps
    from nnx.nn import SoftmaxCrossEntropy, build_model, mlp_spec

    calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def recording(name):
        product = getattr(CpuOps, name)

        def record(self, a, b, *args, **kwargs):
            calls.append((name, a.shape, b.shape))
            return product(self, a, b, *args, **kwargs)

        return record

    sizes, batch = [12, 6, 5, 4], 7
    backend = get_backend("cpu", "float32")
    model = build_model(mlp_spec(sizes), backend, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(batch, 12)).astype(np.float32)
    loss = SoftmaxCrossEntropy(backend)
    for name in ("matmul", "matmul_tn"):
        monkeypatch.setattr(CpuOps, name, recording(name))
    loss.forward(model.logits(x, training=True), np.arange(batch) % 4)
    model.backward(loss.backward())
    step_calls = sorted(calls)
    calls.clear()
    assert gpu_mlp.products_epochs(sizes, batch, batch, epochs=0) == []  # one warm-up epoch of one batch
    assert sorted(calls) == step_calls and len(step_calls) == 3 * 3 - 1

    table = gpu_mlp.floor_table([{"model": "m", "batch": 64, "nnx_cpu": 0.2, "products_cpu": 0.05, "torch_cpu": 0.3}])
    assert table.splitlines()[-1] == "| m | 64 | 0.200 | 0.050 | 25% | 0.300 | 1.50x | 6.00x |"


def test_numpy_chains_and_rounds_take_turns_and_report_medians(monkeypatch, capsys) -> None:
    """gpu_mlp.py --numpy-chains --rounds 3: per round nnx (Numba's loops), nnx on NumPy's chains,
    then PyTorch, each row's figures the medians over every round's epochs."""
    import gpu_mlp
    import numpy as np

    turns: list[str] = []

    def fake_nnx(backend, sizes, batch, train, epochs):
        turns.append("numpy" if backend.ops.kernels is None else "nnx")
        return [float(len(turns))]

    def fake_torch(device, sizes, batch, train, epochs):
        turns.append("torch")
        return [100.0 + len(turns)]

    monkeypatch.setattr(gpu_mlp, "CASES", [([784, 64, 10], 64)])
    monkeypatch.setattr(gpu_mlp, "load_mnist", lambda *a: SimpleNamespace(train=np.zeros(10)))
    monkeypatch.setattr(gpu_mlp, "nnx_epochs", fake_nnx)
    monkeypatch.setattr(gpu_mlp, "torch_epochs", fake_torch)
    monkeypatch.setattr(gpu_mlp, "gpu_unavailable_reason", lambda: "no GPU here")
    monkeypatch.setattr(sys, "argv", ["gpu_mlp.py", "--epochs", "1", "--numpy-chains", "--rounds", "3"])
    monkeypatch.setenv("NNX_NUMBA", "1")
    gpu_mlp.main()
    compiled = gpu_mlp.CpuOps().kernels is not None
    assert turns == [("nnx" if compiled else "numpy"), "numpy", "torch"] * 3
    out = capsys.readouterr().out
    assert '"nnx_cpu": 4.0, "nnx_cpu_numpy": 5.0, "torch_cpu": 106.0' in out  # medians of turns 1/4/7, 2/5/8, ...
    assert "| model | batch | nnx_cpu s/epoch (samples/s) | nnx_cpu_numpy s/epoch (samples/s) | torch_cpu" in out
    assert "3 rounds; nnx_cpu_numpy: nnx with NumPy's chains (no Numba)" in out
