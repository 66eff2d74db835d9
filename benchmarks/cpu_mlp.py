"""CPU benchmark of the default config (784-64-10, float32, batch 64, Nesterov SGD).

Measures, on this machine:
1. epoch time of nnx's Trainer against a minimal hand-written NumPy loop doing the same math on
   the same batches, alternating the two so both see the same machine state;
2. `nnx train` with the default config: test accuracy, training seconds, peak RSS of the process;
3. `nnx --help` start-up time.

Run: NNX_DATA_DIR=../shared/data/mnist python benchmarks/cpu_mlp.py
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nnx.backend import get_backend
from nnx.data.mnist import load_mnist, resolve_data_dir
from nnx.nn import build_model, mlp_spec
from nnx.optim import SGD
from nnx.preprocess import Preprocess
from nnx.trainer import DeviceSplit, Trainer, epoch_order

BATCH, LR, MOMENTUM = 64, 0.02, 0.9


def numpy_epoch(images, labels, params, velocity, order, pre: Preprocess) -> tuple[float, float]:
    """The whole forward/backward/update of the MLP written inline with NumPy, keeping the same
    running loss and accuracy nnx reports. Returns (mean loss, accuracy)."""
    W1, b1, W2, b2 = params
    scale, shift = 1.0 / (255.0 * pre.std), pre.mean / pre.std
    loss_sum, correct = np.float32(0), 0
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        y = labels[idx]
        x = images[idx].astype(np.float32)
        x *= scale
        x -= shift
        a = x @ W1 + b1
        mask = a > 0
        h = np.maximum(a, 0)
        z = h @ W2 + b2
        s = z - z.max(axis=1, keepdims=True)
        e = np.exp(s)
        sum_e = e.sum(axis=1, keepdims=True)
        rows = np.arange(len(idx))
        loss_sum += -(s[rows, y] - np.log(sum_e[:, 0])).mean() * len(idx)
        correct += (z.argmax(axis=1) == y).sum()
        p = e / sum_e
        p[rows, y] -= 1
        p /= len(idx)
        dh = (p @ W2.T) * mask
        grads = (x.T @ dh, dh.sum(axis=0), h.T @ p, p.sum(axis=0))
        for param, grad, v in zip(params, grads, velocity, strict=True):
            v *= MOMENTUM
            v += grad
            param -= LR * (grad + MOMENTUM * v)
    return float(loss_sum) / len(order), correct / len(order)


TURN_PAUSE = 0.5  # seconds between the contenders' turns


def epoch_times(data_dir: Path, epochs: int) -> tuple[list[float], list[float]]:
    backend = get_backend("cpu", "float32")
    mnist = load_mnist(data_dir, 5000)
    pre = Preprocess.named("standard")
    model = build_model(mlp_spec([784, 64, 10]), backend, np.random.default_rng([0, 0]))
    trainer = Trainer(model, SGD(model.flat_parameters(), LR, MOMENTUM, nesterov=True, ops=backend.ops), backend, pre)
    train = DeviceSplit(mnist.train, backend)
    rng = np.random.default_rng([0, 0])
    params = [
        (rng.normal(0, np.sqrt(2 / 784), (784, 64))).astype(np.float32),
        np.zeros(64, np.float32),
        (rng.normal(0, np.sqrt(2 / 64), (64, 10))).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    velocity = [np.zeros_like(p) for p in params]
    labels = mnist.train.labels.astype(np.int64)
    nnx_times, numpy_times = [], []
    for epoch in range(1, epochs + 1):
        result = trainer.fit(train, None, 1, BATCH, epoch)
        nnx_times.append(result.train_seconds)
        order = epoch_order(epoch, 1, len(labels))
        started = time.perf_counter()
        numpy_epoch(mnist.train.images, labels, params, velocity, order, pre)
        numpy_times.append(time.perf_counter() - started)
        # BLAS's threads spin for ~0.1 s after the NumPy loop's last product, and took a core from
        # the next nnx epoch's products (on Numba's threads, with AVX-512): 0.128 against 0.080 s
        # with this pause, which no epoch's time includes.
        time.sleep(TURN_PAUSE)
    return nnx_times, numpy_times


def nnx_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnx", *args], capture_output=True, text=True, check=True)


def main() -> None:
    data_dir = resolve_data_dir()
    nnx_times, numpy_times = epoch_times(data_dir, epochs=int(os.environ.get("BENCH_EPOCHS", "10")))
    nnx_epoch, numpy_epoch_s = statistics.median(nnx_times), statistics.median(numpy_times)

    with tempfile.TemporaryDirectory() as tmp:
        nnx_cli("train", "--quiet", "--data-dir", str(data_dir), "--out", f"{tmp}/run")
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    peak_rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    help_times = []
    for _ in range(5):
        started = time.perf_counter()
        nnx_cli("--help")
        help_times.append(time.perf_counter() - started)

    cpu = platform.processor() or platform.machine()
    try:
        model_name = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model_name = cpu
    print(f"machine: {model_name}, {os.cpu_count()} cores, numpy {np.__version__}, python {platform.python_version()}")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| nnx epoch (median of {len(nnx_times)}) | {nnx_epoch:.3f} s |")
    print(f"| hand-written NumPy epoch (same math, same batches) | {numpy_epoch_s:.3f} s |")
    print(f"| nnx / NumPy | {nnx_epoch / numpy_epoch_s:.2f}x |")
    print(f"| `nnx train` default config: test accuracy | {summary['test_accuracy']:.2%} |")
    print(
        f"| `nnx train` default config: training time ({summary['epochs']} epochs) | {summary['train_seconds']:.2f} s |"
    )
    print(f"| `nnx train` samples/s | {summary['samples_per_second']:,.0f} |")
    print(f"| `nnx train` peak RSS (whole process) | {peak_rss_children:.0f} MB |")
    print(f"| `nnx --help` (median of 5) | {statistics.median(help_times):.3f} s |")


if __name__ == "__main__":
    main()
