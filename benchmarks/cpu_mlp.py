"""CPU benchmark of the default config (784-64-10, float32, batch 64, Nesterov SGD).

Measures, on this machine (its host line is printed first):
1. epoch time of nnx's Trainer on each CPU path this machine has (nnx/cpu_choice.py: NumPy's
   chains, Numba's compiled loops, those with nnx's AVX-512 products) against a minimal
   hand-written NumPy loop doing the same math on the same batches, all taking turns;
2. `nnx train` with the default config, run twice (the first may measure its CPU path): test
   accuracy, training seconds, the path it took and why, and the peak RSS of the second process;
3. `nnx train --epochs 4 --lr 0.1` with the default momentum and with plain SGD, three runs each
   taking turns: every epoch's median seconds (the slowest over the fastest, and momentum over
   plain SGD, epoch by epoch);
4. `nnx --help` start-up time.

Run: NNX_DATA_DIR=../shared/data/mnist python benchmarks/cpu_mlp.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nnx.backend import get_backend
from nnx.cpu_choice import cpu_candidates
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


def epoch_times(data_dir: Path, epochs: int) -> dict[str, list[float]]:
    """Seconds per epoch of nnx on each CPU path here and of the hand-written loop, taking turns."""
    mnist = load_mnist(data_dir, 5000)
    pre = Preprocess.named("standard")
    trainers = {}
    for path in cpu_candidates("float32", convolutions=False):
        backend = get_backend("cpu", "float32", cpu_path=path)
        model = build_model(mlp_spec([784, 64, 10]), backend, np.random.default_rng([0, 0]))
        optimizer = SGD(model.flat_parameters(), LR, MOMENTUM, nesterov=True, ops=backend.ops)
        trainers[f"nnx {path}"] = (Trainer(model, optimizer, backend, pre), DeviceSplit(mnist.train, backend))
    rng = np.random.default_rng([0, 0])
    params = [
        (rng.normal(0, np.sqrt(2 / 784), (784, 64))).astype(np.float32),
        np.zeros(64, np.float32),
        (rng.normal(0, np.sqrt(2 / 64), (64, 10))).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    velocity = [np.zeros_like(p) for p in params]
    labels = mnist.train.labels.astype(np.int64)
    times: dict[str, list[float]] = {name: [] for name in [*trainers, "NumPy loop"]}
    for epoch in range(1, epochs + 1):
        for name, (trainer, train) in trainers.items():
            times[name].append(trainer.fit(train, None, 1, BATCH, epoch).train_seconds)
            time.sleep(TURN_PAUSE)
        order = epoch_order(epoch, 1, len(labels))
        started = time.perf_counter()
        numpy_epoch(mnist.train.images, labels, params, velocity, order, pre)
        times["NumPy loop"].append(time.perf_counter() - started)
        # BLAS's threads spin for ~0.1 s after the NumPy loop's last product, and took a core from
        # the next nnx epoch's products (on Numba's threads, with AVX-512): 0.128 against 0.080 s
        # with this pause, which no epoch's time includes.
        time.sleep(TURN_PAUSE)
    return times


def train_epochs(data_dir: Path, *settings: str) -> list[float]:
    """Every epoch's seconds of `nnx train --epochs 4 --batch-size 64 --lr 0.1` with `settings`."""
    with tempfile.TemporaryDirectory() as tmp:
        nnx_cli("train", "--quiet", "--data-dir", str(data_dir), "--out", f"{tmp}/run", "--epochs", "4",
                "--batch-size", "64", "--lr", "0.1", *settings)  # fmt: skip
        lines = Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in lines]


def nnx_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnx", *args], capture_output=True, text=True, check=True)


def main() -> None:
    data_dir = resolve_data_dir()
    times = epoch_times(data_dir, epochs=int(os.environ.get("BENCH_EPOCHS", "10")))
    medians = {name: statistics.median(values) for name, values in times.items()}

    runs = []
    for _ in range(2):  # the first may measure the CPU path; the second reads it from the cache
        with tempfile.TemporaryDirectory() as tmp:
            nnx_cli("train", "--quiet", "--data-dir", str(data_dir), "--out", f"{tmp}/run")
            runs.append(json.loads(Path(f"{tmp}/run/summary.json").read_text()))
    summary = runs[-1]
    momentum, plain = [], []
    for _ in range(3):  # taking turns, epoch by epoch the median: this machine's speed drifts
        momentum.append(train_epochs(data_dir))
        plain.append(train_epochs(data_dir, "--set", "optimizer.momentum=0"))
    momentum = [statistics.median(epoch) for epoch in zip(*momentum, strict=True)]
    plain = [statistics.median(epoch) for epoch in zip(*plain, strict=True)]

    help_times = []
    for _ in range(5):
        started = time.perf_counter()
        nnx_cli("--help")
        help_times.append(time.perf_counter() - started)

    print("| measure | value |")
    print("| --- | --- |")
    for name, median in medians.items():
        ratio = "" if name == "NumPy loop" else f" ({median / medians['NumPy loop']:.2f}x the loop's)"
        print(f"| {name} epoch (median of {len(times[name])}, taking turns) | {median:.3f} s{ratio} |")
    print(f"| `nnx train` default config: test accuracy | {summary['test_accuracy']:.2%} |")
    print(f"| `nnx train` default config: training time ({summary['epochs']} epochs) | "
          f"{summary['train_seconds']:.2f} s (first run {runs[0]['train_seconds']:.2f} s) |")  # fmt: skip
    path = summary["cpu_path"]
    print(f"| `nnx train` CPU path | {path['path']} ({path['source']}: {path['reason']}) |")
    print(f"| `nnx train` peak RSS (second run) | {summary['peak_rss_mb']:.0f} MB |")
    for name, epochs in (("momentum 0.9", momentum), ("plain SGD", plain)):
        shown = ", ".join(f"{s:.3f}" for s in epochs)
        spread = max(epochs) / min(epochs)
        print(f"| epochs at lr 0.1, {name} (s, medians of 3 runs) | {shown}: slowest {spread:.2f}x the fastest |")
    ratios = ", ".join(f"{a / b:.2f}x" for a, b in zip(momentum, plain, strict=True))
    print(f"| momentum / plain SGD, epoch by epoch | {ratios} |")
    print(f"| `nnx --help` (median of 5) | {statistics.median(help_times):.3f} s |")


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
