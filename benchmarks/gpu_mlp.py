"""MLP epoch times on the CPU and the GPU, nnx beside PyTorch eager (when installed).

Rows: 784-64-10 at batch 64 and 1024, and 784-1024-1024-10 at batch 1024. Every contender trains
the same model from the same initial weights, on the same batch order (nnx's host permutation),
with the same hyperparameters (SGD, Nesterov momentum 0.9, lr 0.02) and the same per-batch uint8
-> float conversion on the device. Each figure is the median of the timed epochs after one
warm-up epoch. Then the default config is trained on the GPU and the training time until the test
accuracy first reaches 97.5% is reported.

With --floor, each CPU row also times an epoch of only the matrix products nnx's step calls (the
same shapes and calls, on random numbers): no step on this BLAS can take less, so PyTorch's time
over it is the most nnx could be faster by here, whatever else it saved.

nnx_cpu is nnx on the fastest code this machine can have (Numba's compiled loops, and nnx's own
AVX-512 products where the CPU has AVX-512). With --numpy-chains, each CPU row also times nnx with
its elementwise chains run by NumPy (what a short run takes, or where Numba is missing) instead of
nnx/cpu_kernels.py's compiled loops; with --blas-products, nnx with the compiled loops and BLAS's
products (the three are nnx/cpu_choice.py's paths); --rounds R measures every row R times, the
contenders taking turns, for a shared machine whose speed drifts.

Run: NNX_DATA_DIR=... python benchmarks/gpu_mlp.py [--epochs 2] [--no-cpu] [--floor] [--numpy-chains]
     [--blas-products] [--rounds R] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnx.backend import Backend, get_backend, gpu_unavailable_reason
from nnx.cpu_ops import CpuOps
from nnx.data.mnist import load_mnist, resolve_data_dir
from nnx.nn import build_model, mlp_spec
from nnx.optim import SGD, Schedule
from nnx.preprocess import Preprocess
from nnx.trainer import Callback, DeviceSplit, Trainer, epoch_order, evaluate

sys.path.insert(0, str(Path(__file__).parent))
from kernels import cpu_kernels, torch_on  # noqa: E402

LR, MOMENTUM = 0.02, 0.9
CASES = [([784, 64, 10], 64), ([784, 64, 10], 1024), ([784, 1024, 1024, 10], 1024)]
PRE = Preprocess.named("standard")


def nnx_epochs(backend: Backend, sizes: list[int], batch: int, train, epochs: int) -> list[float]:
    model = build_model(mlp_spec(sizes), backend, np.random.default_rng([0, 0]))
    trainer = Trainer(model, SGD(model.flat_parameters(), LR, MOMENTUM, True, 0.0, backend.ops), backend, PRE)
    data = DeviceSplit(train, backend)
    times = []
    for epoch in range(epochs + 1):  # epoch 0 warms up (kernel compilation, allocator)
        backend.synchronize()
        times.append(trainer.fit(data, None, 1, batch, seed=epoch).train_seconds)
    return times[1:]


def products_epochs(sizes: list[int], batch: int, n: int, epochs: int) -> list[float]:
    """Seconds per epoch of only the products an nnx MLP step calls on the CPU, as Linear calls
    them (through the CPU's ops: BLAS, or nnx/cpu_products.py on a CPU with AVX-512): y = x W,
    dW = x^T dy and, above the first layer, dx = dy W^T, for every batch of an epoch of n images
    (the last one shorter). The first epoch warms up and is dropped."""
    ops = CpuOps()
    rng = np.random.default_rng(0)
    counts = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    layers = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        W, dW = rng.standard_normal((a, b), dtype=np.float32), np.empty((a, b), dtype=np.float32)
        by_rows = {}  # x and dy for a batch of m rows (the ops allocate y and dx, as in a step)
        for m in set(counts):
            by_rows[m] = tuple(rng.standard_normal(shape, dtype=np.float32) for shape in [(m, a), (m, b)])
        layers.append((W, dW, by_rows))
    times = []
    for _ in range(epochs + 1):
        started = time.perf_counter()
        for m in counts:
            for i, (W, dW, by_rows) in enumerate(layers):
                x, dy = by_rows[m]
                ops.matmul(x, W, 0)
                ops.matmul_tn(x, dy, out=dW)
                if i:  # the first layer's dx is never computed
                    ops.matmul(dy, W.T, 0)
        times.append(time.perf_counter() - started)
    return times[1:]


def torch_mlp(dev: Any, sizes: list[int]) -> Any:
    """The same network in PyTorch, from nnx's initial weights."""
    import torch

    host = build_model(mlp_spec(sizes), get_backend("cpu", "float32"), np.random.default_rng([0, 0]))
    layers: list[Any] = []
    for layer in host.layers:
        if layer.kind == "linear":
            linear = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.params["W"].T.copy()))
                linear.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
            layers.append(linear)
        else:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(dev)


