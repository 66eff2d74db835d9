"""Where a training step goes, layer by layer: forward and backward time per batch for a config's
network.

On the CPU, with all cores and with one thread (nnx's own threads and BLAS's both limited to one),
so the last column says how well each part spreads over the cores. On a GPU (`--device gpu`),
each part's time on the device (between CUDA events recorded around it, so including any wait
for the host to issue its kernels) beside the host's time to issue it: where the host time is
near the device time the GPU is waiting on kernel launches and Python, not computing; the step's
totals say the same of the whole step.

Run: NNX_DATA_DIR=... python benchmarks/profile_layers.py [--config mnist_cnn] [--batches 30] [--device gpu]
     [--compare-conv ROUNDS]  (CPU: the step with candidate convolutions by Winograd vs im2col, alternating)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from nnx.api import build_model_for, build_optimizer
from nnx.backend import Backend, get_backend
from nnx.config import load_config
from nnx.data.mnist import load_mnist, resolve_data_dir
from nnx.nn import SoftmaxCrossEntropy
from nnx.preprocess import Preprocess


class PartTimer:
    """Host seconds per part, and on a GPU device seconds from a pair of CUDA events per part,
    read once per step (after one synchronisation) so that timing does not serialise the step."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.host: dict[str, float] = defaultdict(float)
        self.device: dict[str, float] = defaultdict(float)
        self.pending: list[tuple[str, Any, Any]] = []

    def time(self, key: str, timed: bool, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """work(*args, **kwargs), timed as `key` when `timed`."""
        events = None
        if self.backend.is_gpu:
            events = (self.backend.xp.cuda.Event(), self.backend.xp.cuda.Event())
            events[0].record()
        started = time.perf_counter()
        result = work(*args, **kwargs)
        self.host[key] += (time.perf_counter() - started) * timed
        if events is not None:
            events[1].record()
            if timed:
                self.pending.append((key, *events))
        return result

    def end_step(self) -> None:
        if not self.pending:
            return
        self.pending[-1][2].synchronize()
        cupy = self.backend.xp
        for key, start, end in self.pending:
            self.device[key] += cupy.cuda.get_elapsed_time(start, end) / 1e3
        self.pending.clear()


def loss_and_gradient(loss_fn: SoftmaxCrossEntropy, z: Any, labels: Any) -> Any:
    loss_fn.forward(z, labels)
    return loss_fn.backward()


def profile(config_name: str, batches: int, device: str = "cpu") -> PartTimer:
    config, _ = load_config(config_name)
    backend = get_backend(device, "float32")
    model = build_model_for(config, backend)
    optimizer = build_optimizer(config, model, backend)
    loss_fn = SoftmaxCrossEntropy(backend)
    pre = Preprocess.named(config.data.normalize)
    mnist = load_mnist(resolve_data_dir(), 0)
    batch = config.training.batch_size
    timer = PartTimer(backend)
    layers = model.logit_layers
    for b in range(batches + 3):  # 3 to warm up (on a GPU: kernel compilation)
        timed = b >= 3
        images = backend.asarray(mnist.train.images[b * batch : (b + 1) * batch])
        labels = backend.asarray(mnist.train.labels[b * batch : (b + 1) * batch], dtype=np.int64)
        model.set_random_key(0, 1, b)
        x = timer.time("preprocess", timed, pre, images, backend)
        for i, layer in enumerate(layers):
            x = timer.time(f"{i} {layer.kind} forward", timed, layer.forward, x, training=True)
        dy = timer.time("loss forward+backward", timed, loss_and_gradient, loss_fn, x, labels)
        for i in reversed(range(len(layers))):
            if dy is None:  # the first layer with parameters does not compute dL/dx
                break
            dy = timer.time(f"{i} {layers[i].kind} backward", timed, layers[i].backward, dy)
        timer.time("optimizer step", timed, optimizer.step)
        timer.end_step()
    backend.synchronize()
    timer.host = {k: v / batches for k, v in timer.host.items()}
    timer.device = {k: v / batches for k, v in timer.device.items()}
    return timer


def cpu_table(config: str, batches: int) -> None:
    many = profile(config, batches).host
    with threadpool_limits(limits=1):
        one = profile(config, batches).host
    total_many, total_one = sum(many.values()), sum(one.values())
    print(f"| {config}, per batch | ms, all cores | ms, 1 thread | share of the step | speed-up from threads |")
    print("| --- | --- | --- | --- | --- |")
    for key in sorted(many, key=lambda k: -many[k]):
        print(f"| {key} | {many[key] * 1e3:.2f} | {one[key] * 1e3:.2f} | {many[key] / total_many:.0%} | "
              f"{one[key] / many[key]:.2f}x |")  # fmt: skip
    print(f"| total | {total_many * 1e3:.2f} | {total_one * 1e3:.2f} | 100% | {total_one / total_many:.2f}x |")


def compare_conv(config: str, batches: int, rounds: int) -> None:
    """The CPU step with its candidate convolutions by Winograd (nnx/cpu_ops.winograd_candidate)
    against im2col for all, alternating `rounds` times in this process (this machine's speed
    drifts): what nnx/cpu_choice.py measures for a run, part by part."""
    from nnx.cpu_ops import CpuOps

    steps: dict[str, list[float]] = {"winograd": [], "im2col": []}
    convs: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in steps}
    for _ in range(rounds):
        for name in steps:
            CpuOps.winograd = name == "winograd"
            try:
                host = profile(config, batches).host
            finally:
                CpuOps.winograd = False
            steps[name].append(sum(host.values()))
            for key, seconds in host.items():
                if "conv2d" in key:
                    convs[name][key].append(seconds)
    print(f"| {config}, median of {rounds} alternations | ms a step | " + " | ".join(sorted(convs["im2col"])) + " |")
    print("| --- | --- |" + " --- |" * len(convs["im2col"]))
    for name, totals in steps.items():
        parts = [f"{statistics.median(convs[name][key]) * 1e3:.2f}" for key in sorted(convs[name])]
        print(f"| {name} | {statistics.median(totals) * 1e3:.2f} | " + " | ".join(parts) + " |")


def gpu_table(config: str, batches: int, device: str) -> None:
    timer = profile(config, batches, device)
    host, gpu = timer.host, timer.device
    total_host, total_gpu = sum(host.values()), sum(gpu.values())
    print(f"| {config} on {device}, per batch | ms on the GPU | ms on the host (issuing) | share of GPU time |")
    print("| --- | --- | --- | --- |")
    for key in sorted(gpu, key=lambda k: -gpu[k]):
        print(f"| {key} | {gpu[key] * 1e3:.3f} | {host[key] * 1e3:.3f} | {gpu[key] / max(total_gpu, 1e-12):.0%} |")
    bound = "the host (launches, Python)" if total_host >= 0.8 * total_gpu else "the GPU"
    print(f"| total | {total_gpu * 1e3:.3f} | {total_host * 1e3:.3f} | 100% |")
    print(f"{config}: a step is bound by {bound}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=["mnist_cnn"], nargs="+")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="cpu, or gpu / gpu:N")
    parser.add_argument("--compare-conv", type=int, metavar="ROUNDS", default=0,
                        help="CPU: the step as chosen against im2col for every convolution, alternating")  # fmt: skip
    args = parser.parse_args()
    for config in args.config:
        if args.compare_conv:
            compare_conv(config, args.batches, args.compare_conv)
        elif args.device == "cpu":
            cpu_table(config, args.batches)
        else:
            gpu_table(config, args.batches, args.device)


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
