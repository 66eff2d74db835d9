"""The CNN of configs/mnist_cnn.yaml: epoch time of nnx beside PyTorch eager on the same model, and
its test accuracy over seeds.

  python benchmarks/cnn.py speed      # epoch time, CPU (and GPU where usable), nnx vs PyTorch
                                      # (NNX_CPU_PATH=compiled+winograd ...: nnx on that CPU path)
  python benchmarks/cnn.py accuracy   # nnx train -c mnist_cnn for seeds 0, 1, 2: the median
  python benchmarks/cnn.py time-to [--device gpu]  # training seconds to 99% test accuracy (also
                                                   # configs/mnist_fast_gpu.yaml's, made for a GPU)
  python benchmarks/cnn.py gpu        # what scripts/gpu_check.sh runs: GPU speed, then time-to

Both contenders train the same layers from the same initial weights on the same batches (nnx's
host permutation) with Adam at a constant lr and the same dropout rates, converting uint8 pixels
per batch on the device. Figures are medians of the timed epochs after a warm-up of a few
batches (`--batches N` times a part of an epoch and scales it to 55,000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnx.api import build_model_for, build_optimizer
from nnx.augment import ShiftRotate
from nnx.backend import get_backend, gpu_unavailable_reason
from nnx.config import load_config
from nnx.data.mnist import Split, load_mnist, resolve_data_dir
from nnx.nn import build_model
from nnx.optim import Adam, Schedule
from nnx.preprocess import Preprocess
from nnx.trainer import Callback, DeviceSplit, Trainer, epoch_order, evaluate

sys.path.insert(0, str(Path(__file__).parent))
from kernels import cpu_kernels, torch_on  # noqa: E402

PRE = Preprocess.named("standard")
LR = 1e-3
BATCH = 128


def nnx_seconds(device: str, train: Split, repeats: int) -> float:
    """nnx's epoch; on the CPU on the path NNX_CPU_PATH names (nnx/cpu_choice.py), else Numba's
    compiled loops with im2col."""
    backend = get_backend(device, "float32", cpu_path=os.environ.get("NNX_CPU_PATH") or None)
    config, _ = load_config("mnist_cnn")
    model = build_model(config.model.layer_specs(), backend, np.random.default_rng([0, 0]), classes=10)
    trainer = Trainer(model, Adam(model.flat_parameters(), LR, ops=backend.ops), backend, PRE)
    data = DeviceSplit(train, backend)
    warm = DeviceSplit(Split(train.images[: 4 * BATCH], train.labels[: 4 * BATCH]), backend)
    trainer.fit(warm, None, 1, BATCH, 0)
    return statistics.median(trainer.fit(data, None, 1, BATCH, r + 1).train_seconds for r in range(repeats))


def torch_cnn(dev: Any, config_name: str = "mnist_cnn", seed: int = 0) -> Any:
    """A config's network (configs/mnist_cnn.yaml by default) in PyTorch, from nnx's initial
    weights for `seed` (drawn as nnx draws them)."""
    import torch

    config, _ = load_config(config_name)
    host = build_model(config.model.layer_specs(), get_backend("cpu"), np.random.default_rng([seed, 0]), classes=10)
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
    return torch.nn.Sequential(*layers).to(dev)


class TorchCNN:
    """The PyTorch contender: nnx's batches (host permutation), per-batch uint8 -> float on the device."""

    def __init__(
        self, device: str, train: Split, lr: float = LR, config_name: str = "mnist_cnn", seed: int = 0,
        batch: int = BATCH,
    ) -> None:  # fmt: skip
        torch = torch_on(device)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        self.torch, self.dev, self.batch = torch, torch.device(device), batch
        self.model = torch_cnn(self.dev, config_name, seed)
        self.lr = lr
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.images = torch.from_numpy(np.ascontiguousarray(train.images)).to(self.dev)
        self.labels = torch.from_numpy(train.labels.astype(np.int64)).to(self.dev)
        self.scale, self.shift = 1.0 / (255.0 * PRE.std), PRE.mean / PRE.std

    def synchronize(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def epoch(self, order: np.ndarray, lr_at=None) -> float:
        """Seconds for one pass over `order`; lr_at(b) sets the lr of batch b (a schedule)."""
        torch = self.torch
        self.model.train()
        index = torch.from_numpy(order).to(self.dev)
        self.synchronize()
        started = time.perf_counter()
        for b, start in enumerate(range(0, len(order), self.batch)):
            if lr_at is not None:
                self.optimizer.param_groups[0]["lr"] = lr_at(b)
            idx = index[start : start + self.batch]
            x = self.images[idx].float().mul_(self.scale).sub_(self.shift)
            loss = torch.nn.functional.cross_entropy(self.model(x), self.labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.synchronize()
        return time.perf_counter() - started

    def accuracy(self, test: Split) -> float:
        torch = self.torch
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(test.labels), 1000):
                x = torch.from_numpy(test.images[start : start + 1000]).to(self.dev).float()
                predicted = self.model(x.mul_(self.scale).sub_(self.shift)).argmax(dim=1).cpu().numpy()
                correct += int((predicted == test.labels[start : start + 1000]).sum())
        return correct / len(test.labels)


def torch_seconds(device: str, train: Split, repeats: int) -> float | None:
    try:
        contender = TorchCNN(device, train)
    except ImportError:
        return None
    contender.epoch(epoch_order(0, 1, 4 * BATCH))
    return statistics.median(contender.epoch(epoch_order(r + 1, 1, len(train.labels))) for r in range(repeats))


def speed(args: argparse.Namespace) -> dict[str, Any]:
    mnist = load_mnist(resolve_data_dir(), 5000)
    train = mnist.train
    if args.batches:
        n = args.batches * BATCH
        train = Split(train.images[:n], train.labels[:n])
    scale = len(mnist.train) / len(train)
    devices = ([] if args.no_cpu else ["cpu"]) + (["gpu"] if gpu_unavailable_reason() is None else [])
    results: dict[str, Any] = {}
    if "cpu" in devices:
        print(cpu_kernels() + f"; nnx's CPU path: {os.environ.get('NNX_CPU_PATH') or 'compiled (NNX_CPU_PATH unset)'}")
    print(f"| device | nnx s/epoch | PyTorch eager s/epoch | nnx / PyTorch |  (55,000 images, batch {BATCH})")
    print("| --- | --- | --- | --- |")
    for device in devices:
        ours = nnx_seconds(device, train, args.repeats) * scale
        theirs = torch_seconds("cuda" if device == "gpu" else "cpu", train, args.repeats)
        theirs = theirs * scale if theirs else None
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        shown = f"{theirs:.2f}" if theirs else "not installed, or without CUDA"
        print(f"| {device} | {ours:.2f} | {shown} | {ratio} |", flush=True)
        results[device] = {"nnx": ours, "torch": theirs}
    return results


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


class TestClock(Callback):
    """Training seconds (the trainer's own epoch times) until the test accuracy first reaches the
    target; the test set is evaluated after each epoch, outside the timed part."""

    def __init__(self, trainer: Trainer, test: DeviceSplit, target: float) -> None:
        self.trainer, self.test, self.target = trainer, test, target
        self.elapsed, self.reached, self.accuracies = 0.0, None, []

    def on_epoch_end(self, metrics) -> None:
        self.elapsed += metrics.seconds
        t = self.trainer
        self.accuracies.append(evaluate(t.model, self.test, t.preprocess, t.backend)[1])
        if self.reached is None and self.accuracies[-1] >= self.target:
            self.reached = self.elapsed
            t.request_stop()


def nnx_time_to(device: str, mnist, target: float, augment: bool, config_name: str = "mnist_cnn") -> TestClock:
    """A config as it is (configs/mnist_cnn.yaml: Adam, one-cycle lr, dropout), augmentation on or
    off; on the training images the config asks for (mnist_fast_gpu's validation 0: all 60,000)."""
    config, _ = load_config(config_name, [f"device={device}", f"training.augment.enabled={str(augment).lower()}"])
    backend = get_backend(config.device, config.dtype)
    t = config.training
    # the training images are the first len - validation of all 60,000, as load_mnist cuts them
    images = np.concatenate([mnist.train.images, mnist.validation.images])
    labels = np.concatenate([mnist.train.labels, mnist.validation.labels])
    train = Split(images[: len(images) - t.validation], labels[: len(labels) - t.validation])

    def trainer_for(model) -> Trainer:
        augmenter = ShiftRotate(backend, t.augment.max_shift, t.augment.max_rotation) if augment else None
        return Trainer(model, build_optimizer(config, model, backend), backend, PRE,
                       schedule=Schedule(**config.schedule.model_dump()), augment=augmenter)  # fmt: skip

    warm = Split(train.images[: 4 * t.batch_size], train.labels[: 4 * t.batch_size])
    trainer_for(build_model_for(config, backend)).fit(DeviceSplit(warm, backend), None, 1, t.batch_size, 0)  # compile
    trainer = trainer_for(build_model_for(config, backend))
    clock = TestClock(trainer, DeviceSplit(mnist.test, backend), target)
    trainer.callbacks.append(clock)
    trainer.fit(DeviceSplit(train, backend), None, t.epochs, t.batch_size, t.seed)
    return clock


def torch_time_to(device: str, mnist, target: float) -> tuple[float | None, list[float]]:
    """The PyTorch twin on the same recipe without augmentation (nnx's has no PyTorch twin)."""
    config, _ = load_config("mnist_cnn")
    schedule, t = Schedule(**config.schedule.model_dump()), config.training
    contender = TorchCNN(device, mnist.train, config.optimizer.lr)
    contender.epoch(epoch_order(0, 1, 4 * BATCH))  # warm-up, then start again from nnx's weights
    contender = TorchCNN(device, mnist.train, config.optimizer.lr)
    n, elapsed, accuracies = len(mnist.train.labels), 0.0, []
    per_epoch = -(-n // t.batch_size)
    for epoch in range(t.epochs):
        step0 = epoch * per_epoch
        elapsed += contender.epoch(
            epoch_order(t.seed, epoch + 1, n),
            lambda b, step0=step0: schedule.lr(config.optimizer.lr, step0 + b, t.epochs * per_epoch, per_epoch),
        )
        accuracies.append(contender.accuracy(mnist.test))
        if accuracies[-1] >= target:
            return elapsed, accuracies
    return None, accuracies


def time_to(args: argparse.Namespace) -> dict[str, Any]:
    mnist = load_mnist(resolve_data_dir(), 5000)
    target = args.target
    rows: dict[str, Any] = {}
    print(f"| CNN, {args.device}: training seconds to {target:.1%} test accuracy | seconds | test accuracy per epoch |")
    print("| --- | --- | --- |")

    def show(label: str, reached: float | None, accuracies: list[float]) -> None:
        shown = f"{reached:.2f}" if reached is not None else f"not reached in {len(accuracies)} epochs"
        print(f"| {label} | {shown} | {', '.join(f'{a:.2%}' for a in accuracies)} |", flush=True)
        rows[label] = {"seconds": reached, "accuracies": accuracies}

    for augment in (False, True):
        clock = nnx_time_to(args.device, mnist, target, augment)
        show(f"nnx, augmentation {'on' if augment else 'off'}", clock.reached, clock.accuracies)
    try:
        show(
            "PyTorch eager, augmentation off", *torch_time_to("cuda" if args.device == "gpu" else "cpu", mnist, target)
        )
    except ImportError:
        print("| PyTorch eager | not installed, or without CUDA | |")
    # Fewer, larger steps (472 of 512 images): made for a GPU, where a step costs launches more than arithmetic.
    clock = nnx_time_to(args.device, mnist, target, True, "mnist_fast_gpu")
    show("nnx, configs/mnist_fast_gpu.yaml (augmentation on)", clock.reached, clock.accuracies)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--batches", type=int, default=0, help="time this many batches, not a whole epoch")
    s.add_argument("--no-cpu", action="store_true", help="skip the CPU row")
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--device", default=None)
    t = sub.add_parser("time-to", help="training seconds to a test accuracy, nnx and PyTorch")
    t.add_argument("--device", default="cpu")
    t.add_argument("--target", type=float, default=0.99)
    g = sub.add_parser("gpu", help="what scripts/gpu_check.sh measures: GPU epoch time, then time to 99%%")
    g.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.what == "gpu":
        print("CNN (configs/mnist_cnn.yaml) on the GPU", flush=True)
        args.no_cpu, args.repeats, args.batches, args.device, args.target = True, 1, 100, "gpu", 0.99
        results = {"speed": speed(args), "time_to_99": time_to(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    elif args.what == "speed":
        speed(args)
    elif args.what == "time-to":
        time_to(args)
    else:
        accuracy(args)


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