def torch_run(
    device: str, sizes: list[int], batch: int, train, epochs: int, order_of=None, test=None,
    schedule: Schedule | None = None, target: float | None = None,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """(seconds per epoch, test accuracy per epoch when `test` is given), PyTorch eager; with a
    `target`, stops at the first epoch whose test accuracy reaches it. `order_of(e)` gives epoch
    e's batch order (0-based e); by default that of nnx_epochs (seed e, epoch 1)."""
    torch = torch_on(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)
    model = torch_mlp(dev, sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
    images = torch.from_numpy(np.ascontiguousarray(train.images)).to(dev)
    labels = torch.from_numpy(train.labels.astype(np.int64)).to(dev)
    scale, shift = 1.0 / (255.0 * PRE.std), PRE.mean / PRE.std
    batches = -(-len(labels) // batch)
    times, accuracies = [], []
    for epoch in range(epochs):
        host_order = order_of(epoch) if order_of else epoch_order(epoch, 1, len(labels))
        order = torch.from_numpy(host_order).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for b, start in enumerate(range(0, len(labels), batch)):
            if schedule is not None:  # the very lr nnx uses at this step
                optimizer.param_groups[0]["lr"] = schedule.lr(LR, epoch * batches + b, epochs * batches, batches)
            idx = order[start : start + batch]
            x = images[idx].float().mul_(scale).sub_(shift)
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        if test is not None:
            with torch.no_grad():
                x = torch.from_numpy(test.images).to(dev).float().mul_(scale).sub_(shift)
                predicted = model(x).argmax(dim=1).cpu().numpy()
            accuracies.append(float((predicted == test.labels).mean()))
            if target is not None and accuracies[-1] >= target:
                break
    return times, accuracies


def torch_epochs(device: str, sizes: list[int], batch: int, train, epochs: int) -> list[float] | None:
    try:
        return torch_run(device, sizes, batch, train, epochs + 1)[0][1:]  # the first epoch warms up
    except ImportError:  # no PyTorch, or none with CUDA
        return None


def torch_time_to_accuracy(device: str, mnist, target: float = 0.975) -> float | None:
    """PyTorch's training seconds until the test accuracy first reaches `target`, on the default
    config's recipe (784-64-10, batch 64, SGD Nesterov, cosine over 10 epochs)."""
    torch_run(device, [784, 64, 10], 64, mnist.train, 1)  # warm-up
    times, accuracies = torch_run(
        device, [784, 64, 10], 64, mnist.train, 10, lambda e: epoch_order(0, e + 1, len(mnist.train)), mnist.test,
        Schedule("cosine"), target,
    )  # fmt: skip
    return sum(times) if accuracies and accuracies[-1] >= target else None


class TestAccuracyClock(Callback):
    """Training seconds until the test accuracy first reaches the target (test set evaluated after
    each epoch, outside the timed training)."""

    def __init__(self, model, test, backend: Backend, target: float) -> None:
        self.model, self.test, self.backend, self.target = model, test, backend, target
        self.elapsed = 0.0
        self.trainer: Trainer | None = None
        self.reached: float | None = None
        self.accuracies: list[float] = []

    def on_epoch_end(self, metrics) -> None:
        self.elapsed += metrics.seconds
        accuracy = evaluate(self.model, self.test, PRE, self.backend)[1]
        self.accuracies.append(accuracy)
        if self.reached is None and accuracy >= self.target:
            self.reached = self.elapsed
            if self.trainer is not None:  # reached: no need to train on
                self.trainer.request_stop()


def time_to_accuracy(backend: Backend, mnist, target: float = 0.975) -> TestAccuracyClock:
    nnx_epochs(backend, [784, 64, 10], 64, mnist.train, 0)  # warm-up: compile kernels once
    model = build_model(mlp_spec([784, 64, 10]), backend, np.random.default_rng([0, 0]))
    clock = TestAccuracyClock(model, DeviceSplit(mnist.test, backend), backend, target)
    optimizer = SGD(model.flat_parameters(), LR, MOMENTUM, True, 0.0, backend.ops)
    trainer = Trainer(model, optimizer, backend, PRE, [clock], schedule="cosine")
    clock.trainer = trainer
    trainer.fit(DeviceSplit(mnist.train, backend), None, 10, 64, 0)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--floor", action="store_true", help="CPU rows: also an epoch of the products alone")
    parser.add_argument(
        "--numpy-chains", action="store_true",
        help="CPU rows: also nnx with its elementwise chains in NumPy instead of Numba's compiled loops",
    )  # fmt: skip
    parser.add_argument(
        "--blas-products", action="store_true",
        help="CPU rows: also nnx with its compiled loops but BLAS's products (nnx/cpu_choice.py's 'compiled' path)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure each row this many times, the contenders taking turns (medians over all rounds)",
    )  # fmt: skip
    args = parser.parse_args()

    mnist = load_mnist(resolve_data_dir(), 5000)
    n = len(mnist.train)
    gpu_reason = gpu_unavailable_reason()
    devices = ([] if args.no_cpu else ["cpu"]) + (["gpu"] if gpu_reason is None else [])
    rows = []
    for sizes, batch in CASES:
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):  # the contenders take turns: this machine's speed drifts
            for device in devices:
                backend = get_backend(device, "float32")
                epochs = nnx_epochs(backend, sizes, batch, mnist.train, args.epochs)
                times.setdefault(f"nnx_{device}", []).extend(epochs)
                if device == "cpu" and args.numpy_chains:
                    numpy_chains = Backend("cpu", np, np.dtype(np.float32), ops=CpuOps(compiled=False))
                    epochs = nnx_epochs(numpy_chains, sizes, batch, mnist.train, args.epochs)
                    times.setdefault("nnx_cpu_numpy", []).extend(epochs)
                if device == "cpu" and args.blas_products:
                    blas = Backend("cpu", np, np.dtype(np.float32), ops=CpuOps(compiled=True, products=False))
                    epochs = nnx_epochs(blas, sizes, batch, mnist.train, args.epochs)
                    times.setdefault("nnx_cpu_blas", []).extend(epochs)
                device_of_torch = "cuda" if device == "gpu" else "cpu"
                torch_times = torch_epochs(device_of_torch, sizes, batch, mnist.train, args.epochs)
                if torch_times:
                    times.setdefault(f"torch_{device}", []).extend(torch_times)
                if device == "cpu" and args.floor:
                    times.setdefault("products_cpu", []).extend(products_epochs(sizes, batch, n, args.epochs))
        row: dict[str, Any] = {"model": "-".join(map(str, sizes)), "batch": batch}
        row |= {key: statistics.median(values) for key, values in times.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    result: dict[str, Any] = {"rows": rows, "samples_per_epoch": n, "python": platform.python_version()}
    if gpu_reason is None:
        import cupy

        gpu = get_backend("gpu", "float32")
        clock = time_to_accuracy(gpu, mnist)
        result["gpu"] = gpu.description()
        result["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        result["cupy"] = cupy.__version__
        result["time_to_97_5"] = clock.reached
        result["gpu_test_accuracies"] = clock.accuracies
        try:
            result["torch_time_to_97_5"] = torch_time_to_accuracy("cuda", mnist)
        except ImportError:
            result["torch_time_to_97_5"] = None
    else:
        result["gpu"] = f"none ({gpu_reason})"
    try:
        import torch

        result["torch"] = torch.__version__
    except ImportError:
        result["torch"] = "not installed"
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)

    print(
        f"\nGPU: {result['gpu']}; CuPy {result.get('cupy', '-')}; CUDA runtime {result.get('cuda_runtime', '-')}; "
        f"PyTorch {result['torch']}; epoch = {n:,} images; median of {args.epochs} epochs after a warm-up"
        + (f", {args.rounds} rounds" if args.rounds > 1 else "")
        + ("; nnx_cpu_numpy: nnx with NumPy's chains (no Numba)" if args.numpy_chains else "")
        + ("; nnx_cpu_blas: nnx's compiled loops, BLAS's products" if args.blas_products else "")
    )
    if not args.no_cpu:
        print(cpu_kernels())
    columns = ("nnx_cpu", "nnx_cpu_blas", "nnx_cpu_numpy", "torch_cpu", "nnx_gpu", "torch_gpu")
    columns = [c for c in columns if any(c in r for r in rows)]
    print(
        "| model | batch | " + " | ".join(f"{c} s/epoch (samples/s)" for c in columns) + " | GPU speed-up vs nnx CPU |"
    )
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " | --- |")
    for row in rows:
        cells = [f"{row[c]:.3f} ({n / row[c]:,.0f})" if c in row else "-" for c in columns]
        speedup = f"{row['nnx_cpu'] / row['nnx_gpu']:.1f}x" if "nnx_cpu" in row and "nnx_gpu" in row else "-"
        print(f"| {row['model']} | {row['batch']} | " + " | ".join(cells) + f" | {speedup} |")
    if any("products_cpu" in row for row in rows):
        print(floor_table(rows))
    if "time_to_97_5" in result:
        reached = result["time_to_97_5"]
        shown = f"{reached:.2f} s" if reached is not None else "not reached in 10 epochs"
        theirs = result.get("torch_time_to_97_5")
        theirs = f"{theirs:.2f} s" if theirs is not None else "not reached (or no PyTorch)"
        print(f"GPU training time to 97.5% test accuracy (default config): nnx {shown}, PyTorch eager {theirs}")


def floor_table(rows: list[dict[str, Any]]) -> str:
    """nnx's CPU epoch beside its products alone, and what that bounds: PyTorch / products is the
    most nnx could be faster than PyTorch by on this BLAS, were everything but the products free."""
    lines = [
        "| model | batch | nnx CPU s/epoch | its products alone | products' share | PyTorch CPU s/epoch "
        "| nnx faster by | at most (products alone) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "products_cpu" not in row:
            continue
        nnx, products, torch = row["nnx_cpu"], row["products_cpu"], row.get("torch_cpu")
        ratio = f"{torch / nnx:.2f}x" if torch else "-"
        bound = f"{torch / products:.2f}x" if torch else "-"
        lines.append(
            f"| {row['model']} | {row['batch']} | {nnx:.3f} | {products:.3f} | {products / nnx:.0%} | "
            f"{f'{torch:.3f}' if torch else '-'} | {ratio} | {bound} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
