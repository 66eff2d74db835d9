"""configs/mnist_fast.yaml: test accuracy and training seconds for seeds 0, 1, 2, nnx beside the same
network in PyTorch eager on the same CPU (same initial weights, batches, Adam with nnx's one-cycle
learning rate per step, three epochs on all 60,000 images). The test set is evaluated after
training, outside the timed part.

Run: NNX_DATA_DIR=... python benchmarks/fast.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cnn import TorchCNN  # noqa: E402
from kernels import cpu_kernels  # noqa: E402

from nnx.config import load_config  # noqa: E402
from nnx.data.mnist import load_mnist, resolve_data_dir  # noqa: E402
from nnx.optim import Schedule  # noqa: E402
from nnx.trainer import epoch_order  # noqa: E402


def nnx_run(seed: int, folder: Path) -> tuple[float, float]:
    out = folder / f"seed{seed}"
    subprocess.run([sys.executable, "-m", "nnx", "train", "-q", "-c", "mnist_fast", "--seed", str(seed),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    return summary["test_accuracy"], summary["train_seconds"]


def torch_run(seed: int, mnist) -> tuple[float, float] | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    config, _ = load_config("mnist_fast")
    t, lr = config.training, config.optimizer.lr
    schedule = Schedule(**config.schedule.model_dump())
    contender = TorchCNN("cpu", mnist.train, lr, "mnist_fast", seed, t.batch_size)
    n = len(mnist.train.labels)
    per_epoch = -(-n // t.batch_size)
    seconds = 0.0
    for epoch in range(t.epochs):
        step0 = epoch * per_epoch
        seconds += contender.epoch(
            epoch_order(seed, epoch + 1, n),
            lambda b, step0=step0: schedule.lr(lr, step0 + b, t.epochs * per_epoch, per_epoch),
        )
    return contender.accuracy(mnist.test), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    mnist = load_mnist(resolve_data_dir(), 0)
    rows = {"nnx": [], "PyTorch eager": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows["nnx"].append(nnx_run(seed, Path(tmp)))
            theirs = torch_run(seed, mnist)
            if theirs:
                rows["PyTorch eager"].append(theirs)
            print(f"seed {seed}: nnx {rows['nnx'][-1]}, PyTorch {theirs}", flush=True)
    print(cpu_kernels())
    print(f"| mnist_fast, seeds {args.seeds} | test accuracy per seed | median | training seconds (median) |")
    print("| --- | --- | --- | --- |")
    for name, results in rows.items():
        if results:
            accuracies = " / ".join(f"{a:.2%}" for a, _ in results)
            median = statistics.median(a for a, _ in results)
            print(f"| {name} | {accuracies} | {median:.2%} | {statistics.median(s for _, s in results):.1f} |")


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
