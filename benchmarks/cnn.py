"""The CNN of configs/mnist_cnn.yaml: epoch time of nnx beside PyTorch eager on the same model, and
its test accuracy over seeds.

  python benchmarks/cnn.py speed      # epoch time, CPU (and GPU where usable), nnx vs PyTorch
  python benchmarks/cnn.py accuracy   # nnx train -c mnist_cnn for seeds 0, 1, 2: the median

Both contenders train the same layers from the same initial weights on the same batches (nnx's
host permutation) with Adam at a constant lr and the same dropout rates, converting uint8 pixels
per batch on the device. Figures are medians of the timed epochs after a warm-up of a few
batches (`--batches N` times a part of an epoch and scales it to 55,000 images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnx.backend import get_backend, gpu_unavailable_reason
from nnx.config import load_config
from nnx.data.mnist import Split, load_mnist, resolve_data_dir
from nnx.nn import build_model
from nnx.optim import Adam
from nnx.preprocess import Preprocess
from nnx.train import DeviceSplit, Trainer, epoch_order

PRE = Preprocess.named("standard")
LR = 1e-3
BATCH = 128


def nnx_seconds(device: str, train: Split, repeats: int) -> float:
    backend = get_backend(device, "float32")
    config, _ = load_config("mnist_cnn")
    model = build_model(config.model.layer_specs(), backend, np.random.default_rng([0, 0]), classes=10)
    trainer = Trainer(model, Adam(model.flat_parameters(), LR, ops=backend.ops), backend, PRE)
    data = DeviceSplit(train, backend)
    warm = DeviceSplit(Split(train.images[: 4 * BATCH], train.labels[: 4 * BATCH]), backend)
    trainer.fit(warm, None, 1, BATCH, 0)
    return statistics.median(trainer.fit(data, None, 1, BATCH, r + 1).train_seconds for r in range(repeats))


def torch_seconds(device: str, train: Split, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(device)
    config, _ = load_config("mnist_cnn")
    host = build_model(config.model.layer_specs(), get_backend("cpu"), np.random.default_rng([0, 0]), classes=10)
    layers: list[Any] = []
    for layer in host.layers:
        spec = layer.spec()
        kind = spec["type"]
        if kind == "reshape":
            layers.append(torch.nn.Unflatten(1, tuple(spec["shape"])))
        elif kind == "conv2d":
            conv = torch.nn.Conv2d(spec["in"], spec["out"], spec["kernel"], spec["stride"], spec["padding"])
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.params["W"].copy()))
                conv.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
            layers.append(conv)
        elif kind == "linear":
            linear = torch.nn.Linear(spec["in"], spec["out"])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.params["W"].T.copy()))
                linear.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
            layers.append(linear)
        elif kind == "maxpool2d":
            layers.append(torch.nn.MaxPool2d(spec["size"], spec["stride"]))
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(spec["p"]))
        elif kind == "flatten":
            layers.append(torch.nn.Flatten())
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        else:
            raise ValueError(f"no PyTorch twin for {kind}")
    model = torch.nn.Sequential(*layers).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    images = torch.from_numpy(np.ascontiguousarray(train.images)).to(dev)
    labels = torch.from_numpy(train.labels.astype(np.int64)).to(dev)
    scale, shift = 1.0 / (255.0 * PRE.std), PRE.mean / PRE.std

    def epoch(seed: int, n: int) -> float:
        order = torch.from_numpy(epoch_order(seed, 1, n)).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            x = images[idx].float().mul_(scale).sub_(shift)
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    epoch(0, 4 * BATCH)
    return statistics.median(epoch(r + 1, len(labels)) for r in range(repeats))


def speed(args: argparse.Namespace) -> None:
    mnist = load_mnist(resolve_data_dir(), 5000)
    train = mnist.train
    if args.batches:
        n = args.batches * BATCH
        train = Split(train.images[:n], train.labels[:n])
    scale = len(mnist.train) / len(train)
    devices = ["cpu"] + (["gpu"] if gpu_unavailable_reason() is None else [])
    print(f"| device | nnx s/epoch | PyTorch eager s/epoch | nnx / PyTorch |  (55,000 images, batch {BATCH})")
    print("| --- | --- | --- | --- |")
    for device in devices:
        ours = nnx_seconds(device, train, args.repeats) * scale
        theirs = torch_seconds("cuda" if device == "gpu" else "cpu", train, args.repeats)
        theirs = theirs * scale if theirs else None
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        shown = f"{theirs:.2f}" if theirs else "not installed"
        print(f"| {device} | {ours:.2f} | {shown} | {ratio} |", flush=True)


def accuracy(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"seed{seed}"
            command = [
                sys.executable,
                "-m",
                "nnx",
                "train",
                "-q",
                "-c",
                "mnist_cnn",
                "--seed",
                str(seed),
                "--out",
                str(out),
            ]
            subprocess.run(command + (["--device", args.device] if args.device else []), check=True)
            summary = json.loads((out / "summary.json").read_text())
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            results.append(summary)
            print(
                f"seed {seed}: test accuracy {summary['test_accuracy']:.2%}, {summary['epochs']} epochs, "
                f"{summary['train_seconds']:.1f} s ({summary['train_seconds'] / summary['epochs']:.1f} s/epoch), "
                f"val accuracy per epoch {[round(h['val_accuracy'], 4) for h in history]}",
                flush=True,
            )
    accuracies = [r["test_accuracy"] for r in results]
    median = statistics.median(accuracies)
    print(f"median test accuracy over seeds {args.seeds}: {median:.2%} on {results[0]['device_description']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--batches", type=int, default=0, help="time this many batches, not a whole epoch")
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--device", default=None)
    args = parser.parse_args()
    speed(args) if args.what == "speed" else accuracy(args)


if __name__ == "__main__":
    main()
